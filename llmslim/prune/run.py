"""The prune pipeline as plain functions: calibrate -> score -> allocate -> apply.

From Python:
    stats = collect_for(model, windows, ["afr", "flap"])
    report = prune_model(model, stats, PruneConfig(ratio=0.5))
`method` names a score from scores.SCORES, optionally with an aggregation: "afr:mean-abs".
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from llmslim.core import data as data_mod
from llmslim.core.arch import model_fingerprint
from llmslim.core.errors import BadOptionError, DataError
from llmslim.prune.aggregate import AGGREGATIONS
from llmslim.prune.allocate import MAX_DEVIATION, allocate
from llmslim.core.params import count_params
from llmslim.prune.apply import RECONSTRUCT_DAMP, check_head_pruning, flap_bias, prune_units, reconstruct
from llmslim.prune.accumulate import PerWindow, window_keys
from llmslim.prune.calibrate import CalibStats, collect
from llmslim.prune.units import layer_units, weight_groups
from llmslim.prune.scores import ScoreConfig, get_score

# Paper (AFR, Table 2/3): 20% and 50% FFN ratios, 128 windows x 1024 tokens of calibration text.
PAPER_NSAMPLES, PAPER_SEQLEN = 128, 1024
BIAS_COMPENSATIONS = ("auto", "on", "off")
GRADIENT_SCORES = {"afr", "snip", "refer", "llm-pruner-vector", "llm-pruner-element"}
REFER_SCORES = {"afr", "refer"}


@dataclass
class PruneConfig:
    ratio: float = 0.2
    method: str = "afr"
    scores: ScoreConfig = field(default_factory=ScoreConfig)
    allocation: str = "uniform"
    round_to: int = 1
    max_deviation: float = MAX_DEVIATION  # --allocation adaptive: per-layer ratios within ratio +- this
    bias_compensation: str = "auto"  # FLAP's bias compensation (apply.flap_bias): "auto" for method flap only, "on", "off"
    reconstruct: bool = False  # refit the output projections on the kept channels (apply.reconstruct; needs stats.act_gram)
    reconstruct_damp: float = RECONSTRUCT_DAMP


def parse_method(method: str, base: ScoreConfig) -> tuple[str, ScoreConfig]:
    """"afr:mean-abs" -> ("afr", config with aggregate="mean-abs")."""
    name, _, agg = method.partition(":")
    get_score(name)
    if agg:
        if agg not in AGGREGATIONS:
            raise BadOptionError(f"unknown aggregation {agg!r}; known: {', '.join(AGGREGATIONS)}")
        base = replace(base, aggregate=agg)
    return name, base


def needs(methods: list[str]) -> dict:
    names = {m.partition(":")[0] for m in methods}
    return {"snip": bool(names & GRADIENT_SCORES - {"refer"}), "refer": bool(names & REFER_SCORES)}


def folded_keys(methods: list[str], base: ScoreConfig) -> list[str]:
    """The per-window buffers calibration folds for `methods` under `base` (prune/accumulate's
    keys; none unless --accumulate per-window): what collect_for fills and the memory plan counts."""
    if base.accumulate != "per-window":
        return []
    return window_keys([(name, cfg.aggregate, cfg.afr_recipe) for name, cfg in (parse_method(m, base) for m in methods)])


def collect_for(model, windows: torch.Tensor, methods: list[str], base: ScoreConfig | None = None,
                gmm_refit: str = "every", **kwargs) -> CalibStats:
    """One calibration pass that gathers what `methods` need under `base` (its accumulation
    order, grouping, GMM scope): per-window per-neuron sums, and signed per-weight sums where
    the signed-sum order or LLM-Pruner (a batch gradient) needs them. kwargs go to collect."""
    base = base or ScoreConfig()
    parsed = [(m, *parse_method(m, base)) for m in methods]
    need = needs(methods)
    keys = folded_keys(methods, base)
    per_window = PerWindow(keys, group=base.group, gmm_scope=base.gmm_scope, gmm_refit=gmm_refit,
                           seed=base.seed) if keys else None
    if base.accumulate == "signed-sum":
        per_weight = ("snip", "refer")
    else:
        per_weight = ("snip",) if any(name.startswith("llm-pruner") for _, name, _ in parsed) else ()
    return collect(model, windows, refer=need["refer"], snip=need["snip"], per_window=per_window,
                   per_weight=per_weight, **kwargs)


# ------------------------------------------------------------------ calibration data
def calibration_source(source: str) -> str:
    """How a --calib source is named in reports and score caches."""
    return {"self": "self-generated", "wikitext2": "wikitext2 test, first half"}.get(source, str(source))


def calibration_windows(model, tokenizer, source: str, nsamples: int, seqlen: int, seed: int) -> tuple[torch.Tensor, str]:
    """`self`: sampled from the model; `wikitext2`: first half of the shared WikiText-2 raw test
    file (the second half is kept for perplexity); anything else: a corpus file."""
    if source == "self":
        windows = data_mod.self_calibration(model, tokenizer, nsamples, seqlen, seed)
    elif source == "wikitext2":
        windows = data_mod.calibration_windows(tokenizer, data_mod.wikitext2_halves()[0], nsamples, seqlen, seed)
    else:
        windows = data_mod.calibration_windows(tokenizer, data_mod.read_text(source), nsamples, seqlen, seed)
    return windows, calibration_source(source)


# ------------------------------------------------------------------ scores cache
def save_stats(path: Path, stats: CalibStats, model) -> None:
    from llmslim.core.outputs import atomic_write_bytes

    payload = stats.to_dict() | {"fingerprint": model_fingerprint(model)}
    atomic_write_bytes(path, lambda f: torch.save(payload, f))


def read_stats(path: Path) -> tuple[CalibStats, str | None]:
    """The scores file and the fingerprint of the model it was computed on (no model needed,
    so a bad file fails before one is loaded). Memory-mapped: `prune` reads it once to validate
    before loading and again to prune, and an old per-weight file is 640 MB."""
    payload = data_mod.read_torch_file(path, missing=f"scores file not found: {path}",
                                       unreadable=f"{path} is not an llmslim scores file", mmap=True)
    if not isinstance(payload, dict):
        raise DataError(f"{path} is not an llmslim scores file (holds a {type(payload).__name__})")
    fingerprint = payload.pop("fingerprint", None)
    try:
        return CalibStats(**payload), fingerprint
    except TypeError as e:
        raise DataError(f"{path} is not an llmslim scores file ({e})") from None


def check_fingerprint(path: Path, fingerprint: str | None, model) -> None:
    if fingerprint != model_fingerprint(model):
        raise DataError(f"{path} was computed on a different model (fingerprint mismatch; files saved "
                        f"before the fingerprint ignored dtype and path need computing again)")


def load_stats(path: Path, model) -> CalibStats:
    stats, fingerprint = read_stats(path)
    check_fingerprint(path, fingerprint, model)
    return stats


# ------------------------------------------------------------------ scoring and pruning
def neuron_scores(model, stats: CalibStats, method: str, base: ScoreConfig) -> list[torch.Tensor]:
    name, cfg = parse_method(method, base)
    weights = [weight_groups(u).cpu() for u in layer_units(model, stats.meta.get("target", "ffn"))]
    return get_score(name)(stats, weights, cfg)


def prune_model(model, stats: CalibStats, cfg: PruneConfig) -> dict:
    """Score, allocate and remove neurons in place; return a report of what changed."""
    target = stats.meta.get("target", "ffn")
    if target == "attn":
        check_head_pruning(model)
    params_before = count_params(model)
    t0 = time.perf_counter()
    scores = neuron_scores(model, stats, cfg.method, cfg.scores)
    t_score = time.perf_counter() - t0
    if target == "attn" and cfg.allocation != "uniform":
        raise BadOptionError("--target attn supports --allocation uniform only (transformers configs hold one head count)")
    keep = allocate(scores, cfg.ratio, cfg.allocation, cfg.round_to, cfg.max_deviation)
    if cfg.reconstruct:  # fits a bias too: it replaces FLAP's compensation
        if not stats.act_gram:
            raise BadOptionError("--reconstruct needs the calibration's Gram matrices: these scores were computed without "
                                 "--reconstruct; calibrate again with it")
        reconstruct(model, keep, stats.act_gram, stats.act_mean, target, cfg.reconstruct_damp)
    elif cfg.bias_compensation == "on" or (cfg.bias_compensation == "auto" and cfg.method.partition(":")[0] == "flap"):
        flap_bias(model, keep, stats.act_mean, target)
    widths = prune_units(model, keep, target)
    return {
        "method": cfg.method,
        "target": target,
        "ratio": cfg.ratio,
        "allocation": cfg.allocation,
        "params_before": params_before,
        "params_after": count_params(model),
        "widths": widths,
        "score_s": t_score,
        "prune_s": time.perf_counter() - t0 - t_score,
        "kept": keep,
    }

