"""One `llmslim prune` run: load, calibrate (or reuse scores), prune each method, evaluate,
save. The CLI builds a PruneJob and renders the dict this returns."""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from llmslim.core.data import data_dir
from llmslim.core.device import peak_memory_mb, seed_everything
from llmslim.core.errors import BadOptionError
from llmslim.core.load import load_model
from llmslim.core.outputs import atomic_dir, atomic_write_text, check_creatable, check_writable, to_jsonable, write_manifest
from llmslim.prune import calibrate
from llmslim.prune.accumulate import ACCUMULATIONS, GMM_REFITS
from llmslim.prune.aggregate import AGGREGATIONS, GROUPINGS, SCOPES
from llmslim.prune.allocate import ALLOCATIONS
from llmslim.prune.run import (PruneConfig, calibration_windows, check_fingerprint, collect_for, parse_method, prune_model,
                               read_stats, save_stats, wikitext2_halves)
from llmslim.prune.scores import AFR_RECIPES, ScoreConfig, clipped, gmm_inputs
from llmslim.prune.units import TARGETS

# every aggregation of AFR, then every baseline: the paper's comparison table
ALL_METHODS = ["afr:abs+gmm", "afr:abs", "afr:gmm", "afr:mean-abs", "afr:trim", "snip", "refer",
               "magnitude", "wanda-sp", "flap", "llm-pruner-vector", "llm-pruner-element"]


@dataclass
class PruneJob:
    model: str = "smollm2-135m"
    ratio: float = 0.2
    target: str = "ffn"
    method: str = "afr"
    aggregate: str = "abs+gmm"
    gmm_scope: str = "neuron"
    afr_recipe: str = "paper"
    group: str = "concat"
    accumulate: str = "per-window"
    gmm_refit: str = "every"
    feature_mode: str = "flat"
    snip_loss: str = "next-token"
    allocation: str = "uniform"
    round_to: int = 1
    compare: str | None = None
    calib: str = "auto"
    nsamples: int = 128
    seqlen: int = 1024
    save_scores: Path | None = None
    scores: Path | None = None
    eval_tasks: str | None = None
    eval_limit: int | None = None
    ppl: bool = False
    ppl_seqlen: int = 1024
    ppl_limit: int | None = None
    out: Path | None = None
    force: bool = False
    seed: int = 0
    device: str = "auto"
    dtype: str = "auto"


def _methods(job: PruneJob) -> list[str]:
    methods = [job.method]
    if job.compare:
        extra = ALL_METHODS if job.compare.strip() == "all" else [m.strip() for m in job.compare.split(",") if m.strip()]
        methods += [m for m in extra if m not in methods]
    return methods


