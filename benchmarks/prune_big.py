"""Issue 17's GPU check: prune a big model's shape (random weights: time and memory do not depend
on them) the way `llmslim prune` calibrates, and report the time of each phase and the peak
memory next to the plan `prune --dry-run` prints for the same job.

    python3 benchmarks/prune_big.py --model random:llama3-8b --nsamples 128 --seqlen 1024 --device cuda \
        --out benchmarks/results/prune_big_llama3-8b_h100.json
    .venv/bin/python benchmarks/prune_big.py --model "random:llama3-8b?num_hidden_layers=2&vocab_size=2000" \
        --nsamples 2 --seqlen 128 --out /tmp/prune_big.json          # a CPU-sized check of the script

The calibration windows are random token ids (a random model has no text to prefer), so no
tokenizer or data file is needed: the GPU machine runs it with the wheels alone. Phases: build
(the random model on the device, in the dtype prune picks for gradients), calibration (forward,
ReFer's and SNIP's backward, the per-window fold with its GMM clipping), then scoring,
allocation and the removal of neurons (`prune_model`). Peak memory: CUDA's max allocated bytes,
or the process's peak RSS on a CPU, after calibration and at the end.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from llmslim.bench.synthetic import random_model
from llmslim.core.device import device_label, peak_memory_mb, resolve_device, resolve_dtype
from llmslim.core.errors import BadOptionError
from llmslim.core.report import PlainProgress
from llmslim.prune.jobs import PruneJob, memory_plan
from llmslim.prune.run import PruneConfig, collect_for, prune_model
from llmslim.prune.scores import ScoreConfig

parser = argparse.ArgumentParser()
parser.add_argument("--model", default="random:llama3-8b")
parser.add_argument("--nsamples", type=int, default=128)
parser.add_argument("--seqlen", type=int, default=1024)
parser.add_argument("--ratio", type=float, default=0.2)
parser.add_argument("--method", default="afr", help="prune's --method (default: its default, AFR)")
parser.add_argument("--device", default="auto")
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--out", required=True)
args = parser.parse_args()
if not args.model.startswith("random:"):
    raise SystemExit("--model must be a random:PRESET spec (this script builds random weights)")
if args.nsamples < 1 or args.seqlen < 2 or not 0 < args.ratio < 1:
    raise SystemExit("--nsamples >= 1, --seqlen >= 2 and 0 < --ratio < 1")

job = PruneJob(model=args.model, nsamples=args.nsamples, seqlen=args.seqlen, ratio=args.ratio, method=args.method,
               device=args.device, seed=args.seed)
try:
    plan, advice = memory_plan(job)  # what `llmslim prune ... --dry-run` prints for this job
except BadOptionError as err:  # an unknown preset or field: one line, before anything is built
    raise SystemExit(f"error: {err}") from None
print(f"plan: {plan.line()}", file=sys.stderr, flush=True)
device = resolve_device(args.device)
dtype = resolve_dtype("auto", device, "gradients")
times = {}
result = {
    "args": vars(args), "date": time.strftime("%Y-%m-%d"),
    "device": device_label(device), "dtype": str(dtype),
    "plan_gib": plan.total / 2**30, "plan_parts_gib": {k: v / 2**30 for k, v in plan.parts.items()},
    "plan_phase": plan.phase, "plan_fits": plan.fits, "plan_available_gib": None if plan.available is None else plan.available / 2**30,
    "times": times, "finished": False,
}


def write() -> None:
    """After each phase and every few windows: a run cut short (a GPU call's timeout) keeps what it measured."""
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


write()

t0 = time.perf_counter()
model = random_model(args.model, dtype, args.seed, device)
times["build_s"] = time.perf_counter() - t0
vocab = model.config.vocab_size
windows = torch.randint(0, vocab, (args.nsamples, args.seqlen), generator=torch.Generator().manual_seed(args.seed))

progress = PlainProgress(every_s=15)
task = progress.add_task("calibration windows", total=args.nsamples)
t0 = time.perf_counter()
base = ScoreConfig(seed=args.seed)


def window_done(n: int) -> None:
    progress.advance(task, n)
    result["windows_done"] = done = result.get("windows_done", 0) + n
    result.update(calibration_s_so_far=time.perf_counter() - t0, measured_peak_calibration_gib=peak_memory_mb(device) / 1024)
    if done in (1, 2, 4) or done % 8 == 0:
        write()


stats = collect_for(model, windows, [args.method], base, progress=window_done)
if device.type == "cuda":
    torch.cuda.synchronize(device)
times["calibration_s"] = time.perf_counter() - t0
peak_calibration = peak_memory_mb(device) / 1024
result.update(measured_peak_calibration_gib=peak_calibration, plan_over_measured=plan.total / 2**30 / peak_calibration)
write()

t0 = time.perf_counter()
report = prune_model(model, stats, PruneConfig(ratio=args.ratio, method=args.method, scores=base))
if device.type == "cuda":
    torch.cuda.synchronize(device)
times["prune_s"] = time.perf_counter() - t0
times["score_s"], times["remove_s"] = report["score_s"], report["prune_s"]

result.update(measured_peak_gib=peak_memory_mb(device) / 1024, params_before=report["params_before"],
              params_after=report["params_after"], finished=True)
print(json.dumps({k: v for k, v in result.items() if k != "args"}, indent=1))
write()
