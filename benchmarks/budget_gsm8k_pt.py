"""TALE-PT before/after on SmolLM2-135M-Instruct with GSM8K *gold* targets (issue #5, proof 2).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/budget_gsm8k_pt.py

Why gold targets: TALE-PT trains on the answers `budget search` finds, i.e. the model's own
correct answers at the smallest budget. SmolLM2-135M answers 1-2% of GSM8K questions correctly
with vanilla CoT (5 of 400 train questions in benchmarks/budget_gsm8k.py), so there is little to
search. This script trains the same LoRA SFT (`budget train --targets gold`) on GSM8K's reference
solutions, reformatted to TALE's output format (`... Answer: [[N]]`), and then answers the first
--n-test test questions with the *vanilla* CoT prompt (no budget), before and after, both with the
local fp32 model (same greedy decoding, same max_new_tokens).
Writes benchmarks/results/budget_gsm8k_pt.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from llmslim.budget import run as R
from llmslim.budget.backends import LocalBackend
from llmslim.budget.counting import Counter
from llmslim.budget.questions import default_gsm8k, load_questions
from llmslim.budget.train import TrainConfig, examples_from_gold, train
from llmslim.core import report
from llmslim.core.data import read_records
from llmslim.core.device import seed_everything
from llmslim.core.load import load_model
from llmslim.core.outputs import atomic_write_text, to_jsonable

p = argparse.ArgumentParser()
p.add_argument("--n-train", type=int, default=64)
p.add_argument("--epochs", type=int, default=2)
p.add_argument("--n-test", type=int, default=24)
p.add_argument("--max-new-tokens", type=int, default=192)
p.add_argument("--batch-size", type=int, default=24)
p.add_argument("--out", default="benchmarks/results")
args = p.parse_args()

torch.set_num_threads(1)
seed_everything(0)
RESULTS = Path(args.out)
n_test, max_new, batch = args.n_test, args.max_new_tokens, args.batch_size
timings = {}

loaded = load_model("smollm2-135m", device="cpu", dtype="float32")
counter = Counter(loaded.tokenizer)
# before: the untrained model (train() adapts and merges into these weights)
test = load_questions(default_gsm8k("test"), limit=n_test)
t0 = time.perf_counter()
before, _ = R.run_mode(LocalBackend(loaded.model, loaded.tokenizer, batch_size=batch), counter, test, "vanilla",
                       R.Settings(max_new_tokens=max_new))
timings["vanilla_before_s"] = time.perf_counter() - t0
examples = examples_from_gold(read_records(default_gsm8k("train"))[: args.n_train])
target_tokens = sum(counter.model_tokens(e["chosen"]) for e in examples) / len(examples)
cfg = TrainConfig(epochs=args.epochs, batch_size=4, lr=2e-4, seed=0)
t0 = time.perf_counter()
tuned, info = train(loaded.model, loaded.tokenizer, examples, cfg, RESULTS)
timings["train_s"] = time.perf_counter() - t0
merged = tuned.merge_and_unload().eval()

t0 = time.perf_counter()
after, rows = R.run_mode(LocalBackend(merged, loaded.tokenizer, batch_size=batch), counter, test, "vanilla",
                         R.Settings(max_new_tokens=max_new))
timings["vanilla_after_s"] = time.perf_counter() - t0

report.stdout.print(report.table(
    f"TALE-PT (LoRA SFT, gold targets, {len(examples)} train examples, {info['steps']} steps), vanilla prompt, GSM8K test[:{n_test}]",
    ["model", "accuracy", "mean out tokens", "mean gpt-4 tokens", "truncated"],
    [["SmolLM2-135M-Instruct", before["accuracy"], before["mean_out_tokens"], before["mean_gpt4_tokens"], before["truncated"]],
     ["+ TALE-PT (gold)", after["accuracy"], after["mean_out_tokens"], after["mean_gpt4_tokens"], after["truncated"]]]))
report.stdout.print(f"mean target length {target_tokens:.1f} tokens; loss {info['losses'][0]:.3f} -> {info['losses'][-1]:.3f}; "
                    f"format [[N]] in {sum('[[' in r['output'] for r in rows)}/{len(rows)} answers; train {timings['train_s']:.0f}s")
atomic_write_text(RESULTS / "budget_gsm8k_pt.json", json.dumps(to_jsonable({
    "args": vars(args), "n_test": n_test, "max_new_tokens": max_new, "examples": len(examples), "steps": info["steps"],
    "mean_target_tokens": target_tokens, "losses": info["losses"], "before": before, "after": after,
    "bracket_format_rate": sum("[[" in r["output"] for r in rows) / len(rows), "timings": timings,
    "sample_outputs": [r["output"] for r in rows[:3]]}), indent=2) + "\n")
