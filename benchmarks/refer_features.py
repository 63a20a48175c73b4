"""ReFer's flat feature (the mean singular value of a batch x (tokens x features) matrix) two
ways on the same windows: float32 `torch.linalg.svdvals` (llmslim before 2026-11-27, the
reference code's call) and the float64 Gram route prune now uses (calibrate._wide_singular_values;
cuSOLVER refused Llama-3-8B's 1 x 14.7M rows on an H100). Prints how far AFR's per-neuron
scores move (the largest difference over a layer's largest score) and how many neurons uniform
AFR keeps differently at each ratio.

    .venv/bin/python benchmarks/refer_features.py --nsamples 8 --seqlen 512 --out benchmarks/results/refer_features.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from llmslim.core.load import load_model
from llmslim.core.device import seed_everything
from llmslim.prune import calibrate
from llmslim.prune.allocate import allocate
from llmslim.prune.run import calibration_windows, collect_for, neuron_scores
from llmslim.prune.scores import ScoreConfig

parser = argparse.ArgumentParser()
parser.add_argument("--model", default="smollm2-135m")
parser.add_argument("--nsamples", type=int, default=8)
parser.add_argument("--seqlen", type=int, default=512)
parser.add_argument("--ratios", default="0.2,0.5")
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--threads", type=int, default=None)
parser.add_argument("--out", required=True)
args = parser.parse_args()
try:
    ratios = [float(r) for r in args.ratios.split(",")]
except ValueError:
    raise SystemExit(f"--ratios: a comma list of numbers, got {args.ratios!r}") from None
if not all(0 < r < 1 for r in ratios) or args.nsamples < 1 or args.seqlen < 2:
    raise SystemExit("--ratios in (0, 1), --nsamples >= 1 and --seqlen >= 2")
if args.threads:
    torch.set_num_threads(args.threads)

seed_everything(args.seed)
loaded = load_model(args.model, device="cpu", dtype="float32", purpose="gradients")
model = loaded.model
windows, source = calibration_windows(model, loaded.tokenizer, "wikitext2", args.nsamples, args.seqlen, args.seed)
gram = calibrate._wide_singular_values
routes = {"gram_float64": gram, "svdvals_float32": lambda rows: torch.linalg.svdvals(rows.float())}
stats, seconds = {}, {}
for name, route in routes.items():
    calibrate._wide_singular_values = route
    seed_everything(args.seed)
    t0 = time.perf_counter()
    stats[name] = collect_for(model, windows, ["afr"], ScoreConfig())
    seconds[name] = time.perf_counter() - t0
    print(f"{name}: calibrated in {seconds[name]:.0f}s", flush=True)
calibrate._wide_singular_values = gram

scores = {k: neuron_scores(model, s, "afr", ScoreConfig()) for k, s in stats.items()}
score_rel = max(float((x - y).abs().max() / y.abs().max()) for x, y in zip(*scores.values()))
moved = {}
for ratio in ratios:
    keeps = [allocate(s, ratio, "uniform", 1, 0.1) for s in scores.values()]
    moved[str(ratio)] = sum(len(set(x.tolist()) ^ set(y.tolist())) // 2 for x, y in zip(*keeps))
total = sum(s.numel() for s in scores["gram_float64"])
result = {"args": vars(args), "date": time.strftime("%Y-%m-%d"), "device": "cpu", "windows": source,
          "calibration_s": seconds, "afr_score_max_rel_diff": score_rel,
          "neurons": total, "neurons_kept_differently": moved}
print(json.dumps(result, indent=2))
Path(args.out).parent.mkdir(parents=True, exist_ok=True)
Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
