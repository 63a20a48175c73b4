"""Issue 13's one plot: mean zero-shot accuracy against parameters for every row of every
prune_table run measured at 500 items a task (ARC-e, ARC-c, PIQA, HellaSwag), on one chart with
the issue's two targets (97% of dense at 20% FFN, 85% at 50%). Reads the JSON files, writes a PNG
and prints the rows it drew; nothing is recomputed.

    .venv/bin/python benchmarks/prune_table_plot.py --out benchmarks/results/prune_table_all.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

TASKS = "arc_easy,arc_challenge,piqa,hellaswag"
TARGETS = {0.2: 0.97, 0.5: 0.85}

parser = argparse.ArgumentParser()
parser.add_argument("--results", default="benchmarks/results")
parser.add_argument("--out", required=True)
args = parser.parse_args()


def family(method: str) -> str:
    """The colour of a row: the pruning method without its recovery."""
    base = method.split(" + ")[0]
    if base.startswith("flap"):
        return "FLAP global" if "@global" in base else "FLAP"
    if base.startswith("afr"):
        return "AFR adaptive" if "@adaptive" in base else "AFR global" if "@global" in base else "AFR uniform"
    return "dense" if base == "dense" else "other"


if not Path(args.results).is_dir():
    raise SystemExit(f"--results: no such folder {args.results}")
rows, seen = [], set()
for path in sorted(Path(args.results).glob("prune_table*.json")):
    try:
        run = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise SystemExit(f"{path}: not JSON ({err})") from None
    if not isinstance(run, dict) or run.get("args", {}).get("limit") != 500 or run["args"].get("tasks") != TASKS:
        continue
    calib = f"{run['args']['nsamples']}x{run['args']['seqlen']}" + ("-self" if run["args"].get("calib") == "self" else "")
    gpu = not (run.get("device") or "cpu").startswith("cpu")  # "cpu" or "cpu (2 threads)"; else a GPU's name
    for r in run["rows"]:
        if "mean_acc" not in r:
            continue
        key = (r["method"], r["ratio"], calib if r["method"] != "dense" else "", round(r["mean_acc"], 4))
        if key in seen:  # the dense row and rows copied into later runs' --resume files
            continue
        seen.add(key)
        rows.append({**r, "calib": calib, "gpu": gpu, "file": path.name})

dense = next((r["mean_acc"] for r in rows if r["method"] == "dense"), None)
if dense is None:
    raise SystemExit(f"{args.results}: no prune_table run at 500 items a task with a dense row")
colours = {"dense": "black", "AFR adaptive": "C0", "AFR uniform": "C2", "AFR global": "C4", "FLAP": "C1",
           "FLAP global": "C3", "other": "C7"}
# rows of one ratio have about the same size: each family is drawn 0.6M apart, or they hide each other
shift = {"dense": 0.0, "AFR adaptive": -1.2, "AFR uniform": -0.6, "AFR global": 0.0, "FLAP": 0.6, "FLAP global": 1.2,
         "other": 1.8}
fig, ax = plt.subplots(figsize=(8, 5))
for name, colour in colours.items():
    for recovered in (False, True):
        pts = [r for r in rows if family(r["method"]) == name and (" + recover" in r["method"]) == recovered]
        if pts:
            ax.scatter([r["params"] / 1e6 + shift[name] for r in pts], [r["mean_acc"] for r in pts], c=colour,
                       marker="*" if name == "dense" else "o" if recovered else "x", s=90 if name == "dense" else 30,
                       label=name + (" + recover" if recovered else ""), alpha=0.8)
for ratio, share in TARGETS.items():
    ax.axhline(dense * share, ls="--", lw=0.8, c="grey")
    ax.text(ax.get_xlim()[0], dense * share, f" target at {ratio:.0%} FFN: {share:.0%} of dense", va="bottom", fontsize=7, c="grey")
for ratio in TARGETS:  # the best row at each ratio, labelled with its share of dense
    best = max((r for r in rows if r["ratio"] == ratio), key=lambda r: r["mean_acc"], default=None)
    if best is not None:
        ax.annotate(f"{best['mean_acc']:.4f} ({best['mean_acc'] / dense:.1%})",
                    (best["params"] / 1e6 + shift[family(best["method"])], best["mean_acc"]),
                    xytext=(8, 6), textcoords="offset points", fontsize=7)
ax.set_xlabel("parameters (M; the method families drawn 0.6M apart)")
ax.set_ylabel("mean accuracy: ARC-e, ARC-c, PIQA, HellaSwag (500 items each)")
ax.set_title(f"SmolLM2-135M-Instruct, FFN pruned 20% and 50%: {len(rows)} rows of {len({r['file'] for r in rows})} runs")
ax.legend(fontsize=7)
ax.grid(alpha=0.3)
fig.tight_layout()
Path(args.out).parent.mkdir(parents=True, exist_ok=True)
fig.savefig(args.out, dpi=120)
for r in sorted(rows, key=lambda r: (r["ratio"], -r["mean_acc"])):
    print(f"{r['ratio']:.1f}  {r['mean_acc']:.4f}  {r['mean_acc'] / dense:6.1%}  {r['calib']:>12}  {'GPU' if r['gpu'] else 'CPU'}  {r['method']}")
print(f"wrote {args.out}")
