"""Prefill and decode speed of in-memory models: pure functions, no printing.

One *run* is what `generate` does, written out so each phase is timed on its own: a prefill of
`prompt_len` random tokens (logits for the last position only, as `generate` computes them)
that yields the first new token, then `new_tokens - 1` greedy decode steps of one token each.

    prefill tok/s = batch * prompt_len / prefill seconds
    decode tok/s  = batch * (new_tokens - 1) / decode seconds

Every model gets `warmup` untimed runs, one more untimed run that measures peak memory (see
bench/memory.py), then `repeats` timed runs; the median is reported with the min and max.
Several models are measured interleaved (A B, then B A, ...), so drift in the machine's speed
(other jobs, thermals) hits all of them alike.

Overhead cutters: `cache="static"` preallocates the KV cache (fixed shapes), and `compile=True`
(which implies it) runs the decode step through `torch.compile`; the prefill stays eager, as in
transformers' own generate. When compilation fails the run goes on eagerly and says why.
"""

from __future__ import annotations

import inspect
import logging
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
from torch import nn

from llmslim.bench.memory import peak_increase, weights_bytes
from llmslim.core.errors import BadOptionError

log = logging.getLogger(__name__)

CACHES = ("dynamic", "static")


@dataclass
class SpeedConfig:
    batch_size: int = 1
    prompt_len: int = 64  # a short chat prompt; kept small so a CPU run takes minutes, not tens
    new_tokens: int = 16  # first token from the prefill, the other 15 timed as decode
    repeats: int = 3  # timed runs per model; the median is reported
    warmup: int = 1  # untimed runs first (allocator, lazy init); compile adds one
    cache: str = "dynamic"  # "static": preallocated KV cache with fixed shapes
    compile: bool = False  # torch.compile the decode step (implies cache="static")
    seed: int = 0  # the random prompt tokens

    def __post_init__(self):
        if self.compile:
            self.cache = "static"
        check(self)


def check(cfg: SpeedConfig) -> None:
    if cfg.batch_size < 1:
        raise BadOptionError(f"batch size must be at least 1, got {cfg.batch_size}")
    if cfg.prompt_len < 1:
        raise BadOptionError(f"prompt length must be at least 1, got {cfg.prompt_len}")
    if cfg.new_tokens < 2:
        raise BadOptionError(f"new tokens must be at least 2 (the first comes from the prefill), got {cfg.new_tokens}")
    if cfg.repeats < 1:
        raise BadOptionError(f"repeats must be at least 1, got {cfg.repeats}")
    if cfg.warmup < 0:
        raise BadOptionError(f"warmup must be 0 or more, got {cfg.warmup}")
    if cfg.cache not in CACHES:
        raise BadOptionError(f"unknown cache {cfg.cache!r}; choose one of {', '.join(CACHES)}")


def vocab_size(model: nn.Module, tokenizer_or_vocab=None) -> int:
    """Token ids to draw prompts from: an int as given, a tokenizer's length, else the config's."""
    from llmslim.core.arch import text_config

    config_vocab = text_config(model.config).vocab_size
    if tokenizer_or_vocab is None:
        return config_vocab
    if isinstance(tokenizer_or_vocab, int):
        return tokenizer_or_vocab
    return min(len(tokenizer_or_vocab), config_vocab)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def synchronize(device: torch.device, gpus: list[int] | None = None) -> None:
    """Wait for the device. CUDA: every GPU in use (a spread model's last layers run on another),
    `gpus` where the caller listed them once (timers that synchronize in every hook)."""
    if device.type == "cuda":
        for index in gpus if gpus is not None else gpus_to_sync(device):
            torch.cuda.synchronize(index)
    elif device.type == "mps":
        torch.mps.synchronize()


def gpus_to_sync(device: torch.device) -> list[int] | None:
    """The GPUs to synchronize, listed once before a timed span (None off CUDA)."""
    if device.type != "cuda":
        return None
    from llmslim.core.device import cuda_devices_in_use

    return cuda_devices_in_use(device)


