"""Does pruning make the model faster? Pruned vs dense, measured side by side in one run.

    .venv/bin/python benchmarks/prune_speed.py                    # SmolLM2 + random Llama-1B shape
    .venv/bin/python benchmarks/prune_speed.py --models llama-1b --ratios 0.5 --new-tokens 16

Each pruned model is made by llmslim's own pruning (magnitude scores: speed does not depend on
which neurons go, only on how many), then `bench.speed.measure_many` times dense and pruned
interleaved (A B, B A, ...). The FLOP ratio is dense / pruned multiply-adds per token (all
matmul weights incl. lm_head, no embedding lookup); the target where compute dominates is a
decode speed-up within 0.9x of it. Writes benchmarks/results/prune_speed.json.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import torch

from llmslim.bench.speed import SpeedConfig, measure_many
from llmslim.bench.split import time_split
from llmslim.bench.synthetic import random_model
from llmslim.core.load import load_model
from llmslim.prune.calibrate import collect
from llmslim.prune.run import PruneConfig, prune_model

parser = argparse.ArgumentParser()
parser.add_argument("--models", default="smollm2-135m,llama-1b")
parser.add_argument("--ratios", default="0.2,0.5")
parser.add_argument("--dtype", default="float32")
parser.add_argument("--batch-size", type=int, default=1)
parser.add_argument("--prompt-len", type=int, default=64)
parser.add_argument("--new-tokens", type=int, default=16)
parser.add_argument("--repeats", type=int, default=3)
parser.add_argument("--threads", type=int, default=None)
parser.add_argument("--out", default="benchmarks/results/prune_speed.json")
args = parser.parse_args()
if args.threads:
    torch.set_num_threads(args.threads)
dtype = getattr(torch, args.dtype)


def matmul_params(model) -> int:
    emb = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    n = sum(p.numel() for name, p in model.named_parameters() if p.dim() == 2 and p is not emb)
    return n + (head.weight.numel() if head is not None and head.weight is emb else 0)


def build(name: str):
    if name == "smollm2-135m":
        return load_model(name, device="cpu", dtype="float32").model.to(dtype)
    return random_model(f"random:{name}", dtype=dtype, seed=0)


rows = []
cfg = SpeedConfig(batch_size=args.batch_size, prompt_len=args.prompt_len, new_tokens=args.new_tokens, repeats=args.repeats)
for name in args.models.split(","):
    dense = build(name)
    vocab = dense.config.vocab_size
    stats = collect(dense, torch.randint(0, vocab, (1, 8)), refer=False, snip=False)
    for ratio in [float(r) for r in args.ratios.split(",")]:
        pruned = copy.deepcopy(dense)
        prune_model(pruned, stats, PruneConfig(ratio=ratio, method="magnitude"))
        base, small = measure_many([(dense, vocab), (pruned, vocab)], cfg, memory=False)
        split = {"dense": time_split(dense, vocab, cfg), "pruned": time_split(pruned, vocab, cfg)}
        row = {
            "model": name, "ratio": ratio, "dtype": args.dtype, "threads": torch.get_num_threads(),
            "param_ratio": sum(p.numel() for p in dense.parameters()) / sum(p.numel() for p in pruned.parameters()),
            "flop_ratio": matmul_params(dense) / matmul_params(pruned),
            "decode_speedup": small["decode_tok_s"] / base["decode_tok_s"],
            "prefill_speedup": small["prefill_tok_s"] / base["prefill_tok_s"],
            "dense_decode_tok_s": base["decode_tok_s"], "pruned_decode_tok_s": small["decode_tok_s"],
            "split": split,
        }
        row["decode_vs_flop"] = row["decode_speedup"] / row["flop_ratio"]
        rows.append(row)
        print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items() if k != "split"}, flush=True)
        del pruned

cols = ["model", "ratio", "param_ratio", "flop_ratio", "prefill_speedup", "decode_speedup", "decode_vs_flop"]
lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
for r in rows:
    lines.append("| " + " | ".join(f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")
print("\n".join(lines))
Path(args.out).parent.mkdir(parents=True, exist_ok=True)
Path(args.out).write_text(json.dumps({"args": vars(args), "rows": rows, "table": "\n".join(lines)}, indent=2, default=str) + "\n")
