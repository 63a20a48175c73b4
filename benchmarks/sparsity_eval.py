"""Quality vs sparsity on SmolLM2-135M-Instruct (issue 15's table): static, shadow, dejavu and
oracle masks chosen per input, with prompt and per-token decisions, with and without the dense
fallback, FFN sparsity 0.3 / 0.5 / 0.7 with heads dense or one kv group in three skipped; every
sparse row runs with gathered (really smaller) FFNs. Rows run in the order the table needs them
(FFN-only prompt decisions first), so a run cut short leaves a useful partial table.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/sparsity_eval.py --resume     # the docs table (hours)
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/sparsity_eval.py --n 8 --limit 3 --ppl-windows 2 \\
        --cache /tmp/sparsity-smoke --out /tmp/sparsity-smoke/table                   # smoke

Steps (one process, one model load):
1. traces: `--n` examples from each of WikiText-2 (first half of the test file, `--seqlen`-token
   windows), ARC-Easy Dev, PIQA and HellaSwag (items from the end of the files, never evaluated);
   the `--criteria` scores from one forward+backward each (the loss on the continuation: a
   window's second half, a task's gold answer). Cached in `--cache` per n, seqlen and criteria.
2. per criterion: the ShadowLLM predictor (low-rank output head, R=16; the paper's full head is
   trained too, for the Spearman comparison) and DejaVu per-layer predictors (rank 16), 20% of
   the traces held out. Cached in `--cache`/CRITERION/ with their Spearman rho.
3. rows: perplexity on `--ppl-windows` WikiText-2 windows (second half; mask from the first 64
   tokens, NLL of the next 64) and accuracy on the first `--limit` items of ARC-Easy test, PIQA
   and HellaSwag through lm-eval's task files (sparsity/lm.py: the mask from each item's context,
   or per token). One row per configuration, appended to OUT.json.partial as it finishes;
   `--resume` runs only the missing ones, and refuses a partial file made with other sizes.
Writes OUT.json (rows, Spearman, sizes) and OUT.png.
"""

import argparse
import json
import time
from pathlib import Path

import torch

from llmslim.core import report
from llmslim.core.data import data_dir, wikitext2_halves
from llmslim.core.load import load_model
from llmslim.core.outputs import to_jsonable
from llmslim.sparsity import predictor as P
from llmslim.sparsity.collect import IMPORTANCE, Traces, collect
from llmslim.sparsity.evaluate import ppl_windows
from llmslim.sparsity.execute import SparsityConfig
from llmslim.sparsity.jobs import collect_examples, evaluate_config, plot
from llmslim.sparsity.tasks import load_items

ap = argparse.ArgumentParser()
ap.add_argument("--n", type=int, default=64, help="trace examples per source (4 sources)")
ap.add_argument("--seqlen", type=int, default=64)
ap.add_argument("--epochs", type=int, default=30)
ap.add_argument("--criteria", default="plainact")
ap.add_argument("--methods", default="static,shadow,dejavu,oracle")
ap.add_argument("--limit", type=int, default=200, help="items per task")
ap.add_argument("--ppl-windows", type=int, default=16)
ap.add_argument("--sparsity", default="0.3,0.5,0.7", help="FFN sparsities")
ap.add_argument("--heads", default="0,0.34",
                help="head sparsities (kv groups; SmolLM2 has 3 a layer and the count is floored: 0.34 skips one)")
ap.add_argument("--decide", default="prompt,token", help="shadow and dejavu: a mask per prompt or per token")
ap.add_argument("--fallbacks", default="0:0,0.002:0",
                help="dense-fallback settings MARGIN:THRESHOLD for shadow and dejavu (0:0 is off). The predicted scores "
                     "crowd the keep boundary: margin 0.002 adds back about 4%% of FFN units at 30%% sparsity, 0.05 nearly all "
                     "(benchmarks/sparsity_fallback_margin.py)")
ap.add_argument("--importance", default="continuation", choices=IMPORTANCE,
                help="the loss a unit's traced score measures (sparsity collect --importance); prompt: another trace file")
ap.add_argument("--feature", default="post", choices=P.FEATURES,
                help="the shadow predictor's input: layer 0's attention output after o_proj, or its context before")
ap.add_argument("--cache", default="runs/sparsity_eval", help="traces and predictors, reused by later runs")
ap.add_argument("--out", default="benchmarks/results/sparsity_eval")
ap.add_argument("--resume", action="store_true", help="keep the rows of OUT.json.partial and run only the missing ones")
ap.add_argument("--device", default="cpu", help="cpu (one thread: the docs table) or cuda (a lent GPU: use another --out)")
ap.add_argument("--dtype", default="float32")
ap.add_argument("--markdown", action="store_true", help="print the rows of OUT.json.partial (a run under way), else of OUT.json, as a markdown table; run nothing")
args = ap.parse_args()


