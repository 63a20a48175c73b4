"""Neuron importance scores: AFR (the paper's method) and the baselines, one function each.

Every score maps (CalibStats, per-layer weight groups, config) -> one importance per unit (FFN
neuron, or attention kv group with `--target attn`: see units.py) per layer; higher means keep. Add a score with `@register_score("name")`.

Weight groups: row j of layer l's group matrix is neuron j's weights, [gate row j, up row j,
down column j] (OPT: [fc1 row j, fc2 column j]); `ScoreConfig.group="sum"` instead adds the
parts elementwise (gate + up + down, hidden-sized), as the AFR reference code does.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Callable

import torch

from llmslim.core.errors import BadOptionError
from llmslim.prune.aggregate import aggregate, gmm_scope_clip, regroup, zscore_all
from llmslim.prune.accumulate import AFTER_CLIP, buffer_key
from llmslim.prune.calibrate import CalibStats


AFR_RECIPES = ("paper", "reference")


@dataclass
class ScoreConfig:
    # AFR paper: sign-preserving mean then |.|, after GMM outlier clipping (the proposal)
    aggregate: str = "abs+gmm"
    # "neuron" (paper) or "layer" (reference code) scope of the GMM fit
    gmm_scope: str = "neuron"
    # "paper": z-score ReFer and SNIP per weight over the whole model, add, then aggregate.
    # "reference": aggregate each per neuron, square SNIP, z-score over neurons, add (AFR-St code).
    afr_recipe: str = "paper"
    # "concat" (all of a neuron's weights) or "sum" (gate+up+down elementwise, the reference code)
    group: str = "concat"
    seed: int = 0
    # "per-window" (reference code): aggregate each window's scores per neuron, sum over
    # windows; "signed-sum": sum the signed per-weight scores over windows, aggregate once
    accumulate: str = "per-window"


ScoreFn = Callable[[CalibStats, list, ScoreConfig], list[torch.Tensor]]
SCORES: dict[str, ScoreFn] = {}


def register_score(name: str):
    def deco(fn: ScoreFn) -> ScoreFn:
        SCORES[name] = fn
        return fn

    return deco


def get_score(name: str) -> ScoreFn:
    if name not in SCORES:
        near = difflib.get_close_matches(name, SCORES, n=3)
        hint = f" (did you mean {', '.join(near)}?)" if near else f"; known: {', '.join(sorted(SCORES))}"
        raise BadOptionError(f"unknown pruning score {name!r}{hint}")
    return SCORES[name]


def part_sizes(stats: CalibStats) -> list[int]:
    """Values per weight matrix in a unit's group (FFN: hidden each; attn: q, k, v, o parts)."""
    if "part_sizes" in stats.meta:
        return list(stats.meta["part_sizes"])
    return [stats.meta["hidden"]] * stats.meta.get("parts", 3)  # scores files from before attn


# Signed-sum order: the GMM fit is the slow step; `gmm` and `abs+gmm` clip the same values and
# differ only after clipping, so clipped scores are kept in `stats.cache` and reused across
# aggregations and pruning ratios.
def clipped(stats: CalibStats, which: str, per_layer: list[torch.Tensor], cfg: ScoreConfig, progress=None) -> list[torch.Tensor]:
    """GMM-clipped per-weight scores of every layer, computed once per stats and settings."""
    key = ("clipped", which, cfg.group, cfg.gmm_scope, cfg.seed)
    if key not in stats.cache:
        sizes = part_sizes(stats)
        out = []
        for i, s in enumerate(per_layer):
            out.append(gmm_scope_clip(regroup(s.float(), cfg.group, sizes), cfg.gmm_scope, cfg.seed + i))
            if progress:
                progress(1)
        stats.cache[key] = out
    return stats.cache[key]


def _agg(stats: CalibStats, which: str, per_layer, cfg: ScoreConfig) -> list[torch.Tensor]:
    """Per-neuron scores of `which` ("afr", "snip", "refer") under cfg; `per_layer` is a
    callable giving the signed per-weight sums (signed-sum order only)."""
    if cfg.accumulate == "per-window":
        return _per_window(stats, f"{which}:{cfg.aggregate}", cfg)
    if cfg.accumulate != "signed-sum":
        raise BadOptionError(f"unknown --accumulate {cfg.accumulate!r}; use per-window or signed-sum")
    per_layer = per_layer()
    if cfg.aggregate in AFTER_CLIP:
        return [aggregate(AFTER_CLIP[cfg.aggregate], c) for c in clipped(stats, which, per_layer, cfg)]
    return [aggregate(cfg.aggregate, regroup(s.float(), cfg.group, part_sizes(stats))) for s in per_layer]


def _per_window(stats: CalibStats, key: str, cfg: ScoreConfig) -> list[torch.Tensor]:
    key = buffer_key(key, cfg.group)
    if key not in stats.neuron:
        have = ", ".join(sorted(stats.neuron)) or "none"
        hint = " or pass --accumulate signed-sum (these stats hold signed sums)" if stats.snip or stats.refer else ""
        raise BadOptionError(f"these calibration stats have no per-window {key} scores (have: {have}); "
                             f"recalibrate with this method{hint}")
    scope = stats.meta.get("per_window", {}).get("gmm_scope", cfg.gmm_scope)
    if scope != cfg.gmm_scope:
        raise BadOptionError(f"these per-window scores were accumulated with --gmm-scope {scope}, "
                             f"not {cfg.gmm_scope}; recalibrate")
    return [t.float() for t in stats.neuron[key]]