def _validate(job: PruneJob, base: ScoreConfig) -> list[str]:
    """Every check that needs no model: runs before anything is loaded."""
    if job.nsamples < 1 or job.seqlen < 2:
        raise BadOptionError("--nsamples must be >= 1 and --seqlen >= 2")
    if job.eval_limit is not None and job.eval_limit < 1:
        raise BadOptionError(f"--eval-limit must be >= 1, got {job.eval_limit}")
    if job.ppl_seqlen < 2 or (job.ppl_limit is not None and job.ppl_limit < 1):
        raise BadOptionError("--ppl-seqlen must be >= 2 and --ppl-limit >= 1")
    if job.round_to < 1:
        raise BadOptionError(f"--round-to must be >= 1, got {job.round_to}")
    if job.aggregate not in AGGREGATIONS:
        raise BadOptionError(f"unknown --aggregate {job.aggregate!r}; use {', '.join(AGGREGATIONS)}")
    if job.afr_recipe not in AFR_RECIPES:
        raise BadOptionError(f"unknown --afr-recipe {job.afr_recipe!r}; use {' or '.join(AFR_RECIPES)}")
    if job.group not in GROUPINGS:
        raise BadOptionError(f"unknown --group {job.group!r}; use {' or '.join(GROUPINGS)}")
    if job.accumulate not in ACCUMULATIONS:
        raise BadOptionError(f"unknown --accumulate {job.accumulate!r}; use {' or '.join(ACCUMULATIONS)}")
    if job.gmm_refit not in GMM_REFITS:
        raise BadOptionError(f"unknown --gmm-refit {job.gmm_refit!r}; use {' or '.join(GMM_REFITS)}")
    if job.scores is not None and not Path(job.scores).is_file():
        raise BadOptionError(f"scores file not found: {job.scores}")
    if job.calib not in ("auto", "self", "wikitext2") and job.scores is None and not Path(job.calib).is_file():
        raise BadOptionError(f"--calib: no such file {job.calib} (use auto, self, wikitext2 or a text file)")
    if job.calib == "wikitext2" and not (data_dir() / "wikitext2" / "wiki.test.raw").is_file():
        raise BadOptionError(f"--calib wikitext2: {data_dir() / 'wikitext2' / 'wiki.test.raw'} not found (set LLMSLIM_DATA)")
    if job.ppl and not (data_dir() / "wikitext2" / "wiki.test.raw").is_file():
        raise BadOptionError(f"--ppl needs {data_dir() / 'wikitext2' / 'wiki.test.raw'} (set LLMSLIM_DATA)")
    if job.eval_tasks:
        from llmslim.eval.harness import check_data, resolve_tasks

        check_data(resolve_tasks(job.eval_tasks))
    if not 0.0 < job.ratio < 1.0:
        raise BadOptionError(f"--ratio must be between 0 and 1 (exclusive), got {job.ratio}")
    if job.allocation not in ALLOCATIONS:
        raise BadOptionError(f"unknown --allocation {job.allocation!r}; use {' or '.join(ALLOCATIONS)}")
    if job.snip_loss not in calibrate.SNIP_LOSSES:
        raise BadOptionError(f"unknown --snip-loss {job.snip_loss!r}; use {' or '.join(calibrate.SNIP_LOSSES)}")
    if job.feature_mode not in calibrate.FEATURE_MODES:
        raise BadOptionError(f"unknown --feature-mode {job.feature_mode!r}; use {' or '.join(calibrate.FEATURE_MODES)}")
    if job.target not in TARGETS:
        raise BadOptionError(f"unknown --target {job.target!r}; use {' or '.join(TARGETS)}")
    if job.target == "attn" and job.allocation != "uniform":
        raise BadOptionError("--target attn supports --allocation uniform only (transformers configs hold one head count)")
    if job.target == "attn" and job.group == "sum":
        raise BadOptionError("--group sum needs equal-sized parts (FFN neurons); use concat for attention heads")
    if job.gmm_scope not in SCOPES:
        raise BadOptionError(f"unknown --gmm-scope {job.gmm_scope!r}; use {' or '.join(SCOPES)}")
    methods = _methods(job)
    for m in methods:
        parse_method(m, base)
    if job.out is not None:
        check_writable(job.out, job.force)
        check_creatable(job.out)
    if job.save_scores is not None:
        check_creatable(job.save_scores)
    return methods


def _check_units(model, job: PruneJob) -> None:
    """Checks that need the model's shape (after loading, before calibration)."""
    from llmslim.prune.units import layer_units

    units = layer_units(model, job.target)[0]
    n = units.count
    kept = int(round(n * (1 - job.ratio)))
    if kept >= n:
        raise BadOptionError(f"--ratio {job.ratio} removes nothing: a layer has {n} "
                             f"{'kv groups' if job.target == 'attn' else 'neurons'} (keeps {kept})")
    if kept < 1:
        raise BadOptionError(f"--ratio {job.ratio} removes every one of a layer's {n} "
                             f"{'kv groups' if job.target == 'attn' else 'neurons'}; use a smaller ratio")


def _evaluate(model, tokenizer, job: PruneJob, ppl_text: str | None, bar) -> dict:
    from llmslim.eval.run import perplexity, run_tasks

    results = {}
    if ppl_text is not None:
        results["wikitext2_ppl"] = perplexity(model, tokenizer, ppl_text, seqlen=job.ppl_seqlen, max_chunks=job.ppl_limit)["perplexity"]
    if job.eval_tasks:
        tasks = [t.strip() for t in job.eval_tasks.split(",") if t.strip()]
        out = run_tasks(model, tokenizer, tasks, limit=job.eval_limit, seed=job.seed)
        for task, metrics in out["results"].items():
            for name in ("acc_norm", "acc") if task in ("arc_challenge", "hellaswag") else ("acc",):
                if name in metrics:
                    results[f"{task}/{name}"] = metrics[name]
                    break
    return results