@dataclass
class Session:
    """One model prepared for timed runs at one batch size."""

    model: nn.Module
    input_ids: torch.Tensor
    cfg: SpeedConfig
    compiled: bool = False
    compile_s: float | None = None
    note: str | None = None  # why compile was not used, when it was asked for
    static_cache: object = None
    step: Callable | None = None  # (token, cache, position) -> logits, maybe compiled
    keep_kwarg: dict = field(default_factory=dict)


def _eager_step(model):
    def step(token, cache, position):
        return model(input_ids=token, past_key_values=cache, cache_position=position, use_cache=True).logits

    return step


def prepare(model: nn.Module, tokenizer_or_vocab, cfg: SpeedConfig) -> Session:
    """Random prompt tokens (seeded), the KV cache and the decode step for `model`; no runs yet."""
    from transformers import StaticCache

    from llmslim.core.arch import text_config

    check(cfg)
    limit = getattr(text_config(model.config), "max_position_embeddings", None)
    if limit and cfg.prompt_len + cfg.new_tokens > limit:
        raise BadOptionError(f"prompt length + new tokens = {cfg.prompt_len + cfg.new_tokens} exceeds the model's {limit} positions")
    device = _device(model)
    gen = torch.Generator().manual_seed(cfg.seed)
    ids = torch.randint(0, vocab_size(model, tokenizer_or_vocab), (cfg.batch_size, cfg.prompt_len), generator=gen)
    keep = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
    session = Session(model, ids.to(device), cfg, keep_kwarg=keep, step=_eager_step(model))
    if cfg.cache == "static":
        session.static_cache = StaticCache(config=model.config, max_cache_len=cfg.prompt_len + cfg.new_tokens)
    if cfg.compile:
        session.step = torch.compile(_eager_step(model), dynamic=False)
        session.compiled = True
    return session


def _new_cache(session: Session):
    from transformers import DynamicCache

    if session.static_cache is not None:
        session.static_cache.reset()
        return session.static_cache
    return DynamicCache(config=session.model.config)


@torch.no_grad()
def generate_once(session: Session) -> tuple[float, float]:
    """One prefill + decode run; returns (prefill seconds, decode seconds)."""
    model, ids, cfg = session.model, session.input_ids, session.cfg
    device = ids.device
    cache = _new_cache(session)
    prompt_len = ids.shape[1]
    gpus = gpus_to_sync(device)
    synchronize(device, gpus)
    t0 = time.perf_counter()
    logits = model(
        input_ids=ids, past_key_values=cache, use_cache=True,
        cache_position=torch.arange(prompt_len, device=device), **session.keep_kwarg,
    ).logits
    token = logits[:, -1].argmax(-1, keepdim=True)
    synchronize(device, gpus)
    t1 = time.perf_counter()
    for i in range(cfg.new_tokens - 1):
        position = torch.tensor([prompt_len + i], device=device)
        logits = session.step(token, cache, position)
        token = logits[:, -1].argmax(-1, keepdim=True)
    synchronize(device, gpus)
    return t1 - t0, time.perf_counter() - t1


def warm(session: Session) -> None:
    """The untimed runs: a compile run first when compiling (a failing torch.compile falls back
    to eager, static cache kept), then `warmup` runs."""
    if session.compiled:
        t0 = time.perf_counter()
        try:
            generate_once(session)
        except Exception as err:  # noqa: BLE001 - dynamo/inductor raise many types; we fall back and say so
            import torch._dynamo

            torch._dynamo.reset()
            first = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
            session.note = f"torch.compile failed ({type(err).__name__}: {first}); ran eager"
            log.warning(session.note)
            session.compiled = False
            session.step = _eager_step(session.model)
        else:
            session.compile_s = time.perf_counter() - t0
    for _ in range(session.cfg.warmup):
        generate_once(session)


def _cache_bytes(cache) -> int:
    total = 0
    for layer in getattr(cache, "layers", []) or []:
        for name in ("keys", "values"):
            t = getattr(layer, name, None)
            if isinstance(t, torch.Tensor):
                total += t.numel() * t.element_size()
    return total


