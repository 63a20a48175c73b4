"""The three `llmslim sparsity` jobs: (model, data, config) -> result dict (+ files when `out`).
No printing; the CLI renders what these return. `bar` is an optional rich Progress."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from llmslim.core.errors import BadOptionError, DataError
from llmslim.core.outputs import atomic_dir, check_writable, to_jsonable, write_manifest
from llmslim.sparsity import criteria as C
from llmslim.sparsity import masks as M
from llmslim.sparsity.tasks import READERS, load_items, parse_tasks

SOURCES = ("wikitext2",) + tuple(READERS)


def _task(bar, what: str, total: int):
    if bar is None:
        return lambda n=1: None
    t = bar.add_task(what, total=total)
    return lambda n=1: bar.advance(t, n)


def parse_floats(text: str, what: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise BadOptionError(f"{what} must be comma-separated numbers, got {text!r}") from None
    if not values:
        raise BadOptionError(f"{what} is empty")
    for v in values:
        M.check_sparsity(v, what)
    return values


# ---------------------------------------------------------------- collect
@dataclass
class CollectJob:
    model: str = "smollm2-135m"
    data: str = "wikitext2,arc_easy,piqa,hellaswag"
    n: int = 64  # examples per source
    seqlen: int = 64  # WikiText-2 window length (the mask is decided at its last token)
    criteria: str = "plainact,l2norm"
    batch_size: int = 8
    out: Path | None = None
    force: bool = False
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"


def collect_examples(tokenizer, sources: list[str], n: int, seqlen: int, seed: int, root: Path | None = None):
    from llmslim.core.data import data_dir, read_text
    from llmslim.sparsity.collect import context_examples, window_examples

    root = Path(root or data_dir())
    examples = []
    for src in sources:
        if src == "wikitext2":
            text = read_text(root / "wikitext2" / "wiki.test.raw")
            first_half = text[: len(text) // 2]  # the second half is for perplexity
            examples += window_examples(tokenizer, first_half, n, seqlen, seed)
        elif src in READERS:
            items = load_items(src, root, split="train", limit=n)
            examples += context_examples(tokenizer, [it.context for it in items], src)
        else:
            path = Path(src)
            if not path.is_file():
                raise BadOptionError(f"unknown data source {src!r}; use {', '.join(SOURCES)} or a text file")
            examples += window_examples(tokenizer, read_text(path), n, seqlen, seed)
    return examples


def run_collect(job: CollectJob, bar=None) -> dict:
    from llmslim.core.device import seed_everything
    from llmslim.core.load import load_model
    from llmslim.sparsity.collect import collect

    crits = C.parse(job.criteria)
    if job.n < 1 or job.seqlen < 2 or job.batch_size < 1:
        raise BadOptionError("--n and --batch-size must be >= 1 and --seqlen >= 2")
    if job.out is None:
        raise BadOptionError("collect needs --out DIR (the traces are what `train` reads)")
    check_writable(job.out, job.force)
    sources = [s.strip() for s in job.data.split(",") if s.strip()]
    seed_everything(job.seed)
    t0 = time.perf_counter()
    loaded = load_model(job.model, device=job.device, dtype=job.dtype, purpose="inference")
    t_load = time.perf_counter() - t0
    examples = collect_examples(loaded.tokenizer, sources, job.n, job.seqlen, job.seed)
    traces = collect(loaded.model, examples, crits, batch_size=job.batch_size,
                     progress=_task(bar, "tracing (forward+backward)", len(examples)))
    traces.meta |= {"model": job.model, "data": sources, "seqlen": job.seqlen, "seed": job.seed}
    result = {"model": job.model, "examples": len(traces), "criteria": crits, "sources": sources, "shape": {
        k: traces.meta[k] for k in ("layers", "heads", "kv_heads", "ffn", "hidden")},
        "timings": {"load_s": t_load, "collect_s": traces.meta["collect_s"]}, "out": str(job.out)}
    with atomic_dir(job.out, force=job.force) as tmp:
        traces.save(tmp)
        write_manifest(tmp, command="sparsity collect", args=asdict(job), seed=job.seed, timings=result["timings"], results=result)
    return result


# ---------------------------------------------------------------- train
@dataclass
class TrainJob:
    traces: Path = Path("traces")
    criterion: str = "plainact"
    kinds: str = "neurons,heads"
    which: str = "shadow,dejavu"
    out: Path | None = None
    force: bool = False
    cfg: "TrainConfig | None" = None  # predictor.TrainConfig


def run_train(job: TrainJob, bar=None) -> dict:
    from llmslim.sparsity import predictor as P
    from llmslim.sparsity.collect import Traces

    crit = C.parse(job.criterion)
    if len(crit) != 1:
        raise BadOptionError("train takes one --criterion")
    kinds = [k.strip() for k in job.kinds.split(",") if k.strip()]
    which = [w.strip() for w in job.which.split(",") if w.strip()]
    for k in kinds:
        if k not in P.KINDS:
            raise BadOptionError(f"unknown kind {k!r}; use {', '.join(P.KINDS)}")
    for w in which:
        if w not in ("shadow", "dejavu"):
            raise BadOptionError(f"unknown predictor {w!r}; use shadow, dejavu")
    job.cfg = job.cfg or P.TrainConfig()
    job.cfg.check()
    if job.out is not None:
        check_writable(job.out, job.force)
    traces = Traces.load(job.traces)
    traces.scores("neurons", crit[0])  # a clear error if this criterion was not collected
    t0 = time.perf_counter()
    res = P.train(traces, crit[0], job.cfg, kinds=kinds, which=which,
                  progress=_task(bar, "training predictors", job.cfg.epochs * len(kinds) * len(which)))
    result = {"traces": str(job.traces), "criterion": crit[0], "examples": len(traces), "held_out": len(res["split"]["test"]),
              "metrics": res["metrics"], "config": res["config"], "timings": {"train_s": time.perf_counter() - t0},
              "out": str(job.out) if job.out else None}
    if job.out is not None:
        with atomic_dir(job.out, force=job.force) as tmp:
            P.save(res, traces.meta, tmp)
            (tmp / "metrics.json").write_text(json.dumps(to_jsonable(result), indent=2) + "\n")
            write_manifest(tmp, command="sparsity train", args={k: str(v) for k, v in asdict(job).items()} | {"cfg": res["config"]},
                           seed=job.cfg.seed, timings=result["timings"], results={"metrics": res["metrics"]})
    return result


# ---------------------------------------------------------------- eval
@dataclass
class EvalJob:
    model: str = "smollm2-135m"
    predictors: list[Path] = field(default_factory=list)  # one folder per criterion
    methods: str = "static,shadow,dejavu,oracle"
    ffn_sparsity: str = "0.3,0.5,0.7"
    head_sparsity: float = 0.0
    allocation: str = "perlayer"
    min_keep: float = 0.5
    tasks: str = "arc_easy,piqa,hellaswag"
    limit: int = 20
    ppl_windows: int = 8
    ppl_prompt_len: int = 64
    plot: Path | None = None
    out: Path | None = None
    force: bool = False
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"


def run_eval(job: EvalJob, bar=None, model=None, tokenizer=None) -> dict:
    """Every (criterion, method, sparsity) with a mask per input, plus the dense model."""
    from llmslim.core.data import data_dir, read_text
    from llmslim.core.device import seed_everything
    from llmslim.sparsity import predictor as P
    from llmslim.sparsity.evaluate import mc_accuracy, perplexity, ppl_windows
    from llmslim.sparsity.execute import METHODS, SparseRunner, SparsityConfig

    methods = [m.strip() for m in job.methods.split(",") if m.strip()]
    for m in methods:
        if m not in METHODS or m == "dense":
            raise BadOptionError(f"unknown method {m!r}; choose from static, shadow, dejavu, oracle")
    sparsities = parse_floats(job.ffn_sparsity, "--ffn-sparsity")
    M.check_sparsity(job.head_sparsity, "--head-sparsity")
    tasks = parse_tasks(job.tasks) if job.tasks else []
    if job.limit < 1 or job.ppl_windows < 0 or job.ppl_prompt_len < 2:
        raise BadOptionError("--limit must be >= 1, --ppl-windows >= 0 and --ppl-prompt-len >= 2")
    if not job.predictors:
        raise BadOptionError("eval needs --predictors DIR (from `llmslim sparsity train`), once per criterion")
    if job.out is not None:
        check_writable(job.out, job.force)
    preds = [P.load(p) for p in job.predictors]
    seed_everything(job.seed)
    t0 = time.perf_counter()
    if model is None:
        from llmslim.core.load import load_model

        loaded = load_model(job.model, device=job.device, dtype=job.dtype, purpose="inference")
        model, tokenizer = loaded.model, loaded.tokenizer
    root = data_dir()
    items = {t: load_items(t, root, "eval", job.limit) for t in tasks}
    windows = None
    if job.ppl_windows:
        text = read_text(root / "wikitext2" / "wiki.test.raw")
        windows = ppl_windows(tokenizer, text[len(text) // 2 :], job.ppl_prompt_len, job.ppl_windows)
    configs = [("-", "dense", 0.0, None)]
    for pr in preds:
        for m in methods:
            for s in sparsities:
                if s > 0:
                    configs.append((pr["criterion"], m, s, pr))
    per_config = (windows.shape[0] if windows is not None else 0) + sum(len(v) for v in items.values())
    tick = _task(bar, "evaluating", per_config * len(configs))
    rows = []
    for crit, method, s, pr in configs:
        cfg = SparsityConfig("dense" if method == "dense" else method, ffn_sparsity=s,
                             head_sparsity=job.head_sparsity if method != "dense" else 0.0, allocation=job.allocation,
                             min_keep=job.min_keep)
        runner = SparseRunner(model, cfg, static_scores=pr["static"] if pr else None,
                              shadow=pr["shadow"] if pr else None, dejavu=pr["dejavu"] if pr else None)
        t1 = time.perf_counter()
        row = {"criterion": crit, "method": method, "ffn_sparsity": s, "head_sparsity": cfg.head_sparsity}
        oracle_crit = pr["criterion"] if pr else "plainact"
        if windows is not None:
            row["ppl"] = perplexity(model, runner, windows, oracle_crit, progress=tick)["perplexity"]
        for t, its in items.items():
            r = mc_accuracy(model, tokenizer, runner, its, oracle_crit, progress=tick)
            row[t] = r["acc_norm"] if t in ("hellaswag", "arc_easy") else r["acc"]
        if items:
            row["mean_acc"] = sum(row[t] for t in items) / len(items)
        row["seconds"] = time.perf_counter() - t1
        row["predict_s"] = runner.stats["predict_s"]
        row["gather_s"] = runner.gather.seconds
        rows.append(row)
    result = {"model": job.model, "rows": rows, "tasks": tasks, "limit": job.limit,
              "ppl": {"windows": int(windows.shape[0]) if windows is not None else 0, "prompt_len": job.ppl_prompt_len},
              "allocation": job.allocation, "predictor_traces": {pr["criterion"]: pr["meta"].get("n") for pr in preds},
              "timings": {"total_s": time.perf_counter() - t0}, "out": str(job.out) if job.out else None}
    if job.plot is not None:
        plot(result, job.plot)
    if job.out is not None:
        with atomic_dir(job.out, force=job.force) as tmp:
            (tmp / "results.json").write_text(json.dumps(to_jsonable(result), indent=2) + "\n")
            plot(result, tmp / "sparsity.png")
            write_manifest(tmp, command="sparsity eval", args={k: str(v) for k, v in asdict(job).items()}, seed=job.seed,
                           timings=result["timings"], results={"rows": rows})
    return result


def plot(result: dict, path: Path) -> None:
    """Perplexity and mean accuracy vs FFN sparsity, one line per (criterion, method)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    dense = next(r for r in rows if r["method"] == "dense")
    metrics = [m for m in ("ppl", "mean_acc") if m in dense]
    if not metrics:
        raise DataError("nothing to plot: no perplexity and no task was evaluated")
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 4), squeeze=False)
    lines = sorted({(r["criterion"], r["method"]) for r in rows if r["method"] != "dense"})
    for ax, metric in zip(axes[0], metrics):
        for crit, method in lines:
            pts = [(0.0, dense[metric])] + sorted((r["ffn_sparsity"], r[metric]) for r in rows if (r["criterion"], r["method"]) == (crit, method))
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"{method} ({crit})",
                    linestyle="-" if crit == "plainact" else "--")
        ax.set_xlabel("FFN sparsity (dropped share, per input)")
        ax.set_ylabel("WikiText-2 perplexity (prompt-half mask)" if metric == "ppl" else "mean accuracy " + "/".join(result["tasks"]))
        if metric == "ppl":
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"{result['model']}: contextual sparsity, masks chosen per input")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
