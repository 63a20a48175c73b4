"""Per-window accumulation: each calibration window's scores become per-neuron importances at
once, and those are summed over windows.

The AFR reference code (RyotaKoba/AFR-St, lib/prune.py, `Structured_AFR` and
`structured_snip`) does this: per window, the per-weight scores θ·∇ of a layer are grouped by
neuron, cleaned (trimmed, or GMM-clipped in its commented-out variant), reduced by a signed
mean and |·|, and added to a per-neuron buffer; a neuron scores Σ_windows |mean θ∇|. The other
order (`--accumulate signed-sum`) sums the signed θ·∇ over windows first and aggregates once,
|Σ_windows mean θ∇|: for a pretrained model each window's term is roughly zero-mean, so that
sum is one noisy draw while the per-window sum averages magnitudes (docs/prune.md measures
both).

Per window and per requested (kind, aggregation):
- kind "afr" (the paper's recipe): ReFer and SNIP are z-scored over every scored weight of
  the model *in this window*, added, grouped by neuron, then aggregated;
- kind "snip" / "refer": the raw scores, grouped and aggregated (the reference recipe of AFR
  combines these two sums at the end: scores.py).
GMM clipping is fitted per window (`gmm_refit="every"`, what the reference's per-window
cleaning implies) or fitted on the first window and reused for the rest (`"once"`: the
mixture is kept in standardised units and each later window's values are clipped under it,
no EM; prune/gmm.py `gmm_apply`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from llmslim.core.errors import BadOptionError
from llmslim.prune.aggregate import AGGREGATIONS, SCOPES, aggregate, regroup, zscore_stats
from llmslim.prune.gmm import MAX_FIT_VALUES, Mixture, chunk_values, gmm_apply, gmm_clip

ACCUMULATIONS = ("per-window", "signed-sum")
GMM_REFITS = ("every", "once")
KINDS = ("afr", "snip", "refer")
# aggregations that clip first, and what they apply to the clipped values
AFTER_CLIP = {"gmm": "mean-abs", "abs+gmm": "abs"}


@dataclass
class PerWindow:
    """Per-neuron sums over windows for each requested "kind:aggregation" key."""

    keys: list[str]
    group: str = "concat"
    gmm_scope: str = "neuron"
    gmm_refit: str = "every"
    seed: int = 0
    part_sizes: list[int] | None = None  # set by the caller: values per weight matrix in a group
    sums: dict[str, list[Tensor]] = field(default_factory=dict)
    windows: int = 0
    _mixtures: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        for key in self.keys:
            kind, _, agg = key.partition(":")
            if kind not in KINDS or agg not in AGGREGATIONS:
                raise BadOptionError(f"per-window key {key!r}: want kind:aggregation with kind in {', '.join(KINDS)}")
        if self.gmm_scope not in SCOPES:
            raise BadOptionError(f"unknown --gmm-scope {self.gmm_scope!r}; use {' or '.join(SCOPES)}")
        if self.gmm_refit not in GMM_REFITS:
            raise BadOptionError(f"unknown --gmm-refit {self.gmm_refit!r}; use {' or '.join(GMM_REFITS)}")

    def settings(self) -> dict:
        return {"group": self.group, "gmm_scope": self.gmm_scope, "gmm_refit": self.gmm_refit, "seed": self.seed,
                "windows": self.windows}

    def needs(self) -> set[str]:
        """The raw scores ("snip", "refer") the keys need."""
        kinds = {k.partition(":")[0] for k in self.keys}
        return ({"snip", "refer"} if "afr" in kinds else set()) | (kinds - {"afr"})

    def fold(self, window: dict[str, list[Tensor]], fit_only: bool = False) -> None:
        """Add one window: `window` maps "snip" / "refer" to per-layer grouped scores [units, values].
        `fit_only`: only fit the GMMs `--gmm-refit once` reuses, add nothing (a process of a
        distributed run fitting on the first window, which another process adds)."""
        for kind in dict.fromkeys(k.partition(":")[0] for k in self.keys):
            aggs = [k.partition(":")[2] for k in self.keys if k.partition(":")[0] == kind]
            if fit_only and not (self.gmm_refit == "once" and any(agg in AFTER_CLIP for agg in aggs)):
                continue
            clips = any(agg in AFTER_CLIP for agg in aggs)
            layers = ((layer, regroup(values.float(), self.group, self.part_sizes))
                      for layer, values in enumerate(self._values(kind, window)))
            for batch in (self._batches(kind, layers) if clips else ([item] for item in layers)):
                clipped = self._clip(kind, batch) if clips else [None] * len(batch)
                if fit_only:
                    continue
                for (layer, values), layer_clipped in zip(batch, clipped):
                    for agg in aggs:
                        out = aggregate(AFTER_CLIP[agg], layer_clipped) if agg in AFTER_CLIP else aggregate(agg, values)
                        buf = self.sums.setdefault(buffer_key(f"{kind}:{agg}", self.group), [])
                        if len(buf) <= layer:
                            buf.append(torch.zeros_like(out))
                        buf[layer] += out
        if not fit_only:
            self.windows += 1

    def _values(self, kind: str, window: dict[str, list[Tensor]]):
        """Per layer, the values to aggregate: a generator, so with a window that groups each
        layer on access (calibrate.py) one layer's copies are alive at a time (one GMM batch's:
        _batches, a few small layers on a GPU), not the model's."""
        if kind != "afr":
            return iter(window[kind])
        # the paper's recipe, per window: z-score each over the model's weights, then add
        (r_mean, r_std), (s_mean, s_std) = zscore_stats(window["refer"]), zscore_stats(window["snip"])
        return ((r.float() - r_mean.float()) / r_std.float() + (s.float() - s_mean.float()) / s_std.float()
                for r, s in zip(window["refer"], window["snip"]))

    def _batches(self, kind: str, layers):
        """Consecutive (layer, values) whose GMM fits can share one call: per-neuron rows of
        equal length on one device, up to the fast fit's chunk size. On a GPU a fit of one
        small layer is bound by kernel launches and syncs: 0.28 s for 4,608 rows of 1,728 values
        (8M; a tenth of SmolLM2's neurons) on an H100 (gmm_speed_gpu_real.json), against 7.3 s
        for 5.6G values in one call on an H200 (gmm_speed_gpu.json), so a small model's layers
        go in one or a few calls.
        On a CPU a SmolLM2 layer fills a chunk: the batches are single layers, as before.
        A batch is 90% of a chunk at most: the batch's copies (its layers' values and their
        concatenation) are made before the fit sizes its chunk from the memory left. Layers
        with a stored mixture (--gmm-refit once) and layers without never share a batch."""
        batch, size, budget = [], 0, 0
        for layer, values in layers:
            joins = (batch and self.gmm_scope == "neuron" and values.shape[1] <= MAX_FIT_VALUES
                     and values.shape[1] == batch[-1][1].shape[1] and values.device == batch[-1][1].device
                     and size + values.numel() <= budget
                     and ((kind, layer) in self._mixtures) == ((kind, batch[-1][0]) in self._mixtures))
            if batch and not joins:
                yield batch
                batch, size = [], 0
            if not batch:
                budget = int(0.9 * chunk_values(values.device))
            batch.append((layer, values))
            size += values.numel()
        if batch:
            yield batch

    def _clip(self, kind: str, batch: list[tuple[int, Tensor]]) -> list[Tensor]:
        """Each layer's values GMM-clipped (one mixture per neuron, or one for the layer): the
        batch in one fit, each layer with its own seed (seed + layer), or under the mixtures
        fitted on the first window (--gmm-refit once)."""
        if self.gmm_refit == "once" and (kind, batch[0][0]) in self._mixtures:  # the whole batch (_batches)
            return [gmm_apply(self._rows(values), self._mixtures[kind, layer]).reshape(values.shape)
                    for layer, values in batch]
        if len(batch) == 1:
            rows, seeds = self._rows(batch[0][1]), self.seed + batch[0][0]
        else:
            rows = torch.cat([self._rows(values) for _, values in batch])
            seeds = torch.cat([torch.full((len(values),), self.seed + layer, dtype=torch.long) for layer, values in batch])
        out, info = gmm_clip(rows, seed=seeds, return_info=True)
        sizes = [len(self._rows(values)) for _, values in batch]
        if self.gmm_refit == "once":
            parts = zip(*(t.split(sizes) for t in (info.mixture.w, info.mixture.mu, info.mixture.var)))
            for (layer, _), (w, mu, var) in zip(batch, parts):
                self._mixtures[kind, layer] = Mixture(w, mu, var, info.mixture.standardize)
        return [part.reshape(values.shape) for part, (_, values) in zip(out.split(sizes), batch)]

    def _rows(self, values: Tensor) -> Tensor:
        return values if self.gmm_scope == "neuron" else values.reshape(1, -1)


def buffer_key(key: str, group: str) -> str:
    """Where a "kind:aggregation" sum is stored: "@sum" marks the reference code's grouping."""
    return key if group == "concat" else f"{key}@{group}"


def window_keys(methods: list[tuple[str, str, str]]) -> list[str]:
    """The per-window buffers that (score name, aggregation, AFR recipe) triples need."""
    keys = []
    for name, agg, recipe in methods:
        if name == "afr" and recipe == "paper":
            keys.append(f"afr:{agg}")
        elif name == "afr":
            keys += [f"refer:{agg}", f"snip:{agg}"]
        elif name in ("snip", "refer"):
            keys.append(f"{name}:{agg}")
    return list(dict.fromkeys(keys))
