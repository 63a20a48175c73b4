"""Traces for training and judging predictors: per example, the features a predictor sees and
the true per-layer scores of every head and FFN neuron.

An *example* is a token sequence with a decision position `decide_at` (the last token of a
window, or the last context token of a multiple-choice prompt): the mask for the example is
chosen from the hidden states there.

- `features`      [N, hidden]    layer 0's attention output (after o_proj) at decide_at: the
                                 ShadowLLM predictor's input (`--feature post`)
- `features_pre`  [N, H*hd]      layer 0's attention context before o_proj (the concatenated
                                 heads) at decide_at: the reference code's input (`--feature pre`)
- `layer_inputs`  [N, L, hidden] each decoder layer's input (residual stream) at decide_at: the
                                 DejaVu-style per-layer predictors' inputs (stored as float16)
- `heads[c]`      [N, L, H]      criterion c of every query head (see criteria.py)
- `neurons[c]`    [N, L, F]      criterion c of every FFN neuron

One forward (+ one backward to the activations when a criterion needs the gradient; no weight
gradients are formed) per batch of equal-length examples. The loss of an example is its mean
next-token cross-entropy over the tokens from `loss_from` on, summed over the batch, so each
example's gradients are its own. IMPORTANCE picks those tokens: `continuation` (the default, as
ShadowLLM's code scores a unit by the loss on the answer) scores the tokens after the decision
point (a task's gold answer, a text window's second half); `prompt` scores the prompt itself
(the decision at its last token).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from llmslim.core import distributed
from llmslim.core.arch import adapter_for, model_fingerprint, text_config
from llmslim.core.data import read_torch_file
from llmslim.core.errors import DataError
from llmslim.core.params import trainable_only
from llmslim.sparsity import criteria as C

TRACE_FILE = "traces.pt"


IMPORTANCE = ("continuation", "prompt")


@dataclass
class Example:
    ids: torch.Tensor  # [T] token ids
    decide_at: int  # position whose hidden states choose the mask
    source: str = ""
    loss_from: int = 1  # the first token the loss scores (1: every next-token prediction)


@dataclass
class Traces:
    features: torch.Tensor
    layer_inputs: torch.Tensor
    heads: dict[str, torch.Tensor]
    neurons: dict[str, torch.Tensor]
    meta: dict = field(default_factory=dict)
    features_pre: torch.Tensor | None = None

    def feature(self, where: str) -> torch.Tensor:
        """The predictor input: layer 0's attention output ("post" o_proj) or context ("pre")."""
        if where == "pre":
            if self.features_pre is None:
                raise DataError("these traces hold no pre-o_proj features (collected by an older llmslim); collect again")
            return self.features_pre
        return self.features

    def __len__(self) -> int:
        return self.features.shape[0]

    def scores(self, kind: str, criterion: str) -> torch.Tensor:
        table = self.heads if kind == "heads" else self.neurons
        if criterion not in table:
            raise DataError(f"the traces hold no {criterion!r} scores (they have: {', '.join(table)}); re-run collect with --criteria")
        return table[criterion]

    def save(self, folder: Path) -> Path:
        path = Path(folder) / TRACE_FILE
        torch.save({"features": self.features, "features_pre": self.features_pre, "layer_inputs": self.layer_inputs,
                    "heads": self.heads, "neurons": self.neurons, "meta": self.meta}, path)
        return path

    @classmethod
    def load(cls, folder: Path | str) -> "Traces":
        folder = Path(folder)
        path = folder / TRACE_FILE if folder.is_dir() else folder
        d = read_torch_file(path, missing=f"no traces at {path} (run `llmslim sparsity collect ... --out DIR` first)",
                            unreadable=f"{path}: not a traces file")
        if not isinstance(d, dict) or "features" not in d:
            raise DataError(f"{path}: not a traces file")
        return cls(d["features"], d["layer_inputs"], d["heads"], d["neurons"], d.get("meta", {}), d.get("features_pre"))


def shape(model) -> dict:
    """Layers, heads, kv heads, head_dim, FFN width and hidden size, via the arch adapter."""
    adapter = adapter_for(model)
    config = text_config(model.config)
    layers = adapter.decoder_layers(model)
    attn = adapter.attention(layers[0], config)
    ffn = adapter.ffn(layers[0], config)
    return {"layers": len(layers), "heads": attn.n_heads, "kv_heads": attn.n_kv_heads, "head_dim": attn.head_dim,
            "ffn": ffn.width, "hidden": config.hidden_size, "family": adapter.family}


