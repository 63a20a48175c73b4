"""`llmslim eval MODEL [--against MODEL2]`: options -> EvalJob -> core/job.run_command(EVAL_COMMAND) -> table or JSON."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Optional

import typer

from llmslim.core import report
from llmslim.core.job import Command, Context, run_command
from llmslim.core.errors import BadOptionError
from llmslim.core.load import placement, resolve_model
from llmslim.core.options import (DEVICE, DEVICE_MAP, DeviceMapOpt, MaxMemoryOpt, DTYPE, MODEL, SEED, BatchSizeOpt, DeviceOpt, DtypeOpt, ForceOpt, JsonOpt, LimitOpt,
                                  MaxNewTokensOpt, ModelArg, OutOpt, PplLimitOpt, PplSeqlenOpt, QuietOpt, SeedOpt, TasksOpt)
from llmslim.core.outputs import to_jsonable
from llmslim.eval.paired import compare
from llmslim.eval.run import CORPORA, PROMPT_SETS, EvalConfig, evaluate, prepare

PPL = "Perplexity"
GEN = "Generation"


@dataclass
class EvalJob(EvalConfig):
    """What `evaluate` needs, and which model with which common options."""

    model: str = MODEL
    against: str | None = None  # a second model scored on the same documents (paired differences)
    out: Path | None = None
    force: bool = False
    device: str = DEVICE
    dtype: str = DTYPE
    device_map: str = DEVICE_MAP
    max_memory: str | None = None


def eval_command(
    model: ModelArg = MODEL,
    against: Annotated[Optional[str], typer.Option(
        "--against", "-a", help="A second model (the dense one, say) scored on the same documents: each task's "
        "difference MODEL - AGAINST with its paired standard error. Needs --tasks.")] = None,
    tasks: TasksOpt = None,
    limit: LimitOpt = None,
    num_fewshot: Annotated[Optional[int], typer.Option("--num-fewshot", help="Few-shot examples; default: each task's own (0).")] = None,
    batch_size: BatchSizeOpt = 8,
    data_dir: Annotated[Optional[Path], typer.Option("--data-dir", help="Benchmark data folder (default: $LLMSLIM_DATA, else ../shared/data).")] = None,
    ppl_file: Annotated[Optional[str], typer.Option("--ppl-file", help=f"Text corpus for perplexity: a file or {', '.join(CORPORA)}.", rich_help_panel=PPL)] = None,
    ppl_seqlen: PplSeqlenOpt = 2048,
    stride: Annotated[Optional[int], typer.Option("--stride", help="Sliding windows every N tokens; default: non-overlapping.", rich_help_panel=PPL)] = None,
    ppl_limit: PplLimitOpt = None,
    gen_file: Annotated[Optional[str], typer.Option("--gen-file", help=f"Prompts file for answer-length stats, or {', '.join(PROMPT_SETS)}.", rich_help_panel=GEN)] = None,
    gen_limit: Annotated[Optional[int], typer.Option("--gen-limit", help="Prompts (the first N); default: all.", rich_help_panel=GEN)] = None,
    max_new_tokens: MaxNewTokensOpt = 256,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    seed: SeedOpt = SEED,
    device: DeviceOpt = DEVICE,
    device_map: DeviceMapOpt = DEVICE_MAP,
    max_memory: MaxMemoryOpt = None,
    dtype: DtypeOpt = DTYPE,
    out: OutOpt = None,
    force: ForceOpt = False,
) -> None:
    """Benchmark accuracy (lm-eval on local files), perplexity and answer length of a model.

    With no --tasks, --ppl-file or --gen-file: WikiText-2 perplexity. With --against, both models
    run the same options, one after the other, and their task scores are compared document by
    document.
    """
    job = EvalJob(
        tasks=tasks.split(",") if tasks is not None else [], limit=limit, num_fewshot=num_fewshot,
        batch_size=batch_size, ppl_file=ppl_file, ppl_seqlen=ppl_seqlen, stride=stride, ppl_limit=ppl_limit,
        gen_file=gen_file, gen_limit=gen_limit, max_new_tokens=max_new_tokens,
        data_dir=str(data_dir) if data_dir else None, seed=seed,
        model=model, against=against, out=out, force=force, device=device, device_map=device_map, max_memory=max_memory, dtype=dtype,
    )
    run_command(EVAL_COMMAND, job, json_out=json_out, quiet=quiet)


def validate(job: EvalJob) -> None:
    plan = prepare(job)  # bad options and files fail here, before the model loads
    if job.against is not None:
        if not plan.tasks:
            raise BadOptionError("--against compares task scores document by document: give --tasks")
        resolve_model(job.against)  # a typo in --against fails before MODEL loads


def run(job: EvalJob, ctx: Context) -> dict:
    plan = prepare(job)
    paired = job.against is not None
    result = evaluate(ctx.model, ctx.tokenizer, plan, show_progress=not ctx.quiet, progress=ctx.progress, per_item=paired)
    result["config"].update({"model": ctx.loaded.name, "model_path": ctx.loaded.path, "device": str(ctx.loaded.device),
                             "placement": placement(ctx.model),
                             "dtype": str(ctx.loaded.dtype).replace("torch.", "")})
    generations = result.pop("samples", {}).get("generation")
    if generations:
        lines = [json.dumps(to_jsonable(s), ensure_ascii=False) for s in generations]
        ctx.save(lambda folder: (folder / "generations.jsonl").write_text("\n".join(lines) + "\n"))
    if paired:
        against = evaluate_against(job, plan, ctx)
        mine, theirs = result.pop("per_item"), against.pop("per_item")
        result["against"] = against
        result["paired"] = compare(mine, theirs, plan.tasks)
        items = {"model": mine, "against": theirs}  # every document's score, for any later comparison
        ctx.save(lambda folder: (folder / "items.json").write_text(json.dumps(items) + "\n"))
    result["summary"] = summary(result)
    return result


def evaluate_against(job: EvalJob, plan, ctx: Context) -> dict:
    """--against: the second model loaded like the first (device, dtype, placement) and run on the
    same plan; its results, perplexity and generation stats, without its answers."""
    from llmslim.core.device import parse_max_memory
    from llmslim.core.load import load_model

    t0 = time.perf_counter()
    loaded = load_model(job.against, device=job.device, dtype=job.dtype, purpose="inference", device_map=job.device_map,
                        max_memory=parse_max_memory(job.max_memory))
    ctx.timings["load_against_s"] = time.perf_counter() - t0
    out = evaluate(loaded.model, loaded.tokenizer, plan, show_progress=not ctx.quiet, progress=ctx.progress, per_item=True)
    out.pop("samples", None)
    out.pop("config")
    return {"model": loaded.name, "model_path": loaded.path, **out}


def render(result: dict) -> None:
    report.stdout.print(table(result))
    if "against" in result:
        report.stdout.print(paired_table(result))


def paired_table(result: dict):
    """MODEL against --against, document by document: the difference and both standard errors
    (the unpaired one is what comparing the two printed stderrs would suggest)."""
    rows = []
    for key, d in result["paired"].items():
        task, metric = key.split("/", 1) if key != "mean" else ("mean", f"headline ({len(d['of'])} tasks)")
        rows.append([task, metric, d["a"], d["b"], f"{d['diff']:+.4f}", d["stderr"], d["unpaired_stderr"], d["items"]])
    if "perplexity" in result:
        mine, theirs = result["perplexity"]["perplexity"], result["against"]["perplexity"]["perplexity"]
        rows.append([result["perplexity"]["corpus"], "perplexity", mine, theirs, f"{mine - theirs:+.4f}", None, None,
                     f"{result['perplexity']['windows']} windows"])
    title = f"{result['config']['model']} - {result['against']['model']}, on the same documents"
    return report.table(title, ["task", "metric", "model", "against", "difference", "± paired stderr", "± unpaired", "n"], rows)


def summary(result: dict) -> dict:
    """The headline numbers: one per task and metric, perplexity, mean answer length; with
    --against, each paired difference and its standard error."""
    flat = {f"{task}/{m}": v for task, metrics in result["results"].items() for m, v in metrics.items() if not m.endswith("_stderr")}
    if "perplexity" in result:
        flat[f"{result['perplexity']['corpus']}/perplexity"] = result["perplexity"]["perplexity"]
    if "generation" in result:
        flat[f"{result['generation']['prompt_set']}/mean_tokens"] = result["generation"]["mean_tokens"]
    for key, d in result.get("paired", {}).items():
        flat[f"vs_against/{key}"] = d["diff"]
        flat[f"vs_against/{key}_stderr"] = d["stderr"]
    return flat


def table(result: dict):
    cfg = result["config"]
    rows = []
    groups = set(result.get("groups", []))
    shown = [t for t in result["results"] if t in cfg["tasks"] or t in groups]
    for task in shown:
        n = result.get("n-samples", {}).get(task, {}).get("effective")
        for metric, value in result["results"][task].items():
            if metric.endswith("_stderr"):
                continue
            rows.append([task, metric, value, result["results"][task].get(f"{metric}_stderr"), n])
    if "perplexity" in result:
        p = result["perplexity"]
        rows.append([p["corpus"], f"perplexity (seqlen {p['seqlen']}{', stride ' + str(p['stride']) if p['stride'] else ''})", p["perplexity"], None, f"{p['windows']} windows"])
    if "generation" in result:
        g = result["generation"]
        rows.append([g["prompt_set"], "mean output tokens", g["mean_tokens"], None, g["prompts"]])
        rows.append([g["prompt_set"], "median output tokens", float(g["median_tokens"]), None, g["prompts"]])
        rows.append([g["prompt_set"], "stopped on EOS", g["finished"], None, g["prompts"]])
    shots = f", {cfg['num_fewshot']}-shot" if cfg.get("num_fewshot") else ""
    return report.table(f"{cfg.get('model')}{shots}", ["task", "metric", "value", "± stderr", "n"], rows)


EVAL_COMMAND = Command("eval", validate, run, render, model_purpose="inference")
