"""`sparsity bench` and `sparsity generate`: the sparse model used, not only measured.

bench: dense and each sparse variant (a SparseRunner) prefill a prompt (a seeded WikiText-2
window where the shared data is, else random tokens) and decode `new_tokens - 1` greedy steps,
interleaved (A B C, C B A, ...), medians reported with ratios to dense; the predictor's and the
weight gather's share of the time come from the runner's own counters; one more hooked run per
variant splits a decode step into attention, FFN, lm_head and the rest (bench/split.py's timer).
"""

from __future__ import annotations

import statistics
import time

import torch

from llmslim.bench.speed import gpus_to_sync, synchronize


@torch.no_grad()
def run_once(model, runner, ids: torch.Tensor, new_tokens: int) -> dict:
    """One prefill + greedy decode with `runner`'s masks (None: dense). The mask is chosen
    inside the prefill (predictor and gather included in its time); decode steps reuse it, or
    (token decisions) choose and gather their own."""
    from contextlib import nullcontext

    from transformers import DynamicCache

    device = ids.device
    before = (runner.stats["predict_s"], runner.gather.seconds) if runner else (0.0, 0.0)
    cache = DynamicCache(config=model.config)
    gpus = gpus_to_sync(device)
    synchronize(device, gpus)
    t0 = time.perf_counter()
    with runner.input(decide_at=-1) if runner else nullcontext():
        logits = model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1).logits
        token = logits[:, -1].argmax(-1, keepdim=True)
        synchronize(device, gpus)
        t1 = time.perf_counter()
        out = [token]
        for _ in range(new_tokens - 1):
            token = model(input_ids=token, past_key_values=cache, use_cache=True).logits[:, -1].argmax(-1, keepdim=True)
            out.append(token)
        synchronize(device, gpus)
        t2 = time.perf_counter()
    predict = runner.stats["predict_s"] - before[0] if runner else 0.0
    gather = runner.gather.seconds - before[1] if runner else 0.0
    return {"prefill_s": t1 - t0, "decode_s": t2 - t1, "predict_s": predict, "gather_s": gather,
            "tokens": torch.cat(out, 1)}


def decode_split(model, runner, ids: torch.Tensor, new_tokens: int) -> dict:
    """ms per decode step in attention, FFN, lm_head and the rest (one hooked run)."""
    from llmslim.bench.split import timed_parts

    with timed_parts(model, ids.device) as split:
        run_once(model, runner, ids, new_tokens)
    return split()["decode"]["ms_per_call"]


def time_variants(model, variants: dict, ids: torch.Tensor, new_tokens: int, repeats: int, progress=None) -> dict:
    """Median prefill/decode seconds per variant (interleaved runs after one warm-up each),
    tokens/s, speed-ups against "dense", the predictor's and the gather's shares, the split."""
    names = list(variants)
    for name in names:
        run_once(model, variants[name], ids, new_tokens)
    runs = {name: [] for name in names}
    for rep in range(repeats):
        for name in names if rep % 2 == 0 else names[::-1]:
            runs[name].append(run_once(model, variants[name], ids, new_tokens))
            if progress:
                progress(1)
    out = {}
    for name, rs in runs.items():
        med = {k: statistics.median(r[k] for r in rs) for k in ("prefill_s", "decode_s", "predict_s", "gather_s")}
        total = med["prefill_s"] + med["decode_s"]
        out[name] = med | {"prefill_tok_s": ids.shape[0] * ids.shape[1] / med["prefill_s"],
                           "decode_tok_s": ids.shape[0] * (new_tokens - 1) / med["decode_s"],
                           "predict_share": med["predict_s"] / total, "gather_share": med["gather_s"] / total,
                           "decode_split_ms": decode_split(model, variants[name], ids, new_tokens)}
    dense = out.get("dense")
    if dense:
        for name, v in out.items():
            v["prefill_speedup"] = dense["prefill_s"] / v["prefill_s"]
            v["decode_speedup"] = dense["decode_s"] / v["decode_s"]
    return out