def markdown(rows: list[dict]) -> str:
    """The docs table: one line a row, in the table's order."""
    head = ("| method | decide | fallback | FFN sparsity | heads | ppl | ARC-e | PIQA | HellaSwag | mean acc "
            "| FFN skipped | heads skipped | s |\n|" + "---|" * 13)
    lines = [head]

    def share(x: float) -> str:  # a share under 0.001 is not 0.000: a fallback that left 0.02% skipped once read as all dense
        return f"{x:.3f}" if x == 0 or x >= 0.001 else f"{x:.1e}"

    for r in rows:
        fallback = "-" if not (r.get("fallback_margin") or r.get("fallback_threshold")) else \
            f"{r['fallback_margin']:g}:{r['fallback_threshold']:g}"
        lines.append(f"| {r['method']} | {r['decide'] if r['method'] in ('shadow', 'dejavu') else '-'} | {fallback} "
                     f"| {r['ffn_sparsity']:g} | {r['head_sparsity']:g} | {r['ppl']:.1f} | {r['arc_easy']:.3f} | {r['piqa']:.3f} "
                     f"| {r['hellaswag']:.3f} | {r['mean_acc']:.3f} | {share(r.get('neurons_skipped', 0))} | {share(r.get('groups_skipped', 0))} "
                     f"| {r['seconds']:.0f} |")
    return "\n".join(lines)


if args.markdown:
    partial_rows = Path(args.out + ".json.partial")  # a run under way, or cut short
    source = partial_rows if partial_rows.is_file() else Path(args.out + ".json")
    if not source.is_file():
        raise SystemExit(f"no rows yet: neither {partial_rows} nor {source}")
    try:
        rows = json.loads(source.read_text())["rows"]
    except (ValueError, KeyError, TypeError) as err:
        raise SystemExit(f"{source}: not a sparsity_eval result ({type(err).__name__})") from None
    print(markdown(rows))
    raise SystemExit(0)

floats = lambda text: [float(x) for x in text.split(",") if x]  # noqa: E731
fallbacks = [tuple(float(v) for v in pair.split(":")) for pair in args.fallbacks.split(",")]
if args.device == "cpu":
    torch.set_num_threads(1)
torch.manual_seed(0)
t_start = time.perf_counter()
cache = Path(args.cache)
criteria = [c for c in args.criteria.split(",") if c]
# the default importance keeps the name the first runs cached their traces under
traces_path = cache / (f"traces-n{args.n}-seq{args.seqlen}-{'+'.join(sorted(criteria))}"
                       f"{'' if args.importance == 'continuation' else '-' + args.importance}.pt")
partial = Path(args.out + ".json.partial")
partial.parent.mkdir(parents=True, exist_ok=True)
# what every row depends on beyond its key: a resumed run must not mix rows of other sizes or predictors
settings = {"n": args.n, "seqlen": args.seqlen, "epochs": args.epochs, "limit": args.limit, "ppl_windows": args.ppl_windows,
            "traces": traces_path.name, "cache": str(cache.resolve()), "device": args.device, "dtype": args.dtype,
            "importance": args.importance, "feature": args.feature}
if partial.is_file() and not args.resume:
    raise SystemExit(f"{partial} holds rows of an earlier run: pass --resume to keep them, or delete it")
saved = json.loads(partial.read_text()) if partial.is_file() else {"settings": settings, "rows": []}
if isinstance(saved, list):
    raise SystemExit(f"{partial} is from before the settings were recorded: use another --out, or delete it")
# partial files from before --device, --importance and --feature: CPU runs of the defaults
saved["settings"] = {"device": "cpu", "dtype": "float32", "importance": "continuation", "feature": "post"} | saved["settings"]
if saved["settings"] != settings:
    raise SystemExit(f"{partial} was made with {saved['settings']}, not {settings}: use another --out, or delete it")
rows = saved["rows"]
loaded = load_model("smollm2-135m", device=args.device, dtype=args.dtype)
model, tok = loaded.model, loaded.tokenizer
cache.mkdir(parents=True, exist_ok=True)

# 1. traces (cached per --n, --seqlen and --criteria)
if traces_path.is_file():
    traces = Traces.load(traces_path)
else:
    examples = collect_examples(tok, ["wikitext2", "arc_easy", "piqa", "hellaswag"], args.n, args.seqlen, seed=0,
                                importance=args.importance)
    with report.progress() as bar:
        t = bar.add_task("tracing", total=len(examples))
        traces = collect(model, examples, criteria, batch_size=8, progress=lambda n: bar.advance(t, n))
    traces.save(cache)
    (cache / "traces.pt").rename(traces_path)

