"""The sparse model as an lm-eval `LM`: multiple-choice tasks run through the same task YAMLs as
`llmslim eval` (eval/tasks/), with a mask chosen per request context.

lm-eval hands over (context, continuation) pairs; the pairs of one item share the context, so
they are grouped and run as one batch that shares the mask chosen at the context's last token
(their common causal prefix gives every row the same decision), or, with token decisions, one
row at a time. The oracle cannot see which continuation is the gold one here, so its scores are
the context's own (prompt importance).
"""

from __future__ import annotations

import torch
from lm_eval.api.model import LM

from llmslim.sparsity.execute import SparseRunner


class SparseLM(LM):
    def __init__(self, model, tokenizer, runner: SparseRunner, oracle=None, progress=None):
        import logging

        from lm_eval.models.huggingface import HFLM

        super().__init__()
        self.model, self.tokenizer, self.runner, self.oracle, self.progress = model, tokenizer, runner, oracle, progress
        level = logging.getLogger("lm_eval.models.huggingface").level
        logging.getLogger("lm_eval.models.huggingface").setLevel(logging.ERROR)
        try:  # its encoding (BOS where the tokenizer adds one, the space rule, empty contexts) is the one to match
            self._hf = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=1)
        finally:
            logging.getLogger("lm_eval.models.huggingface").setLevel(level)

    def _encode(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """Exactly as lm-eval's LM.loglikelihood encodes a request for HFLM."""
        hf = self._hf
        if context == "":
            cont = hf.tok_encode(continuation, add_special_tokens=False)
            return ([hf.prefix_token_id], cont) if hf.prefix_token_id != cont[0] else (cont[:1], cont[1:])
        return hf._encode_pair(context, continuation)

    @torch.no_grad()
    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        device = next(self.model.parameters()).device
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        encoded = [self._encode(*r.args) for r in requests]
        by_context: dict[tuple, list[int]] = {}
        for i, (ctx, _) in enumerate(encoded):
            by_context.setdefault(tuple(ctx), []).append(i)
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        for ctx, indices in by_context.items():
            conts = [encoded[i][1] for i in indices]
            # as lm-eval feeds them: without the last continuation token (its prediction scores nothing),
            # so every position run is one scored (token decisions) or one the shared mask covers
            lengths = [len(ctx) + max(len(c) - 1, 0) for c in conts]
            batch = torch.full((len(conts), max(lengths)), pad, dtype=torch.long)
            for r, c in enumerate(conts):
                batch[r, : lengths[r]] = torch.tensor((list(ctx) + c)[: lengths[r]])
            scores = self.oracle(torch.tensor(ctx)) if self.runner.cfg.method == "oracle" else None
            if self.runner.cfg.decide == "token":  # each continuation's tokens choose their own masks, no padding
                rows = []
                for r in range(len(conts)):
                    with self.runner.input(decide_at=len(ctx) - 1, oracle_scores=scores, per_position=True):
                        rows.append(self.model(batch[r : r + 1, : lengths[r]].to(device), use_cache=False).logits.float()
                                    .log_softmax(-1)[0])
                logp = rows
            else:  # the record counts the real positions, not the padding
                with self.runner.input(decide_at=len(ctx) - 1, oracle_scores=scores, positions=sum(lengths)):
                    logp = self.model(batch.to(device), use_cache=False).logits.float().log_softmax(-1)
            for r, (i, c) in enumerate(zip(indices, conts)):
                pos = torch.arange(len(ctx) - 1, len(ctx) - 1 + len(c), device=device)
                target = torch.tensor(c, device=device)
                rows_logp = logp[r][pos]
                results[i] = (rows_logp.gather(-1, target[:, None]).sum().item(), bool((rows_logp.argmax(-1) == target).all()))
            if self.progress:
                self.progress(1)
        return results

    def loglikelihood_rolling(self, requests):
        raise NotImplementedError("sparse perplexity runs in sparsity/evaluate.py (a mask per window), not through lm-eval")

    def generate_until(self, requests):
        raise NotImplementedError("generation tasks are not supported with per-input sparse masks; use `sparsity generate`")