def afr_weight_scores(stats: CalibStats) -> list[torch.Tensor]:
    """z(ReFer) + z(SNIP) per weight, each standardised over the whole model (the paper)."""
    if "afr" not in stats.cache:
        refer, snip = _need(stats, "refer", "afr"), _need(stats, "snip", "afr")
        stats.cache["afr"] = [a + b for a, b in zip(zscore_all(refer), zscore_all(snip))]
    return stats.cache["afr"]


def gmm_inputs(stats: CalibStats, name: str, cfg: ScoreConfig) -> dict[str, list[torch.Tensor]]:
    """The per-weight scores a GMM-aggregated method clips (empty when it clips nothing), so a
    caller can clip them up front with a progress bar."""
    if cfg.aggregate not in AFTER_CLIP or cfg.accumulate != "signed-sum":
        return {}
    if name == "afr":
        if cfg.afr_recipe == "paper":
            return {"afr": afr_weight_scores(stats)}
        return {"refer": _need(stats, "refer", name), "snip": _need(stats, "snip", name)}
    if name in ("snip", "refer"):
        return {name: _need(stats, name, name)}
    return {}


def _need(stats: CalibStats, field: str, score: str) -> list[torch.Tensor]:
    values = getattr(stats, field)
    if not values:
        raise BadOptionError(f"score {score!r} needs {field.upper()} gradients, which these calibration stats lack")
    return values


@register_score("afr")
def afr(stats, weights, cfg):
    """AFR = z(ReFer) + z(SNIP), aggregated per neuron (recipe: see ScoreConfig.afr_recipe)."""
    if cfg.afr_recipe == "paper":
        return _agg(stats, "afr", lambda: afr_weight_scores(stats), cfg)
    if cfg.afr_recipe == "reference":
        r = _agg(stats, "refer", lambda: _need(stats, "refer", "afr"), cfg)
        s = [v * v for v in _agg(stats, "snip", lambda: _need(stats, "snip", "afr"), cfg)]
        zr, zs = zscore_all(r), zscore_all(s)
        return [a + b for a, b in zip(zr, zs)]
    raise BadOptionError(f"unknown AFR recipe {cfg.afr_recipe!r}; use {' or '.join(AFR_RECIPES)}")


@register_score("snip")
def snip_only(stats, weights, cfg):
    """SNIP alone: θ ⊙ ∂L/∂θ per weight, same aggregation as AFR."""
    return _agg(stats, "snip", lambda: _need(stats, "snip", "snip"), cfg)


@register_score("refer")
def refer_only(stats, weights, cfg):
    """ReFer alone: θ ⊙ ∂F/∂θ per weight (F = summed mean singular values), same aggregation."""
    return _agg(stats, "refer", lambda: _need(stats, "refer", "refer"), cfg)


@register_score("magnitude")
def magnitude(stats, weights, cfg):
    """L2 norm of all the neuron's weights (no data)."""
    return [w.float().norm(dim=1) for w in weights]


def _output_columns(stats: CalibStats, w: torch.Tensor) -> torch.Tensor:
    """[units, channels per unit, hidden]: the output projection's input columns of each unit
    (FFN: down_proj column j; attn: the o_proj columns of the group's query heads)."""
    cpu, hidden = stats.meta.get("channels_per_unit", 1), stats.meta["hidden"]
    return w[:, -cpu * hidden :].float().reshape(w.shape[0], cpu, hidden)


def _per_unit(stats: CalibStats, per_channel: torch.Tensor) -> torch.Tensor:
    return per_channel.float().reshape(-1, stats.meta.get("channels_per_unit", 1))


@register_score("wanda-sp")
def wanda_sp(stats, weights, cfg):
    """Wanda-sp (FLAP repo's WIFN): mean over the output-projection column of |W_ij|·sqrt(E[x_j²]);
    a head group averages its channels."""
    out = []
    for w, sq in zip(weights, stats.act_sq):
        cols = _output_columns(stats, w)
        out.append((cols.abs() * _per_unit(stats, sq).sqrt()[..., None]).mean((1, 2)))
    return out


@register_score("flap")
def flap(stats, weights, cfg):
    """FLAP's WIFV fluctuation metric: Var[x_j] · Σ_i W_ij² over the output-projection column
    (a head group averages its channels).

    Standardised per layer (FLAP's adaptive structure), so a global threshold compares layers.
    Bias compensation is applied when pruning (see apply.flap_bias)."""
    out = []
    for i, w in enumerate(weights):
        cols = _output_columns(stats, w)
        metric = (_per_unit(stats, stats.act_var(i)) * cols.pow(2).sum(2)).mean(1)
        std = metric.std() if metric.numel() > 1 else metric.new_tensor(1.0)
        out.append((metric - metric.mean()) / std.clamp_min(1e-12))
    return out


@register_score("llm-pruner-vector")
def llm_pruner_vector(stats, weights, cfg):
    """LLM-Pruner Taylor, vector-wise: Σ over the neuron's matrices of |Σ_k W_k·∇W_k|."""
    sizes = part_sizes(stats)
    return [torch.stack([p.sum(1).abs() for p in s.float().split(sizes, dim=1)]).sum(0) for s in _need(stats, "snip", "llm-pruner-vector")]


@register_score("llm-pruner-element")
def llm_pruner_element(stats, weights, cfg):
    """LLM-Pruner Taylor, element-wise: Σ_k |W_k·∇W_k| over the neuron's weights."""
    return [s.float().abs().sum(1) for s in _need(stats, "snip", "llm-pruner-element")]
