"""The three `llmslim sparsity` commands' halves for core/job.run_command: `validate_*` (no
model, no data read beyond checking it exists) and `run_*` (the work on ctx's model)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from llmslim.core.errors import BadOptionError, DataError
from llmslim.core.job import CommonOptions, Context
from llmslim.core.load import check_not_offloaded, check_spread_before_loading
from llmslim.core.options import MODEL, SEED
from llmslim.sparsity import criteria as C
from llmslim.sparsity import masks as M
from llmslim.sparsity.tasks import READERS, load_items, parse_tasks

if TYPE_CHECKING:
    from llmslim.sparsity.predictor import TrainConfig

SOURCES = ("wikitext2",) + tuple(READERS)

SPARSE_EXECUTION = "sparse execution (weights sliced per input)"  # what an offloaded model is refused for


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


def _items(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


# ---------------------------------------------------------------- collect
@dataclass(kw_only=True)
class CollectJob(CommonOptions):
    model: str = MODEL
    data: str = "wikitext2,arc_easy,piqa,hellaswag"
    limit: int = 64  # examples per source
    seqlen: int = 64  # WikiText-2 window length (the mask is decided at its last token)
    criteria: str = "plainact,l2norm"
    batch_size: int = 8
    importance: str = "continuation"  # the loss a unit's score measures (collect.py's docstring)


def collect_examples(tokenizer, sources: list[str], n: int, seqlen: int, seed: int, root: Path | None = None,
                     importance: str = "continuation"):
    from llmslim.core.data import data_dir, read_text, wikitext2_halves
    from llmslim.sparsity.collect import context_examples, window_examples

    root = Path(root or data_dir())
    examples = []
    for src in sources:
        if src == "wikitext2":  # the first half: the second is for perplexity
            examples += window_examples(tokenizer, wikitext2_halves(root)[0], n, seqlen, seed, importance)
        elif src in READERS:
            items = load_items(src, root, split="train", limit=n)
            answers = [it.choices[it.label] for it in items] if importance == "continuation" else None
            examples += context_examples(tokenizer, [it.context for it in items], src, answers=answers)
        else:
            examples += window_examples(tokenizer, read_text(Path(src)), n, seqlen, seed, importance)
    return examples


def validate_collect(job: CollectJob) -> None:
    from llmslim.sparsity.collect import IMPORTANCE

    C.parse(job.criteria)
    if job.importance not in IMPORTANCE:
        raise BadOptionError(f"unknown --importance {job.importance!r}; use {' or '.join(IMPORTANCE)}")
    if job.limit < 1 or job.seqlen < 2 or job.batch_size < 1:
        raise BadOptionError("--limit and --batch-size must be >= 1 and --seqlen >= 2")
    for src in _items(job.data):
        if src not in SOURCES and not Path(src).is_file():
            raise BadOptionError(f"unknown data source {src!r}; use {', '.join(SOURCES)} or a text file")


def run_collect(job: CollectJob, ctx: Context) -> dict:
    from llmslim.sparsity.collect import collect

    sources = _items(job.data)
    examples = collect_examples(ctx.tokenizer, sources, job.limit, job.seqlen, job.seed, importance=job.importance)
    traces = collect(ctx.model, examples, C.parse(job.criteria), batch_size=job.batch_size,
                     progress=ctx.step("tracing (forward+backward)", len(examples)))
    traces.meta |= {"model": job.model, "data": sources, "seqlen": job.seqlen, "seed": job.seed}
    ctx.save(traces.save)
    return {"model": job.model, "examples": len(traces), "criteria": C.parse(job.criteria), "sources": sources,
            "importance": job.importance,
            "shape": {k: traces.meta[k] for k in ("layers", "heads", "kv_heads", "ffn", "hidden")},
            "timings": {"collect_s": traces.meta["collect_s"]}}


# ---------------------------------------------------------------- train
@dataclass
class TrainJob:
    traces: Path = Path("traces")
    criterion: str = "plainact"
    kinds: str = "neurons,heads"
    which: str = "shadow,dejavu"
    out: Path | None = None
    force: bool = False
    seed: int = SEED
    cfg: "TrainConfig | None" = None


def validate_train(job: TrainJob) -> None:
    from llmslim.sparsity import predictor as P

    if len(C.parse(job.criterion)) != 1:
        raise BadOptionError("train takes one --criterion")
    for k in _items(job.kinds):
        if k not in P.KINDS:
            raise BadOptionError(f"unknown kind {k!r}; use {', '.join(P.KINDS)}")
    for w in _items(job.which):
        if w not in ("shadow", "dejavu"):
            raise BadOptionError(f"unknown predictor {w!r}; use shadow, dejavu")
    (job.cfg or P.TrainConfig()).check()
    if not Path(job.traces).exists():
        raise DataError(f"no traces at {job.traces} (run `llmslim sparsity collect ... --out DIR` first)")


def run_train(job: TrainJob, ctx: Context) -> dict:
    from llmslim.sparsity import predictor as P
    from llmslim.sparsity.collect import Traces

    crit, kinds, which = C.parse(job.criterion)[0], _items(job.kinds), _items(job.which)
    cfg = job.cfg or P.TrainConfig(seed=job.seed)
    traces = Traces.load(job.traces)
    traces.scores("neurons", crit)  # a clear error if this criterion was not collected
    t0 = time.perf_counter()
    res = P.train(traces, crit, cfg, kinds=kinds, which=which,
                  progress=ctx.step("training predictors", cfg.epochs * len(kinds) * len(which)))
    ctx.save(lambda folder: P.save(res, traces.meta, folder))
    return {"traces": str(job.traces), "criterion": crit, "examples": len(traces), "held_out": len(res["split"]["test"]),
            "metrics": res["metrics"], "config": res["config"], "timings": {"train_s": time.perf_counter() - t0}}


# ---------------------------------------------------------------- eval
@dataclass(kw_only=True)
class EvalJob(CommonOptions):
    model: str = MODEL
    predictors: list[Path] = field(default_factory=list)  # one folder per criterion
    methods: str = "static,shadow,dejavu,oracle"
    ffn_sparsity: str = "0.3,0.5,0.7"
    head_sparsity: float = 0.0
    allocation: str = "perlayer"
    min_keep: float = 0.5
    fallback_margin: float = 0.0
    fallback_threshold: float = 0.0
    decide: str = "prompt"
    tasks: str = "arc_easy,piqa,hellaswag"
    limit: int | None = None
    ppl_limit: int = 8  # WikiText-2 windows (second half)
    ppl_prompt_len: int = 64
    plot: Path | None = None


def validate_eval(job: EvalJob) -> None:
    from llmslim.core.outputs import check_creatable
    from llmslim.sparsity.execute import METHODS

    for m in _items(job.methods):
        if m not in METHODS or m == "dense":
            raise BadOptionError(f"unknown method {m!r}; choose from static, shadow, dejavu, oracle")
    parse_floats(job.ffn_sparsity, "--ffn-sparsity")
    M.check_sparsity(job.head_sparsity, "--head-sparsity")
    if not 0.0 <= job.fallback_margin <= 1.0 or not 0.0 <= job.fallback_threshold <= 1.0:
        raise BadOptionError("--fallback-margin and --fallback-threshold must be in [0, 1]")
    from llmslim.sparsity.execute import DECISIONS

    for d in _items(job.decide):
        if d not in DECISIONS:
            raise BadOptionError(f"unknown --decide {d!r}; use {', '.join(DECISIONS)} (or both)")
    if job.tasks:
        parse_tasks(job.tasks)
    if (job.limit is not None and job.limit < 1) or job.ppl_limit < 0 or job.ppl_prompt_len < 2:
        raise BadOptionError("--limit must be >= 1, --ppl-limit >= 0 and --ppl-prompt-len >= 2")
    if not job.predictors:
        raise BadOptionError("eval needs --predictors DIR (from `llmslim sparsity train`), once per criterion")
    if job.ppl_limit == 0 and not job.tasks:
        raise BadOptionError("nothing to evaluate: --ppl-limit 0 and no --tasks")
    if job.ppl_limit:
        from llmslim.core.data import data_dir

        if not (data_dir() / "wikitext2" / "wiki.test.raw").is_file():
            raise DataError(f"perplexity needs {data_dir() / 'wikitext2' / 'wiki.test.raw'} (set LLMSLIM_DATA, or --ppl-limit 0)")
    from llmslim.sparsity import predictor as P

    for folder in job.predictors:
        pred = P.load(folder)  # small files: a wrong folder fails here, before the model loads
        for method in _items(job.methods):
            _check_heads(job.head_sparsity, pred, job.allocation, method)
    if job.plot is not None:
        check_creatable(job.plot)
    check_spread_before_loading(job, SPARSE_EXECUTION)


def _configs(preds: list[dict], methods: list[str], sparsities: list[float], decisions: list[str]) -> list[tuple]:
    """(criterion, method, ffn sparsity, decide, predictors) for the dense model and every
    combination (static and oracle masks do not depend on the token: prompt decisions only)."""
    return [("-", "dense", 0.0, "prompt", None)] + [
        (pr["criterion"], m, s, d, pr) for pr in preds for m in methods for s in sparsities if s > 0
        for d in (decisions if m in ("shadow", "dejavu") else ["prompt"])]


def evaluate_config(model, tokenizer, cfg, pr: dict | None, *, criterion: str, windows, items: dict[str, int], seed: int,
                    progress=None) -> tuple[dict, list[dict]]:
    """One row of the quality table: `cfg` (a SparsityConfig; dense with pr None) on the
    perplexity windows and the first items[t] items of each task, and its per-input skip records."""
    from llmslim.eval.harness import run_tasks
    from llmslim.eval.run import headline
    from llmslim.sparsity.evaluate import oracle_scores, perplexity
    from llmslim.sparsity.execute import SparseRunner
    from llmslim.sparsity.lm import SparseLM

    method, s, decide = cfg.method, cfg.ffn_sparsity, cfg.decide
    runner = SparseRunner(model, cfg, static_scores=pr["static"] if pr else None,
                          shadow=pr["shadow"] if pr else None, dejavu=pr["dejavu"] if pr else None)
    t1 = time.perf_counter()
    row = {"criterion": criterion, "method": method, "decide": decide, "ffn_sparsity": s, "head_sparsity": cfg.head_sparsity}
    oracle_crit = pr["criterion"] if pr else "plainact"
    importance = pr["meta"].get("importance", "prompt") if pr else "continuation"  # the oracle's, as its predictors'
    if windows is not None:
        row["ppl"] = perplexity(model, runner, windows, oracle_crit, progress=progress, importance=importance)["perplexity"]
    oracle = (lambda ids, c=oracle_crit: oracle_scores(model, ids, c, ids.numel() - 1)) if method == "oracle" else None
    for t, n in items.items():
        res = run_tasks(model, tokenizer, [t], limit=n, seed=seed, show_progress=False,
                        lm=SparseLM(model, tokenizer, runner, oracle=oracle, progress=progress))["results"]
        row[t] = headline({t: res[t]})[t][1]
    if items:
        row["mean_acc"] = sum(row[t] for t in items) / len(items)
    row |= M.summarize(runner.records) if method != "dense" else {}
    row |= {"seconds": time.perf_counter() - t1, "predict_s": runner.stats["predict_s"], "gather_s": runner.gather.seconds}
    records = [{"criterion": criterion, "method": method, "decide": decide, "ffn_sparsity": s, "decision": n, "tokens": r.get("tokens"),
                **{f"{kind}_{field}": [x[field] for x in r[kind]] for kind in ("neurons", "groups")
                   for field in ("ran", "added", "dense")}} for n, r in enumerate(runner.records)]
    return row, records


def run_eval(job: EvalJob, ctx: Context) -> dict:
    """Every (criterion, method, sparsity) with a mask per input, plus the dense model."""
    check_not_offloaded(ctx.model, SPARSE_EXECUTION)
    from llmslim.core.data import data_dir, wikitext2_halves
    from llmslim.sparsity import predictor as P
    from llmslim.sparsity.evaluate import ppl_windows
    from llmslim.sparsity.execute import SparsityConfig

    model, tokenizer = ctx.model, ctx.tokenizer
    preds = [P.load(p) for p in job.predictors]
    for folder, pr in zip(job.predictors, preds):
        P.check_model(pr, model, folder)
    tasks = parse_tasks(job.tasks) if job.tasks else []
    # lm-eval reads each task file from its start: at most the eval half (the traces read the other)
    items = {t: len(load_items(t, data_dir(), "eval", job.limit)) for t in tasks}
    windows = ppl_windows(tokenizer, wikitext2_halves()[1], job.ppl_prompt_len, job.ppl_limit) if job.ppl_limit else None
    configs = _configs(preds, _items(job.methods), parse_floats(job.ffn_sparsity, "--ffn-sparsity"), _items(job.decide))
    per_config = (windows.shape[0] if windows is not None else 0) + sum(items.values())
    tick = ctx.step("evaluating", per_config * len(configs))
    rows, records = [], []
    for crit, method, s, decide, pr in configs:
        cfg = SparsityConfig(method, ffn_sparsity=s, head_sparsity=job.head_sparsity if method != "dense" else 0.0,
                             allocation=job.allocation, min_keep=job.min_keep, fallback_margin=job.fallback_margin,
                             fallback_threshold=job.fallback_threshold, decide=decide)
        row, config_records = evaluate_config(model, tokenizer, cfg, pr, criterion=crit, windows=windows, items=items,
                                              seed=job.seed, progress=tick)
        rows.append(row)
        records += config_records
    result = {"model": job.model, "rows": rows, "tasks": tasks, "limit": job.limit,
              "ppl": {"windows": int(windows.shape[0]) if windows is not None else 0, "prompt_len": job.ppl_prompt_len},
              "allocation": job.allocation, "predictor_traces": {pr["criterion"]: pr["meta"].get("n") for pr in preds}}
    if job.plot is not None:
        plot(result, job.plot)
    ctx.save(lambda folder: plot(result, folder / "sparsity.png"))
    ctx.save(lambda folder: _write_records(records, folder / RECORDS_FILE))
    result["fallback"] = {"margin": job.fallback_margin, "threshold": job.fallback_threshold}
    return result


RECORDS_FILE = "skips.jsonl"  # per evaluated input: each layer's FFN neurons and kv groups run, added back, made dense


def _write_records(records: list[dict], path: Path) -> None:
    import json

    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def _line(row: dict) -> tuple:
    """What a plot line holds fixed: everything but the FFN sparsity."""
    return (row["criterion"], row["method"], row.get("decide", "prompt"), row.get("head_sparsity", 0.0),
            row.get("fallback_margin", 0.0), row.get("fallback_threshold", 0.0))


def _label(line: tuple, varies: set[int]) -> str:
    crit, method, decide, heads, margin, threshold = line
    parts = [crit] + ([f"{decide} decisions"] if 2 in varies else []) + ([f"heads {heads:g}"] if heads else [])
    parts += [f"fallback {margin:g}:{threshold:g}"] if margin or threshold else []
    return f"{method} ({', '.join(parts)})"


def plot(result: dict, path: Path) -> None:
    """Perplexity and mean accuracy vs FFN sparsity, one line per configuration but the sparsity
    (criterion, method, and the decisions, head sparsity and fallback where the rows vary them)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    dense = next(r for r in rows if r["method"] == "dense")
    metrics = [m for m in ("ppl", "mean_acc") if m in dense]
    if not metrics:
        raise DataError("nothing to plot: no perplexity and no task was evaluated")
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 4), squeeze=False)
    lines = sorted({_line(r) for r in rows if r["method"] != "dense"})
    varies = {i for i in range(6) if len({line[i] for line in lines}) > 1}
    for ax, metric in zip(axes[0], metrics):
        for line in lines:
            # x: the FFN share actually skipped (a fallback runs some of the dropped units after all)
            pts = [(0.0, dense[metric])] + sorted((r.get("neurons_skipped", r["ffn_sparsity"]), r[metric])
                                                  for r in rows if _line(r) == line)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=_label(line, varies),
                    linestyle="-" if line[0] == "plainact" else "--")
        ax.set_xlabel("FFN neurons skipped (share, masks chosen per input)")
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


