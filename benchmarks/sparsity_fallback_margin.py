"""What the dense fallback's margin and threshold cost in skipped FFN units, before any evaluation:
the shadow predictor's neuron scores for the traced examples of benchmarks/sparsity_eval.py (its
cache), the per-layer top-k mask at each sparsity, then masks.fall_back at each margin. Prints the
share of units added back, the share still skipped, and the layers' confidence (share of dropped
units outside the margin), whose quantiles say what share of layers a --fallback-threshold makes
dense. Seconds on one thread; run benchmarks/sparsity_eval.py first (it trains the predictor).

    .venv/bin/python benchmarks/sparsity_fallback_margin.py
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from llmslim.core.errors import BadOptionError, LlmslimError
from llmslim.sparsity import masks as M
from llmslim.sparsity import predictor as P
from llmslim.sparsity.collect import Traces

ap = argparse.ArgumentParser()
ap.add_argument("--traces", default="runs/sparsity_eval/traces-n64-seq64-plainact.pt")
ap.add_argument("--predictor", default="runs/sparsity_eval/plainact-traces-n64-seq64-plainact-e30")
ap.add_argument("--sparsity", default="0.3,0.5,0.7")
ap.add_argument("--margins", default="0.001,0.002,0.005,0.01,0.02,0.05")
ap.add_argument("--out", default="benchmarks/results/sparsity_fallback_margin.json")
args = ap.parse_args()

try:  # the options first, then the files: each a line, not a traceback
    sparsities = [M.check_sparsity(float(s)) for s in args.sparsity.split(",")]
    margins = [float(m) for m in args.margins.split(",")]
    if not all(0 <= m <= 1 for m in margins):
        raise BadOptionError(f"--margins must be in [0, 1], got {args.margins}")
    torch.set_num_threads(1)
    traces = Traces.load(args.traces)
    shadow = P.load(args.predictor)["shadow"]
except (LlmslimError, ValueError) as err:
    raise SystemExit(str(err)) from None
scores = shadow.predict_rows(traces.feature(shadow.feature))["neurons"]  # [examples, layers, units]
rows = []
for sparsity in sparsities:
    for margin in margins:
        added, confidence = [], []
        for example in scores:
            _, record = M.fall_back(example, M.select(example, sparsity), margin, 0.0)
            added += [r["added"] / r["units"] for r in record]
            confidence += [r["confidence"] for r in record]
        added, confidence = torch.tensor(added), torch.tensor(confidence)
        rows.append({"sparsity": sparsity, "margin": margin, "added": added.mean().item(),
                     "skipped": sparsity - added.mean().item(),
                     "confidence_p10": confidence.quantile(0.1).item(), "confidence_median": confidence.median().item()})
print(f"{scores.shape[0]} traced examples x {scores.shape[1]} layers, shadow neuron scores\n")
print("| sparsity | margin | units added back | FFN skipped | layer confidence p10 / median |\n|---|---|---|---|---|")
for r in rows:
    print(f"| {r['sparsity']:g} | {r['margin']:g} | {r['added']:.3f} | {r['skipped']:.3f} | "
          f"{r['confidence_p10']:.2f} / {r['confidence_median']:.2f} |")
Path(args.out).write_text(json.dumps({"examples": scores.shape[0], "rows": rows}, indent=2) + "\n")
