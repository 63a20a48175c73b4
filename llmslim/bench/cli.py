"""`llmslim bench MODEL [--against MODEL2]`: size, peak memory, prefill and decode speed.

Thin: options -> BenchJob -> core/job.run_command(BENCH) -> table or JSON (and --out files)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Annotated, Optional

import typer
from rich.markup import escape

from llmslim.bench.run import BenchConfig, auto_threads, batch_sizes, check_spec, load_subject, run, steps
from llmslim.bench.speed import SpeedConfig
from llmslim.core import report
from llmslim.core.errors import BadOptionError
from llmslim.core.job import Command, CommonOptions, Context, run_command
from llmslim.core.options import DEVICE, DEVICE_MAP, DeviceMapOpt, MaxMemoryOpt, DTYPE, MODEL, SEED, DeviceOpt, DtypeOpt, ForceOpt, JsonOpt, OutOpt, QuietOpt, SeedOpt

log = logging.getLogger(__name__)

SPEED = "Speed run"
MIB = 2**20

ModelOrRandomArg = Annotated[str, typer.Argument(
    help="Alias (smollm2-135m, gemma3-270m), local HF folder, .gguf file, hub id, or a random-weight "
         "model: random:llama-1b, random:llama3-8b, random:smollm2-135m, random:gemma3-270m, random:tiny, "
         "with overrides like 'random:llama-1b?intermediate_size=4096'.")]


@dataclass(kw_only=True)
class BenchJob(CommonOptions):
    model: str = MODEL
    against: str | None = None
    batch_size: int = 4
    prompt_len: int = 64
    new_tokens: int = 16
    repeats: int = 3
    warmup: int = 1
    compile: bool = False
    static_cache: bool = False
    split: bool = False
    threads: int | None = None

    def config(self) -> BenchConfig:
        speed = SpeedConfig(prompt_len=self.prompt_len, new_tokens=self.new_tokens, repeats=self.repeats, warmup=self.warmup,
                            cache="static" if self.static_cache else "dynamic", compile=self.compile, seed=self.seed)
        return BenchConfig(speed, batch_sizes(self.batch_size), self.split)


def bench(
    model: ModelOrRandomArg = MODEL,
    against: Annotated[Optional[str], typer.Option("--against", "-a", help="A second model, measured in the same run (interleaved); ratios are against / MODEL.")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", help="Measure at batch 1 and at this batch size (1: batch 1 only).", rich_help_panel=SPEED)] = 4,
    prompt_len: Annotated[int, typer.Option("--prompt-len", help="Prompt tokens (random ids) per sequence.", rich_help_panel=SPEED)] = 64,
    new_tokens: Annotated[int, typer.Option("--new-tokens", help="Tokens generated per sequence: 1 from the prefill, the rest timed as decode.", rich_help_panel=SPEED)] = 16,
    repeats: Annotated[int, typer.Option("--repeats", "-r", help="Timed runs per model and batch size; the median is reported.", rich_help_panel=SPEED)] = 3,
    warmup: Annotated[int, typer.Option("--warmup", help="Untimed runs first.", rich_help_panel=SPEED)] = 1,
    compile: Annotated[bool, typer.Option("--compile", help="Static KV cache + torch.compile of the decode step (falls back to eager if compiling fails).", rich_help_panel=SPEED)] = False,
    static_cache: Annotated[bool, typer.Option("--static-cache", help="Preallocated (static) KV cache, without compiling.", rich_help_panel=SPEED)] = False,
    split: Annotated[bool, typer.Option("--split", help="Also time attention / FFN / lm_head / other with forward hooks (one extra eager run).", rich_help_panel=SPEED)] = False,
    threads: Annotated[Optional[int], typer.Option("--threads", help="CPU threads for torch (default: one per core, fewer when the load average shows other jobs).", rich_help_panel=SPEED)] = None,
    json: JsonOpt = False,
    quiet: QuietOpt = False,
    seed: SeedOpt = SEED,
    device: DeviceOpt = DEVICE,
    device_map: DeviceMapOpt = DEVICE_MAP,
    max_memory: MaxMemoryOpt = None,
    dtype: DtypeOpt = DTYPE,
    out: OutOpt = None,
    force: ForceOpt = False,
) -> None:
    """Parameters, on-disk size, peak memory, prefill and decode tokens/s at batch 1 and N; with --against, both models and their ratios."""
    if quiet or json:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    job = BenchJob(model=model, against=against, batch_size=batch_size, prompt_len=prompt_len, new_tokens=new_tokens,
                   repeats=repeats, warmup=warmup, compile=compile, static_cache=static_cache, split=split, threads=threads,
                   out=out, force=force, seed=seed, device=device, device_map=device_map, max_memory=max_memory, dtype=dtype)
    run_command(BENCH, job, json_out=json, quiet=quiet)


def validate(job: BenchJob) -> None:
    job.config()  # bad speed options and batch sizes fail here
    if job.threads is not None and job.threads < 1:
        raise BadOptionError(f"--threads must be at least 1, got {job.threads}")
    for spec in ([job.against] if job.against else []) + [job.model]:
        check_spec(spec)  # a typo in --against fails before MODEL spends a minute loading


def run_bench(job: BenchJob, ctx: Context) -> dict:
    """Loads both subjects itself (random-weight models are not load_model's), threads first."""
    import torch

    from llmslim.core.device import parse_max_memory, resolve_device

    cfg = job.config()
    n_threads, why = (job.threads, None) if job.threads else auto_threads(resolve_device(job.device).type)  # before loading adds load
    torch.set_num_threads(n_threads)
    if why:
        log.warning(why)
    t0 = time.perf_counter()
    specs = [job.model] + ([job.against] if job.against else [])
    advance = ctx.step("loading", len(specs))
    max_memory = parse_max_memory(job.max_memory)
    subjects = []
    for spec in specs:
        subjects.append(load_subject(spec, device=job.device, dtype=job.dtype, seed=job.seed, device_map=job.device_map,
                                     max_memory=max_memory))
        advance()
    ctx.timings["load_s"] = time.perf_counter() - t0
    task = ctx.progress.add_task("bench", total=steps(cfg, len(subjects)))
    results = run(subjects, cfg, progress=lambda what: ctx.progress.update(task, advance=1, description=what))
    results["environment"]["threads_reduced"] = why
    results["timings"] = {"bench_s": results.pop("bench_s")}
    results["summary"] = {"models": [m["name"] for m in results["models"]], "ratios": results["ratios"]}
    return results


# ---------------------------------------------------------------- rendering
def _mib(value) -> str:
    return "-" if value is None else f"{value / MIB:,.1f} MiB"


def _num(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.1f}" if x >= 10 else f"{x:.2f}"


def _speed(result: dict, key: str) -> str:
    lo, hi = result[f"{key}_range"]
    return f"{_num(result[key])} ±{50 * (hi - lo) / result[key]:.0f}%"


def _versus(against_over_model, key: str) -> str:
    """MODEL against --against in words: speeds as "1.25× faster" / "1.03× slower" (MODEL's
    speed over the other's), sizes and memory as MODEL's share of the other's ("0.882×")."""
    v = against_over_model
    if v is None or v == 0:
        return "-"
    if key.startswith(("prefill_tok_s", "decode_tok_s")):
        return f"{1 / v:.2f}× faster" if v <= 1 else f"{v:.2f}× slower"
    return f"{1 / v:.3f}×"


def render(results: dict) -> None:
    models = results["models"]
    base = models[0]
    ratio = results["ratios"].get(models[1]["name"]) if len(models) > 1 else None
    columns = ["", "model"] + (["against", "model vs against"] if ratio else [])

    def row(label, values, key):
        return [label] + values + ([_versus(ratio.get(key), key)] if ratio else [])

    rows = [
        row("parameters", [f"{m['params'] / 1e6:,.1f}M" for m in models], "params"),
        row("on disk", [_mib(m["disk_bytes"]) for m in models], "disk_bytes"),
    ]
    if any(m.get("source_bytes") for m in models):
        rows.append(row("  its source .gguf", [_mib(m.get("source_bytes")) for m in models], "source_bytes"))
    rows.append(row("weights in memory", [_mib(m["weights_bytes"]) for m in models], "weights_bytes"))
    s = results["settings"]
    for b in s["batch_sizes"]:
        per = [m["batches"][str(b)] for m in models]
        rows += [
            row(f"prefill tok/s, b={b}", [_speed(r, "prefill_tok_s") for r in per], f"prefill_tok_s@{b}"),
            row(f"decode tok/s, b={b}", [_speed(r, "decode_tok_s") for r in per], f"decode_tok_s@{b}"),
            row(f"peak memory, b={b}", [_mib((r.get("memory") or {}).get("peak_bytes")) for r in per], f"peak_bytes@{b}"),
        ]
    runs = [m["batches"][str(b)] for m in models for b in s["batch_sizes"]]
    compiled = [r["compiled"] for r in runs]
    dtypes = "/".join(dict.fromkeys(m["dtype"] for m in models))
    how = f"{dtypes}, {s['cache']} KV cache, " + ("torch.compile'd decode" if all(compiled) else "eager" if not any(compiled) else "compiled where it worked")
    compile_s = sum(r.get("compile_s") or 0.0 for r in runs)
    if compile_s:
        how += f" (compiling took {compile_s:.0f} s)"
    notes = {r.get("note") for r in runs} - {None}
    method = (runs[0].get("memory") or {}).get("method", "not measured")
    title = f"llmslim bench on {base['device']}: model = {base['name']}" + (f", against = {models[1]['name']}" if ratio else "")
    t = report.table(title, columns, rows)
    t.caption = escape(
        f"b = batch size; prompt {s['prompt_len']} random tokens, {s['new_tokens']} new tokens (1 from the prefill); "
        f"speeds: median ± half the min-max spread of {s['repeats']} interleaved runs; {_env(results['environment'])}; {how}. "
        f"Peak memory = weights + largest increase during a run ({method})."
        + "".join(f" NOTE: {n}" for n in sorted(notes))
    )
    t.caption_justify = "left"
    report.stdout.print(t)
    if s["split"]:
        for b in s["batch_sizes"]:
            report.stdout.print(_split_table(models, b))


def _env(env: dict) -> str:
    load = env.get("loadavg_1min") or [None]
    busy = f", load {load[0]:.1f} on {env['cpu_count']} cores" if env["device"] == "cpu" and load[0] is not None else ""
    reduced = " (fewer because the machine is busy)" if env.get("threads_reduced") else ""
    return f"{env['threads']} thread(s){reduced}{busy}"


def _ms(value: float) -> str:
    return f"{value:,.0f} ms" if value >= 100 else f"{value:.1f} ms"


def _split_table(models: list[dict], b: int):
    from llmslim.bench.split import PARTS

    columns = ["part", "model prefill", "model decode"] + (["against prefill", "against decode"] if len(models) > 1 else [])
    rows = []
    for part in PARTS + ("total",):
        cells = [part]
        for m in models:
            split = m["batches"][str(b)]["split"]
            for phase in ("prefill", "decode"):
                p = split[phase]
                if part == "total":
                    cells.append(_ms(1000 * p["total_s"] / max(p["calls"], 1)))
                else:
                    ms = p["ms_per_call"][part]
                    cells.append(f"{100 * p['fraction'][part]:.0f}% {_ms(ms)}")
        rows.append(cells)
    t = report.table(f"time split, b={b}: share of the forward time (ms per model call), one hooked eager run", columns, rows)
    return t


BENCH = Command("bench", validate, run_bench, render, model_purpose=None)