# ---------------------------------------------------------------- generate and bench
@dataclass(kw_only=True)
class UseJob(CommonOptions):
    """`sparsity generate` and `sparsity bench`: one predictor folder on its model."""

    model: str = MODEL
    predictors: Path | None = None
    method: str = "shadow"
    ffn_sparsity: float = 0.5
    head_sparsity: float = 0.0
    decide: str = "prompt"  # generate: one; bench: a comma list
    fallback_margin: float = 0.0
    fallback_threshold: float = 0.0
    prompt: str | None = None  # generate
    max_new_tokens: int = 64  # generate
    prompt_len: int = 64  # bench: random prompt tokens
    new_tokens: int = 17  # bench: 1 from the prefill + 16 timed decode steps
    repeats: int = 3  # bench
    threads: int | None = None  # bench


def validate_use(job: UseJob, bench: bool) -> None:
    from llmslim.sparsity import predictor as P
    from llmslim.sparsity.execute import DECISIONS, METHODS, SparsityConfig

    if job.predictors is None:
        raise BadOptionError("needs --predictors DIR (from `llmslim sparsity train`)")
    if job.method not in METHODS or job.method in ("dense", "oracle"):
        raise BadOptionError(f"unknown --method {job.method!r}; use static, shadow or dejavu")
    M.check_sparsity(job.ffn_sparsity, "--ffn-sparsity")
    M.check_sparsity(job.head_sparsity, "--head-sparsity")
    decisions = _items(job.decide)
    if not decisions or any(d not in DECISIONS for d in decisions) or (len(decisions) > 1 and not bench):
        raise BadOptionError(f"--decide must be {' or '.join(DECISIONS)}" + (" (a comma list for bench)" if bench else ""))
    if not 0.0 <= job.fallback_margin <= 1.0 or not 0.0 <= job.fallback_threshold <= 1.0:
        raise BadOptionError("--fallback-margin and --fallback-threshold must be in [0, 1]")
    if bench and (job.prompt_len < 1 or job.new_tokens < 2 or job.repeats < 1 or (job.threads is not None and job.threads < 1)):
        raise BadOptionError("--prompt-len, --repeats and --threads must be >= 1, --new-tokens >= 2")
    if not bench and (not job.prompt or job.max_new_tokens < 1):
        raise BadOptionError("generate needs --prompt TEXT and --max-new-tokens >= 1")
    pred = P.load(job.predictors)  # a wrong folder fails here, before the model loads
    if job.method != "static" and pred[job.method] is None:
        raise BadOptionError(f"{job.predictors} holds no {job.method} predictor (train it with --which {job.method})")
    _check_heads(job.head_sparsity, pred, SparsityConfig.allocation, job.method)  # generate and bench use its default
    check_spread_before_loading(job, SPARSE_EXECUTION)