def _hidden_arg(args, kwargs):
    return args[0] if args else kwargs["hidden_states"]


def trace_batch(model, ids: torch.Tensor, decide_at: list[int], crits: list[str], loss_from: list[int] | None = None) -> dict:
    """Scores and features of one batch of equal-length examples ([B, T] ids); example b's loss
    scores its tokens from loss_from[b] on (default: all)."""
    adapter = adapter_for(model)
    config = text_config(model.config)
    layers = adapter.decoder_layers(model)
    attns = [adapter.attention(layer, config) for layer in layers]
    ffns = [adapter.ffn(layer, config) for layer in layers]
    need_grad = any(C.NEEDS_GRAD[c] for c in crits)
    device = next(model.parameters()).device
    rows = torch.arange(ids.shape[0], device=device)
    at = torch.tensor(decide_at, device=device)
    heads_in: list[torch.Tensor] = [None] * len(layers)
    ffn_in: list[torch.Tensor] = [None] * len(layers)
    layer_in: list[torch.Tensor] = [None] * len(layers)
    feature: list[torch.Tensor] = []

    def keep(store, i):
        def hook(module, args):
            x = args[0]
            if need_grad and x.requires_grad:
                x.retain_grad()
            store[i] = x
        return hook

    handles = []
    try:
        for i, (attn, ffn, layer) in enumerate(zip(attns, ffns, layers)):
            handles.append(attn.o.register_forward_pre_hook(keep(heads_in, i)))
            handles.append(ffn.output.register_forward_pre_hook(keep(ffn_in, i)))
            handles.append(layer.register_forward_pre_hook(
                lambda m, a, k, i=i: layer_in.__setitem__(i, _at(_hidden_arg(a, k), rows, at).detach().float().cpu()), with_kwargs=True))
        handles.append(attns[0].o.register_forward_hook(lambda m, a, out: feature.append(_at(out, rows, at).detach().float().cpu())))
        ids = ids.to(device)
        with torch.set_grad_enabled(need_grad):
            embeds = model.get_input_embeddings()(ids).detach()
            if need_grad:
                embeds.requires_grad_(True)
            logits = model(inputs_embeds=embeds, use_cache=False).logits
            if need_grad:
                ids = ids.to(logits.device)  # the last layer's device under --device-map auto
                nll = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten(), reduction="none")
                targets = torch.arange(1, ids.shape[1], device=ids.device)[None]  # target j is predicted at j - 1
                first = torch.tensor(loss_from or [1] * ids.shape[0], device=ids.device)[:, None]
                scored = (targets >= first).float()
                loss = ((nll.view(ids.shape[0], -1) * scored).sum(1) / scored.sum(1)).sum()
                loss.backward()
    finally:
        for h in handles:
            h.remove()
    L, H, hd = len(layers), attns[0].n_heads, attns[0].head_dim
    B, T = ids.shape
    out = {"features": feature[0], "features_pre": _at(heads_in[0].detach(), rows, at).float().cpu(),
           "layer_inputs": torch.stack(layer_in, 1),
           "heads": {c: torch.zeros(B, L, H) for c in crits}, "neurons": {c: torch.zeros(B, L, ffns[0].width) for c in crits}}
    for i in range(L):
        a_h = heads_in[i].detach().view(B, T, H, hd)
        g_h = heads_in[i].grad.view(B, T, H, hd) if need_grad and heads_in[i].grad is not None else None
        a_n = ffn_in[i].detach().view(B, T, -1, 1)
        g_n = ffn_in[i].grad.view(B, T, -1, 1) if need_grad and ffn_in[i].grad is not None else None
        for b in range(B):
            for c in crits:
                gh = g_h[b] if g_h is not None else (torch.zeros_like(a_h[b]) if C.NEEDS_GRAD[c] else None)
                gn = g_n[b] if g_n is not None else (torch.zeros_like(a_n[b]) if C.NEEDS_GRAD[c] else None)
                out["heads"][c][b, i] = C.score(c, a_h[b], gh).cpu()
                out["neurons"][c][b, i] = C.score(c, a_n[b], gn).cpu()
    return out


