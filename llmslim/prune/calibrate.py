"""One calibration pass that collects everything every pruning score needs.

Per FFN weight and window, two signed first-order scores:
  SNIP   S = θ ⊙ ∂L/∂θ, L the next-token cross-entropy of the window;
  ReFer  S = θ ⊙ ∂F/∂θ, F = Σ over the FFN projections of the mean singular value of their
         output feature matrix (the AFR reference code hooks gate/up/down outputs).
Two ways to accumulate them over windows (both can run in one pass):
  per-window  (`per_window`, prune/accumulate.py): each window's scores are aggregated per
              neuron at once and the per-neuron results summed over windows, as the AFR
              reference code does; only per-neuron sums persist;
  signed-sum  (`per_weight`): the signed per-weight scores are summed over windows and
              aggregated once afterwards (the batch gradient, as LLM-Pruner scores).
Per FFN neuron, activation statistics of the intermediate activation (the input of down_proj
or fc2): mean and mean square, for Wanda-sp and FLAP.

Memory: only FFN weights require grad (no gradient buffers for embeddings, attention or
lm_head), and a post-accumulate-grad hook folds each weight's gradient into its score and
frees it at once, so backward holds about one layer's gradients, not the model's.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial

import torch

from llmslim.core import distributed
from llmslim.core.arch import text_config
from llmslim.core.errors import BadOptionError
from llmslim.core.params import trainable_only
from llmslim.prune.units import layer_units

FEATURE_MODES = ("flat", "tokens")
# "next-token": the window's mean next-token cross-entropy (what SNIP's L means);
# "reference": the AFR-St code's loss - its targets are the inputs, unshifted, with every
# position but the last ignored (SparseGPT's data loader), so L is the cross-entropy of the
# last position's logits against the last input token itself
SNIP_LOSSES = ("next-token", "reference")


@dataclass
class CalibStats:
    """Everything scores need, per layer; `snip`/`refer` hold per-weight scores grouped by
    neuron: row j = [gate row j, up row j, down column j] (fc1 row j, fc2 column j for OPT)."""

    snip: list[torch.Tensor]  # signed sums over windows, per weight (empty unless asked for)
    refer: list[torch.Tensor]
    act_mean: list[torch.Tensor]
    act_sq: list[torch.Tensor]
    tokens: int
    windows: int
    meta: dict = field(default_factory=dict)
    neuron: dict = field(default_factory=dict)  # "kind:aggregation" -> per-layer per-window sums
    # E[x x^T] of each output projection's input over the calibration tokens (only with
    # --reconstruct, which refits the output projection on the kept channels: prune/apply.reconstruct)
    act_gram: list[torch.Tensor] = field(default_factory=list)
    cache: dict = field(default_factory=dict, repr=False)  # derived scores, never saved

    def act_var(self, layer: int) -> torch.Tensor:
        n = self.tokens
        var = (self.act_sq[layer] - self.act_mean[layer] ** 2) * (n / max(n - 1, 1))
        return var.clamp_min(0)

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("snip", "refer", "act_mean", "act_sq", "tokens", "windows", "meta", "neuron", "act_gram")}


def _wide_singular_values(rows: torch.Tensor) -> torch.Tensor:
    """Singular values of a matrix with few, very long rows: the square roots of the eigenvalues
    of its rows' Gram matrix, in float64. The SVD route fails both ways at this shape: cuSOLVER
    refused the 1 x 14.7M matrix of Llama-3-8B's gate projection over 1,024 tokens on an H100
    (CUSOLVER_STATUS_INVALID_VALUE, 2026-11-27), and float32 svdvals on a CPU is 1.2% off there
    (0.02% at SmolLM2's 1 x 786k). tests/prune/test_calibrate.py holds it to float64 svdvals."""
    rows = rows.double()
    if rows.shape[0] > rows.shape[1]:  # the Gram matrix of the shorter side: min(m, n) values, as svdvals
        rows = rows.T
    squares = torch.linalg.eigvalsh(rows @ rows.T)
    # a zero singular value (an all-zero output) would make sqrt's gradient inf x 0 = NaN: it gets
    # none, as the SVD's subgradient leaves it; the inner where keeps sqrt away from zero
    positive = squares > 0
    return torch.where(positive, squares.where(positive, 1.0).sqrt(), 0.0)


def _mean_singular_value(y: torch.Tensor, mode: str) -> torch.Tensor:
    y = y.float()
    if mode == "flat":
        # the reference code: rows = batch items, all tokens x features flattened per row
        return _wide_singular_values(y.reshape(y.shape[0], -1)).mean().float()
    # "tokens": each window's tokens x features matrix, mean singular value, summed over windows
    return torch.stack([torch.linalg.svdvals(m).mean() for m in y.reshape(-1, y.shape[-2], y.shape[-1])]).sum()


def collect(
    model,
    windows: torch.Tensor,
    *,
    refer: bool = True,
    snip: bool = True,
    feature_mode: str = "flat",
    target: str = "ffn",
    batch_size: int = 1,
    progress=None,
    per_window=None,
    per_weight: tuple[str, ...] = ("snip", "refer"),
    snip_loss: str = "next-token",
) -> CalibStats:
    """Run forward (+ backward for SNIP / ReFer) over the calibration windows [n, seqlen].

    `target` "ffn" scores FFN neurons, "attn" kv groups (see prune/units.py); only the target's
    weights get gradients, and ReFer's features are the target's projection outputs.
    `per_window` (an accumulate.PerWindow, or a list of them: e.g. one per grouping) folds
    each batch's grouped scores into per-neuron sums; `per_weight` names the scores whose signed per-weight sums over windows are kept.
    --reconstruct's Gram matrices come from their own pass (collect_gram)."""
    config = text_config(model.config)
    units = layer_units(model, target)
    folders = [] if per_window is None else per_window if isinstance(per_window, list) else [per_window]
    for folder in folders:
        if folder.part_sizes is None:
            folder.part_sizes = units[0].part_sizes(config.hidden_size)
    need_grad = refer or snip
    kept = [name for name in ("snip", "refer") if name in per_weight and need_grad and (snip if name == "snip" else refer)]
    device = next(model.parameters()).device
    run = _Pass(units, device, kept, folders)
    weights = [lin.weight for lin in run.linears.values()] if need_grad else []
    # several processes (torchrun): each takes every world-th window and the sums are added up
    # at the end, so the result is the one-process result on the same windows (to float order)
    if windows.shape[0] < distributed.world():
        raise BadOptionError(f"{windows.shape[0]} calibration windows for {distributed.world()} processes: "
                             f"use --nsamples >= {distributed.world()}")
    mine = distributed.shard(windows)

    t0 = time.perf_counter()
    if distributed.rank() > 0 and any(f.gmm_refit == "once" for f in folders):
        # --gmm-refit once fits on the first window, which is rank 0's: the others fit on it too
        # (the same fit from the same scores) and keep nothing else from it
        fit = _Pass(units, device, [], folders)
        fit.fit_only = True
        with trainable_only(model, weights), fit.hooks(need_grad, refer, feature_mode):
            fit.batch(model, windows[:1].to(device), refer=refer, snip=snip, snip_loss=snip_loss)
    shown = 0  # the global count: rank 0 (which shows it) holds the largest share, scaled to all
    with trainable_only(model, weights), run.hooks(need_grad, refer, feature_mode):
        for start in range(0, mine.shape[0], batch_size):
            ids = mine[start : start + batch_size].to(device)
            run.batch(model, ids, refer=refer, snip=snip, snip_loss=snip_loss)
            if progress:
                now = (start + ids.shape[0]) * windows.shape[0] // mine.shape[0]
                progress(now - shown)
                shown = now
    elapsed = time.perf_counter() - t0
    if distributed.world() > 1:
        _sum_over_processes(run, folders)

    n = run.tokens
    group = lambda name: [u.group(run.acc[name]).cpu() for u in units] if name in run.acc else []  # noqa: E731
    return CalibStats(
        snip=group("snip"),
        refer=group("refer"),
        act_mean=[(s / n).float().cpu() for s in run.act_sum],
        act_sq=[(s / n).float().cpu() for s in run.act_sq],
        tokens=n,
        windows=windows.shape[0],
        meta={
            "feature_mode": feature_mode, "snip_loss": snip_loss, "seqlen": windows.shape[1], "collect_s": elapsed,
            "target": target, "hidden": config.hidden_size,
            "part_sizes": units[0].part_sizes(config.hidden_size),
            "channels_per_unit": units[0].channels_per_unit,
            "accumulate": [name for name, on in (("per-window", bool(folders)), ("signed-sum", bool(run.acc))) if on],
            **({"per_window": folders[0].settings()} if folders else {}),
        },
        neuron={k: [t.cpu() for t in v] for f in folders for k, v in f.sums.items()},
    )


def collect_gram(model, windows: torch.Tensor, *, target: str = "ffn", layers_per_pass: int | None = None,
                 progress=None) -> list[torch.Tensor]:
    """E[x x^T] of each layer's output-projection input over the windows (--reconstruct), in
    forward passes of their own, without gradients: `layers_per_pass` layers' float64 sums at a
    time (width^2 x 8 bytes each: 1.6 GB for a Llama-3-8B FFN layer, so all 32 with the scoring
    pass's per-weight scores would need 125 GB; core/plan.gram_parts sizes the chunks). A pass
    ends after its last layer: the layers above it are not run. `progress(n)` counts windows,
    `gram_passes(...)` x the windows in all. -> float32 on the CPU (half the
    bytes in the cache; the solve is in float64 and damped, far above the 1e-7 rounding)."""
    units = layer_units(model, target)
    per_pass = layers_per_pass or len(units)
    mine = distributed.shard(windows)
    device = next(model.parameters()).device
    grams: list[torch.Tensor] = []
    for first in range(0, len(units), per_pass):  # gram_passes(len(units), per_pass) passes
        chunk = units[first : first + per_pass]
        sums = [torch.zeros(u.output.in_features, u.output.in_features, dtype=torch.float64, device=u.output.weight.device)
                for u in chunk]

        def add(i, module, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
            sums[i].addmm_(x.T, x)
            if i == len(chunk) - 1:
                raise _ChunkDone

        handles = [u.output.register_forward_pre_hook(partial(add, i)) for i, u in enumerate(chunk)]
        try:
            shown = 0  # in windows of all processes, as collect counts them
            with torch.no_grad():
                for done, ids in enumerate(mine, 1):
                    try:
                        model(input_ids=ids[None].to(device), use_cache=False)
                    except _ChunkDone:
                        pass
                    if progress:
                        now = done * windows.shape[0] // mine.shape[0]
                        progress(now - shown)
                        shown = now
        finally:
            for h in handles:
                h.remove()
        for g in sums:
            distributed.sum_(g)
        grams += [(g / windows.numel()).float().cpu() for g in sums]
        sums.clear()  # freed before the next pass's
    return grams


def gram_passes(layers: int, layers_per_pass: int | None) -> int:
    return -(-layers // (layers_per_pass or layers))


class _ChunkDone(Exception):
    """Raised by collect_gram's hook on a pass's last layer to skip the layers above it."""


def _sum_over_processes(run: "_Pass", folders: list) -> None:
    for per_weight in run.acc.values():
        for t in per_weight.values():
            distributed.sum_(t)
    for t in run.act_sum + run.act_sq:
        distributed.sum_(t)
    run.tokens = distributed.sum_int(run.tokens)
    for folder in folders:
        for per_layer in folder.sums.values():
            for t in per_layer:
                distributed.sum_(t)
        folder.windows = distributed.sum_int(folder.windows)


class _Grouped(Sequence):
    """A window's per-weight scores of one kind as per-layer [units, values] tensors, grouped on
    access: the folders walk the layers, so one layer's grouped copy (and its z-scored and
    clipped copies) is alive at a time instead of several copies of every FFN weight's score
    (7 for AFR before: 22 GB for Llama-3.2-1B's window, 5 copies more than the scores)."""

    def __init__(self, units, per_linear: dict):
        self.units, self.per_linear = units, per_linear

    def __len__(self) -> int:
        return len(self.units)

    def __getitem__(self, layer):
        if isinstance(layer, slice):
            return [self[i] for i in range(*layer.indices(len(self)))]
        return self.units[layer].group(self.per_linear)


class _Pass:
    """The state of one calibration pass: per-weight score sums (`acc`, for the signed-sum
    order), this batch's per-weight scores (`window`, folded per window), activation sums."""

    def __init__(self, units, device, kept: list[str], folders: list):
        self.units, self.device, self.folders = units, device, folders
        self.linears = {id(lin): lin for u in units for lin in u.linears()}
        self.acc = {name: {k: torch.zeros_like(lin.weight, dtype=torch.float32) for k, lin in self.linears.items()}
                    for name in kept}
        self.window = {"snip": {}, "refer": {}}
        # activation statistics per input channel of the output projection (FFN: one per neuron)
        # beside their layer: under --device-map auto the layers sit on several GPUs
        self.act_sum = [torch.zeros(u.output.in_features, dtype=torch.float64, device=u.output.weight.device) for u in units]
        self.act_sq = [torch.zeros(u.output.in_features, dtype=torch.float64, device=u.output.weight.device) for u in units]
        self.target = None  # which score the backward in flight computes: "snip", "refer" or None
        self.features: list[torch.Tensor] = []
        self.tokens = 0
        self.fit_only = False  # fold windows into the folders' GMM fits only (--gmm-refit once)

    @contextmanager
    def hooks(self, need_grad: bool, refer: bool, feature_mode: str):
        """Gradient hooks that turn each weight's gradient into its score (theta * grad) as soon
        as it is accumulated, activation statistics, ReFer's features; removed on exit."""
        handles = []
        try:
            if need_grad:
                for key, lin in self.linears.items():
                    handles.append(lin.weight.register_post_accumulate_grad_hook(partial(self._fold, key)))
            for i, unit in enumerate(self.units):
                handles.append(unit.output.register_forward_pre_hook(partial(self._activations, i)))
                if refer:
                    for lin in unit.linears():
                        handles.append(lin.register_forward_hook(
                            lambda m, a, out: self.features.append(_mean_singular_value(out, feature_mode))))
            yield
        finally:
            for h in handles:
                h.remove()

    def _fold(self, key, p) -> None:
        if self.target is not None:
            score = (p.detach() * p.grad).float()
            if self.target in self.acc:
                self.acc[self.target][key].add_(score)
            if self.folders:
                self.window[self.target][key] = score
        p.grad = None

    def _activations(self, i, module, args) -> None:
        x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
        self.act_sum[i].add_(x.sum(0))
        self.act_sq[i].add_((x * x).sum(0))

    def batch(self, model, ids: torch.Tensor, *, refer: bool, snip: bool, snip_loss: str) -> None:
        """Forward, then ReFer's and SNIP's backward passes; fold the batch's scores per window."""
        self.features = []
        with torch.set_grad_enabled(refer or snip):
            out = model(input_ids=ids, labels=ids if snip and snip_loss == "next-token" else None, use_cache=False)
            if snip and snip_loss == "reference":
                out.loss = torch.nn.functional.cross_entropy(out.logits[:, -1].float(), ids[:, -1])
            if refer:
                self.target = "refer"
                # each layer's feature on its own device (--device-map auto): summed on one
                torch.stack([f.to(self.device) for f in self.features]).sum().backward(retain_graph=snip)
            if snip:
                self.target = "snip"
                out.loss.backward()
        self.target, self.features = None, []
        if self.folders and (refer or snip):
            grouped = {name: _Grouped(self.units, w) for name, w in self.window.items() if w}
            for folder in self.folders:
                folder.fold(grouped, fit_only=self.fit_only)
            self.window = {"snip": {}, "refer": {}}
        self.tokens += ids.numel()