def _check_heads(head_sparsity: float, pred: dict, allocation: str, method: str) -> None:
    """The kv-group count recorded with the traces, so a --head-sparsity that skips nothing fails
    before the model loads (SparseRunner checks again for callers without predictors)."""
    kv_groups = pred["meta"].get("kv_heads")
    if kv_groups:
        M.check_heads_skipped(head_sparsity, kv_groups, allocation, method)


def _runner(job: UseJob, model, pred: dict, decide: str):
    from llmslim.sparsity.execute import SparseRunner, SparsityConfig

    cfg = SparsityConfig(job.method, ffn_sparsity=job.ffn_sparsity, head_sparsity=job.head_sparsity, decide=decide,
                         fallback_margin=job.fallback_margin, fallback_threshold=job.fallback_threshold)
    return SparseRunner(model, cfg, static_scores=pred["static"], shadow=pred["shadow"], dejavu=pred["dejavu"])


def run_generate(job: UseJob, ctx: Context) -> dict:
    check_not_offloaded(ctx.model, SPARSE_EXECUTION)
    from llmslim.core.generate import render_prompt
    from llmslim.sparsity import predictor as P
    from llmslim.sparsity.bench import run_once

    model, tokenizer = ctx.model, ctx.tokenizer
    pred = P.load(job.predictors)
    P.check_model(pred, model, job.predictors)
    runner = _runner(job, model, pred, job.decide)
    device = next(model.parameters()).device
    ids = tokenizer(render_prompt(tokenizer, job.prompt), return_tensors="pt", add_special_tokens=False).input_ids.to(device)
    timed = run_once(model, runner, ids, job.max_new_tokens)
    tokens = timed["tokens"][0].tolist()
    eos = tokenizer.eos_token_id
    if eos in tokens:  # greedy decoding ran the full length (timing); the answer ends at EOS
        tokens = tokens[: tokens.index(eos)]
    return {"model": job.model, "method": job.method, "decide": job.decide, "ffn_sparsity": job.ffn_sparsity,
            "prompt": job.prompt, "text": tokenizer.decode(tokens, skip_special_tokens=True), "new_tokens": len(tokens),
            "decode_tok_s": (job.max_new_tokens - 1) / timed["decode_s"] if job.max_new_tokens > 1 else None,
            "prefill_s": timed["prefill_s"], **M.summarize(runner.records)}


