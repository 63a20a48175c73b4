"""TALE on SmolLM2-135M-Instruct and GSM8K (issue #5 proof), top to bottom.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/budget_gsm8k.py              # all local, 24 questions
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/budget_gsm8k.py --n-test 2 --n-train 4 --max-new-tokens 16  # smoke
    # docs/budget.md's 200-question run: the same GGUF served by llama.cpp's llama-server, parts 1-2
    # and both searches through the HTTP backend; TALE-PT's before/after stays local (one engine):
    .venv/bin/python benchmarks/budget_gsm8k.py --api-base http://127.0.0.1:8012/v1 --concurrency 16 \
        --n-test 200 --n-train 400 --n-pt-test 100 --max-new-tokens 192 --batch-size 48 --threads 2

1. test split: vanilla CoT vs direct vs TALE-EP (zero-shot estimate) vs a fixed budget of 50 vs
   the searched-optimal budgets (halving search on the same questions: the paper's oracle row);
2. token elasticity: output tokens at fixed budgets (+ vanilla), PNG plot;
3. TALE-PT: vanilla + halving search on a train split, LoRA SFT on the searched answers, then the
   fine-tuned model answers the test split with the *vanilla* prompt (no budget): before/after.
Writes benchmarks/results/budget_gsm8k.json (+ budget_gsm8k_elasticity.png, budget_gsm8k_log.jsonl).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from llmslim.budget import run as R
from llmslim.budget.backends import HTTPBackend, LocalBackend
from llmslim.budget.counting import Counter
from llmslim.budget.questions import default_gsm8k, load_questions
from llmslim.budget.train import TrainConfig, examples_from_search, train
from llmslim.core import report
from llmslim.core.device import seed_everything
from llmslim.core.load import load_model
from llmslim.core.outputs import atomic_write_text, to_jsonable

p = argparse.ArgumentParser()
p.add_argument("--n-test", type=int, default=24)
p.add_argument("--n-train", type=int, default=40)
p.add_argument("--max-new-tokens", type=int, default=192)
p.add_argument("--batch-size", type=int, default=24)
p.add_argument("--budgets", default="8,50,128")
p.add_argument("--train-steps", type=int, default=12)
p.add_argument("--api-base", default=None, help="an OpenAI-compatible endpoint serving the same model (default: local HF)")
p.add_argument("--api-model", default="smollm2-135m")
p.add_argument("--concurrency", type=int, default=1)
p.add_argument("--n-pt-test", type=int, default=None, help="test questions for TALE-PT before/after (default: --n-test)")
p.add_argument("--threads", type=int, default=1, help="torch threads for the local model (1 on a shared machine)")
p.add_argument("--out", default="benchmarks/results")
args = p.parse_args()

torch.set_num_threads(args.threads)
seed_everything(0)
RESULTS = Path(args.out)
RESULTS.mkdir(parents=True, exist_ok=True)
t_start = time.perf_counter()
timings: dict[str, float] = {}

# ---------------------------------------------------------------- setup
loaded = load_model("smollm2-135m", device="cpu", dtype="float32")  # fp32: 3x faster than bf16 on this CPU
local = LocalBackend(loaded.model, loaded.tokenizer, name="smollm2-135m", batch_size=args.batch_size)
backend = local
if args.api_base:  # no key needed on loopback; greedy (temperature 0) like the local backend
    backend = HTTPBackend(args.api_base, args.api_model, api_key_env="", concurrency=args.concurrency, timeout=900, retries=2)
engine = f"HTTP {args.api_base} ({args.api_model})" if args.api_base else "local HF fp32"
counter = Counter(loaded.tokenizer)
s = R.Settings(max_new_tokens=args.max_new_tokens, estimate_max_tokens=32)
test = load_questions(default_gsm8k("test"), limit=args.n_test)
train_qs = load_questions(default_gsm8k("train"), limit=args.n_train)
report.stderr.print(f"gpt-4 counter: {counter.gpt4_source}; test {len(test)}, train {len(train_qs)} questions; engine {engine}")
log_rows: list[dict] = []


def timed(name, fn):
    t0 = time.perf_counter()
    out = fn()
    timings[name] = time.perf_counter() - t0
    report.stderr.print(f"{name}: {timings[name]:.0f}s")
    return out


# ---------------------------------------------------------------- 1. modes on the test split
rows_by_mode: dict[str, dict] = {}
for mode in ["vanilla", "direct", "tale-ep", "budget:50"]:
    summary, rows = timed(mode, lambda mode=mode: R.run_mode(backend, counter, test, mode, s))
    rows_by_mode[mode] = summary
    log_rows += rows

# searched-optimal budgets: halving search on the same questions, from the vanilla pass above
vanilla_rows = [x for x in log_rows if x["mode"] == "vanilla"]
search_summary, search_rows = timed("search-test", lambda: R.search_budgets(
    backend, counter, test, s, method="halving", max_steps=6, vanilla_rows=vanilla_rows))
# the searched row: each question answered with its searched answer where one exists, else vanilla
searched_tokens, searched_correct = [], []
for r, v in zip(search_rows, [x for x in log_rows if x["mode"] == "vanilla"]):
    if r.get("improved"):
        searched_tokens.append(r["tokens"])
        searched_correct.append(True)
    else:
        searched_tokens.append(v["out_tokens"])
        searched_correct.append(v["correct"])
rows_by_mode["searched (oracle)"] = {
    "mode": "searched (oracle)", "n": len(test), "accuracy": sum(searched_correct) / len(test),
    "mean_out_tokens": sum(searched_tokens) / len(test), "mean_gpt4_tokens": None,
    "mean_budget": search_summary["mean_budget"], "truncated": None,
}

# ---------------------------------------------------------------- 2. elasticity
budgets = [int(b) for b in args.budgets.split(",")]
elastic = [dict(rows_by_mode["vanilla"], budget=None)]
for b in budgets:
    if f"budget:{b}" in rows_by_mode:
        elastic.append(dict(rows_by_mode[f"budget:{b}"], budget=b))
        continue
    summary, rows = timed(f"budget:{b}", lambda b=b: R.run_mode(backend, counter, test, f"budget:{b}", s))
    log_rows += rows
    elastic.append(dict(summary, budget=b))
elastic.sort(key=lambda r: -1 if r["budget"] is None else r["budget"])
R.plot_elasticity(elastic, RESULTS / "budget_gsm8k_elasticity.png", f"SmolLM2-135M-Instruct, GSM8K test[:{len(test)}]")

# checkpoint parts 1-2 (the final write below replaces it)
atomic_write_text(RESULTS / "budget_gsm8k.json", json.dumps(to_jsonable(
    {"args": vars(args), "engine": engine, "partial": True, "modes": rows_by_mode, "elasticity": elastic, "search_test": search_summary, "timings": timings}), indent=2) + "\n")

# ---------------------------------------------------------------- 3. TALE-PT
train_search, train_rows = timed("search-train", lambda: R.search_budgets(backend, counter, train_qs, s, method="halving", max_steps=6))
pt: dict = {"train_search": train_search}
try:
    examples = examples_from_search(train_rows)
except Exception as err:  # noqa: BLE001 - a 135M model may answer no train question right; report it
    examples = []
    pt["error"] = str(err)
if examples:
    import copy

    cfg = TrainConfig(max_steps=args.train_steps, batch_size=4, lr=2e-4, seed=0)
    student = copy.deepcopy(loaded.model).float()
    tuned, info = timed("train", lambda: train(student, loaded.tokenizer, examples, cfg, RESULTS))
    merged = tuned.merge_and_unload().eval()
    # before and after through the same local engine on the same questions
    pt_test = test[: args.n_pt_test or len(test)]
    if backend is local and len(pt_test) == len(test):
        before = rows_by_mode["vanilla"]
    else:
        before, rows = timed("vanilla-before-PT", lambda: R.run_mode(local, counter, pt_test, "vanilla", s))
        for r in rows:
            r["mode"] = "vanilla before TALE-PT (local)"
        log_rows += rows
    after, rows = timed("vanilla-after-PT", lambda: R.run_mode(
        LocalBackend(merged, loaded.tokenizer, batch_size=args.batch_size), counter, pt_test, "vanilla", s))
    for r in rows:
        r["mode"] = "vanilla after TALE-PT"
    log_rows += rows
    pt.update({"examples": len(examples), "improved_examples": sum(e["improved"] for e in examples), "steps": info["steps"],
               "losses": info["losses"], "engine": "local HF fp32", "before": before, "after": after})

# ---------------------------------------------------------------- report
timings["total_s"] = time.perf_counter() - t_start
table_rows = [[m, r["n"], r["accuracy"], r["mean_out_tokens"], r.get("mean_gpt4_tokens"), r.get("mean_budget"), r.get("truncated")]
              for m, r in rows_by_mode.items()]
if "after" in pt:
    for label, a in [("TALE-PT before (local)", pt["before"]), ("vanilla after TALE-PT (local)", pt["after"])]:
        table_rows.append([label, a["n"], a["accuracy"], a["mean_out_tokens"], a.get("mean_gpt4_tokens"), None, a["truncated"]])
report.stdout.print(report.table(f"TALE on SmolLM2-135M-Instruct ({engine}), GSM8K test[:{len(test)}], max_new_tokens {args.max_new_tokens}",
                                 ["mode", "n", "accuracy", "mean out tokens", "mean gpt-4 tokens", "mean budget", "truncated"], table_rows))
report.stdout.print(report.table("token elasticity", ["budget", "mean out tokens", "accuracy"],
                                 [["vanilla" if r["budget"] is None else r["budget"], r["mean_out_tokens"], r["accuracy"]] for r in elastic]))
report.stdout.print(f"search on test: {search_summary}")
report.stdout.print(f"TALE-PT: {({k: v for k, v in pt.items() if k not in ('before', 'after', 'losses')})}")
report.stdout.print(f"total {timings['total_s']:.0f}s")
result = {"args": vars(args), "engine": engine, "gpt4_counter": counter.gpt4_source, "modes": rows_by_mode, "elasticity": elastic,
          "search_test": search_summary, "tale_pt": pt, "timings": timings}
atomic_write_text(RESULTS / "budget_gsm8k.json", json.dumps(to_jsonable(result), indent=2) + "\n")
atomic_write_text(RESULTS / "budget_gsm8k_log.jsonl", "".join(json.dumps(to_jsonable(r)) + "\n" for r in log_rows))
