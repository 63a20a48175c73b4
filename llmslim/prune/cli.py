"""`llmslim prune MODEL`: options -> PruneJob -> core/job.run_command(PRUNE) -> table or JSON."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Annotated, Optional

import typer

from llmslim.core import report
from llmslim.core.job import Command, run_command
from llmslim.core.presets import apply_preset, typed_on_command_line
from llmslim.core.options import (DEVICE, DEVICE_MAP, DeviceMapOpt, MaxMemoryOpt, DTYPE, MODEL, SEED, TRAINING, DeviceOpt, DryRunOpt, DtypeOpt, ForceOpt, JsonOpt, LimitOpt, ModelArg,
                                  OutOpt, PplLimitOpt, PplOpt, PplSeqlenOpt, QuietOpt, SeedOpt, TasksOpt)
from llmslim.prune.allocate import MAX_DEVIATION
from llmslim.prune.jobs import PruneJob, memory_plan, run, validate

METHOD = "Method"
CALIB = "Calibration"


def prune(
    ctx: typer.Context,
    model: ModelArg = MODEL,
    preset: Annotated[Optional[str], typer.Option(help="A named recipe (llmslim/prune/presets/NAME.yaml: afr-paper, afr-reference, afr-adaptive, flap-recover, afr-recover); options typed here win over it.", rich_help_panel=METHOD)] = None,
    ratio: Annotated[float, typer.Option(help="Fraction of FFN neurons (or kv groups) to remove (AFR paper: 0.2, 0.5).", rich_help_panel=METHOD)] = 0.2,
    target: Annotated[str, typer.Option(help="'ffn' neurons (the paper), or 'attn': whole kv groups with their query heads (GQA-aware).", rich_help_panel=METHOD)] = "ffn",
    method: Annotated[str, typer.Option(help="Score: afr, snip, refer, magnitude, wanda-sp, flap, llm-pruner-vector, llm-pruner-element; 'afr:mean-abs' picks an aggregation.", rich_help_panel=METHOD)] = "afr",
    aggregate: Annotated[str, typer.Option(help="Weight->neuron aggregation: abs+gmm (paper), abs, gmm, mean-abs, trim.", rich_help_panel=METHOD)] = "abs+gmm",
    gmm_scope: Annotated[str, typer.Option(help="GMM clipping per 'neuron' (paper) or per 'layer' (reference code).", rich_help_panel=METHOD)] = "neuron",
    afr_recipe: Annotated[str, typer.Option(help="'paper': z-score per weight then aggregate; 'reference': AFR-St code (aggregate, square SNIP, z-score).", rich_help_panel=METHOD)] = "paper",
    group: Annotated[str, typer.Option(help="A neuron's weights: 'concat' gate|up|down, or 'sum' them elementwise (reference code).", rich_help_panel=METHOD)] = "concat",
    accumulate: Annotated[str, typer.Option(help="'per-window': aggregate each window's scores per neuron, sum over windows (AFR reference code); 'signed-sum': sum signed per-weight scores over windows, aggregate once.", rich_help_panel=METHOD)] = "per-window",
    gmm_refit: Annotated[str, typer.Option(help="Per-window GMM: fit on 'every' window, or fit 'once' on the first and reuse the mixture.", rich_help_panel=METHOD)] = "every",
    feature_mode: Annotated[str, typer.Option(help="ReFer feature matrix: 'flat' (reference code: batch x all) or 'tokens' (tokens x features per window; slower).", rich_help_panel=METHOD)] = "flat",
    snip_loss: Annotated[str, typer.Option(help="SNIP's loss: 'next-token' cross-entropy, or 'reference' (AFR-St code: the last position's logits against the last input token, unshifted).", rich_help_panel=CALIB)] = "next-token",
    allocation: Annotated[str, typer.Option(help="'uniform' ratio per layer, one 'global' threshold, or 'adaptive': per-layer ratios from each layer's mean score (OWL's rule), within --ratio +- --max-deviation, same total.", rich_help_panel=METHOD)] = "uniform",
    max_deviation: Annotated[float, typer.Option(help="--allocation adaptive: how far a layer's ratio may move from --ratio.", rich_help_panel=METHOD)] = MAX_DEVIATION,
    round_to: Annotated[int, typer.Option(help="Round kept widths to a multiple of N (8, 64, 128).", rich_help_panel=METHOD)] = 1,
    bias_compensation: Annotated[str, typer.Option(help="FLAP's bias compensation (the removed neurons' mean output becomes a bias of the output projection): 'auto' (method flap only), 'on' (every method), 'off'.", rich_help_panel=METHOD)] = "auto",
    reconstruct: Annotated[bool, typer.Option(help="Refit each output projection (FFN down_proj, or o_proj) on the channels it keeps: least squares on the calibration inputs, with a bias, ridge toward the original weights (replaces --bias-compensation). A forward pass after calibration sums each layer's E[x x^T]: width^2 x 8 bytes a layer (19 MB for SmolLM2's FFN; 1.6 GB for Llama-3-8B's), as many layers a pass as fit (--dry-run counts them).", rich_help_panel=METHOD)] = False,
    compare: Annotated[Optional[str], typer.Option(help="Also prune with these methods (comma list, or 'all') on the same scores and report them side by side.", rich_help_panel=METHOD)] = None,
    calib: Annotated[str, typer.Option(help="'auto' (WikiText-2 first half if the shared data exists, else self), 'self' (sampled from the model), 'wikitext2', or a corpus file.", rich_help_panel=CALIB)] = "auto",
    nsamples: Annotated[int, typer.Option(help="Calibration windows (paper: 128).", rich_help_panel=CALIB)] = 128,
    seqlen: Annotated[int, typer.Option(help="Tokens per window (paper: 1024).", rich_help_panel=CALIB)] = 1024,
    save_scores: Annotated[Optional[Path], typer.Option(help="Write the calibration scores here for re-pruning.", rich_help_panel=CALIB)] = None,
    scores: Annotated[Optional[Path], typer.Option(help="Reuse scores from --save-scores: no forward/backward pass.", rich_help_panel=CALIB)] = None,
    recover_steps: Annotated[int, typer.Option(help="After pruning, run `llmslim recover` for N steps, the dense model as teacher (recover's defaults: LoRA r 8, kd 0.5, WikiText-2 first half, batch 4; the --recover-* options change them) and save the recovered model; 0: no recovery.", rich_help_panel=TRAINING)] = 0,
    recover_full: Annotated[bool, typer.Option(help="--recover-steps: train every weight (recover --full) instead of LoRA adapters.", rich_help_panel=TRAINING)] = False,
    recover_data: Annotated[str, typer.Option(help="--recover-steps: recover's --data (wikitext2, alpaca, self: samples of the dense model, a file, a comma list).", rich_help_panel=TRAINING)] = "wikitext2",
    recover_kd: Annotated[Optional[float], typer.Option(help="--recover-steps: recover's --kd (default 0.5: half KL to the dense model, half next-token loss).", rich_help_panel=TRAINING)] = None,
    recover_batch_size: Annotated[int, typer.Option(help="--recover-steps: recover's --batch-size (windows of 256 tokens a step).", rich_help_panel=TRAINING)] = 4,
    tasks: TasksOpt = None,
    limit: LimitOpt = None,
    ppl: PplOpt = False,
    ppl_seqlen: PplSeqlenOpt = 1024,
    ppl_limit: PplLimitOpt = None,
    dry_run: DryRunOpt = False,
    out: OutOpt = None,
    force: ForceOpt = False,
    json: JsonOpt = False,
    quiet: QuietOpt = False,
    seed: SeedOpt = SEED,
    device: DeviceOpt = DEVICE,
    device_map: DeviceMapOpt = DEVICE_MAP,
    max_memory: MaxMemoryOpt = None,
    dtype: DtypeOpt = DTYPE,
) -> None:
    """Remove FFN neurons (or attention kv groups) by AFR or a baseline; save a smaller model transformers loads."""
    values = dict(
        model=model, ratio=ratio, target=target, method=method, aggregate=aggregate, gmm_scope=gmm_scope, afr_recipe=afr_recipe,
        group=group, accumulate=accumulate, gmm_refit=gmm_refit, feature_mode=feature_mode, snip_loss=snip_loss, allocation=allocation, max_deviation=max_deviation, round_to=round_to, bias_compensation=bias_compensation, reconstruct=reconstruct, compare=compare,
        calib=calib, nsamples=nsamples, seqlen=seqlen, save_scores=save_scores, scores=scores, recover_steps=recover_steps, recover_full=recover_full,
        recover_data=recover_data, recover_kd=recover_kd, recover_batch_size=recover_batch_size,
        tasks=tasks, limit=limit, ppl=ppl, ppl_seqlen=ppl_seqlen, ppl_limit=ppl_limit,
        out=out, force=force, seed=seed, device=device, device_map=device_map, max_memory=max_memory, dtype=dtype, dry_run=dry_run,
    )
    job = PruneJob(**apply_preset(values, "llmslim.prune", preset, typed_on_command_line(ctx), PRESET_FIELDS), preset=preset)
    run_command(PRUNE, job, json_out=json, quiet=quiet)


def render(result: dict) -> None:
    rows = []
    metrics = sorted({k for r in result["rows"] for k in r.get("eval", {})})
    paired = any("vs_dense" in r for r in result["rows"])
    for r in result["rows"]:
        d = r.get("vs_dense")
        rows.append([r["method"], r["params"], r.get("width")] + [r.get("eval", {}).get(m) for m in metrics]
                    + ([f"{d['diff']:+.4f} ± {d['stderr']:.4f}" if d else ""] if paired else []))
    report.stdout.print(report.table(
        f"prune {result['model']} (ratio {result['ratio']}, {result['allocation']}, calib: {result['calibration']['source']})",
        ["method", "params", "kv groups" if result.get("target") == "attn" else "ffn width"] + metrics
        + (["accuracy vs dense (paired)"] if paired else []), rows,
    ))
    t = result["timings"]
    report.stdout.print(
        f"calibration {t.get('calibrate_s', 0):.1f}s, peak memory {result['peak_memory_mb']:.0f} MiB"
        + (f", saved to {result['out']}" if result.get("out") else "")
    )


# what a preset may set: the method and its budget, not where outputs go or how they print
PRESET_FIELDS = {f.name for f in fields(PruneJob)} - {"model", "out", "force", "preset", "save_scores", "scores", "device", "dtype",
                                                     "device_map", "max_memory", "dry_run"}
PRUNE = Command("prune", validate, run, render, model_purpose="gradients", distributed=True, plan=memory_plan)
