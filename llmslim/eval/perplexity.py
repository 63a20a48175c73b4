"""Perplexity of a causal LM on a text corpus, as pruning papers report it.

Default protocol (Wanda `lib/eval.py` eval_ppl_wikitext, SparseGPT `datautils.py` + `opt.py`):
tokenize the whole corpus once, cut it into `N // seqlen` non-overlapping windows of `seqlen`
tokens (the remainder is dropped), score every token of a window but its first, and report
exp(mean NLL). With `stride` < seqlen, the sliding-window protocol of the transformers guide
"Perplexity of fixed-length models": windows of `seqlen` start every `stride` tokens and each
scores only the tokens the previous window did not, so every token but the first is scored once
with up to `seqlen - stride` tokens of extra context.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

from llmslim.core.errors import BadOptionError, DataError

DEFAULT_SEQLEN = 2048  # Wanda, SparseGPT, FLAP (LLaMA's 2048 context)
LOGITS_BUDGET = 2 * 2**30  # bytes of float32 logits one forward may produce (gemma3: 262k vocab)


def max_positions(model) -> int | None:
    from llmslim.core.arch import text_config

    config = text_config(model.config)
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def windows(n_tokens: int, seqlen: int, stride: int | None = None) -> list[tuple[int, int, int]]:
    """(begin, end, scored) per window; `scored` tokens at the window's end are counted."""
    if stride is None:
        return [(i * seqlen, (i + 1) * seqlen, seqlen - 1) for i in range(n_tokens // seqlen)]
    out, prev_end = [], 0
    for begin in range(0, n_tokens, stride):
        end = min(begin + seqlen, n_tokens)
        scored = min(end - prev_end, end - begin - 1)  # the first token of the corpus has no context
        if scored > 0:
            out.append((begin, end, scored))
        prev_end = end
        if end == n_tokens:
            break
    return out


@torch.no_grad()
def perplexity(
    model,
    tokenizer,
    text: str,
    seqlen: int = DEFAULT_SEQLEN,
    *,
    stride: int | None = None,
    batch_size: int = 1,
    max_chunks: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """exp(mean NLL) of `text` in windows of `seqlen` tokens (see the module docstring).

    At most `batch_size` windows go through one forward, fewer where their float32 logits would
    pass LOGITS_BUDGET (one 2048-token window of a 262k-vocabulary model is 2 GiB).
    `max_chunks` keeps the first windows only; `progress(done, total)` is called with window
    counts before the first batch and after each one.
    Returns perplexity, mean NLL, tokens scored, windows, corpus tokens, seqlen and stride.
    """
    if seqlen < 2:
        raise BadOptionError(f"--seqlen must be >= 2 (got {seqlen})")
    if stride is not None and not 1 <= stride <= seqlen:
        raise BadOptionError(f"--stride must be between 1 and --seqlen ({seqlen}) (got {stride})")
    if batch_size < 1:
        raise BadOptionError(f"--batch-size must be >= 1 (got {batch_size})")
    if max_chunks is not None and max_chunks < 1:
        raise BadOptionError(f"--ppl-limit must be >= 1 (got {max_chunks})")
    # As Wanda does: the tokenizer's own special tokens (a BOS for Llama) at the corpus start.
    ids = tokenizer(text, return_tensors="pt", verbose=False).input_ids[0]
    spans = windows(ids.numel(), seqlen, stride)
    if not spans:
        raise DataError(f"the corpus has {ids.numel()} tokens, fewer than one window of {seqlen}; lower --seqlen")
    if max_chunks is not None:
        spans = spans[:max_chunks]

    head = model.get_output_embeddings()
    vocab = head.weight.shape[0] if head is not None else model.config.vocab_size
    batch_size = max(1, min(batch_size, LOGITS_BUDGET // (4 * seqlen * vocab)))
    device = next(model.parameters()).device
    nll, scored = 0.0, 0
    i = 0
    if progress:
        progress(0, len(spans))
    while i < len(spans):
        # consecutive windows of one length go in a batch (only a strided tail is shorter)
        length = spans[i][1] - spans[i][0]
        batch = [spans[i]]
        while len(batch) < batch_size and i + len(batch) < len(spans) and spans[i + len(batch)][1] - spans[i + len(batch)][0] == length:
            batch.append(spans[i + len(batch)])
        inputs = torch.stack([ids[b:e] for b, e, _ in batch]).to(device)
        logits = model(inputs, use_cache=False).logits
        for row, (_, _, n) in enumerate(batch):
            # logits at t predict token t + 1: the last n targets are the scored ones
            pred = logits[row, length - 1 - n : length - 1].float()
            nll += F.cross_entropy(pred, inputs[row, length - n :], reduction="sum").item()
            scored += n
        del logits
        i += len(batch)
        if progress:
            progress(i, len(spans))
    mean = nll / scored
    return {
        "perplexity": math.exp(mean),
        "nll": mean,
        "tokens_scored": scored,
        "windows": len(spans),
        "corpus_tokens": int(ids.numel()),
        "seqlen": seqlen,
        "stride": stride,
    }

