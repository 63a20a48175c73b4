"""Quality with a mask chosen per input: perplexity here, multiple-choice accuracy through
lm-eval's task YAMLs with the sparse model as an lm-eval LM (lm.py).

Both use the split "prompt -> mask -> the rest":
- perplexity: WikiText-2 (second half of the test file) windows of 2*S tokens; the mask is
  chosen at token S-1 (the end of the first half) and the NLL is scored on the second half;
- multiple choice: the mask is chosen at the last context token (lm.py).
For perplexity the oracle's true scores come from a forward + backward with the importance the
predictors were trained on: the loss on the window's second half (continuation) or on its first
half only (prompt); for multiple choice from the context (lm.py: lm-eval does not say which
continuation is the gold one).
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F

from llmslim.core.params import trainable_only
from llmslim.sparsity.collect import trace_batch
from llmslim.sparsity.execute import SparseRunner


def oracle_scores(model, ids: torch.Tensor, criterion: str, decide_at: int, loss_from: int = 1) -> dict:
    """True scores of one example ([T] ids) decided at `decide_at`, the loss on tokens from
    `loss_from` on."""
    with trainable_only(model):
        out = trace_batch(model, ids[None], [decide_at], [criterion], [loss_from])
    return {"heads": out["heads"][criterion][0], "neurons": out["neurons"][criterion][0]}


def _oracle(runner: SparseRunner, model, prompt: torch.Tensor, continuation: torch.Tensor, criterion: str, importance: str):
    """The oracle's scores for a prompt (and, with continuation importance, what follows it)."""
    if runner.cfg.method != "oracle":
        return None
    t0 = time.perf_counter()
    if importance == "continuation":
        scores = oracle_scores(model, torch.cat([prompt, continuation]), criterion, prompt.numel() - 1, prompt.numel())
    else:
        scores = oracle_scores(model, prompt, criterion, prompt.numel() - 1)
    runner.stats["oracle_s"] += time.perf_counter() - t0
    return scores


def ppl_windows(tokenizer, text: str, prompt_len: int, n: int) -> torch.Tensor:
    """The first `n` non-overlapping windows of 2*prompt_len tokens of `text`."""
    from llmslim.core.errors import DataError

    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids[0]
    size = 2 * prompt_len
    count = min(n, ids.numel() // size)
    if count < 1:
        raise DataError(f"the text has {ids.numel()} tokens, fewer than one window of {size}")
    return ids[: count * size].view(count, size)


@torch.no_grad()
def perplexity(model, runner: SparseRunner, windows: torch.Tensor, criterion: str, progress=None,
               importance: str = "continuation") -> dict:
    device = next(model.parameters()).device
    nll, count = 0.0, 0
    s = windows.shape[1] // 2
    for w in windows:
        scores = _oracle(runner, model, w[:s], w[s:], criterion, importance)
        # without the last token: its prediction scores nothing, so it neither runs nor enters the record
        with runner.input(decide_at=s - 1, oracle_scores=scores, per_position=runner.cfg.decide == "token"):
            logits = model(w[None, :-1].to(device), use_cache=False).logits[0]
        nll += F.cross_entropy(logits[s - 1 :].float(), w[s:].to(device), reduction="sum").item()
        count += w.numel() - s
        if progress:
            progress(1)
    return {"perplexity": math.exp(nll / count), "tokens": count, "windows": int(windows.shape[0])}
