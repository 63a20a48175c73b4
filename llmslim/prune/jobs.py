"""One `llmslim prune` run: calibrate (or reuse scores), prune each method, evaluate, save.
`validate` and `run` are the command's halves for core/job.run_command, which loads the model
in between and writes the output folder."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path

from llmslim.core import distributed
from llmslim.core.data import data_dir, wikitext2_halves
from llmslim.core.device import peak_memory_mb
from llmslim.core.errors import BadOptionError
from llmslim.core.job import CommonOptions, Context
from llmslim.core.load import check_not_offloaded, check_spread_before_loading, placement
from llmslim.core.outputs import check_creatable
from llmslim.core.save import save_model
from llmslim.prune import calibrate
from llmslim.prune.accumulate import ACCUMULATIONS, AFTER_CLIP, GMM_REFITS
from llmslim.prune.aggregate import AGGREGATIONS, GROUPINGS, SCOPES
from llmslim.prune.allocate import ALLOCATIONS, MAX_DEVIATION
from llmslim.prune.run import (BIAS_COMPENSATIONS, PruneConfig, calibration_windows, check_fingerprint, collect_for, folded_keys, needs, parse_method,
                               prune_model, read_stats, save_stats)
from llmslim.prune.scores import AFR_RECIPES, ScoreConfig, clipped, gmm_inputs
from llmslim.prune.units import TARGETS

# every aggregation of AFR, then every baseline: the paper's comparison table
ALL_METHODS = ["afr:abs+gmm", "afr:abs", "afr:gmm", "afr:mean-abs", "afr:trim", "snip", "refer",
               "magnitude", "wanda-sp", "flap", "llm-pruner-vector", "llm-pruner-element"]


@dataclass(kw_only=True)
class PruneJob(CommonOptions):
    model: str = "smollm2-135m"
    preset: str | None = None  # the --preset its values came from (recorded in run.json)
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
    max_deviation: float = MAX_DEVIATION
    round_to: int = 1
    bias_compensation: str = "auto"  # FLAP's bias compensation: "auto" (method flap only), "on" (every method), "off"
    reconstruct: bool = False  # least-squares refit of the output projections on the kept channels (prune/apply.reconstruct)
    compare: str | None = None
    calib: str = "auto"
    nsamples: int = 128
    seqlen: int = 1024
    save_scores: Path | None = None
    scores: Path | None = None
    tasks: str | None = None
    limit: int | None = None
    ppl: bool = False
    ppl_seqlen: int = 1024
    ppl_limit: int | None = None
    recover_steps: int = 0  # > 0: `llmslim recover` straight after pruning, the dense model as teacher
    dry_run: bool = False  # print the memory plan and stop
    recover_full: bool = False  # recover every weight (recover --full) instead of LoRA adapters
    recover_data: str = "wikitext2"  # recover's --data (`self`: samples of the dense model)
    recover_kd: float | None = None  # recover's --kd (None: its default, 0.5 with the dense teacher)
    recover_batch_size: int = 4  # recover's --batch-size


def _recover_job(job: PruneJob, work_dir: Path | None = None):
    """The recovery `prune --recover-steps` runs: recover's defaults but for the --recover-*
    options (data, kd, batch size, LoRA or full), the dense model as teacher, job.recover_steps steps."""
    from llmslim.recover.jobs import RecoverJob

    return RecoverJob(model=job.model, teacher=job.model, max_steps=job.recover_steps, full=job.recover_full, seed=job.seed,
                      data=job.recover_data, kd=job.recover_kd, batch_size=job.recover_batch_size,
                      device=job.device, dtype=job.dtype, checkpoint_dir=work_dir)


def _methods(job: PruneJob) -> list[str]:
    methods = [job.method]
    if job.compare:
        extra = ALL_METHODS if job.compare.strip() == "all" else [m.strip() for m in job.compare.split(",") if m.strip()]
        methods += [m for m in extra if m not in methods]
    return methods


def _score_config(job: PruneJob) -> ScoreConfig:
    return ScoreConfig(aggregate=job.aggregate, gmm_scope=job.gmm_scope, afr_recipe=job.afr_recipe, group=job.group,
                       seed=job.seed, accumulate=job.accumulate)


def validate(job: PruneJob) -> None:
    """Every check that needs no model: runs before anything is loaded."""
    base = _score_config(job)
    if job.nsamples < 1 or job.seqlen < 2:
        raise BadOptionError("--nsamples must be >= 1 and --seqlen >= 2")
    if job.limit is not None and job.limit < 1:
        raise BadOptionError(f"--limit must be >= 1, got {job.limit}")
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
    if job.tasks:
        from llmslim.eval.harness import check_data, resolve_tasks

        check_data(resolve_tasks(job.tasks))
    if not 0.0 < job.ratio < 1.0:
        raise BadOptionError(f"--ratio must be between 0 and 1 (exclusive), got {job.ratio}")
    if job.allocation not in ALLOCATIONS:
        raise BadOptionError(f"unknown --allocation {job.allocation!r}; use {', '.join(ALLOCATIONS)}")
    if job.bias_compensation not in BIAS_COMPENSATIONS:
        raise BadOptionError(f"unknown --bias-compensation {job.bias_compensation!r}; use {', '.join(BIAS_COMPENSATIONS)}")
    if job.reconstruct and job.bias_compensation == "on":
        raise BadOptionError("--reconstruct fits the output projection's bias itself: drop --bias-compensation on")
    if not 0.0 <= job.max_deviation < 1.0:
        raise BadOptionError(f"--max-deviation must be in [0, 1), got {job.max_deviation}")
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
    for m in _methods(job):
        parse_method(m, base)
    if job.recover_steps < 0:
        raise BadOptionError(f"--recover-steps must be >= 0, got {job.recover_steps}")
    if not job.recover_steps:
        for name, value, default in (("full", job.recover_full, False), ("data", job.recover_data, "wikitext2"),
                                     ("kd", job.recover_kd, None), ("batch-size", job.recover_batch_size, 4)):
            if value != default:
                raise BadOptionError(f"--recover-{name} needs --recover-steps N (N > 0)")
    if job.recover_steps and job.device_map == "auto":
        raise BadOptionError("--recover-steps trains on one device: prune with --device-map auto, then run `llmslim recover` on its output")
    if job.recover_steps and distributed.launched():
        raise BadOptionError("--recover-steps runs in one process: under torchrun, prune, then run `llmslim recover` on its output")
    if job.recover_steps:
        from llmslim.recover.jobs import validate as validate_recovery

        validate_recovery(_recover_job(job), flag_prefix="recover-")
    if job.save_scores is not None:
        check_creatable(job.save_scores)
    if job.scores:
        saved = read_stats(job.scores)[0]  # a bad file fails here
        if saved.meta.get("target", "ffn") != job.target:
            raise BadOptionError(f"{job.scores} holds {saved.meta.get('target', 'ffn')} scores, not --target {job.target}")
        if job.reconstruct and not saved.act_gram:
            raise BadOptionError(f"{job.scores} holds no Gram matrices (calibrated without --reconstruct): "
                                 "calibrate again with --reconstruct, or prune without it")
    check_spread_before_loading(job, "pruning")  # last: it builds the model on the meta device


GRAM_PHASE = "the Gram pass (--reconstruct)"


def memory_plan(job: PruneJob):
    """The expected peak (core/plan.py) of the job's most demanding phase: calibration, pruning
    with --compare's model copies, or recovery where --recover-steps asks for it; and the option
    that would make the job fit. -> (MemoryPlan, advice)."""
    from dataclasses import replace

    import torch

    from llmslim.core import plan as P
    from llmslim.core.device import parse_max_memory, resolve_device, resolve_dtype

    device = resolve_device(job.device)
    shapes = P.shapes_of(P.model_config(job.model))
    available = P.available_bytes(device, spread=job.device_map == "auto", max_memory=parse_max_memory(job.max_memory))

    def calibration(j: PruneJob) -> dict[str, int]:
        methods = _methods(j)
        need = {"snip": False, "refer": False} if j.scores else needs(methods)
        signed = 0
        if not j.scores and j.accumulate == "signed-sum":
            signed = int(need["snip"]) + int(need["refer"])
        elif not j.scores and any(m.startswith("llm-pruner") for m in methods):
            signed = 1
        # the per-window fold (and its GMM clipping) runs where a method aggregates per window
        keys = [] if j.scores else folded_keys(methods, _score_config(j))
        return P.prune_parts(shapes, weight_bytes=P.DTYPE_BYTES[resolve_dtype(j.dtype, device, "gradients")], seqlen=j.seqlen,
                             batch=1, refer=need["refer"], snip=need["snip"], signed_kinds=signed, device_type=device.type,
                             target=j.target, fold=bool(keys), gmm=any(k.partition(":")[2] in AFTER_CLIP for k in keys))

    weight_bytes = P.DTYPE_BYTES[resolve_dtype(job.dtype, device, "gradients")]
    phases = [P.MemoryPlan(str(device), calibration(job), available, "calibration"),
              P.MemoryPlan(str(device), P.compare_parts(shapes, weight_bytes=weight_bytes, copies=min(2, len(_methods(job)) - 1),
                                                        device_type=device.type), available, "pruning (--compare copies)")]
    if job.reconstruct and not job.scores:
        phases.append(P.MemoryPlan(str(device), _gram_plan(job, shapes, available)[0], available, GRAM_PHASE))
    if job.recover_steps:
        from llmslim.recover.jobs import memory_plan as recover_plan

        phases.append(recover_plan(_recover_job(job), shapes=shapes, teacher_shapes=shapes)[0])
    plan = max(phases, key=lambda p: p.total)
    if plan.phase == "training":
        lora = recover_plan(_recover_job(replace(job, recover_full=False)), shapes=shapes, teacher_shapes=shapes)[0]
        advice = ("without --recover-full (LoRA) it would fit" if job.recover_full and lora.fits
                  else "recover separately (`llmslim recover`, where --batch-size and --seqlen are options)")
        return plan, advice
    if (not plan.fits and device.type == "cuda" and job.device_map == "one" and torch.cuda.device_count() > 1
            and not distributed.launched() and not job.recover_steps):  # where auto is allowed
        spread = P.available_bytes(device, spread=True)
        if plan.total <= spread:
            return plan, f"--device-map auto would fit (the model over {torch.cuda.device_count()} GPUs, {spread / P.GiB:.0f} GiB free)"
    if plan.phase == GRAM_PHASE:  # one layer's matrix at a time beside the weights does not fit
        return plan, "without --reconstruct it would fit" if all(p.fits for p in phases if p is not plan) else "a device with more memory"
    if plan.phase != "calibration":
        return plan, "fewer --compare methods would fit" if phases[0].fits else "a device with more memory"
    candidates = []
    seqlen = job.seqlen
    while seqlen > 128:
        seqlen //= 2
        candidates.append((f"--seqlen {seqlen}", calibration(replace(job, seqlen=seqlen))))
    if resolve_dtype(job.dtype, device, "gradients") == torch.float32:
        candidates.append(("--dtype bfloat16", calibration(replace(job, dtype="bfloat16"))))
    if _methods(job) != ["wanda-sp"]:
        candidates.append(("--method wanda-sp --compare '' (no gradients)", calibration(replace(job, method="wanda-sp", compare=None))))
    return plan, P.first_that_fits(str(device), available, candidates)


def _gram_plan(job: PruneJob, shapes, available: int | None) -> tuple[dict[str, int], int]:
    """The Gram pass with as many layers at a time as `available` holds. -> (parts, layers per pass)"""
    from llmslim.core import plan as P
    from llmslim.core.device import resolve_device, resolve_dtype

    device = resolve_device(job.device)
    sizes = dict(weight_bytes=P.DTYPE_BYTES[resolve_dtype(job.dtype, device, "gradients")], seqlen=job.seqlen,
                 device_type=device.type, target=job.target)
    per_pass = P.gram_layers_per_pass(shapes, available, **sizes)
    return P.gram_parts(shapes, layers_per_pass=per_pass, **sizes), per_pass


def _collect_gram(job: PruneJob, ctx: Context, windows):
    """--reconstruct's Gram matrices, after the scoring pass has freed its per-weight scores: in
    as few forward passes as the memory free now allows."""
    import torch

    from llmslim.core import plan as P
    from llmslim.core.device import parse_max_memory

    device = next(ctx.model.parameters()).device
    if device.type == "cuda":
        torch.cuda.empty_cache()  # the scoring pass's freed blocks, still reserved by torch
    shapes = P.shapes_of(ctx.model.config)
    free = P.available_bytes(device, spread=job.device_map == "auto", max_memory=parse_max_memory(job.max_memory))
    parts = _gram_plan(job, shapes, None)[0]
    resident = parts["runtime"] + parts["weights"]  # in the plan, and in memory already
    per_pass = _gram_plan(job, shapes, None if free is None else free + resident)[1]
    # the same passes in every process (torchrun): each pass ends in a sum over them
    per_pass = distributed.from_main(min(mine) if (mine := distributed.gather_to_main(per_pass)) else None)
    passes = calibrate.gram_passes(shapes.layers, per_pass)
    advance = ctx.step(f"Gram matrices for --reconstruct (forward, {passes} pass{'es' * (passes > 1)})", passes * windows.shape[0])
    return calibrate.collect_gram(ctx.model, windows, target=job.target, layers_per_pass=per_pass, progress=advance)


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


def _evaluate(model, tokenizer, job: PruneJob, ppl_text: str | None, ctx: Context, row: str) -> dict:
    from llmslim.eval.run import summary_metrics

    return summary_metrics(model, tokenizer, ppl_text=ppl_text, ppl_seqlen=job.ppl_seqlen, ppl_limit=job.ppl_limit,
                           tasks=job.tasks, limit=job.limit, seed=job.seed, quiet=ctx.quiet, progress=ctx.progress,
                           label=f"({row})", per_item=True)


def _paired(row: dict, items: dict | None, **others: dict | None) -> None:
    """row["vs_dense"] (and the like, one per keyword): the paired difference of the row's mean
    headline accuracy from another row's, on the same documents (eval/paired.py): whether a
    pruned model is really worse than the dense one, or a recovery really better than none."""
    from llmslim.eval.paired import headline_difference

    for key, theirs in others.items():
        if items is not None and theirs is not None:  # per task asked for (summary_metrics)
            row[key] = headline_difference(items, theirs, list(items))


def _calibrate(job: PruneJob, ctx: Context, methods: list[str], base: ScoreConfig):
    """The scores of every method: read from --scores, or one calibration pass. -> (stats, description)."""
    if job.scores:
        stats, fingerprint = read_stats(job.scores)
        check_fingerprint(job.scores, fingerprint, ctx.model)
        return stats, f"scores from {job.scores}"
    calib = job.calib
    if calib == "auto":
        calib = "wikitext2" if (data_dir() / "wikitext2" / "wiki.test.raw").is_file() else "self"
    windows, desc = calibration_windows(ctx.model, ctx.tokenizer, calib, job.nsamples, job.seqlen, job.seed)
    clips = job.accumulate == "per-window" and any("gmm" in parse_method(m, base)[1].aggregate for m in methods)
    advance = ctx.step("calibrating (forward+backward" + (", GMM per window)" if clips else ")"), windows.shape[0])
    stats = collect_for(ctx.model, windows, methods, base, gmm_refit=job.gmm_refit, feature_mode=job.feature_mode,
                        snip_loss=job.snip_loss, target=job.target, progress=advance)
    if job.reconstruct:
        stats.act_gram = _collect_gram(job, ctx, windows)
    if job.save_scores and distributed.is_main():
        save_stats(job.save_scores, stats, ctx.model)
    return stats, desc


def run(job: PruneJob, ctx: Context) -> dict:
    base = _score_config(job)
    methods = _methods(job)
    model, tokenizer = ctx.model, ctx.tokenizer
    check_not_offloaded(model, "pruning")
    _check_units(model, job)
    t0 = time.perf_counter()
    stats, calib_desc = _calibrate(job, ctx, methods, base)
    ctx.timings["calibrate_s"] = time.perf_counter() - t0

    ppl_text = wikitext2_halves()[1] if job.ppl else None
    evaluate = (job.ppl or bool(job.tasks)) and distributed.is_main()  # the other processes only calibrate
    dense = {"method": "dense", "params": sum(p.numel() for p in model.parameters()), "width": None}
    rows = [dense] if evaluate else []
    if evaluate:
        t0 = time.perf_counter()
        dense["eval"] = _evaluate(model, tokenizer, job, ppl_text, ctx, "dense")
        ctx.timings["eval_dense_s"] = time.perf_counter() - t0
    dense_items = dense.get("eval", {}).pop("per_item", None)  # every document's score: paired differences

    # GMM clipping is the slow part of scoring: do it up front, once per input, with a bar
    t0 = time.perf_counter()
    for method in methods:
        name, cfg = parse_method(method, base)
        for which, per_layer in gmm_inputs(stats, name, cfg).items():
            clipped(stats, which, per_layer, cfg, progress=ctx.step(f"GMM clipping ({which} scores)", len(per_layer)))
    ctx.timings["gmm_s"] = time.perf_counter() - t0

    primary = None
    for i, method in enumerate(methods):
        pruned = model if i == len(methods) - 1 else copy.deepcopy(model)  # the last one may prune in place
        rep = prune_model(pruned, stats, PruneConfig(ratio=job.ratio, method=method, scores=base, allocation=job.allocation,
                                                     round_to=job.round_to, max_deviation=job.max_deviation,
                                                     bias_compensation=job.bias_compensation, reconstruct=job.reconstruct))
        row = {"method": method, "params": rep["params_after"], "width": _width(rep["widths"]), "score_s": rep["score_s"]}
        if evaluate:
            t0 = time.perf_counter()
            row["eval"] = _evaluate(pruned, tokenizer, job, ppl_text, ctx, method)
            ctx.timings[f"eval_{method}_s"] = time.perf_counter() - t0
        items = row.get("eval", {}).pop("per_item", None)
        _paired(row, items, vs_dense=dense_items)
        rows.append(row)
        if i == 0:
            primary, primary_row, primary_items = (pruned, rep), row, items
    shipped, recovery = primary[0], None
    if job.recover_steps:
        shipped, recovery = _recover(primary[0], job, ctx)
        if evaluate:
            from llmslim.recover.jobs import merged

            t0 = time.perf_counter()
            row = {"method": f"{methods[0]} + recover", "params": primary_row["params"], "width": primary_row["width"],
                   "eval": _evaluate(merged(shipped, job.recover_full), tokenizer, job, ppl_text, ctx, f"{methods[0]} + recover")}
            ctx.timings["eval_recovered_s"] = time.perf_counter() - t0
            _paired(row, row["eval"].pop("per_item", None), vs_dense=dense_items, vs_unrecovered=primary_items)
            rows.append(row)
    ctx.save(lambda folder: save_model(shipped, tokenizer, folder))
    return {
        "model": job.model, "ratio": job.ratio, "target": job.target, "allocation": job.allocation,
        "accumulate": job.accumulate,
        "calibration": {"source": calib_desc, "nsamples": stats.windows, "tokens": stats.tokens, **stats.meta},
        "params_before": dense["params"], "params_after": primary[1]["params_after"], "widths": primary[1]["widths"],
        "rows": rows, "recover": recovery, "peak_memory_mb": peak_memory_mb(ctx.loaded.device),
        "placement": placement(ctx.model),  # modules per GPU under --device-map auto
    }


def _recover(pruned, job: PruneJob, ctx: Context):
    """recover's training on the pruned model, the dense model (loaded again: the one in memory
    was pruned in place) as teacher. -> (the trained model, a PEFT one unless --recover-full;
    recover's summary)."""
    import tempfile

    from llmslim.recover.jobs import teacher_and_samples, train

    with tempfile.TemporaryDirectory(prefix="llmslim-recover-") as work:
        rjob = _recover_job(job, Path(work))
        teacher, windows = teacher_and_samples(rjob, ctx.tokenizer, pruned.config.vocab_size, ctx,
                                               "sampling the dense model (--recover-data self)")
        advance = ctx.step(f"recover ({'full' if rjob.full else 'LoRA'}, kd {rjob.kd_weight:g}, dense teacher)", rjob.max_steps)
        loaded_dtype = next(pruned.parameters()).dtype  # bf16 on CUDA (calibration): trained in fp32, saved as loaded
        trained, summary = train(pruned.float(), ctx.tokenizer, teacher, rjob, advance, windows)
        trained.to(loaded_dtype)
    ctx.timings["recover_s"] = summary.pop("train_s")
    del teacher
    return trained, summary


def _width(widths: list[int]):
    return widths[0] if len(set(widths)) == 1 else f"{min(widths)}-{max(widths)}"
