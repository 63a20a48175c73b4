"""Weight -> neuron aggregation: one importance per FFN neuron from its per-weight scores.

Row j of `scores` ([n_neurons, m]) holds neuron j's signed per-weight scores (gate row j,
up row j, down column j). Every aggregation is a small function registered under a name in
`AGGREGATIONS`, all with the signature `fn(scores, *, scope, seed) -> [n_neurons]`; only the
GMM ones use `scope` and `seed`. Add one with `@register_aggregation("name")`.

    aggregate("abs+gmm", scores, scope="neuron", seed=0)

AFR (paper) compares a simple mean of |S| ("mean-abs") with a sign-preserving mean ("abs")
and proposes GMM outlier clipping before the signed mean ("abs+gmm", the default). The AFR-St
reference code instead trims 2% at each end ("trim") and, when it clips by GMM, fits one
mixture per layer (scope="layer") rather than one per neuron (scope="neuron", the paper).
"""

from __future__ import annotations

import difflib
from typing import Callable

import torch
from torch import Tensor

from llmslim.core.errors import BadOptionError
from llmslim.prune.gmm import gmm_clip

TRIM_FRAC = 0.02  # AFR-St reference code: sort each neuron's scores, drop 2% at each end
SCOPES = ("neuron", "layer")
GROUPINGS = ("concat", "sum")  # a unit's weights side by side, or its parts added (reference code)

Aggregation = Callable[..., Tensor]  # (scores [n, m], *, scope: str, seed: int) -> [n]
AGGREGATIONS: dict[str, Aggregation] = {}


def register_aggregation(name: str):
    def deco(fn: Aggregation) -> Aggregation:
        AGGREGATIONS[name] = fn
        return fn

    return deco


def aggregate(name: str, scores: Tensor, scope: str = "neuron", seed: int = 0) -> Tensor:
    """Importance per neuron ([n_neurons]) from per-weight scores ([n_neurons, m])."""
    if name not in AGGREGATIONS:
        near = difflib.get_close_matches(name, AGGREGATIONS, n=3)
        hint = f"; did you mean {', '.join(near)}?" if near else ""
        raise BadOptionError(f"unknown aggregation {name!r}{hint} (known: {', '.join(AGGREGATIONS)})")
    if scope not in SCOPES:
        raise BadOptionError(f"unknown GMM scope {scope!r}; use {' or '.join(SCOPES)}")
    if scores.dim() != 2:
        raise ValueError(f"aggregate wants [n_neurons, m] scores, got shape {tuple(scores.shape)}")
    return AGGREGATIONS[name](_at_least_float32(scores), scope=scope, seed=seed)


@register_aggregation("mean-abs")
def mean_abs(scores: Tensor, *, scope: str = "neuron", seed: int = 0) -> Tensor:
    """Mean of |S|: the paper's "simple mean"."""
    return scores.abs().mean(1)


@register_aggregation("abs")
def signed_abs(scores: Tensor, *, scope: str = "neuron", seed: int = 0) -> Tensor:
    """|mean of S|: signs cancel, so a neuron whose weights pull both ways scores low."""
    return scores.mean(1).abs()


@register_aggregation("gmm")
def gmm_mean_abs(scores: Tensor, *, scope: str = "neuron", seed: int = 0) -> Tensor:
    """GMM outlier clipping, then mean of |S|."""
    return gmm_scope_clip(scores, scope, seed).abs().mean(1)


@register_aggregation("abs+gmm")
def gmm_signed_abs(scores: Tensor, *, scope: str = "neuron", seed: int = 0) -> Tensor:
    """The AFR proposal: GMM outlier clipping, then the signed mean, then |.|."""
    return gmm_scope_clip(scores, scope, seed).mean(1).abs()


@register_aggregation("trim")
def trimmed_abs(scores: Tensor, *, scope: str = "neuron", seed: int = 0) -> Tensor:
    """Drop the int(2% * m) lowest and highest scores of each neuron, then |mean|."""
    k = int(scores.shape[1] * TRIM_FRAC)  # the reference's s[k:-k] keeps nothing when k = 0
    kept = scores.sort(dim=1).values[:, k : scores.shape[1] - k]
    return kept.mean(1).abs()


def gmm_scope_clip(scores: Tensor, scope: str, seed: int) -> Tensor:
    """gmm_clip with one mixture per neuron (row) or one for the whole layer."""
    if scope == "neuron":
        return gmm_clip(scores, seed=seed)
    if scope == "layer":
        return gmm_clip(scores.reshape(1, -1), seed=seed).reshape(scores.shape)
    raise BadOptionError(f"unknown GMM scope {scope!r}; use {' or '.join(SCOPES)}")


def regroup(groups: Tensor, mode: str, sizes: list[int]) -> Tensor:
    """A unit's weight group as scored: "concat" keeps [gate | up | down] side by side, "sum"
    adds the parts elementwise (gate + up + down, hidden-sized: the AFR reference code)."""
    if mode == "concat":
        return groups
    if mode == "sum":
        if len(set(sizes)) != 1:
            raise BadOptionError("--group sum needs equal-sized parts (FFN neurons); use concat for attention heads")
        return groups.reshape(groups.shape[0], len(sizes), -1).sum(1)
    raise BadOptionError(f"unknown weight grouping {mode!r}; use {' or '.join(GROUPINGS)}")


def zscore_stats(per_layer) -> tuple[Tensor, Tensor]:
    """(mean, std) over every value of every layer, in float64, two passes over `per_layer`
    (a list, or a sequence that builds each layer's tensor on access: one layer alive at a time)."""
    # sums as Python floats: the layers may sit on different GPUs (--device-map auto)
    n, total = 0, 0.0
    for t in per_layer:  # counted in the same pass (a lazy sequence builds each layer per pass)
        n += t.numel()
        total += t.sum(dtype=torch.float64).item()
    mean = total / n
    sq = sum(((t - mean) ** 2).sum(dtype=torch.float64).item() for t in per_layer)
    return torch.tensor(mean, dtype=torch.float64), torch.tensor(sq / (n - 1), dtype=torch.float64).sqrt()


def zscore_all(per_layer: list[Tensor]) -> list[Tensor]:
    """Standardise over every value of every layer (one mean, one std for the model)."""
    mean, std = zscore_stats(per_layer)
    return [((t.float() - mean.float()) / std.float()) for t in per_layer]


def _at_least_float32(scores: Tensor) -> Tensor:
    # fp16/bf16 means over thousands of values lose digits; float64 stays float64
    return scores.to(torch.promote_types(scores.dtype, torch.float32))
