"""How much faster is decode when every FFN is cut to a fraction of its width? Random-weight
twins of real architectures (weights do not change speed), measured interleaved in one process.

    .venv/bin/python benchmarks/bench_width.py                                  # smollm2 + llama-1b, fp32 + bf16
    .venv/bin/python benchmarks/bench_width.py --presets llama-1b --dtypes bfloat16 --new-tokens 8

For each preset and dtype: the full model, and the same with intermediate_size * --keep.
Writes benchmarks/results/bench_width.json and prints a markdown table of the ratios
(pruned / full: > 1 means the pruned twin is faster).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from llmslim.bench.run import BenchConfig, Subject, run
from llmslim.bench.speed import SpeedConfig
from llmslim.bench.split import time_split
from llmslim.bench.synthetic import PRESETS, random_model
from llmslim.core.device import DTYPES

parser = argparse.ArgumentParser()
parser.add_argument("--presets", default="smollm2-135m,llama-1b")
parser.add_argument("--dtypes", default="float32,bfloat16")
parser.add_argument("--keep", type=float, default=0.5, help="fraction of FFN width kept")
parser.add_argument("--prompt-len", type=int, default=32)
parser.add_argument("--new-tokens", type=int, default=8)
parser.add_argument("--repeats", type=int, default=3)
parser.add_argument("--threads", type=int, default=None)
parser.add_argument("--out", default="benchmarks/results/bench_width.json")
args = parser.parse_args()

if args.threads:
    torch.set_num_threads(args.threads)
cfg = BenchConfig(SpeedConfig(prompt_len=args.prompt_len, new_tokens=args.new_tokens, repeats=args.repeats), (1,))
rows = []
for preset in args.presets.split(","):
    width = PRESETS[preset][1]["intermediate_size"]
    narrow = f"random:{preset}?intermediate_size={int(width * args.keep)}"
    for dtype in args.dtypes.split(","):
        t0 = time.perf_counter()
        full = random_model(f"random:{preset}", DTYPES[dtype], seed=0)
        pruned = random_model(narrow, DTYPES[dtype], seed=0)
        result = run([Subject(f"random:{preset}", full, None, "random"), Subject(narrow, pruned, None, "random")], cfg)
        split = time_split(full, None, replace(cfg.speed, batch_size=1))["decode"]["fraction"]
        ratio = result["ratios"][narrow]
        a, b = (m["batches"]["1"] for m in result["models"])
        rows.append({
            "preset": preset, "dtype": dtype, "keep": args.keep,
            "params_ratio": ratio["params"],
            "decode_tok_s": [a["decode_tok_s"], b["decode_tok_s"]], "decode_ratio": ratio["decode_tok_s@1"],
            "prefill_tok_s": [a["prefill_tok_s"], b["prefill_tok_s"]], "prefill_ratio": ratio["prefill_tok_s@1"],
            "full_decode_split": split, "threads": torch.get_num_threads(), "seconds": time.perf_counter() - t0,
            "settings": result["settings"],
        })
        print(f"{preset} {dtype}: decode {a['decode_tok_s']:.2f} -> {b['decode_tok_s']:.2f} tok/s "
              f"({ratio['decode_tok_s@1']:.2f}x), prefill {ratio['prefill_tok_s@1']:.2f}x", flush=True)
        del full, pruned

Path(args.out).parent.mkdir(parents=True, exist_ok=True)
Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")
print(f"\n| preset | dtype | params | decode tok/s full -> {args.keep:g} FFN | decode | prefill | FFN share of decode |")
print("|---|---|---|---|---|---|---|")
for r in rows:
    print(f"| {r['preset']} | {r['dtype']} | {r['params_ratio']:.2f}x | {r['decode_tok_s'][0]:.2f} -> {r['decode_tok_s'][1]:.2f} "
          f"| {r['decode_ratio']:.2f}x | {r['prefill_ratio']:.2f}x | {100 * r['full_decode_split']['ffn']:.0f}% |")
