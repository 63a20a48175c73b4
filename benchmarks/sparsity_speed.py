"""Dense vs 50% FFN contextual sparsity with gathered execution: prefill and decode speed,
measured interleaved in one run, and the predictor's (and the gather's) share of the time.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/sparsity_speed.py                  # both models
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/sparsity_speed.py --models smollm2-135m --repeats 2

(`llmslim sparsity bench MODEL -p PRED` times a user's own predictor the same way: sparsity/bench.py.)

Per model: a ShadowLLM predictor (full output head as in the paper, hidden 256: the costlier head) is trained on that model's own
traces (l2norm scores of a few random-token windows: quality does not matter for timing), then
for each run and each of dense / shadow-50% / static-50% (the same gathered FFNs with no
predictor, to isolate its cost), shadow-token (a new FFN mask per decode step: only the slots whose
neuron changed are rewritten) and shadow-token-reslice (the same decisions, every layer sliced
again from the original weights each step: the per-token path before slot updates): a random prompt is prefilled (the mask is chosen during the
prefill, after layer 0's attention: predictor + weight gather are inside the prefill time), then
`--new-tokens - 1` greedy decode steps reuse the gathered weights. Runs interleave the variants
(A B C, C B A, ...); medians are reported. Writes benchmarks/results/sparsity_speed.json.
"""

import argparse
import json
import time
from pathlib import Path

import torch

from llmslim.bench.synthetic import random_model
from llmslim.core import report
from llmslim.core.outputs import to_jsonable
from llmslim.sparsity import predictor as P
from llmslim.sparsity.bench import time_variants
from llmslim.sparsity.collect import Example, collect
from llmslim.sparsity.execute import SparseRunner, SparsityConfig

ap = argparse.ArgumentParser()
ap.add_argument("--models", default="smollm2-135m,random:llama-1b")
ap.add_argument("--prompt-len", type=int, default=64)
ap.add_argument("--new-tokens", type=int, default=17, help="1 from the prefill + 16 timed decode steps")
ap.add_argument("--repeats", type=int, default=3)
ap.add_argument("--sparsity", type=float, default=0.5)
ap.add_argument("--threads", type=int, default=1)
ap.add_argument("--device", default="cpu")
ap.add_argument("--column-gather", action="store_true",
                help="gather down_proj columns in place instead of from a transposed copy (saves 1/3 of the FFN weights in memory)")
ap.add_argument("--text", choices=("random", "wikitext2"), default="random",
                help="traces and prompt: random tokens, or WikiText-2 windows (models with a tokenizer; real "
                     "predictions, so token decisions change the mask as much as they would in use)")
ap.add_argument("--head", default="full", help="the predictor's output head: full (the paper's, costlier) or lowrank:R (llmslim's default)")
ap.add_argument("--trace-windows", type=int, default=12, help="windows of 32 tokens the predictor is trained on")
ap.add_argument("--out", default="benchmarks/results/sparsity_speed.json")
args = ap.parse_args()
torch.set_num_threads(args.threads)
device = torch.device(args.device)


def load(spec):
    """(model, tokenizer or None)"""
    if spec.startswith("random:"):
        return random_model(spec, dtype=torch.float32, seed=0, device=device), None
    from llmslim.core.load import load_model

    loaded = load_model(spec, device=args.device, dtype="float32")
    return loaded.model, loaded.tokenizer


def token_windows(tokenizer, vocab: int, n: int, length: int, gen) -> torch.Tensor:
    if args.text == "random" or tokenizer is None:
        return torch.randint(0, vocab, (n, length), generator=gen)
    from llmslim.core.data import calibration_windows, wikitext2_halves

    return calibration_windows(tokenizer, wikitext2_halves()[0], n, length, seed=0)


