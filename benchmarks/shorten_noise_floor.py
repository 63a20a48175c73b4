"""Calibrates the proxy quality of `shorten eval`: how similar are two answers of the *unchanged*
base model to the same MT-Bench question (greedy vs sampled at T=0.7, top-p 0.9)? A shortened
model whose similarity to the base answers is near this floor has changed its answers no more
than resampling does.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/shorten_noise_floor.py [--eval-prompts 24 --eval-tokens 128]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from llmslim.core import report
from llmslim.core.generate import Generation, generate
from llmslim.core.load import cache_dir, load_model
from llmslim.shorten import evaluate as ev
from llmslim.shorten.reference import get_references
from llmslim.shorten.reward import Embedder

p = argparse.ArgumentParser()
p.add_argument("--eval-prompts", type=int, default=24)
p.add_argument("--eval-tokens", type=int, default=128)
p.add_argument("--temperature", type=float, default=0.7)
p.add_argument("--seeds", default="0")
p.add_argument("--out", default="benchmarks/results/shorten_noise_floor.json")
args = p.parse_args()
torch.set_num_threads(1)
t0 = time.perf_counter()
base = load_model("smollm2-135m", device="cpu", dtype="float32")
questions = ev.mt_bench_questions()[: args.eval_prompts]
refs = get_references(base.model, base.tokenizer, [q.prompt for q in questions], model_id=base.path,
                      cache_root=cache_dir() / "shorten", max_new_tokens=args.eval_tokens, batch_size=12)
greedy = [Generation(r.prompt, r.text, r.n_tokens, r.finished) for r in refs.refs]
embedder = Embedder()
rows = []
for seed in [int(s) for s in args.seeds.split(",")]:
    sampled = generate(base.model, base.tokenizer, [q.prompt for q in questions], max_new_tokens=args.eval_tokens,
                       batch_size=12, do_sample=True, temperature=args.temperature, top_p=0.9, seed=seed)
    cmp = ev.compare(questions, greedy, sampled, embedder)
    rows.append({"seed": seed, **{k: v for k, v in cmp.items() if k != "per_question"}})
    report.stdout.print(f"seed {seed}: sampled vs greedy base: length change {cmp['shortening_pct']:.1f}%, "
                        f"similarity {cmp['proxy_similarity']:.3f}")
Path(args.out).write_text(json.dumps({"args": vars(args), "rows": rows, "seconds": time.perf_counter() - t0}, indent=2))
