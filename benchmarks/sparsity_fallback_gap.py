"""Why the fallback row that looks all dense (shadow, prompt decisions, 30% FFN, margin 0.05,
threshold 0.2: FFN skipped 0.000 in the table) scores differently from the dense row on a few
multiple-choice items. Runs both on the same items through the same sparse lm-eval model
(sparsity/lm.py), keeps every request's log-likelihood, and reports how much of the FFN the
fallback row still skipped, on how many requests the log-likelihood moved, and which items'
best choice (raw log-likelihood) changed.

    LLMSLIM_DATA=../shared/data OMP_NUM_THREADS=1 .venv/bin/python benchmarks/sparsity_fallback_gap.py

Needs the predictors that `benchmarks/sparsity_eval.py` trains and caches (same --cache). Writes
benchmarks/results/sparsity_fallback_gap.json.
"""

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

import torch

from llmslim.core.errors import LlmslimError
from llmslim.core.load import load_model
from llmslim.sparsity import lm as sparse_lm
from llmslim.sparsity import predictor as P
from llmslim.sparsity.execute import SparsityConfig
from llmslim.sparsity.jobs import evaluate_config

ap = argparse.ArgumentParser()
ap.add_argument("--cache", default="runs/sparsity_eval", help="sparsity_eval.py's cache of traces and predictors")
ap.add_argument("--predictor", default="plainact-traces-n64-seq64-plainact-e30", help="the folder in --cache")
ap.add_argument("--limit", type=int, default=200, help="items per task (the table's)")
ap.add_argument("--margin", type=float, default=0.05)
ap.add_argument("--threshold", type=float, default=0.2)
ap.add_argument("--out", default="benchmarks/results/sparsity_fallback_gap.json")
args = ap.parse_args()
folder = Path(args.cache) / args.predictor
if not (folder / "spearman.json").is_file():
    raise SystemExit(f"no predictor in {folder}: run benchmarks/sparsity_eval.py first (it trains and caches them)")
if args.limit < 1:
    raise SystemExit(f"--limit must be >= 1, got {args.limit}")
try:  # the config checks its own ranges; the predictor is read before the model loads
    fallback = SparsityConfig("shadow", ffn_sparsity=0.3, decide="prompt", fallback_margin=args.margin,
                              fallback_threshold=args.threshold)
    predictor = P.load(folder)
except LlmslimError as err:
    raise SystemExit(str(err)) from None

torch.set_num_threads(1)
t_start = time.perf_counter()
loaded = load_model("smollm2-135m", device="cpu", dtype="float32")

# every request's log-likelihood, by the config that scored it
scored: dict[str, list] = defaultdict(list)
current = {"name": ""}
loglikelihood = sparse_lm.SparseLM.loglikelihood


def recording(self, requests):
    results = loglikelihood(self, requests)
    scored[current["name"]].extend((r.task_name, r.doc_id, float(ll)) for r, (ll, _) in zip(requests, results))
    return results


sparse_lm.SparseLM.loglikelihood = recording
items = {"arc_easy": args.limit, "piqa": args.limit, "hellaswag": args.limit}
configs = {"dense": (SparsityConfig("dense", ffn_sparsity=0.0), None),
           "fallback": (fallback, predictor)}
rows, skipped = {}, {}
for name, (cfg, pr) in configs.items():
    current["name"] = name
    row, records = evaluate_config(loaded.model, loaded.tokenizer, cfg, pr, criterion="plainact", windows=None,
                                   items=items, seed=0)
    rows[name] = {k: v for k, v in row.items() if isinstance(v, (int, float, str))}
    if name == "fallback":
        units = loaded.model.config.intermediate_size
        per_layer = [units - ran for r in records for ran in r["neurons_ran"]]
        skipped = {"decisions": len(records), "layer_decisions": len(per_layer),
                   "made_dense_by_fallback": sum(d for r in records for d in r["neurons_dense"]),
                   "with_units_skipped": sum(s > 0 for s in per_layer), "units_skipped": sum(per_layer),
                   "units_skipped_share": sum(per_layer) / (units * len(per_layer)), "most_in_one_layer": max(per_layer)}

dense, fallback = scored["dense"], scored["fallback"]
assert [d[:2] for d in dense] == [f[:2] for f in fallback], "the two runs scored different requests"
moved = [abs(d[2] - f[2]) for d, f in zip(dense, fallback)]
choices = {name: defaultdict(list) for name in scored}
for name, lst in scored.items():
    for task, doc, ll in lst:
        choices[name][(task, doc)].append(ll)
flips = [{"task": task, "doc_id": doc, "dense": lls, "fallback": choices["fallback"][(task, doc)]}
         for (task, doc), lls in choices["dense"].items()
         if max(range(len(lls)), key=lls.__getitem__) != max(range(len(lls)), key=choices["fallback"][(task, doc)].__getitem__)]
result = {"rows": rows, "fallback_skipped": skipped,
          "requests": len(dense), "requests_moved": sum(m > 0 for m in moved), "max_abs_loglik_change": max(moved),
          "best_choice_flips": flips, "seconds": time.perf_counter() - t_start}
Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
print(json.dumps({k: v for k, v in result.items() if k != "best_choice_flips"}, indent=2))
print(f"{len(flips)} items change their best choice (raw log-likelihood); wrote {args.out}")