def memory_run(session: Session) -> dict:
    """One extra untimed run that measures peak memory (see bench/memory.py for the method)."""
    increase, method = peak_increase(lambda: generate_once(session), session.input_ids.device)
    weights = weights_bytes(session.model)
    if increase is not None and session.static_cache is not None:
        increase += _cache_bytes(session.static_cache)  # allocated before the baseline was taken
    return {
        "weights_bytes": weights,
        "run_increase_bytes": increase,
        "peak_bytes": None if increase is None else weights + increase,
        "method": method,
    }


def _stats(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarize(session: Session, prefill_s: list[float], decode_s: list[float], memory: dict | None = None) -> dict:
    cfg = session.cfg
    prefill_tokens = cfg.batch_size * cfg.prompt_len
    decode_tokens = cfg.batch_size * (cfg.new_tokens - 1)
    prefill = _stats(prefill_s)
    decode = _stats(decode_s)
    return {
        "batch_size": cfg.batch_size,
        "prompt_len": cfg.prompt_len,
        "new_tokens": cfg.new_tokens,
        "repeats": len(prefill_s),
        "prefill_tok_s": prefill_tokens / prefill["median"],
        "decode_tok_s": decode_tokens / decode["median"],
        "prefill_tok_s_range": [prefill_tokens / prefill["max"], prefill_tokens / prefill["min"]],
        "decode_tok_s_range": [decode_tokens / decode["max"], decode_tokens / decode["min"]],
        "ttft_s": prefill["median"],
        "decode_ms_per_step": 1000 * decode["median"] / (cfg.new_tokens - 1),
        "prefill_s": prefill_s,
        "decode_s": decode_s,
        "cache": cfg.cache,
        "compiled": session.compiled,
        "compile_s": session.compile_s,
        "note": session.note,
        "memory": memory,
    }


def measure_many(
    models: list[tuple[nn.Module, object]],
    cfg: SpeedConfig,
    *,
    memory: bool = True,
    progress: Callable[[str], None] | None = None,
) -> list[dict]:
    """Measure several (model, tokenizer_or_vocab) pairs interleaved: warm all, then repeat
    A B, B A, ... so slow stretches of the machine fall on every model. One dict per model."""
    tick = progress or (lambda what: None)
    sessions = [prepare(model, vocab, cfg) for model, vocab in models]
    for n, session in enumerate(sessions):
        warm(session)
        tick(f"warm-up {n + 1}/{len(sessions)}")
    # after every model's warm-up, so one-time costs of the process (thread pools, kernel
    # libraries) land in no model's figure
    mem = []
    for n, session in enumerate(sessions):
        mem.append(memory_run(session) if memory else None)
        if memory:
            tick(f"memory {n + 1}/{len(sessions)}")
    times: list[tuple[list, list]] = [([], []) for _ in sessions]
    for r in range(cfg.repeats):
        order = range(len(sessions)) if r % 2 == 0 else reversed(range(len(sessions)))
        for n in order:
            prefill, decode = generate_once(sessions[n])
            times[n][0].append(prefill)
            times[n][1].append(decode)
            tick(f"repeat {r + 1}/{cfg.repeats}")
    results = [summarize(s, t[0], t[1], m) for s, t, m in zip(sessions, times, mem)]
    for s in sessions:  # free the static caches before the next batch size
        s.static_cache = None
    return results


def measure(
    model: nn.Module,
    tokenizer_or_vocab=None,
    batch_size: int = 1,
    prompt_len: int = 64,
    new_tokens: int = 16,
    repeats: int = 3,
    compile: bool = False,
    *,
    warmup: int = 1,
    cache: str = "dynamic",
    seed: int = 0,
    memory: bool = True,
) -> dict:
    """Prefill and decode speed (median of `repeats`) and peak memory of one in-memory model."""
    cfg = SpeedConfig(batch_size, prompt_len, new_tokens, repeats, warmup, cache, compile, seed)
    return measure_many([(model, tokenizer_or_vocab)], cfg, memory=memory)[0]


def steps(cfg: SpeedConfig, n_models: int, memory: bool = True) -> int:
    """How many progress ticks `measure_many` makes."""
    return n_models * (1 + int(memory) + cfg.repeats)


def config_dict(cfg: SpeedConfig) -> dict:
    return asdict(cfg)