def _bench_prompt(job: UseJob, tokenizer, vocab: int):
    """([1, prompt_len] ids, where they came from): a seeded window of the WikiText-2 second half
    (real text: per-token masks change as they would in use), or random tokens without the data."""
    import torch

    from llmslim.core.data import calibration_windows, wikitext2_halves

    try:
        text = wikitext2_halves()[1]
    except DataError:
        return torch.randint(0, vocab, (1, job.prompt_len), generator=torch.Generator().manual_seed(job.seed)), "random tokens"
    return calibration_windows(tokenizer, text, 1, job.prompt_len, job.seed), "WikiText-2"


def run_bench(job: UseJob, ctx: Context) -> dict:
    check_not_offloaded(ctx.model, SPARSE_EXECUTION)
    import torch

    from llmslim.core.device import device_label
    from llmslim.sparsity import predictor as P
    from llmslim.sparsity.bench import time_variants

    if job.threads:
        torch.set_num_threads(job.threads)
    model = ctx.model
    pred = P.load(job.predictors)
    P.check_model(pred, model, job.predictors)
    variants = {"dense": None} | {f"{job.method} ({d})": _runner(job, model, pred, d) for d in _items(job.decide)}
    runners = [r for r in variants.values() if r is not None]
    for r in runners[1:]:  # they run one after another: one Gather (one transposed copy, one set of buffers)
        r.gather = runners[0].gather
    device = next(model.parameters()).device
    ids, prompt = _bench_prompt(job, ctx.tokenizer, model.get_input_embeddings().weight.shape[0])
    ids = ids.to(device)
    times = time_variants(model, variants, ids, job.new_tokens, job.repeats,
                          progress=ctx.step("timing (interleaved runs)", job.repeats * len(variants)))
    return {"model": job.model, "device": device_label(device), "ffn_sparsity": job.ffn_sparsity, "head_sparsity": job.head_sparsity,
            "prompt_len": job.prompt_len, "prompt": prompt, "decode_steps": job.new_tokens - 1, "repeats": job.repeats, "variants": times,
            "predictor_params": sum(p.numel() for net in (pred["shadow"].nets.values() if pred["shadow"] else []) for p in net.parameters())}