results = {"settings": vars(args), "models": {}}
for spec in [s.strip() for s in args.models.split(",") if s.strip()]:
    t_load = time.perf_counter()
    model, tokenizer = load(spec)
    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(0)
    # the model's own traces (l2norm: forward only) -> one ShadowLLM predictor for FFN neurons
    windows = token_windows(tokenizer, vocab, args.trace_windows + 1, max(32, args.prompt_len), gen)
    examples = [Example(w[:32], 31, args.text) for w in windows[:-1]]
    traces = collect(model, examples, ["l2norm"], batch_size=1)
    trained = P.train(traces, "l2norm", P.TrainConfig(epochs=3, holdout=0.25, head=args.head), kinds=("neurons",), which=("shadow",))
    shadow = trained["shadow"]
    variants = {
        "dense": None,
        "shadow": SparseRunner(model, SparsityConfig("shadow", ffn_sparsity=args.sparsity), shadow=shadow),
        "static": SparseRunner(model, SparsityConfig("static", ffn_sparsity=args.sparsity), static_scores=trained["static"]),
        "shadow-token": SparseRunner(model, SparsityConfig("shadow", ffn_sparsity=args.sparsity, decide="token"), shadow=shadow),
        "shadow-token-reslice": SparseRunner(model, SparsityConfig("shadow", ffn_sparsity=args.sparsity, decide="token"), shadow=shadow),
    }
    # the per-token path before slot updates: every decode step re-slices the layer (FFN and
    # heads) from the original weights; the same decisions, to measure what the slot update saves
    reslice = variants["shadow-token-reslice"]
    reslice.gather.update_all_ffn = lambda keeps, r=reslice: [r.gather.apply(i, n, r.last_keep["groups"][i])
                                                              for i, n in enumerate(keeps)]
    runners = [r for r in variants.values() if r is not None]
    for r in runners:
        r.gather.transpose_down = not args.column_gather
        if not args.column_gather:  # one transposed copy for every runner (each keeps its own slices)
            r.gather._down_t = runners[0].gather._down_t
    ids = windows[-1:, : args.prompt_len].to(device)
    out = time_variants(model, variants, ids, args.new_tokens, args.repeats)  # the code `llmslim sparsity bench` runs
    n_dec = args.new_tokens - 1
    for v in out.values():
        v["total_speedup"] = (out["dense"]["prefill_s"] + out["dense"]["decode_s"]) / (v["prefill_s"] + v["decode_s"])
    g = variants["shadow-token"].gather  # how much of the FFN slices a decode step rewrote
    out["shadow-token"]["slots_rewritten_share"] = g.slots_rewritten / max(1, g.slots_updated)
    params = sum(p.numel() for p in model.parameters())
    pred_params = sum(p.numel() for p in shadow.nets["neurons"].parameters())
    results["models"][spec] = {"params": params, "predictor_params": pred_params, "variants": out,
                               "setup_s": time.perf_counter() - t_load}
    rows = []
    for k, v in out.items():
        rows.append([k, v["prefill_tok_s"], v.get("prefill_speedup"), v["decode_tok_s"], v.get("decode_speedup"), v.get("total_speedup"),
                     f"{1000 * v['predict_s']:.1f} ms ({100 * v['predict_share']:.1f}%)", f"{1000 * v['gather_s']:.1f} ms ({100 * v['gather_share']:.1f}%)"])
    report.stdout.print(report.table(
        f"{spec} ({params / 1e6:.0f}M params, predictor {pred_params / 1e6:.1f}M) on {device.type}, {torch.get_num_threads()} thread(s): "
        f"{int(args.sparsity * 100)}% FFN, prompt {args.prompt_len}, {n_dec} decode steps, median of {args.repeats}",
        ["variant", "prefill tok/s", "x dense", "decode tok/s", "x dense", "prefill+decode x dense", "predictor (share)", "gather (share)"], rows))
    del model, variants, shadow
    results["models"][spec]["load_avg"] = __import__("os").getloadavg()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)  # after each model: a crash keeps the rest
    Path(args.out).write_text(json.dumps(to_jsonable(results), indent=2) + "\n")

Path(args.out).parent.mkdir(parents=True, exist_ok=True)
Path(args.out).write_text(json.dumps(to_jsonable(results), indent=2) + "\n")
report.stdout.print(f"wrote {args.out}")