# 2. predictors (cached per criterion and trace set)
predictors, rho = {}, {}
for crit in criteria:
    folder = cache / f"{crit}-{traces_path.stem}-e{args.epochs}{'' if args.feature == 'post' else '-' + args.feature}"
    if not (folder / "spearman.json").is_file():
        res = P.train(traces, crit, P.TrainConfig(epochs=args.epochs, feature=args.feature))  # lowrank:16 head, the default
        full = P.train(traces, crit, P.TrainConfig(epochs=args.epochs, head="full", feature=args.feature), which=("shadow",))
        spearman = {kind: {name: {"spearman": m["spearman"], "params": m.get("params")} for name, m in per.items()}
                    for kind, per in res["metrics"].items()}
        for kind in spearman:
            spearman[kind]["shadow_full_head"] = {"spearman": full["metrics"][kind]["shadow"]["spearman"],
                                                  "params": full["metrics"][kind]["shadow"]["params"]}
        folder.mkdir(parents=True, exist_ok=True)
        P.save(res, traces.meta | {"n": len(traces)}, folder)
        (folder / "spearman.json").write_text(json.dumps(spearman, indent=2) + "\n")
    predictors[crit] = P.load(folder)
    rho[crit] = json.loads((folder / "spearman.json").read_text())

# 3. rows
windows = ppl_windows(tok, wikitext2_halves()[1], 64, args.ppl_windows) if args.ppl_windows else None
items = {t: len(load_items(t, data_dir(), "eval", args.limit)) for t in ("arc_easy", "piqa", "hellaswag")}
# in the order the table needs them, so a partial run is a useful table: FFN-only prompt
# decisions for every method first, then per-token decisions, the fallback, the heads
variants = sorted(((heads, decide, fallback) for heads in floats(args.heads) for decide in args.decide.split(",")
                   for fallback in fallbacks), key=lambda v: (v[0] > 0, v[2] != (0.0, 0.0), v[1] != "prompt"))
configs = [(None, SparsityConfig("dense", ffn_sparsity=0.0))]
for heads, decide, (margin, threshold) in variants:
    for crit in criteria:
        for method in args.methods.split(","):
            if method not in ("shadow", "dejavu") and (decide != "prompt" or margin or threshold):
                continue  # static and oracle masks: one per prompt, no fallback
            for s in floats(args.sparsity):
                configs.append((crit, SparsityConfig(method, ffn_sparsity=s, head_sparsity=heads, decide=decide,
                                                     fallback_margin=margin, fallback_threshold=threshold)))


def key(crit, cfg) -> str:
    return (f"{crit or '-'}|{cfg.method}|ffn{cfg.ffn_sparsity}|heads{cfg.head_sparsity}|{cfg.decide}"
            f"|fallback{cfg.fallback_margin}:{cfg.fallback_threshold}")


done = {r["key"] for r in rows}
todo = [(crit, cfg) for crit, cfg in configs if key(crit, cfg) not in done]
print(f"{len(configs)} configurations, {len(todo)} to run; {sum(items.values())} items and "
      f"{windows.shape[0] if windows is not None else 0} ppl windows each", flush=True)
for i, (crit, cfg) in enumerate(todo):
    row, _ = evaluate_config(model, tok, cfg, predictors.get(crit), criterion=crit or "-", windows=windows, items=items, seed=0)
    row |= {"key": key(crit, cfg), "fallback_margin": cfg.fallback_margin, "fallback_threshold": cfg.fallback_threshold,
            "importance": args.importance, "feature": args.feature}
    rows.append(row)
    tmp = partial.with_suffix(".tmp")  # a kill mid-write must not lose the rows: write, then rename
    tmp.write_text(json.dumps(to_jsonable({"settings": settings, "rows": rows}), indent=2) + "\n")
    tmp.replace(partial)  # kept for --resume
    print(f"[{i + 1}/{len(todo)}] {row['key']}: ppl {row.get('ppl', float('nan')):.1f}, mean acc {row.get('mean_acc', float('nan')):.3f}, "
          f"FFN skipped {row.get('neurons_skipped', 0):.3f}, {row['seconds']:.0f} s", flush=True)


def table_order(row: dict) -> tuple:
    """The table's order for every row of the partial file, this run's and earlier subsets' alike
    (a subset run must not write a table of its own rows only): dense, then FFN-only prompt
    decisions, token decisions, the fallback, the heads; methods and sparsities within."""
    methods = ("dense", "static", "shadow", "dejavu", "oracle")
    return (row["head_sparsity"] > 0, (row["fallback_margin"], row["fallback_threshold"]) != (0.0, 0.0),
            row["decide"] != "prompt", row["criterion"], row["fallback_margin"], row["fallback_threshold"],
            methods.index(row["method"]) if row["method"] in methods else len(methods), row["ffn_sparsity"])


rows = sorted(rows, key=table_order)
result = {"model": "smollm2-135m", "rows": rows, "tasks": list(items), "limit": args.limit,
          "ppl": {"windows": int(windows.shape[0]) if windows is not None else 0, "prompt_len": 64},
          "spearman": rho, "sizes": vars(args) | {"traces": len(traces), "threads": torch.get_num_threads(),
                                                  "total_s": time.perf_counter() - t_start},
          "rows_from": "every row of OUT.json.partial, this run's and earlier runs' (other --heads/--decide/--methods)"}
Path(args.out + ".json").write_text(json.dumps(to_jsonable(result), indent=2) + "\n")
plot(result, Path(args.out + ".png"))
print(f"wrote {args.out}.json and .png ({len(rows)} rows)")
