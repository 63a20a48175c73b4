"""λ sweep for `llmslim shorten` (issue 16's shortening target): RL (TRL GRPO) at several λ and
token-branching SFT at several top-p on SmolLM2-135M-Instruct, trained on Alpaca and GSM8K-train
prompts, evaluated on all 80 MT-Bench first turns against the proxy's noise floor (the unchanged
base, sampled, against its own greedy answers) measured on the same turns.

    OMP_NUM_THREADS=1 nice .venv/bin/python benchmarks/shorten_sweep.py --resume      # hours: resumable
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/shorten_sweep.py --train-prompts 48 --eval-prompts 4 \
        --rl-steps 1 --sft-steps 1 --lams 0.5 --top-ps 0.9 --out /tmp/sweep-smoke              # smoke

Rows (noise floor, rl:λ, sft:top-p) run one after another; each is appended to OUT.json.partial
as it finishes, and `--resume` runs only the missing ones (it refuses a partial file made with
other settings). Reference answers and the base model's answers are cached on disk
(shorten/reference.py), so a resumed run does not regenerate them. Writes OUT.json and OUT.png
(shortening % vs similarity to the base answers, the noise floor as a line).
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
from llmslim.core.data import alpaca_prompts, data_dir, read_records
from llmslim.core.device import seed_everything
from llmslim.core.errors import BadOptionError
from llmslim.core.generate import Generation, generate
from llmslim.core.load import cache_dir, load_model
from llmslim.shorten import evaluate as ev
from llmslim.shorten.jobs import select_refs, step_progress
from llmslim.shorten.reference import get_references
from llmslim.shorten.reward import Embedder, RewardConfig
from llmslim.shorten.rl import RLConfig, train_rl
from llmslim.shorten.sft import SFTConfig, train_sft

# ---------------------------------------------------------------- config (sizes only)
p = argparse.ArgumentParser()
p.add_argument("--train-prompts", type=int, default=600, help="candidates: the 200 Alpaca prompts, then GSM8K train questions (about 28%% finish within --max-ref-tokens: 142 of 500)")
p.add_argument("--eval-prompts", type=int, default=80)  # MT-Bench first turns (of 80)
p.add_argument("--ref-tokens", type=int, default=128)  # reference answers' token limit
p.add_argument("--max-ref-tokens", type=int, default=96)  # train on finished references at most this long
p.add_argument("--eval-tokens", type=int, default=128)
p.add_argument("--lams", default="0.1,0.3,0.8,1.0", help="the reward's λ, each in [0, 1] (the paper sweeps 0.1 ... 1.0)")
p.add_argument("--rl-steps", type=int, default=40)
p.add_argument("--rl-batch", type=int, default=2)
p.add_argument("--rl-lr", type=float, default=3e-5)
p.add_argument("--top-ps", default="0.9,0.6", help="token-branching SFT's nucleus (the paper: 0.6 and 0.9)")
p.add_argument("--sft-steps", type=int, default=60)
p.add_argument("--sft-lr", type=float, default=3e-5)
p.add_argument("--threads", type=int, default=1)
p.add_argument("--out", default="benchmarks/results/shorten_sweep")
p.add_argument("--resume", action="store_true", help="keep the rows of OUT.json.partial and run only the missing ones")
args = p.parse_args()
# every row's settings are checked before anything loads: a bad λ must not surface hours in, after
# the rows before it (1.5 once did, after three RL rows)
try:
    lams = [float(x) for x in args.lams.split(",") if x.strip()]  # "" runs no row of that kind
    top_ps = [float(x) for x in args.top_ps.split(",") if x.strip()]
    for lam in lams:
        RewardConfig(lam=lam)
    for top_p in top_ps:
        SFTConfig(steps=args.sft_steps, top_p=top_p).validate()
except (BadOptionError, ValueError) as err:
    raise SystemExit(f"--lams / --top-ps: {err}") from None
torch.set_num_threads(args.threads)
report.setup_logging(False)
t_start = time.perf_counter()

out = Path(args.out)
partial = Path(args.out + ".json.partial")
settings = {k: v for k, v in vars(args).items() if k not in ("threads", "out", "resume", "lams", "top_ps")}
rows: list[dict] = []
if partial.is_file():
    if not args.resume:
        raise SystemExit(f"{partial} exists: add --resume to continue it, or delete it to start again")
    saved = json.loads(partial.read_text())
    if saved["settings"] != settings:
        raise SystemExit(f"{partial} was made with other settings: {saved['settings']}")
    rows = saved["rows"]
done = {r["key"] for r in rows}

# ---------------------------------------------------------------- setup
seed_everything(0)
base = load_model("smollm2-135m", device="cpu", dtype="float32", purpose="gradients")
tok = base.tokenizer
root = cache_dir() / "shorten"
questions = ev.mt_bench_questions()[: args.eval_prompts]
t0 = time.perf_counter()
base_refs = get_references(base.model, tok, [q.prompt for q in questions], model_id=base.path, cache_root=root,
                           max_new_tokens=args.eval_tokens, batch_size=12)
base_gens = [Generation(r.prompt, r.text, r.n_tokens, r.finished) for r in base_refs.refs]
t_base = time.perf_counter() - t0
embedder = Embedder()
report.stdout.print(f"base on MT-Bench: mean {ev.mean_tokens(base_gens):.1f} tokens, "
                    f"{sum(g.finished for g in base_gens)}/{len(base_gens)} finished ({t_base:.0f}s)")


def keep(row: dict) -> None:
    rows.append(row)
    partial.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial.with_suffix(".tmp")  # a kill mid-write must not lose hours of rows: write, then rename
    tmp.write_text(json.dumps({"settings": settings, "rows": rows}, indent=2, default=str) + "\n")
    tmp.replace(partial)
    done.add(row["key"])
    report.stdout.print(f"{row['key']}: shortening {row['shortening_pct']:.1f}%, similarity {row['proxy_similarity']:.3f} "
                        f"(train {row.get('train_s', 0):.0f}s, total {time.perf_counter() - t_start:.0f}s)")


def evaluate(key: str, name: str, setting, model, train: dict) -> None:
    model.eval()
    t0 = time.perf_counter()
    gens = ev.answer(model, tok, questions, max_new_tokens=args.eval_tokens, batch_size=12)
    cmp = ev.compare(questions, base_gens, gens, embedder)
    hist = [h for h in train["history"] if "loss" in h]
    row = {"key": key, "method": name, "setting": setting, **{k: v for k, v in cmp.items() if k != "per_question"},
           "train_s": train["train_s"], "eval_s": time.perf_counter() - t0, "steps": len(hist),
           "train_last": hist[-1] if hist else {}, "history": train["history"], "warnings": train["warnings"],
           "examples": [{"prompt": q.prompt[:80], "base": b.text[:300], "short": g.text[:300]}
                        for q, b, g in list(zip(questions, base_gens, gens))[:3]]}
    if name == "rl":
        row["train_mean_reward_std"] = sum(h.get("reward_std", 0) for h in hist) / max(len(hist), 1)
        row["train_mean_clipped_ratio"] = sum(h.get("clipped_ratio", 0) for h in hist) / max(len(hist), 1)
        row["train_first_len"], row["train_last_len"] = hist[0].get("mean_length"), hist[-1].get("mean_length")
    keep(row)


# ---------------------------------------------------------------- the proxy's noise floor on these turns
if "noise" not in done:
    t0 = time.perf_counter()
    sampled = generate(base.model, tok, [q.prompt for q in questions], max_new_tokens=args.eval_tokens, batch_size=12,
                       do_sample=True, temperature=0.7, top_p=0.9, seed=0)
    cmp = ev.compare(questions, base_gens, sampled, embedder)
    keep({"key": "noise", "method": "noise floor", "setting": "base sampled (T 0.7, top-p 0.9) vs base greedy",
          **{k: v for k, v in cmp.items() if k != "per_question"}, "eval_s": time.perf_counter() - t0})

# ---------------------------------------------------------------- the training answers (after the
# noise floor, which needs none: a run cut short while they generate keeps that row)
gsm8k = [r["question"] for r in read_records(data_dir() / "gsm8k" / "train.jsonl")]
train_prompts = (alpaca_prompts() + gsm8k)[: args.train_prompts]
sft_cfg = SFTConfig(steps=args.sft_steps, learning_rate=args.sft_lr, batch_size=4, top_p=0.9, head_ratio=0.5)
t0 = time.perf_counter()
with report.progress() as bar:  # about 40 min for 600 prompts on one thread: say how far it is
    task = bar.add_task("reference answers", total=len(train_prompts))
    refs_all = get_references(base.model, tok, train_prompts, model_id=base.path, cache_root=root,
                              max_new_tokens=args.ref_tokens, batch_size=16, branch=sft_cfg.branch_settings(),
                              progress=lambda n: bar.advance(task, n))
refs = select_refs(refs_all, args.max_ref_tokens, keep_unfinished=False)
t_refs = time.perf_counter() - t0
report.stdout.print(f"references: {len(refs.refs)} of {len(refs_all.refs)} finished within {args.max_ref_tokens} tokens, "
                    f"mean {refs.mean_tokens:.1f}, max {refs.max_tokens} ({t_refs:.0f}s)")
if len(refs.refs) < 150:
    report.stdout.print(f"warning: {len(refs.refs)} training answers, fewer than the issue's 150: raise --train-prompts")


# ---------------------------------------------------------------- RL at each λ
for lam in lams:
    if f"rl:{lam}" in done:
        continue
    seed_everything(0)
    model = copy.deepcopy(base.model)
    cfg = RLConfig(lam=lam, steps=args.rl_steps, batch_size=args.rl_batch, num_generations=4, learning_rate=args.rl_lr, beta=0.04)
    with tempfile.TemporaryDirectory() as work, report.progress() as bar:  # a row is an hour on one thread
        train = train_rl(model, tok, refs, embedder, cfg, work_dir=Path(work), progress=step_progress(bar, f"rl λ {lam}", args.rl_steps))
    evaluate(f"rl:{lam}", "rl", f"λ {lam}", train["model"], train)
    del model, train

# ---------------------------------------------------------------- token-branching SFT at each top-p
for top_p in top_ps:
    if f"sft:{top_p}" in done:
        continue
    seed_everything(0)
    model = copy.deepcopy(base.model)
    cfg = SFTConfig(steps=args.sft_steps, learning_rate=args.sft_lr, batch_size=4, top_p=top_p, head_ratio=0.5)
    with tempfile.TemporaryDirectory() as work, report.progress() as bar:
        train = train_sft(model, tok, refs, cfg, work_dir=Path(work), progress=step_progress(bar, f"sft top-p {top_p}", args.sft_steps))
    evaluate(f"sft:{top_p}", "sft-branch", f"top-p {top_p}, head 0.5, λ1=λ2={cfg.lam1}", train["model"], train)
    del model, train

# ---------------------------------------------------------------- table and plot
floor = next(r for r in rows if r["key"] == "noise")["proxy_similarity"]
for r in rows:  # the quality loss: how far below the noise floor the similarity falls (negative: above it)
    r["proxy_loss_vs_floor_pct"] = 100.0 * (floor - r["proxy_similarity"]) / floor
result = {"args": vars(args), "settings": settings,
          "references": {"n_all": len(refs_all.refs), "n_used": len(refs.refs), "mean_tokens": refs.mean_tokens,
                         "max_tokens": refs.max_tokens},
          "base_mean_tokens": ev.mean_tokens(base_gens), "noise_floor_similarity": floor, "rows": rows}
out.parent.mkdir(parents=True, exist_ok=True)
out.with_suffix(".json").write_text(json.dumps(result, indent=2, default=str) + "\n")
cols = ["method", "setting", "steps", "train s", "base tokens", "short tokens", "shortening %", "similarity", "loss vs floor %",
        "finished base → short"]
report.stdout.print(report.table(
    f"shorten sweep: SmolLM2-135M-Instruct, {len(refs.refs)} training answers, {len(questions)} MT-Bench first turns "
    f"(≤{args.eval_tokens} tokens)",
    cols, [[r["method"], r["setting"], r.get("steps", "-"), r.get("train_s", "-"), r["base_mean_tokens"], r["short_mean_tokens"],
            r["shortening_pct"], r["proxy_similarity"], r["proxy_loss_vs_floor_pct"],
            f"{r['base_finished'] * r['n']:.0f} → {r['short_finished'] * r['n']:.0f} of {r['n']}"] for r in rows]))

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

fig, ax = plt.subplots(figsize=(5.5, 4))
for r in rows:
    if r["key"] == "noise":
        continue
    ax.scatter(r["shortening_pct"], r["proxy_similarity"], color="C0" if r["method"] == "rl" else "C1")
    ax.annotate(r["key"], (r["shortening_pct"], r["proxy_similarity"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
ax.axhline(floor, color="grey", ls="--", lw=0.8, label=f"noise floor {floor:.3f}")
ax.axhline(0.95 * floor, color="grey", ls=":", lw=0.8, label="5% below the floor")
ax.set_xlabel("shortening % (mean output tokens vs base)")
ax.set_ylabel("similarity to the base answers (cosine)")
ax.set_title(f"SmolLM2-135M shorten sweep ({len(questions)} MT-Bench first turns)", fontsize=9)
ax.legend(fontsize=7)
fig.tight_layout()
fig.savefig(out.with_suffix(".png"), dpi=120)
report.stdout.print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.png')} in {time.perf_counter() - t_start:.0f}s")
