"""`evaluate(model, tokenizer, cfg)`: benchmarks, perplexity and answer length in one result.

Prints nothing (progress bars go to stderr through core.report); the CLI renders the dict.
prune and the benchmarks call it on in-memory models:

    from llmslim.eval import EvalConfig, evaluate
    result = evaluate(model, tokenizer, EvalConfig(tasks=["arc_easy"], limit=100))
    result["results"]["arc_easy"]["acc"]
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from llmslim.core import report
from llmslim.core.data import data_dir as default_data_dir
from llmslim.core.data import read_prompts, read_text
from llmslim.core.errors import BadOptionError, DataError
from llmslim.eval.generation import generation_stats
from llmslim.eval.harness import check_data, resolve_tasks, run_tasks
from llmslim.eval.perplexity import DEFAULT_SEQLEN, max_positions, perplexity

log = logging.getLogger(__name__)

# Short names for the shared benchmark files (under the data dir).
CORPORA = {"wikitext2": "wikitext2/wiki.test.raw"}
PROMPT_SETS = {"mt_bench": "mt_bench/question.jsonl", "alpaca": "alpaca/alpaca_200.json"}


@dataclass
class EvalConfig:
    tasks: list[str] = field(default_factory=list)  # lm-eval tasks by the names users type (harness.TASKS)
    limit: int | None = None  # documents per task, the first ones (lm-eval --limit); None: all
    num_fewshot: int | None = None  # None: each task's own default, 0 for every shipped one
    batch_size: int = 8  # lm-eval requests, perplexity windows and generation prompts per forward
    ppl_file: str | None = None  # a text corpus file, or "wikitext2"
    ppl_seqlen: int = DEFAULT_SEQLEN  # perplexity window, capped at the model's context
    stride: int | None = None  # None: non-overlapping windows (Wanda/SparseGPT); else sliding
    ppl_limit: int | None = None  # perplexity windows, the first ones; None: the whole corpus
    gen_file: str | None = None  # a prompts file, or "mt_bench" / "alpaca"
    gen_limit: int | None = None  # prompts, the first ones; None: all
    max_new_tokens: int = 256
    data_dir: str | None = None  # the shared benchmark data; None: core.data.data_dir()
    seed: int = 0  # lm-eval's numpy/torch/few-shot seed (llmslim's one default; lm-eval's CLI uses 1234)

    @property
    def empty(self) -> bool:
        return not (self.tasks or self.ppl_file or self.gen_file)


# With no tasks, corpus or prompts asked for: WikiText-2 perplexity, the number pruning papers
# report first (about 2.5 minutes for SmolLM2-135M on 2 CPU cores, see docs/eval.md).
DEFAULT_PPL_FILE = "wikitext2"
# The one accuracy reported per task in summaries (prune, sparsity): length-normalised where
# the pruning papers' tables report it (LLM-Pruner, Wanda, FLAP: ARC-c, HellaSwag, OBQA), plain
# accuracy elsewhere. `llmslim eval` itself prints every metric.
ACC_NORM_TASKS = ("arc_challenge", "hellaswag", "openbookqa")


def headline(results: dict) -> dict[str, tuple[str, float]]:
    """{task: (metric, value)}: acc_norm for ACC_NORM_TASKS, else acc, from per-task metric dicts."""
    out = {}
    for task, metrics in results.items():
        for name in ("acc_norm", "acc") if task in ACC_NORM_TASKS else ("acc",):
            if name in metrics:
                out[task] = (name, metrics[name])
                break
    return out


def windows_task(progress, name: str):
    """A task on `progress` for perplexity(..., progress=): its windows' total is known only once
    the text is tokenised, so the callback sets it with the count."""
    task = progress.add_task(name, total=None)
    return lambda done, total: progress.update(task, completed=done, total=total)


def summary_metrics(model, tokenizer, *, ppl_text: str | None = None, ppl_seqlen: int = 1024, ppl_limit: int | None = None,
                    tasks: str | None = None, limit: int | None = None, seed: int = 0, quiet: bool = False,
                    progress=None, label: str = "", per_item: bool = False) -> dict:
    """The before/after numbers prune and recover report: WikiText-2 perplexity on `ppl_text`
    ({"wikitext2_ppl": ...}) and each task's headline accuracy ({"arc_easy/acc": ...}).
    `progress`: the command's bar (core/job's Context.progress), where the perplexity windows
    are counted as a task named with `label` (a full WikiText-2 half is minutes on a CPU).
    `per_item` (with tasks): also "per_item", every document's score in each task asked for
    (not a group's subjects), for paired differences between two rows
    (eval/paired.headline_difference(mine, theirs, list(mine))); the caller pops it."""
    results = {}
    if ppl_text is not None:
        advance = None if progress is None else windows_task(progress, f"perplexity{' ' + label if label else ''}")
        results["wikitext2_ppl"] = perplexity(model, tokenizer, ppl_text, seqlen=ppl_seqlen, max_chunks=ppl_limit,
                                              progress=advance)["perplexity"]
    if tasks:
        names = [t.strip() for t in tasks.split(",") if t.strip()]
        out = run_tasks(model, tokenizer, names, limit=limit, seed=seed, show_progress=not quiet, per_item=per_item)
        results.update({f"{task}/{name}": value for task, (name, value) in headline(out["results"]).items()})
        if per_item:
            results["per_item"] = {task: out["per_item"][task] for task in names}
    return results


def _positive(name: str, value: int | None, minimum: int = 1) -> None:
    if value is not None and value < minimum:
        raise BadOptionError(f"{name} must be an integer >= {minimum} (got {value})")


def _file(spec: str, named: dict[str, str], root: Path, what: str) -> Path:
    path = root / named[spec] if spec in named else Path(spec).expanduser()
    if not path.exists():
        hint = f" (or one of: {', '.join(named)})" if spec not in named else f" (data dir {root}: set --data-dir or LLMSLIM_DATA)"
        raise DataError(f"{what} not found: {path}{hint}")
    if path.is_dir():
        raise DataError(f"{what} {path} is a folder; give a file")
    return path


@dataclass
class Plan:
    """A checked config with its inputs read: everything that can fail before the model loads."""

    cfg: EvalConfig
    data_dir: Path
    tasks: list[str]
    ppl_path: Path | None = None
    text: str | None = None
    gen_path: Path | None = None
    prompts: list[str] | None = None


def prepare(cfg: EvalConfig) -> Plan:
    """Validate options and read the corpus and prompts; raise LlmslimError on bad input."""
    if cfg.empty:
        cfg = replace(cfg, ppl_file=DEFAULT_PPL_FILE)
    _positive("--limit", cfg.limit)
    _positive("--ppl-limit", cfg.ppl_limit)
    _positive("--gen-limit", cfg.gen_limit)
    _positive("--batch-size", cfg.batch_size)
    _positive("--max-new-tokens", cfg.max_new_tokens)
    _positive("--num-fewshot", cfg.num_fewshot, 0)
    _positive("--ppl-seqlen", cfg.ppl_seqlen, 2)
    if cfg.stride is not None and not 1 <= cfg.stride <= cfg.ppl_seqlen:
        raise BadOptionError(f"--stride must be between 1 and --ppl-seqlen ({cfg.ppl_seqlen}) (got {cfg.stride})")
    root = Path(cfg.data_dir).expanduser() if cfg.data_dir else default_data_dir()
    if cfg.data_dir and not root.is_dir():
        raise DataError(f"data dir not found: {root}")
    plan = Plan(cfg, root, resolve_tasks(cfg.tasks) if cfg.tasks else [])
    check_data(plan.tasks, root)
    if cfg.ppl_file:
        plan.ppl_path = _file(cfg.ppl_file, CORPORA, root, "perplexity corpus")
        plan.text = read_text(plan.ppl_path)
        if not plan.text.strip():
            raise DataError(f"{plan.ppl_path} is empty")
    if cfg.gen_file:
        plan.gen_path = _file(cfg.gen_file, PROMPT_SETS, root, "prompts file")
        plan.prompts = read_prompts(plan.gen_path)[: cfg.gen_limit]
    return plan


def evaluate(model, tokenizer, cfg: EvalConfig | Plan, *, show_progress: bool = True, progress=None,
             per_item: bool = False) -> dict:
    """Run what `cfg` asks on an in-memory model: lm-eval tasks, perplexity, generation stats.

    Returns {"results", "n-samples", ... (lm-eval's layout, task names as typed), "perplexity",
    "generation", "samples" (the generated answers), "config", "timings"}; "perplexity",
    "generation" and "samples" only when asked for. `progress`: a bar to draw on (core/job's);
    without one, a bar of its own where show_progress. `per_item`: also "per_item", every
    document's score (harness.run_tasks), for paired comparisons (eval/paired.py)."""
    if progress is None:
        with report.progress(show_progress) as bar:
            return evaluate(model, tokenizer, cfg, show_progress=show_progress, progress=bar, per_item=per_item)
    plan = cfg if isinstance(cfg, Plan) else prepare(cfg)
    cfg = plan.cfg
    out: dict = {"results": {}}
    timings: dict = {}

    include_path = None
    if plan.tasks:
        t0 = time.perf_counter()
        harness = run_tasks(
            model, tokenizer, plan.tasks, limit=cfg.limit, batch_size=cfg.batch_size, num_fewshot=cfg.num_fewshot,
            seed=cfg.seed, data_dir=plan.data_dir, show_progress=show_progress, per_item=per_item,
        )
        timings["tasks_s"] = time.perf_counter() - t0
        include_path = harness.pop("include_path")
        harness.pop("tasks")
        out.update(harness)

    seqlen = cfg.ppl_seqlen
    if plan.text is not None:
        limit = max_positions(model)
        if limit is not None and seqlen > limit:
            log.info("--ppl-seqlen %d is longer than the model's context; using %d", seqlen, limit)
            seqlen = limit
        t0 = time.perf_counter()
        ppl = perplexity(
            model, tokenizer, plan.text, seqlen, stride=cfg.stride, batch_size=cfg.batch_size, max_chunks=cfg.ppl_limit,
            progress=windows_task(progress, "perplexity"),
        )
        timings["perplexity_s"] = time.perf_counter() - t0
        name = cfg.ppl_file if cfg.ppl_file in CORPORA else plan.ppl_path.name
        out["perplexity"] = {"corpus": name, "file": str(plan.ppl_path), **ppl}

    if plan.prompts is not None:
        t0 = time.perf_counter()
        task = progress.add_task("generating", total=len(plan.prompts))
        gen = generation_stats(
            model, tokenizer, plan.prompts, max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size,
            seed=cfg.seed, progress=lambda n: progress.advance(task, n),
        )
        timings["generation_s"] = time.perf_counter() - t0
        out["samples"] = {"generation": gen.pop("outputs")}
        name = cfg.gen_file if cfg.gen_file in PROMPT_SETS else plan.gen_path.name
        out["generation"] = {"prompt_set": name, "file": str(plan.gen_path), **gen}

    out["config"] = {**asdict(cfg), "data_dir": str(plan.data_dir), "ppl_seqlen": seqlen, "tasks": plan.tasks,
                     "lm_eval_include_path": include_path}
    out["timings"] = timings
    return out
