"""`llmslim eval MODEL`: options -> EvalConfig -> evaluate() -> table / JSON / --out folder."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from llmslim.core import report
from llmslim.core.load import load_model
from llmslim.core.options import DeviceOpt, DtypeOpt, ForceOpt, JsonOpt, ModelArg, OutOpt, QuietOpt, SeedOpt
from llmslim.core.outputs import atomic_dir, atomic_write_text, check_writable, to_jsonable, write_manifest
from llmslim.eval.harness import MAIN_TASKS
from llmslim.eval.run import CORPORA, PROMPT_SETS, EvalConfig, evaluate, prepare

TASKS = "Benchmarks (lm-eval)"
PPL = "Perplexity"
GEN = "Generation"


def eval_command(
    model: ModelArg = "smollm2-135m",
    tasks: Annotated[Optional[str], typer.Option("--tasks", "-t", help=f"Comma list of: {', '.join(MAIN_TASKS)} (also mmlu_<category>, mmlu_<subject>).", rich_help_panel=TASKS)] = None,
    limit: Annotated[Optional[int], typer.Option("--limit", "-l", help="Documents per task (the first N); default: all.", rich_help_panel=TASKS)] = None,
    num_fewshot: Annotated[Optional[int], typer.Option("--num-fewshot", help="Few-shot examples; default: each task's own (0).", rich_help_panel=TASKS)] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", help="Requests, windows or prompts per forward pass.", rich_help_panel=TASKS)] = 8,
    data_dir: Annotated[Optional[Path], typer.Option("--data-dir", help="Benchmark data folder (default: $LLMSLIM_DATA, else ../shared/data).", rich_help_panel=TASKS)] = None,
    ppl_file: Annotated[Optional[str], typer.Option("--ppl-file", help=f"Text corpus for perplexity: a file or {', '.join(CORPORA)}.", rich_help_panel=PPL)] = None,
    seqlen: Annotated[int, typer.Option("--seqlen", help="Perplexity window in tokens (capped at the model's context).", rich_help_panel=PPL)] = 2048,
    stride: Annotated[Optional[int], typer.Option("--stride", help="Sliding windows every N tokens; default: non-overlapping.", rich_help_panel=PPL)] = None,
    ppl_limit: Annotated[Optional[int], typer.Option("--ppl-limit", help="Perplexity windows (the first N); default: the whole corpus.", rich_help_panel=PPL)] = None,
    gen_file: Annotated[Optional[str], typer.Option("--gen-file", help=f"Prompts file for answer-length stats, or {', '.join(PROMPT_SETS)}.", rich_help_panel=GEN)] = None,
    gen_limit: Annotated[Optional[int], typer.Option("--gen-limit", help="Prompts (the first N); default: all.", rich_help_panel=GEN)] = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", help="Token limit per answer.", rich_help_panel=GEN)] = 256,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    seed: SeedOpt = 1234,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    out: OutOpt = None,
    force: ForceOpt = False,
) -> None:
    """Benchmark accuracy (lm-eval on local files), perplexity and answer length of a model.

    With no --tasks, --ppl-file or --gen-file: WikiText-2 perplexity.
    """
    report.setup_logging(quiet or json_out)
    cfg = EvalConfig(
        tasks=tasks.split(",") if tasks is not None else [], limit=limit, num_fewshot=num_fewshot,
        batch_size=batch_size, ppl_file=ppl_file, seqlen=seqlen, stride=stride, ppl_limit=ppl_limit,
        gen_file=gen_file, gen_limit=gen_limit, max_new_tokens=max_new_tokens,
        data_dir=str(data_dir) if data_dir else None, seed=seed,
    )
    plan = prepare(cfg)  # bad options and files fail here, before the model loads
    if out is not None:
        check_writable(out, force)
    t0 = time.perf_counter()
    loaded = load_model(model, device=device, dtype=dtype, purpose="inference")
    result = evaluate(loaded.model, loaded.tokenizer, plan, show_progress=not quiet)
    result["config"].update({
        "model": loaded.name, "model_path": loaded.path, "device": str(loaded.device),
        "dtype": str(loaded.dtype).replace("torch.", ""),
    })
    result["timings"] = {"load_s": loaded.timings.get("load_s"), **result["timings"], "total_s": time.perf_counter() - t0}
    samples = result.pop("samples", {})

    if out is not None:
        with atomic_dir(out, force=force) as tmp:
            atomic_write_text(tmp / "results.json", json.dumps(to_jsonable(result), indent=2) + "\n")
            if samples.get("generation"):
                lines = [json.dumps(to_jsonable(s), ensure_ascii=False) for s in samples["generation"]]
                atomic_write_text(tmp / "generations.jsonl", "\n".join(lines) + "\n")
            write_manifest(tmp, command="eval", args=result["config"], seed=seed, timings=result["timings"], results=summary(result))
    if json_out:
        report.print_json(result)
        return
    report.stdout.print(table(result))
    if out is not None and not quiet:
        report.stderr.print(f"wrote {out}/results.json")


def summary(result: dict) -> dict:
    """The headline numbers: one per task and metric, perplexity, mean answer length."""
    flat = {f"{task}/{m}": v for task, metrics in result["results"].items() for m, v in metrics.items() if not m.endswith("_stderr")}
    if "perplexity" in result:
        flat[f"{result['perplexity']['corpus']}/perplexity"] = result["perplexity"]["perplexity"]
    if "generation" in result:
        flat[f"{result['generation']['prompt_set']}/mean_tokens"] = result["generation"]["mean_tokens"]
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