def run_job(job: PruneJob, bar=None) -> dict:
    base = ScoreConfig(aggregate=job.aggregate, gmm_scope=job.gmm_scope, afr_recipe=job.afr_recipe, group=job.group,
                       seed=job.seed, accumulate=job.accumulate)
    methods = _validate(job, base)
    saved = read_stats(job.scores) if job.scores else None  # a bad file fails before loading
    if saved and saved[0].meta.get("target", "ffn") != job.target:
        raise BadOptionError(f"{job.scores} holds {saved[0].meta.get('target', 'ffn')} scores, not --target {job.target}")
    seed_everything(job.seed)
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    loaded = load_model(job.model, device=job.device, dtype=job.dtype, purpose="gradients")
    model, tokenizer = loaded.model, loaded.tokenizer
    timings["load_s"] = time.perf_counter() - t0
    _check_units(model, job)

    calib = job.calib
    if calib == "auto":
        calib = "wikitext2" if (data_dir() / "wikitext2" / "wiki.test.raw").is_file() else "self"
    t0 = time.perf_counter()
    if saved:
        stats, fingerprint = saved
        check_fingerprint(job.scores, fingerprint, model)
        calib_desc = f"scores from {job.scores}"
    else:
        windows, calib_desc = calibration_windows(model, tokenizer, calib, job.nsamples, job.seqlen, job.seed)
        clips = job.accumulate == "per-window" and any("gmm" in parse_method(m, base)[1].aggregate for m in methods)
        task = bar.add_task("calibrating (forward+backward" + (", GMM per window)" if clips else ")"),
                            total=windows.shape[0]) if bar else None
        stats = collect_for(model, windows, methods, base, gmm_refit=job.gmm_refit, feature_mode=job.feature_mode,
                            snip_loss=job.snip_loss, target=job.target, progress=(lambda n: bar.advance(task, n)) if bar else None)
        if job.save_scores:
            save_stats(job.save_scores, stats, model)
    timings["calibrate_s"] = time.perf_counter() - t0

    ppl_text = wikitext2_halves()[1] if job.ppl else None
    rows = []
    dense = {"method": "dense", "params": sum(p.numel() for p in model.parameters()), "width": None}
    if job.ppl or job.eval_tasks:
        t0 = time.perf_counter()
        dense["eval"] = _evaluate(model, tokenizer, job, ppl_text, bar)
        timings["eval_dense_s"] = time.perf_counter() - t0
        rows.append(dense)

    # GMM clipping is the slow part of scoring: do it up front, once per input, with a bar
    t0 = time.perf_counter()
    for method in methods:
        name, cfg = parse_method(method, base)
        for which, per_layer in gmm_inputs(stats, name, cfg).items():
            task = bar.add_task(f"GMM clipping ({which} scores)", total=len(per_layer)) if bar else None
            clipped(stats, which, per_layer, cfg, progress=(lambda n, task=task: bar.advance(task, n)) if bar else None)
    timings["gmm_s"] = time.perf_counter() - t0

    primary = None
    for i, method in enumerate(methods):
        last = i == len(methods) - 1
        pruned = model if last else copy.deepcopy(model)
        cfg = PruneConfig(ratio=job.ratio, method=method, scores=base, allocation=job.allocation, round_to=job.round_to)
        rep = prune_model(pruned, stats, cfg)
        row = {"method": method, "params": rep["params_after"], "width": _width(rep["widths"]),
               "score_s": rep["score_s"]}
        if job.ppl or job.eval_tasks:
            t0 = time.perf_counter()
            row["eval"] = _evaluate(pruned, tokenizer, job, ppl_text, bar)
            timings[f"eval_{method}_s"] = time.perf_counter() - t0
        rows.append(row)
        if i == 0:
            primary = (pruned, rep)

    result = {
        "model": job.model,
        "ratio": job.ratio,
        "target": job.target,
        "allocation": job.allocation,
        "accumulate": job.accumulate,
        "calibration": {"source": calib_desc, "nsamples": stats.windows, "tokens": stats.tokens, **stats.meta},
        "params_before": dense["params"],
        "params_after": primary[1]["params_after"],
        "widths": primary[1]["widths"],
        "rows": rows,
        "timings": timings,
        "peak_memory_mb": peak_memory_mb(loaded.device),
    }
    if job.out is not None:
        pruned_model, rep = primary
        with atomic_dir(job.out, job.force) as tmp:
            pruned_model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            atomic_write_text(tmp / "report.json", _json(result))
            write_manifest(tmp, command="prune", args=asdict(job), seed=job.seed, timings=timings, results=result)
        result["out"] = str(job.out)
    return result


def _width(widths: list[int]):
    return widths[0] if len(set(widths)) == 1 else f"{min(widths)}-{max(widths)}"


def _json(obj) -> str:
    import json

    return json.dumps(to_jsonable(obj), indent=2) + "\n"

