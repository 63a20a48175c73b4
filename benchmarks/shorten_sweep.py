"""λ sweep for `llmslim shorten`: RL (TRL GRPO) at several λ and token-branching SFT on
SmolLM2-135M-Instruct, trained on Alpaca prompts, evaluated on MT-Bench first turns.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/shorten_sweep.py
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/shorten_sweep.py --train-prompts 200 --eval-prompts 80 \
        --ref-tokens 256 --eval-tokens 256 --rl-steps 200 --sft-steps 300   # the issue's full setting (GPU)

Prints "λ -> shortening %, proxy quality change %" and writes benchmarks/results/shorten_sweep.{json,png}.
The defaults fit ~25 min on one CPU thread, which forces small sizes: see docs/shorten.md.
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path

import torch

from llmslim.core import report
from llmslim.core.data import alpaca_prompts
from llmslim.core.device import seed_everything
from llmslim.core.load import cache_dir, load_model
from llmslim.shorten import evaluate as ev
from llmslim.shorten.jobs import select_refs
from llmslim.shorten.reference import get_references
from llmslim.shorten.reward import Embedder
from llmslim.shorten.rl import RLConfig, train_rl
from llmslim.shorten.sft import SFTConfig, train_sft

# ---------------------------------------------------------------- config (sizes only)
p = argparse.ArgumentParser()
p.add_argument("--train-prompts", type=int, default=48)  # first N Alpaca prompts (of 200)
p.add_argument("--eval-prompts", type=int, default=24)  # first N MT-Bench first turns (of 80)
p.add_argument("--ref-tokens", type=int, default=128)  # reference answers' token limit
p.add_argument("--max-ref-tokens", type=int, default=96)  # train on finished references at most this long
p.add_argument("--eval-tokens", type=int, default=128)
p.add_argument("--lams", default="0.3,0.8")
p.add_argument("--rl-steps", type=int, default=10)
p.add_argument("--rl-batch", type=int, default=2)
p.add_argument("--rl-lr", type=float, default=3e-5)
p.add_argument("--sft-steps", type=int, default=24)
p.add_argument("--sft-lr", type=float, default=3e-5)
p.add_argument("--threads", type=int, default=1)
p.add_argument("--out", default="benchmarks/results/shorten_sweep")
args = p.parse_args()
torch.set_num_threads(args.threads)
seed_everything(0)
report.setup_logging(False)
t_start = time.perf_counter()

# ---------------------------------------------------------------- setup
base = load_model("smollm2-135m", device="cpu", dtype="float32", purpose="gradients")
tok = base.tokenizer
root = cache_dir() / "shorten"
train_prompts = alpaca_prompts()[: args.train_prompts]
sft_cfg = SFTConfig(steps=args.sft_steps, learning_rate=args.sft_lr, batch_size=4, top_p=0.9, head_ratio=0.5)
t0 = time.perf_counter()
refs_all = get_references(base.model, tok, train_prompts, model_id=base.path, cache_root=root,
                          max_new_tokens=args.ref_tokens, batch_size=16, branch=sft_cfg.branch_settings())
refs = select_refs(refs_all, args.max_ref_tokens, keep_unfinished=False)
t_refs = time.perf_counter() - t0
report.stdout.print(f"references: {len(refs.refs)} of {len(refs_all.refs)} finished within {args.max_ref_tokens} tokens, "
                    f"mean {refs.mean_tokens:.1f}, max {refs.max_tokens} ({t_refs:.0f}s)")

questions = ev.mt_bench_questions()[: args.eval_prompts]
t0 = time.perf_counter()
base_refs = get_references(base.model, tok, [q.prompt for q in questions], model_id=base.path, cache_root=root,
                           max_new_tokens=args.eval_tokens, batch_size=12)
from llmslim.core.generate import Generation

base_gens = [Generation(r.prompt, r.text, r.n_tokens, r.finished) for r in base_refs.refs]
t_base = time.perf_counter() - t0
embedder = Embedder()
report.stdout.print(f"base on MT-Bench: mean {ev.mean_tokens(base_gens):.1f} tokens, "
                    f"{sum(g.finished for g in base_gens)}/{len(base_gens)} finished ({t_base:.0f}s)")

rows: list[dict] = []
out = Path(args.out)


def evaluate(name: str, lam, model, train: dict) -> None:
    model.eval()
    t0 = time.perf_counter()
    gens = ev.answer(model, tok, questions, max_new_tokens=args.eval_tokens, batch_size=12)
    cmp = ev.compare(questions, base_gens, gens, embedder)
    hist = [h for h in train["history"] if "loss" in h]
    row = {"method": name, "lam": lam, **{k: v for k, v in cmp.items() if k != "per_question"},
           "train_s": train["train_s"], "eval_s": time.perf_counter() - t0, "steps": len(hist),
           "train_last": hist[-1] if hist else {}, "history": train["history"], "warnings": train["warnings"],
           "examples": [{"prompt": q.prompt[:80], "base": b.text[:300], "short": g.text[:300]}
                        for q, b, g in list(zip(questions, base_gens, gens))[:3]]}
    if name == "rl":
        row["train_mean_reward_std"] = sum(h.get("reward_std", 0) for h in hist) / max(len(hist), 1)
        row["train_mean_clipped_ratio"] = sum(h.get("clipped_ratio", 0) for h in hist) / max(len(hist), 1)
        row["train_first_len"], row["train_last_len"] = hist[0].get("mean_length"), hist[-1].get("mean_length")
    rows.append(row)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"args": vars(args), "references": {
        "n_all": len(refs_all.refs), "n_used": len(refs.refs), "mean_tokens": refs.mean_tokens, "max_tokens": refs.max_tokens},
        "base_mean_tokens": ev.mean_tokens(base_gens), "rows": rows}, indent=2, default=str))
    report.stdout.print(f"{name} λ={lam}: shortening {cmp['shortening_pct']:.1f}%, similarity {cmp['proxy_similarity']:.3f} "
                        f"(train {train['train_s']:.0f}s, total {time.perf_counter() - t_start:.0f}s)")


# ---------------------------------------------------------------- RL at each λ
for lam in [float(x) for x in args.lams.split(",")]:
    model = copy.deepcopy(base.model)
    cfg = RLConfig(lam=lam, steps=args.rl_steps, batch_size=args.rl_batch, num_generations=4, learning_rate=args.rl_lr, beta=0.04)
    with tempfile.TemporaryDirectory() as work:
        train = train_rl(model, tok, refs, embedder, cfg, work_dir=Path(work))
    evaluate("rl", lam, train["model"], train)
    del model, train

# ---------------------------------------------------------------- token-branching SFT
model = copy.deepcopy(base.model)
with tempfile.TemporaryDirectory() as work:
    train = train_sft(model, tok, refs, sft_cfg, work_dir=Path(work))
evaluate("sft-branch", f"λ1=λ2={sft_cfg.lam1}", train["model"], train)

# ---------------------------------------------------------------- table and plot
cols = ["method", "λ", "steps", "train s", "base tokens", "short tokens", "shortening %", "similarity", "quality change %"]
report.stdout.print(report.table(
    f"shorten sweep: SmolLM2-135M-Instruct, {len(refs.refs)} Alpaca prompts, {len(questions)} MT-Bench first turns (≤{args.eval_tokens} tokens)",
    cols, [[r["method"], str(r["lam"]), r["steps"], r["train_s"], r["base_mean_tokens"], r["short_mean_tokens"],
            r["shortening_pct"], r["proxy_similarity"], r["proxy_quality_change_pct"]] for r in rows]))

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

fig, ax = plt.subplots(figsize=(5.5, 4))
for r in rows:
    ax.scatter(r["shortening_pct"], r["proxy_quality_change_pct"], color="C0" if r["method"] == "rl" else "C1")
    ax.annotate(f"{r['method']} {r['lam']}" if r["method"] == "rl" else "sft-branch", (r["shortening_pct"], r["proxy_quality_change_pct"]),
                textcoords="offset points", xytext=(4, 4), fontsize=8)
ax.axhline(0, color="grey", lw=0.5)
ax.axvline(0, color="grey", lw=0.5)
ax.set_xlabel("shortening % (mean output tokens vs base)")
ax.set_ylabel("proxy quality change % (cos to base answer - 1)")
ax.set_title("SmolLM2-135M shorten sweep (MT-Bench first turns)", fontsize=9)
fig.tight_layout()
fig.savefig(out.with_suffix(".png"), dpi=120)
report.stdout.print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.png')} in {time.perf_counter() - t_start:.0f}s")