def _at(x: torch.Tensor, rows: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
    """x[rows, at], the indices moved to x's device (layers spread over GPUs by --device-map auto;
    a forward pre-hook sees the layer's input before accelerate moves it)."""
    return x[rows.to(x.device), at.to(x.device)]


def collect(model, examples: list[Example], criteria: list[str], *, batch_size: int = 8, progress=None) -> Traces:
    """Traces of `examples` (equal-length neighbours share a batch). Under torchrun process r
    traces examples r, r + N, ...; rank 0 gathers the rows back into the examples' order and
    returns all of them (each other process returns its own)."""
    if not examples:
        raise DataError("no examples to trace")
    crits = C.parse(criteria)
    if len(examples) < distributed.world():
        raise DataError(f"{len(examples)} examples for {distributed.world()} processes: each needs one at least")
    mine = distributed.shard(list(range(len(examples))))
    parts = []
    t0 = time.perf_counter()
    with trainable_only(model):  # gradients flow to the activations only
        i = 0
        while i < len(mine):
            n = 1
            while n < batch_size and i + n < len(mine) and examples[mine[i + n]].ids.numel() == examples[mine[i]].ids.numel():
                n += 1
            chunk = [examples[j] for j in mine[i : i + n]]
            parts.append(trace_batch(model, torch.stack([e.ids for e in chunk]), [e.decide_at for e in chunk], crits,
                                     [e.loss_from for e in chunk]))
            i += n
            if progress:
                progress(n * distributed.world())  # the bar counts every process's examples
    rows = _cat(parts)
    rows["layer_inputs"] = rows["layer_inputs"].half()
    gathered = distributed.gather_to_main((mine, rows))
    if gathered is not None and len(gathered) > 1:  # rank 0 of several: every process's rows, in example order
        order = torch.tensor([j for indices, _ in gathered for j in indices]).argsort()
        rows = _take(_cat([r for _, r in gathered]), order)
    return Traces(
        **rows,
        meta={**shape(model), "fingerprint": model_fingerprint(model), "criteria": crits, "n": len(examples),
              "importance": importance_of(examples),
              "collect_s": time.perf_counter() - t0, "processes": distributed.world(),
              "sources": sorted({e.source for e in examples}), "tokens": sum(e.ids.numel() for e in examples)},
    )


def importance_of(examples: list[Example]) -> str:
    """The loss the examples' scores measure, read from the examples themselves (recorded with the
    traces, so the oracle at eval time scores the same loss as the predictors learned): 'continuation'
    where every loss starts right after the decision, 'prompt' where it covers every token."""
    if all(e.loss_from == e.decide_at + 1 for e in examples):
        return "continuation"
    if all(e.loss_from == 1 for e in examples):
        return "prompt"
    return "mixed"


def _cat(parts: list[dict]) -> dict:
    """Batches' rows ({name: tensor or {criterion: tensor}}) concatenated along the examples."""
    return {k: _cat([p[k] for p in parts]) if isinstance(v, dict) else torch.cat([p[k] for p in parts])
            for k, v in parts[0].items()}


def _take(rows: dict, index: torch.Tensor) -> dict:
    return {k: _take(v, index) if isinstance(v, dict) else v[index] for k, v in rows.items()}


# ---------------------------------------------------------------- example builders
def window_examples(tokenizer, text: str, n: int, seqlen: int, seed: int, importance: str = "continuation") -> list[Example]:
    """`n` WikiText-style windows of `seqlen` tokens at seeded offsets. continuation: decide at
    the end of the first half, the loss on the second; prompt: decide at the last token, the loss
    on the whole window."""
    from llmslim.core.data import calibration_windows

    windows = calibration_windows(tokenizer, text, n, seqlen, seed)
    if importance == "continuation":
        half = seqlen // 2
        return [Example(w, half - 1, "text", loss_from=half) for w in windows]
    return [Example(w, seqlen - 1, "text") for w in windows]


def context_examples(tokenizer, contexts: list[str], source: str, max_len: int = 256,
                     answers: list[str] | None = None) -> list[Example]:
    """One example per prompt context (the tokenizer's special tokens first, as lm-eval encodes),
    decided at its last token; with `answers` (continuation importance) the gold answer follows
    and the loss scores it alone."""
    out = []
    for i, text in enumerate(contexts):
        ids = tokenizer(text, return_tensors="pt").input_ids[0][-max_len:]
        if ids.numel() < 2:
            continue
        if answers is None:
            out.append(Example(ids, ids.numel() - 1, source))
            continue
        answer = tokenizer(answers[i], return_tensors="pt", add_special_tokens=False).input_ids[0]
        out.append(Example(torch.cat([ids, answer]), ids.numel() - 1, source, loss_from=ids.numel()))
    return out
