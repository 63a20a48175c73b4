"""AFR Table 2/3 analogue on SmolLM2-135M-Instruct: every AFR aggregation and every baseline,
in both accumulation orders, pruned from one calibration pass; with --recover-steps N each
pruned model is also recovered (recover/jobs.train: LoRA or --recover-full, KD from the dense
model) with the same budget and evaluated again.

    .venv/bin/python benchmarks/prune_table.py                       # paper setting (slow on CPU)
    .venv/bin/python benchmarks/prune_table.py --nsamples 32 --seqlen 512 --tasks "" --ppl-limit 16 \
        --methods "$(python benchmarks/prune_table.py --print-orders)"

Method specs: "afr:abs" (per-window accumulation, the default), "afr:abs@signed-sum" (the
other order), "@reference" / "@sum" pick --afr-recipe / --group (the AFR-St code is
"afr:trim@reference@sum"), "@adaptive" / "@global" pick --allocation ("@dev0.2": its --max-deviation), "@bias" / "@nobias" turn FLAP's bias compensation on / off, "@recon" refits the output
projections (prune --reconstruct; "@recon0.3": its ridge weight). One calibration pass collects every per-window buffer the specs
need (one per grouping) and, where a spec asks for it, the signed per-weight sums.

Calibration (--calib): windows from the first half of WikiText-2 raw test, or the dense model's
own samples, or a file; perplexity on WikiText-2's second half (so calibration and evaluation text
never overlap). Zero-shot accuracy through lm-eval on the
shared ARC-Easy, ARC-Challenge (acc_norm), PIQA and HellaSwag (acc_norm) files. Each row keeps
every document's 0/1 ("items"), so the table also gives each row's paired difference from the
dense row and, for a recovered row, from its unrecovered one, with paired standard errors
(eval/paired.py): far smaller than the unpaired ones when two models mostly agree.
Writes benchmarks/results/prune_table.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import copy
from dataclasses import replace
import json
import time
from pathlib import Path

import torch

from llmslim.core.device import device_label, peak_memory_mb, seed_everything
from llmslim.core.errors import LlmslimError
from llmslim.core.load import load_model, resolve_model
from llmslim.core.report import PlainProgress
from llmslim.eval.paired import items_from_bits, items_to_bits, paired_difference
from llmslim.eval.run import ACC_NORM_TASKS, perplexity, run_tasks
from llmslim.prune.accumulate import PerWindow, window_keys
from llmslim.prune.calibrate import collect, collect_gram
from llmslim.prune.jobs import ALL_METHODS, PruneJob, validate as validate_prune
from llmslim.recover.jobs import RecoverJob, validate as validate_recovery
from llmslim.core.data import wikitext2_halves
from llmslim.prune.run import PruneConfig, calibration_source, calibration_windows, load_stats, needs, parse_method, prune_model, save_stats
from llmslim.prune.allocate import ALLOCATIONS, MAX_DEVIATION
from llmslim.prune.apply import RECONSTRUCT_DAMP
from llmslim.prune.scores import ScoreConfig

# every AFR aggregation and SNIP in both orders, the reference code's recipe, the baselines
BOTH_ORDERS = [f"{m}{order}" for m in ("afr:abs+gmm", "afr:abs", "afr:gmm", "afr:mean-abs", "afr:trim",
                                          "snip:abs", "snip:mean-abs") for order in ("", "@signed-sum")] + [
    "afr:trim@reference@sum", "afr:abs@reference", "flap", "wanda-sp", "llm-pruner-element",
    "llm-pruner-vector", "magnitude"]

COMPENSATION = {"bias": "on", "nobias": "off"}  # spec suffixes -> PruneConfig.bias_compensation

parser = argparse.ArgumentParser()
parser.add_argument("--model", default="smollm2-135m")
parser.add_argument("--ratios", default="0.2,0.5")
parser.add_argument("--methods", default=",".join(ALL_METHODS),
                    help="comma list; '@reference' / '@sum' suffixes pick --afr-recipe / --group, e.g. afr:abs@reference")
parser.add_argument("--nsamples", type=int, default=128)
parser.add_argument("--seqlen", type=int, default=1024)
parser.add_argument("--tasks", default="arc_easy,arc_challenge,piqa,hellaswag")
parser.add_argument("--limit", type=int, default=None, help="items per task (default: full sets)")
parser.add_argument("--ppl-seqlen", type=int, default=1024)
parser.add_argument("--ppl-limit", type=int, default=None)
parser.add_argument("--scores", default="runs/prune_table_scores.pt", help="cache of calibration scores (delete it when --methods change)")
parser.add_argument("--calib", default="wikitext2",
                    help="prune's --calib: wikitext2 (first half), self (samples of the dense model, as data-free LLM-QAT "
                         "and Ji et al. (ICLR 2025)'s self-generated calibration), or a text file; use its own --scores")
parser.add_argument("--gmm-refit", default="every", choices=["every", "once"])
parser.add_argument("--print-orders", action="store_true", help="print the both-orders method list and exit")
parser.add_argument("--out", default="benchmarks/results/prune_table.json")
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--threads", type=int, default=None, help="torch threads (1 on a busy machine)")
parser.add_argument("--resume", action="store_true", help="keep the rows of OUT.partial and run only the missing ones")
parser.add_argument("--recover-steps", type=int, default=0, help="also recover each pruned model for N steps (0: no recovery)")
parser.add_argument("--recover-full", action="store_true", help="recover every weight instead of LoRA adapters")
parser.add_argument("--recover-lr", type=float, default=None, help="recover's --lr (default: recover's)")
parser.add_argument("--recover-kd", type=float, default=0.5, help="recover's --kd (the dense model is the teacher)")
parser.add_argument("--recover-data", default="wikitext2", help="recover's --data (wikitext2, alpaca, self, a comma mix, a file)")
parser.add_argument("--recover-batch-size", type=int, default=4, help="recover's --batch-size")
parser.add_argument("--recover-seqlen", type=int, default=256, help="recover's --seqlen")
parser.add_argument("--device", default="cpu", help="cpu or cuda (fp32 weights either way; on CUDA recovery trains under bf16 autocast)")
parser.add_argument("--eval-batch-size", type=int, default=8, help="lm-eval's batch size (wider on a GPU)")
parser.add_argument("--plot", action="store_true", help="also write OUT with .png: mean accuracy against parameters")
args = parser.parse_args()
if args.print_orders:
    print(",".join(BOTH_ORDERS))
    raise SystemExit
if args.threads:
    torch.set_num_threads(args.threads)

def max_deviation(spec: str) -> float:
    """"...@adaptive@dev0.2" -> 0.2: --max-deviation of an adaptive allocation (default prune's)."""
    return next((float(opt[3:]) for opt in spec.split("@")[1:] if opt.startswith("dev")), MAX_DEVIATION)


def reconstruct_damp(spec: str) -> float | None:
    """"flap@recon0.3" -> 0.3, "flap@recon" -> prune's default, "flap" -> None (no refit)."""
    return next((float(opt[5:] or RECONSTRUCT_DAMP) for opt in spec.split("@")[1:] if opt.startswith("recon")), None)


def score_config(spec: str) -> tuple[str, ScoreConfig, str]:
    """"afr:abs@reference@sum@adaptive" -> ("afr:abs", ScoreConfig(afr_recipe="reference", group="sum"), "adaptive")."""
    method, *options = spec.split("@")
    cfg, allocation = ScoreConfig(seed=args.seed), "uniform"
    for opt in options:
        if opt in ALLOCATIONS or opt in COMPENSATION or opt.startswith("dev") or opt.startswith("recon"):
            allocation = opt if opt in ALLOCATIONS else allocation
            continue
        field = ("afr_recipe" if opt in ("paper", "reference") else
                 "accumulate" if opt in ("per-window", "signed-sum") else "group")
        cfg = replace(cfg, **{field: opt})
    return method, cfg, allocation


def compensation(spec: str) -> str:
    """"flap@nobias" -> "off": PruneConfig.bias_compensation ("auto" without a suffix)."""
    return next((COMPENSATION[o] for o in spec.split("@") if o in COMPENSATION), "auto")


def recovery_job(checkpoint_dir: Path | None = None) -> RecoverJob:
    """recover's options for every recovered row: the dense model is the teacher."""
    return RecoverJob(model=args.model, teacher=args.model, kd=args.recover_kd, max_steps=args.recover_steps,
                      full=args.recover_full, lr=args.recover_lr, seed=args.seed, device=args.device, dtype="float32",
                      checkpoint_dir=checkpoint_dir, data=args.recover_data, batch_size=args.recover_batch_size,
                      seqlen=args.recover_seqlen)


def check_options() -> None:
    """Every row's options through prune's and recover's own checks, before the model loads (a
    typo costs a second, not an hour of calibration)."""
    try:
        resolve_model(args.model)
    except LlmslimError as e:
        raise SystemExit(str(e)) from None
    try:
        ratios = [float(r) for r in args.ratios.split(",")]
    except ValueError:
        raise SystemExit(f"--ratios: comma-separated numbers, e.g. 0.2,0.5 (got {args.ratios})") from None
    for spec in args.methods.split(","):
        try:
            deviation = max_deviation(spec)
        except ValueError:
            raise SystemExit(f"--methods {spec}: @dev takes a number, e.g. @adaptive@dev0.2") from None
        try:
            damp = reconstruct_damp(spec)
        except ValueError:
            raise SystemExit(f"--methods {spec}: @recon takes a number or none, e.g. @recon0.3") from None
        if damp is not None and damp < 0:
            raise SystemExit(f"--methods {spec}: @recon's ridge weight must be >= 0")
        method, cfg, allocation = score_config(spec)
        for ratio in ratios:
            try:
                validate_prune(PruneJob(
                    model=args.model, ratio=ratio, method=method, afr_recipe=cfg.afr_recipe, group=cfg.group,
                    accumulate=cfg.accumulate, allocation=allocation, max_deviation=deviation,
                    bias_compensation=compensation(spec), reconstruct=damp is not None, calib=args.calib, nsamples=args.nsamples, seqlen=args.seqlen,
                    tasks=args.tasks or None, limit=args.limit, ppl_seqlen=args.ppl_seqlen, ppl_limit=args.ppl_limit,
                    gmm_refit=args.gmm_refit, seed=args.seed, device=args.device, dtype="float32"))
            except LlmslimError as e:
                raise SystemExit(f"--methods {spec} at ratio {ratio}: {e}") from None
    if args.recover_steps:
        try:
            validate_recovery(recovery_job(), flag_prefix="recover-")
        except LlmslimError as e:
            raise SystemExit(str(e)) from None


check_options()
# kept in the scores file so a cache is not reused for another --calib (caches from before
# this field are WikiText-2's)
calib_name = calibration_source(args.calib)
seed_everything(args.seed)
loaded = load_model(args.model, device=args.device, dtype="float32", purpose="gradients")
model, tok = loaded.model, loaded.tokenizer
eval_text = wikitext2_halves()[1]

scores_path = Path(args.scores)
wants_gram = any(reconstruct_damp(spec) is not None for spec in args.methods.split(","))
t0 = time.perf_counter()
if scores_path.is_file():
    stats = load_stats(scores_path, model)
    cached_calib = stats.meta.get("calib", calibration_source("wikitext2"))
    if cached_calib != calib_name:
        raise SystemExit(f"{scores_path} was calibrated on {cached_calib}, not {calib_name}: use another --scores")
    print(f"reusing scores from {scores_path} ({stats.windows} x {stats.meta['seqlen']} tokens)")
    if wants_gram and not stats.act_gram:
        # a cache calibrated without them: the Gram matrices from a forward pass over the same windows
        # (calibration_windows is seeded), added to the cache
        windows, _ = calibration_windows(model, tok, args.calib, stats.windows, stats.meta["seqlen"], args.seed)
        print(f"adding the Gram matrices for @recon ({tuple(windows.shape)})", flush=True)
        stats.act_gram = collect_gram(model, windows)
        save_stats(scores_path, stats, model)
else:
    windows, calib_source = calibration_windows(model, tok, args.calib, args.nsamples, args.seqlen, args.seed)
    print(f"calibration windows: {tuple(windows.shape)} from {calib_source}", flush=True)
    specs = [score_config(spec)[:2] for spec in args.methods.split(",")]
    folders = []
    for group in ("concat", "sum"):
        triples = [(name, c.aggregate, c.afr_recipe) for name, c in
                   ((parse_method(m, c)[0], parse_method(m, c)[1]) for m, c in specs)
                   if c.accumulate == "per-window" and c.group == group]
        if window_keys(triples):
            folders.append(PerWindow(window_keys(triples), group=group, gmm_refit=args.gmm_refit, seed=args.seed))
    signed = any(c.accumulate == "signed-sum" for _, c in specs) or any(m.startswith("llm-pruner") for m, _ in specs)
    need = needs([m for m, _ in specs])
    t_start = time.perf_counter()

    def tick(n, state={"done": 0}):
        state["done"] += n
        print(f"calibration window {state['done']}/{args.nsamples}, {time.perf_counter() - t_start:.0f}s", flush=True)

    stats = collect(model, windows, refer=need["refer"], snip=need["snip"], progress=tick, per_window=folders,
                    per_weight=("snip", "refer") if signed else ())
    if wants_gram:
        stats.act_gram = collect_gram(model, windows)
    stats.meta["calib"] = calib_source
    save_stats(scores_path, stats, model)
    print(f"\ncalibrated on {args.nsamples} x {args.seqlen} tokens in {time.perf_counter() - t0:.0f}s")
calib_s = time.perf_counter() - t0
tasks = [t for t in args.tasks.split(",") if t]


def headline(task: str) -> str:
    return "acc_norm" if task in ACC_NORM_TASKS else "acc"


def evaluate(m) -> dict:
    """Perplexity and each task's headline metric; "items" keeps every document's 0/1 as a
    string, so any two rows can be compared paired (eval/paired.py) after the fact."""
    row = {"wikitext2_ppl": perplexity(m, tok, eval_text, seqlen=args.ppl_seqlen, max_chunks=args.ppl_limit)["perplexity"]}
    if tasks:
        out = run_tasks(m, tok, tasks, limit=args.limit, seed=args.seed, batch_size=args.eval_batch_size, per_item=True)
        for task in tasks:
            row[task] = out["results"][task][headline(task)]
        row["mean_acc"] = sum(row[t] for t in tasks) / len(tasks)
        row["items"] = items_to_bits({task: out["per_item"][task][headline(task)] for task in tasks})
    return row


def compare(rows: list[dict]) -> None:
    """Each row's paired difference in mean accuracy from the dense row ("vs_dense") and, for a
    recovered row, from the same pruned model before recovery ("vs_unrecovered"): rows scored
    before per-item results were kept get none."""
    scores = {(r["ratio"], r["method"]): items_from_bits(r["items"]) for r in rows if "items" in r}
    dense = scores.get((0.0, "dense"))
    for r in rows:
        mine = scores.get((r["ratio"], r["method"]))
        if mine is None or mine is dense:
            continue
        if dense is not None:
            r["vs_dense"] = paired_difference(mine, dense)
        before = scores.get((r["ratio"], r["method"].split(" + recover")[0]))
        if "recover" in r and before is not None:
            r["vs_unrecovered"] = paired_difference(mine, before)


sampling_s = []  # the time --recover-data self took to sample (recorded in each recovered row)


def recovery_windows(job, bar) -> torch.Tensor | None:
    """With --recover-data self: recover/jobs.training_windows once per run and setting, every
    row trained on the same samples of the dense model, kept beside --scores (named by model and
    setting) so a resumed run does not sample again. Otherwise None: train() cuts the text."""
    from llmslim.recover.jobs import self_samples, training_windows

    if not job.samples_teacher:
        return None
    name = f"recover_windows_{args.model}_{job.data}_{job.max_steps}x{job.batch_size}x{job.seqlen}_seed{job.seed}"
    path = Path(args.scores).with_name(name.replace("/", "_").replace(",", "+").replace(":", "_") + ".pt")
    if path.is_file():
        return torch.load(path)
    t0 = time.perf_counter()
    sampling = bar.add_task("recovery windows", total=self_samples(job))
    windows = training_windows(tok, model, job, advance=lambda n: bar.advance(sampling, n))
    sampling_s.append(time.perf_counter() - t0)
    print(f"recovery windows: {tuple(windows.shape)} in {sampling_s[-1]:.0f}s", flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(windows, path)
    return windows


def recover(pruned) -> tuple[torch.nn.Module, dict]:
    """recover/jobs.train on a pruned copy, the dense model in memory as teacher (no_grad)."""
    import tempfile

    from llmslim.recover.jobs import merged, train

    with tempfile.TemporaryDirectory(prefix="prune-table-recover-") as work:
        job = recovery_job(Path(work))
        # the commands' plain progress lines (120 steps are an hour on one thread: say where it is)
        bar = PlainProgress(every_s=60)
        windows = recovery_windows(job, bar)
        task = bar.add_task("recover", total=args.recover_steps)
        trained, summary = train(pruned, tok, model, job, advance=lambda n: bar.advance(task, n), windows=windows)
    plain = merged(trained, job.full).eval()
    return plain, {**{k: summary[k] for k in ("steps", "tokens", "train_s", "kd", "lr", "full", "data", "trainable_params",
                                              "first_loss", "last_loss", "losses")},
                   "batch_size": job.batch_size, "seqlen": job.seqlen, "sampling_s": sampling_s[0] if sampling_s else None}


partial = Path(args.out + ".partial")
rows = json.loads(partial.read_text()) if args.resume and partial.is_file() else []
# a recovered row counts as done only with the same recovery (full or LoRA, lr, kd, data; rows
# from before --recover-data were recovered on wikitext2)
recovery = {"full": args.recover_full, "lr": args.recover_lr, "kd": args.recover_kd, "data": args.recover_data}
rows = [r for r in rows if "recover" not in r or
        (r["recover"]["full"], r["recover"]["kd"], r["recover"].get("data", "wikitext2")) == (recovery["full"], recovery["kd"], recovery["data"])
        and (recovery["lr"] is None or r["recover"]["lr"] == recovery["lr"])
        and r["recover"]["tokens"] == r["recover"]["steps"] * args.recover_batch_size * args.recover_seqlen]
rows = [r for r in rows if r.get("device", "cpu") == args.device]  # rows before this field were all CPU rows
done = {(r["ratio"], r["method"]) for r in rows}


def keep(row: dict) -> None:
    row["device"] = args.device
    rows.append(row)
    print(row, flush=True)
    partial.write_text(json.dumps(rows, indent=2) + "\n")  # a cut-short run keeps its rows (--resume)


if (0.0, "dense") not in done:  # first: every percentage in the table is of it
    t0 = time.perf_counter()
    keep({"ratio": 0.0, "method": "dense", "params": sum(p.numel() for p in model.parameters()), **evaluate(model),
          "eval_s": time.perf_counter() - t0})
for ratio in [float(r) for r in args.ratios.split(",")]:
    for spec in args.methods.split(","):
        recovered_name = (f"{spec} + recover {args.recover_steps}" + ("" if args.recover_full else " LoRA")
                          + ("" if args.recover_data == "wikitext2" else f" on {args.recover_data}"))
        if (ratio, spec) in done and (not args.recover_steps or (ratio, recovered_name) in done):
            continue
        method, cfg, allocation = score_config(spec)
        damp = reconstruct_damp(spec)
        pruned = copy.deepcopy(model)
        rep = prune_model(pruned, stats, PruneConfig(ratio=ratio, method=method, scores=cfg, allocation=allocation,
                                                     max_deviation=max_deviation(spec),
                                                     bias_compensation=compensation(spec),
                                                     reconstruct=damp is not None, reconstruct_damp=damp or 0.0))
        if (ratio, spec) not in done:
            t0 = time.perf_counter()
            keep({"ratio": ratio, "method": spec, "params": rep["params_after"], "widths": rep["widths"],
                  **evaluate(pruned), "eval_s": time.perf_counter() - t0})
        if args.recover_steps:
            recovered, info = recover(pruned)
            t0 = time.perf_counter()
            keep({"ratio": ratio, "method": recovered_name, "params": rep["params_after"], **evaluate(recovered),
                  "eval_s": time.perf_counter() - t0, "recover": info})
            del recovered
        del pruned
rows.sort(key=lambda r: (r["ratio"], r["method"] != "dense"))
compare(rows)


def difference(r: dict, key: str) -> str:
    """'-.0210 ± .0052': a paired difference and its standard error; blank without one."""
    return f"{r[key]['diff']:+.4f} ± {r[key]['stderr']:.4f}" if key in r else ""


cols = ["ratio", "method", "params", "wikitext2_ppl", *tasks] + (["mean_acc"] if tasks else [])
paired_cols = ["vs dense (paired)", "vs unrecovered (paired)"] if any("vs_dense" in r for r in rows) else []
lines = ["| " + " | ".join(cols + paired_cols) + " |", "|" + "---|" * len(cols + paired_cols)]
for r in rows:
    cells = [f"{r[c]:.4f}" if isinstance(r[c], float) and c not in ("ratio", "wikitext2_ppl") else
             f"{r[c]:.2f}" if c == "wikitext2_ppl" else f"{r[c]:,}" if c == "params" else str(r[c]) for c in cols]
    if paired_cols:
        cells += [difference(r, "vs_dense"), difference(r, "vs_unrecovered")]
    lines.append("| " + " | ".join(cells) + " |")
table = "\n".join(lines)
print(table)
Path(args.out).parent.mkdir(parents=True, exist_ok=True)
Path(args.out).write_text(json.dumps({
    "args": vars(args), "date": time.strftime("%Y-%m-%d"),
    "device": device_label(torch.device(args.device)), "calibration_s": calib_s, "calibration": {"windows": stats.windows, **stats.meta}, "peak_memory_mb": peak_memory_mb(), "rows": rows, "table": table,
}, indent=2) + "\n")

if args.plot and tasks:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in rows:
        recovered = "+ recover" in r["method"]
        base = r["method"].split(" + ")[0]
        ax.scatter(r["params"] / 1e6, r["mean_acc"], marker="*" if base == "dense" else "o" if recovered else "x",
                   s=80 if base == "dense" else 40, label=r["method"] if r["ratio"] == max(x["ratio"] for x in rows) or base == "dense" else None,
                   color=f"C{sorted({x['method'].split(' + ')[0] for x in rows}).index(base)}")
    ax.set_xlabel("parameters (M)")
    ax.set_ylabel(f"mean accuracy ({', '.join(tasks)})")
    ax.set_title(f"{args.model}: pruned (x) and recovered (o), FFN ratios {args.ratios}")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(Path(args.out).with_suffix(".png"), dpi=120)
    print("wrote", Path(args.out).with_suffix(".png"))
