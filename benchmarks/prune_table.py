"""AFR Table 2/3 analogue on SmolLM2-135M-Instruct: every AFR aggregation and every baseline,
in both accumulation orders, pruned from one calibration pass, no recovery training.

    .venv/bin/python benchmarks/prune_table.py                       # paper setting (slow on CPU)
    .venv/bin/python benchmarks/prune_table.py --nsamples 32 --seqlen 512 --tasks "" --ppl-limit 16 \
        --methods "$(python benchmarks/prune_table.py --print-orders)"

Method specs: "afr:abs" (per-window accumulation, the default), "afr:abs@signed-sum" (the
other order), "@reference" / "@sum" pick --afr-recipe / --group (the AFR-St code is
"afr:trim@reference@sum"). One calibration pass collects every per-window buffer the specs
need (one per grouping) and, where a spec asks for it, the signed per-weight sums.

Calibration: windows from the first half of WikiText-2 raw test; perplexity on its second half
(so calibration and evaluation text never overlap). Zero-shot accuracy through lm-eval on the
shared ARC-Easy, ARC-Challenge (acc_norm), PIQA and HellaSwag (acc_norm) files.
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

from llmslim.core.data import calibration_windows
from llmslim.core.device import peak_memory_mb, seed_everything
from llmslim.core.load import load_model
from llmslim.eval.run import perplexity, run_tasks
from llmslim.prune.accumulate import PerWindow, window_keys
from llmslim.prune.calibrate import collect
from llmslim.prune.jobs import ALL_METHODS
from llmslim.core.data import wikitext2_halves
from llmslim.prune.run import PruneConfig, load_stats, needs, parse_method, prune_model, save_stats
from llmslim.prune.scores import ScoreConfig

# every AFR aggregation and SNIP in both orders, the reference code's recipe, the baselines
BOTH_ORDERS = [f"{m}{order}" for m in ("afr:abs+gmm", "afr:abs", "afr:gmm", "afr:mean-abs", "afr:trim",
                                          "snip:abs", "snip:mean-abs") for order in ("", "@signed-sum")] + [
    "afr:trim@reference@sum", "afr:abs@reference", "flap", "wanda-sp", "llm-pruner-element",
    "llm-pruner-vector", "magnitude"]

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
parser.add_argument("--gmm-refit", default="every", choices=["every", "once"])
parser.add_argument("--print-orders", action="store_true", help="print the both-orders method list and exit")
parser.add_argument("--out", default="benchmarks/results/prune_table.json")
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--threads", type=int, default=None, help="torch threads (1 on a busy machine)")
parser.add_argument("--resume", action="store_true", help="keep the rows of OUT.partial and run only the missing ones")
args = parser.parse_args()
if args.print_orders:
    print(",".join(BOTH_ORDERS))
    raise SystemExit
if args.threads:
    torch.set_num_threads(args.threads)

def score_config(spec: str) -> tuple[str, ScoreConfig]:
    """"afr:abs@reference@sum" -> ("afr:abs", ScoreConfig(afr_recipe="reference", group="sum"))."""
    method, *options = spec.split("@")
    cfg = ScoreConfig(seed=args.seed)
    for opt in options:
        field = ("afr_recipe" if opt in ("paper", "reference") else
                 "accumulate" if opt in ("per-window", "signed-sum") else "group")
        cfg = replace(cfg, **{field: opt})
    return method, cfg


seed_everything(args.seed)
loaded = load_model(args.model, device="cpu", dtype="float32", purpose="gradients")
model, tok = loaded.model, loaded.tokenizer
calib_text, eval_text = wikitext2_halves()

scores_path = Path(args.scores)
t0 = time.perf_counter()
if scores_path.is_file():
    stats = load_stats(scores_path, model)
    print(f"reusing scores from {scores_path} ({stats.windows} x {stats.meta['seqlen']} tokens)")
else:
    windows = calibration_windows(tok, calib_text, args.nsamples, args.seqlen, args.seed)
    specs = [score_config(spec) for spec in args.methods.split(",")]
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
    save_stats(scores_path, stats, model)
    print(f"\ncalibrated on {args.nsamples} x {args.seqlen} tokens in {time.perf_counter() - t0:.0f}s")
calib_s = time.perf_counter() - t0
tasks = [t for t in args.tasks.split(",") if t]


def evaluate(m) -> dict:
    row = {"wikitext2_ppl": perplexity(m, tok, eval_text, seqlen=args.ppl_seqlen, max_chunks=args.ppl_limit)["perplexity"]}
    if tasks:
        res = run_tasks(m, tok, tasks, limit=args.limit, seed=args.seed)["results"]
        for task in tasks:
            metric = "acc_norm" if task in ("arc_challenge", "hellaswag") else "acc"
            row[task] = res[task][metric]
        row["mean_acc"] = sum(row[t] for t in tasks) / len(tasks)
    return row




partial = Path(args.out + ".partial")
rows = json.loads(partial.read_text()) if args.resume and partial.is_file() else []
done = {(r["ratio"], r["method"]) for r in rows}
for ratio in [float(r) for r in args.ratios.split(",")]:
    for spec in args.methods.split(","):
        if (ratio, spec) in done:
            continue
        t0 = time.perf_counter()
        method, cfg = score_config(spec)
        pruned = copy.deepcopy(model)
        rep = prune_model(pruned, stats, PruneConfig(ratio=ratio, method=method, scores=cfg))
        method = spec
        rows.append({"ratio": ratio, "method": method, "params": rep["params_after"], **evaluate(pruned)})
        print(rows[-1], f"{time.perf_counter() - t0:.0f}s", flush=True)
        partial.write_text(json.dumps(rows, indent=2) + "\n")  # a cut-short run keeps its rows (--resume)
        del pruned
# dense last: the pruned rows are what a cut-short run most needs
t0 = time.perf_counter()
rows.insert(0, {"ratio": 0.0, "method": "dense", "params": sum(p.numel() for p in model.parameters()), **evaluate(model)})
print(rows[0], f"{time.perf_counter() - t0:.0f}s", flush=True)

cols = ["ratio", "method", "params", "wikitext2_ppl", *tasks] + (["mean_acc"] if tasks else [])
lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
for r in rows:
    cells = [f"{r[c]:.4f}" if isinstance(r[c], float) and c not in ("ratio", "wikitext2_ppl") else
             f"{r[c]:.2f}" if c == "wikitext2_ppl" else f"{r[c]:,}" if c == "params" else str(r[c]) for c in cols]
    lines.append("| " + " | ".join(cells) + " |")
table = "\n".join(lines)
print(table)
Path(args.out).parent.mkdir(parents=True, exist_ok=True)
Path(args.out).write_text(json.dumps({
    "args": vars(args), "calibration_s": calib_s, "calibration": {"windows": stats.windows, **stats.meta}, "peak_memory_mb": peak_memory_mb(), "rows": rows, "table": table,
}, indent=2) + "\n")
