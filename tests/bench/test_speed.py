"""Result structure and arithmetic of the speed core. No timing assertions: speed claims are
made by benchmarks (docs/bench.md), never by timed tests."""

import pytest
import torch

from llmslim.bench import speed
from llmslim.bench import run as bench_run
from llmslim.bench.run import BenchConfig, Subject, auto_threads, batch_sizes, ratios, run, steps
from llmslim.bench.synthetic import random_model
from llmslim.core.errors import BadOptionError

from .conftest import FAST


@pytest.fixture(scope="module")
def tiny():
    return random_model("random:tiny", torch.float32, seed=0)


@pytest.fixture(scope="module")
def narrow():
    return random_model("random:tiny?intermediate_size=32", torch.float32, seed=0)


def test_measure_structure_and_arithmetic(tiny):
    r = speed.measure(tiny, None, **FAST)
    assert r["batch_size"] == 1 and r["repeats"] == 2
    assert len(r["prefill_s"]) == len(r["decode_s"]) == 2
    prefill = sorted(r["prefill_s"])
    assert r["prefill_tok_s"] == pytest.approx(8 / ((prefill[0] + prefill[1]) / 2))  # median of two
    decode = sorted(r["decode_s"])
    assert r["decode_tok_s"] == pytest.approx(2 / ((decode[0] + decode[1]) / 2))  # new_tokens - 1 steps
    lo, hi = r["decode_tok_s_range"]
    assert lo <= r["decode_tok_s"] <= hi
    assert r["cache"] == "dynamic" and r["compiled"] is False and r["note"] is None
    mem = r["memory"]
    weights = sum(p.numel() * p.element_size() for p in tiny.parameters()) + sum(
        b.numel() * b.element_size() for b in tiny.buffers())
    assert mem["weights_bytes"] == weights
    assert mem["peak_bytes"] == mem["weights_bytes"] + mem["run_increase_bytes"]
    assert mem["method"]


def test_static_cache_and_batches(tiny):
    r = speed.measure(tiny, 256, **{**FAST, "batch_size": 3}, cache="static")
    assert r["cache"] == "static" and r["batch_size"] == 3
    assert r["prefill_tok_s"] == pytest.approx(3 * 8 / r["ttft_s"])


def test_static_and_dynamic_cache_generate_the_same_tokens(tiny):
    """The decode loop is real greedy generation, whichever cache."""
    outs = []
    for cache in ("dynamic", "static"):
        session = speed.prepare(tiny, None, speed.SpeedConfig(**{**FAST, "cache": cache}))
        seen = []
        step = session.step
        session.step = lambda tok, c, pos, step=step: seen.append(tok.clone()) or step(tok, c, pos)
        speed.generate_once(session)
        outs.append(torch.cat(seen, 1))
    assert torch.equal(outs[0], outs[1])


def test_compile_is_reported_or_falls_back(tiny, monkeypatch):
    """A failing torch.compile falls back to eager and says so (no real compile in tests)."""
    def broken(fn, **kw):
        def fail(*a, **k):
            raise RuntimeError("no C++ compiler here")
        return fail

    monkeypatch.setattr(torch, "compile", broken)
    r = speed.measure(tiny, None, **FAST, compile=True)
    assert r["cache"] == "static" and r["compiled"] is False
    assert "torch.compile failed" in r["note"] and "no C++ compiler here" in r["note"]


def test_measure_many_interleaves(tiny, narrow, monkeypatch):
    order = []
    real = speed.generate_once

    def spy(session):
        order.append(session.model)
        return real(session)

    monkeypatch.setattr(speed, "generate_once", spy)
    cfg = speed.SpeedConfig(**{**FAST, "repeats": 3})
    results = speed.measure_many([(tiny, None), (narrow, None)], cfg, memory=False)
    timed = order[-6:]
    assert timed == [tiny, narrow, narrow, tiny, tiny, narrow]  # A B, B A, A B
    assert [r["memory"] for r in results] == [None, None]


def test_run_and_ratios(tiny, narrow):
    cfg = BenchConfig(speed.SpeedConfig(**FAST), batch_sizes(2))
    ticks = []
    out = run([Subject("a", tiny, 256, "random"), Subject("b", narrow, 256, "random")], cfg, progress=ticks.append)
    assert len(ticks) == steps(cfg, 2)
    a, b = out["models"]
    assert set(a["batches"]) == {"1", "2"}
    rat = out["ratios"]["b"]
    assert rat["params"] == pytest.approx(b["params"] / a["params"]) and rat["params"] < 1
    for bs in ("1", "2"):
        assert rat[f"decode_tok_s@{bs}"] == pytest.approx(b["batches"][bs]["decode_tok_s"] / a["batches"][bs]["decode_tok_s"])
        assert rat[f"prefill_tok_s@{bs}"] == pytest.approx(b["batches"][bs]["prefill_tok_s"] / a["batches"][bs]["prefill_tok_s"])
        assert rat[f"peak_bytes@{bs}"] == pytest.approx(
            b["batches"][bs]["memory"]["peak_bytes"] / a["batches"][bs]["memory"]["peak_bytes"])
    assert rat["disk_bytes"] is None  # random models are never on disk


def test_ratios_from_given_measurements():
    base = {"params": 100, "disk_bytes": None, "source_bytes": None, "weights_bytes": 400,
            "batches": {"1": {"prefill_tok_s": 50.0, "decode_tok_s": 10.0, "memory": {"peak_bytes": 1000}}}}
    other = {"params": 50, "disk_bytes": 10, "source_bytes": None, "weights_bytes": 200,
             "batches": {"1": {"prefill_tok_s": 100.0, "decode_tok_s": 12.5, "memory": {"peak_bytes": 600}}}}
    r = ratios(base, other)
    assert r == {"params": 0.5, "disk_bytes": None, "source_bytes": None, "weights_bytes": 0.5,
                 "prefill_tok_s@1": 2.0, "decode_tok_s@1": 1.25, "peak_bytes@1": 0.6}


@pytest.mark.parametrize("kw, needle", [
    ({"batch_size": 0}, "batch size must be at least 1"),
    ({"new_tokens": 1}, "new tokens must be at least 2"),
    ({"prompt_len": 0}, "prompt length"),
    ({"repeats": 0}, "repeats"),
    ({"cache": "paged"}, "unknown cache"),
])
def test_bad_settings(kw, needle):
    with pytest.raises(BadOptionError, match=needle):
        speed.SpeedConfig(**kw)


def test_longer_than_the_model_is_an_error(tiny):
    with pytest.raises(BadOptionError, match="exceeds the model's 512 positions"):
        speed.measure(tiny, None, prompt_len=510, new_tokens=3)


def test_batch_sizes():
    assert batch_sizes(1) == (1,) and batch_sizes(8) == (1, 8)
    with pytest.raises(BadOptionError):
        batch_sizes(0)


@pytest.mark.parametrize("load, cores, threads, expected", [
    (0.1, 8, 8, 8),  # idle: torch's default
    (2.0, 8, 8, 6),  # two cores busy elsewhere
    (7.0, 2, 2, 1),  # oversubscribed: one thread, never zero
])
def test_auto_threads(monkeypatch, load, cores, threads, expected):
    monkeypatch.setattr(bench_run, "_loadavg", lambda: load)
    monkeypatch.setattr(bench_run.os, "cpu_count", lambda: cores)
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    chosen, why = auto_threads("cpu")
    assert chosen == expected and (why is None) == (expected == threads)
    assert auto_threads("cuda") == (threads, None)
