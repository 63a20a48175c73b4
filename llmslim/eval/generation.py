"""How long a model answers: output-token statistics of greedy generation on a prompt set."""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict
from typing import Callable

from llmslim.core.errors import DataError
from llmslim.core.generate import generate


def generation_stats(
    model,
    tokenizer,
    prompts: list[str],
    *,
    max_new_tokens: int = 256,
    batch_size: int = 8,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> dict:
    """Greedy answers (chat template when the tokenizer has one) and their length in tokens.

    `tokens` counts generated tokens up to and including the first EOS (core.generate);
    `finished` is the share that stopped on EOS before `max_new_tokens`. The answers themselves
    are under "outputs" (one dict per prompt)."""
    if not prompts:
        raise DataError("no prompts to generate from")
    t0 = time.perf_counter()
    gens = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed, progress=progress)
    seconds = time.perf_counter() - t0
    lengths = [g.n_tokens for g in gens]
    return {
        "prompts": len(gens),
        "mean_tokens": statistics.fmean(lengths),
        "median_tokens": statistics.median(lengths),
        "min_tokens": min(lengths),
        "max_tokens": max(lengths),
        "finished": sum(g.finished for g in gens) / len(gens),
        "max_new_tokens": max_new_tokens,
        "seconds": seconds,
        "tokens_per_s": sum(lengths) / seconds if seconds > 0 else None,
        "outputs": [asdict(g) for g in gens],
    }
