"""Quality vs FFN sparsity on SmolLM2-135M-Instruct: static, shadow, dejavu, oracle masks chosen
per input, with the plainact and l2norm criteria, run with gathered (really smaller) FFNs.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/sparsity_eval.py            # the docs table
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/sparsity_eval.py --n 8 --limit 3 --ppl-windows 2   # smoke

Steps (one process, one model load):
1. traces: `--n` examples from each of WikiText-2 (first half of the test file, 64-token windows),
   ARC-Easy Dev, PIQA and HellaSwag (items from the end of the files, never evaluated);
   plainact and l2norm scores from one forward+backward each;
2. per criterion: ShadowLLM predictor (low-rank output head, R=16; the paper's full head is
   trained too, for the Spearman comparison) and DejaVu per-layer predictors (rank 16), 20% of
   the traces held out;
3. eval: perplexity on `--ppl-windows` WikiText-2 windows (second half; mask from the first 64
   tokens, NLL of the next 64) and accuracy on the first `--limit` items of ARC-Easy test, PIQA
   and HellaSwag with our own log-likelihood scoring (mask from each item's context; lm-eval
   gives no hook to pick a mask per request), at each sparsity.
Writes benchmarks/results/sparsity_eval.json and .png.
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from llmslim.core import report
from llmslim.core.load import load_model
from llmslim.core.outputs import to_jsonable
from llmslim.sparsity import predictor as P
from llmslim.sparsity.collect import collect
from types import SimpleNamespace

from llmslim.core.job import Context
from llmslim.sparsity.jobs import EvalJob, collect_examples, plot, run_eval

ap = argparse.ArgumentParser()
ap.add_argument("--n", type=int, default=24, help="trace examples per source (4 sources)")
ap.add_argument("--seqlen", type=int, default=64)
ap.add_argument("--epochs", type=int, default=30)
ap.add_argument("--limit", type=int, default=6, help="items per task")
ap.add_argument("--ppl-windows", type=int, default=4)
ap.add_argument("--sparsity", default="0.3,0.5,0.7")
ap.add_argument("--out", default="benchmarks/results/sparsity_eval")
args = ap.parse_args()

torch.set_num_threads(1)
torch.manual_seed(0)
t_start = time.perf_counter()
loaded = load_model("smollm2-135m", device="cpu", dtype="float32")
model, tok = loaded.model, loaded.tokenizer

# 1. traces
examples = collect_examples(tok, ["wikitext2", "arc_easy", "piqa", "hellaswag"], args.n, args.seqlen, seed=0)
with report.progress() as bar:
    t = bar.add_task("tracing", total=len(examples))
    traces = collect(model, examples, ["plainact", "l2norm"], batch_size=8, progress=lambda n: bar.advance(t, n))
t_collect = traces.meta["collect_s"]

# 2. predictors
work = Path(tempfile.mkdtemp(prefix="sparsity_eval_"))  # predictor files: not kept
rho, pred_dirs = {}, []
for crit in ("plainact", "l2norm"):
    res = P.train(traces, crit, P.TrainConfig(epochs=args.epochs))  # lowrank:16 head, the default
    full = P.train(traces, crit, P.TrainConfig(epochs=args.epochs, head="full"), which=("shadow",))
    rho[crit] = {kind: {name: {"spearman": m["spearman"], "params": m.get("params")} for name, m in per.items()}
                 for kind, per in res["metrics"].items()}
    for kind in rho[crit]:
        rho[crit][kind]["shadow_full_head"] = {"spearman": full["metrics"][kind]["shadow"]["spearman"],
                                               "params": full["metrics"][kind]["shadow"]["params"]}
    d = work / crit
    d.mkdir(parents=True, exist_ok=True)
    P.save(res, traces.meta | {"n": len(traces)}, d)
    pred_dirs.append(d)
t_train = time.perf_counter() - t_start - t_collect

rows = [[c, k, name, m["spearman"], m["params"]] for c, per in rho.items() for k, v in per.items() for name, m in v.items()]
report.stdout.print(report.table(f"Spearman rho on the held-out 20% of {len(traces)} traces", ["criterion", "units", "predictor", "rho", "params"], rows))

# 3. eval
job = EvalJob(predictors=pred_dirs, ffn_sparsity=args.sparsity, limit=args.limit, ppl_limit=args.ppl_windows, ppl_prompt_len=64)
with report.progress() as bar:
    result = run_eval(job, Context(SimpleNamespace(model=model, tokenizer=tok), bar))
result["spearman"] = rho
result["sizes"] = vars(args) | {"traces": len(traces), "collect_s": t_collect, "train_s": t_train,
                                "total_s": time.perf_counter() - t_start, "threads": torch.get_num_threads()}
from llmslim.sparsity.cli import render_eval  # noqa: E402

render_eval(result)
Path(args.out).parent.mkdir(parents=True, exist_ok=True)
Path(args.out + ".json").write_text(json.dumps(to_jsonable(result), indent=2) + "\n")
plot(result, Path(args.out + ".png"))
report.stdout.print(f"total {result['sizes']['total_s']:.0f} s (collect {t_collect:.0f} s, train {t_train:.0f} s); wrote {args.out}.json and .png")
