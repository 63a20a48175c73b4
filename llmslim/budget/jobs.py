"""The `budget` commands' halves for core/job.run_command: `validate_*` (options, templates and
the questions file, no model) and `run_*` (build the backend - a local model or an HTTP
endpoint - and do the work). Per-question rows go to files in --out (log.jsonl, search.jsonl,
budgets.jsonl); results.json holds the summaries (estimate's also its budget per question)."""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from llmslim.budget import prompts as P
from llmslim.budget import run as R
from llmslim.budget.backends import HTTPBackend, LocalBackend
from llmslim.budget.counting import Counter
from llmslim.budget.questions import load_questions, question_key
from llmslim.core import distributed
from llmslim.core.data import read_records
from llmslim.core.device import peak_memory_mb, where_it_ran
from llmslim.core.errors import BadOptionError, DataError
from llmslim.core.job import Context
from llmslim.core.options import DEVICE, DTYPE, MODEL, SEED
from llmslim.core.outputs import to_jsonable


@dataclass
class BackendSpec:
    model: str | None = MODEL  # local model (or, with api_base, the model name sent to the API)
    api_base: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    api_tokenizer: str | None = None  # local tokenizer for model-token counts of API answers
    concurrency: int = 4
    retries: int = 3
    timeout: float = 60.0
    batch_size: int = 8
    device: str = DEVICE
    dtype: str = DTYPE
    seed: int = SEED

    def check(self) -> None:
        if self.concurrency < 1 or self.retries < 0 or self.timeout <= 0:
            raise BadOptionError("--concurrency must be >= 1, --retries >= 0, --timeout > 0")
        if self.batch_size < 1:
            raise BadOptionError("--batch-size must be >= 1")
        if self.api_base and not self.model:
            raise BadOptionError("--api-base needs the model name the endpoint serves (the MODEL argument)")
        if not self.api_base:
            from llmslim.core.device import resolve_device, resolve_dtype
            from llmslim.core.load import resolve_model

            resolve_dtype(self.dtype, resolve_device(self.device), "inference")
            resolve_model(self.model)  # a local model that does not exist fails before any question is read


@dataclass
class Job:
    backend: BackendSpec = field(default_factory=BackendSpec)
    data: Path | None = None
    limit: int | None = None
    offset: int = 0
    templates: Path | None = None
    settings: dict = field(default_factory=dict)  # run.Settings fields
    options: dict = field(default_factory=dict)  # the command's own options (modes, method, budgets...)
    out: Path | None = None
    force: bool = False
    seed: int = SEED


@dataclass
class Env:
    backend: object
    counter: Counter
    model: object = None  # the local model, when there is one
    tokenizer: object = None
    device: object = None
    load_s: float = 0.0


def make_env(spec: BackendSpec) -> Env:
    t0 = time.perf_counter()
    if spec.api_base:
        tok = None
        if spec.api_tokenizer:
            from llmslim.core.load import load_tokenizer, resolve_model

            folder, gguf = resolve_model(spec.api_tokenizer)
            if gguf:
                from llmslim.core.load import _convert_gguf

                folder = str(_convert_gguf(folder, gguf))
            tok = load_tokenizer(folder)
        backend = HTTPBackend(spec.api_base, spec.model, api_key_env=spec.api_key_env, concurrency=spec.concurrency,
                              retries=spec.retries, timeout=spec.timeout, seed=spec.seed)
        return Env(backend, Counter(tok), load_s=time.perf_counter() - t0)
    from llmslim.core.load import load_model

    loaded = load_model(spec.model or MODEL, device=spec.device, dtype=spec.dtype, purpose="inference")
    backend = LocalBackend(loaded.model, loaded.tokenizer, name=spec.model or "local", batch_size=spec.batch_size, seed=spec.seed)
    return Env(backend, Counter(loaded.tokenizer), loaded.model, loaded.tokenizer, loaded.device, time.perf_counter() - t0)


def settings(job: Job) -> R.Settings:
    s = R.Settings(templates=P.load_templates(job.templates), **job.settings)
    if s.max_new_tokens < 1 or s.estimate_max_tokens < 1 or s.default_budget < 1:
        raise BadOptionError("--max-new-tokens, --estimate-max-tokens and --default-budget must be >= 1")
    return s


def read_search(path: Path) -> list[dict]:
    rows = read_records(path if path.is_file() else path / "search.jsonl")
    if not rows or "budget" not in rows[0]:
        raise DataError(f"{path}: not a `budget search` output (no 'budget' field)")
    return rows


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(to_jsonable(r), ensure_ascii=False) + "\n" for r in rows)


def _save_rows(ctx: Context, name: str, rows: list[dict]) -> None:
    ctx.save(lambda folder: (folder / name).write_text(_jsonl(rows), encoding="utf-8"))


def validate(job: Job) -> None:
    """What every question-answering budget command checks before it builds a backend (after
    its own options: a typo in one is reported before a missing model)."""
    settings(job)
    load_questions(job.data, limit=job.limit, offset=job.offset)
    job.backend.check()


def _start(job: Job, ctx: Context):
    s = settings(job)
    questions = load_questions(job.data, limit=job.limit, offset=job.offset)
    env = make_env(job.backend)
    ctx.timings["load_s"] = env.load_s
    return s, questions, env


def _common(env: Env, questions) -> dict:
    local = where_it_ran(env.device, env.model.dtype) if env.model is not None else {"device": None, "dtype": None}
    return {"backend": env.backend.name, "n_questions": len(questions), "gpt4_counter": env.counter.gpt4_source,
            "peak_memory_mb": peak_memory_mb(env.device) if env.device is not None else None, **local}


def _progress(ctx: Context):
    """The make(desc, total) -> advance(n) factory the budget runners take."""
    return lambda desc, total: ctx.step(desc, total)


# ---------------------------------------------------------------- commands
def validate_estimate(job: Job) -> None:
    if job.options.get("regression") is not None:
        read_search(job.options["regression"])
    validate(job)


def run_estimate(job: Job, ctx: Context) -> dict:
    s, questions, env = _start(job, ctx)
    t0 = time.perf_counter()
    if job.options.get("regression") is not None:
        fit = R.fit_regression(read_search(job.options["regression"]), env.counter)
        budgets = R.predict_regression(fit, questions, env.counter)
        rows = [{"id": q.id, "question": q.question, "budget": b, "budget_parsed": True} for q, b in zip(questions, budgets)]
        method = {"estimator": "regression", **fit}
    else:
        rows = R.estimate_budgets(env.backend, env.counter, questions, s, ctx.step("estimating", len(questions)))
        for r, q in zip(rows, questions):
            r["question"] = q.question
        method = {"estimator": "zero-shot", "default_budget": s.default_budget,
                  "parse_rate": sum(r["budget_parsed"] for r in rows) / len(rows)}
    ctx.timings["estimate_s"] = time.perf_counter() - t0
    budgets = [r["budget"] for r in rows]
    _save_rows(ctx, "budgets.jsonl", rows)
    return {**method, "mean_budget": sum(budgets) / len(budgets), "min_budget": min(budgets), "max_budget": max(budgets),
            "budgets": rows, **_common(env, questions)}


def _journal(job: Job) -> Path | None:
    """Where `budget run` appends each answered question while it runs (with --out)."""
    return Path(f"{job.out}-checkpoints") / "log.jsonl" if job.out is not None else None


def _journal_header(job: Job) -> dict:
    """What must not change between a stopped run and its --resume: the model or endpoint, the
    settings, the templates and the search file (their contents), the questions."""
    import hashlib

    def digest(path) -> str | None:
        if path is None:
            return None
        path = Path(path)
        path = path if path.is_file() else path / "search.jsonl"
        return hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.is_file() else str(path)

    b = job.backend
    return {"journal": "budget run", "model": b.model, "api_base": b.api_base, "settings": job.settings,
            "templates": digest(job.templates), "searched": digest(job.options.get("searched")),
            "data": str(job.data), "limit": job.limit, "offset": job.offset}


def read_journal(path: Path) -> tuple[dict | None, dict[str, dict]]:
    """(header, rows by key) of a journal; a line cut short by a kill mid-write is skipped."""
    header, rows = None, {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "journal" in entry:
            header = entry
        elif "key" in entry:
            rows[entry["key"]] = entry
    return header, rows


def validate_run(job: Job) -> None:
    modes = job.options["modes"]
    journal = _journal(job)
    if job.options.get("resume"):
        if journal is None or not journal.is_file():
            raise BadOptionError(f"--resume: no journal of a stopped run at {journal or 'OUT-checkpoints/log.jsonl (needs --out)'}")
        header = read_journal(journal)[0]
        if header != json.loads(json.dumps(_journal_header(job), default=str)):
            raise BadOptionError(f"--resume: {journal} was written by a run with other settings, model, templates, "
                                 f"search file or questions; resume with the same command, or start again with --force")
    elif journal is not None and journal.is_file() and not job.force:
        raise BadOptionError(f"{journal} holds the answers of a stopped run: --resume continues it, --force starts again")
    if not modes:
        raise BadOptionError("--modes is empty")
    for m in modes:
        R.parse_mode(m)
    if any(m in ("searched", "regression") for m in modes):
        if job.options.get("searched") is None:
            raise BadOptionError("modes 'searched' and 'regression' need --searched FILE (from `budget search --out`)")
        _searched_budgets(job, modes)
    validate(job)


def _searched_budgets(job: Job, modes: list[str]) -> tuple[dict, list[dict]]:
    """{question key: budget} from the --searched file, and its records; with mode searched,
    every question of this run must be in it (before any model loads)."""
    recs = read_search(job.options["searched"])
    searched = {question_key(r["question"]): r.get("budget") for r in recs if r.get("question")}
    if "searched" in modes:
        questions = load_questions(job.data, limit=job.limit, offset=job.offset)
        missing = [q for q in questions if question_key(q.question) not in searched]
        if missing:
            raise DataError(f"{len(missing)} of the {len(questions)} questions are not in {job.options['searched']} "
                            f"(first: {missing[0].question[:60]!r}); search this split and --offset, or use mode regression")
    return searched, recs


def run_modes(job: Job, ctx: Context) -> dict:
    modes = job.options["modes"]
    s, questions, env = _start(job, ctx)
    searched, regression = None, None
    if any(m in ("searched", "regression") for m in modes):
        searched, recs = _searched_budgets(job, modes)
        regression = R.fit_regression(recs, env.counter) if "regression" in modes else None
    journal_path = _journal(job)
    journal = {}
    if journal_path is not None and job.options.get("resume"):
        journal = read_journal(journal_path)[1]
    elif journal_path is not None:
        journal_path.parent.mkdir(parents=True, exist_ok=True)
        journal_path.write_text(json.dumps(_journal_header(job), default=str) + "\n")

    def record(row: dict) -> None:
        with journal_path.open("a", encoding="utf-8") as f:
            f.write(_jsonl([row]))

    summaries, rows = [], []
    for mode in modes:
        t0 = time.perf_counter()
        summary, mode_rows = R.run_mode(env.backend, env.counter, questions, mode, s, searched=searched,
                                        regression=regression, progress=_progress(ctx), journal=journal,
                                        record=record if journal_path is not None else None)
        summary["seconds"] = ctx.timings[f"{mode}_s"] = time.perf_counter() - t0
        summaries.append(summary)
        rows += mode_rows
    _save_rows(ctx, "log.jsonl", rows)
    return {"modes": summaries, "resumed_rows": sum(r.get("key") in journal for r in rows), "warnings": [m["warning"] for m in summaries if "warning" in m], **_common(env, questions)}


def validate_search(job: Job) -> None:
    if job.options["method"] not in ("halving", "binary"):
        raise BadOptionError(f"unknown --method {job.options['method']!r}; use halving or binary")
    if job.options["max_probes"] < 1:
        raise BadOptionError("--max-probes must be >= 1")
    validate(job)


def run_search(job: Job, ctx: Context) -> dict:
    s, questions, env = _start(job, ctx)
    t0 = time.perf_counter()
    summary, rows = R.search_budgets(env.backend, env.counter, questions, s, method=job.options["method"],
                                     max_steps=job.options["max_probes"], progress=_progress(ctx))
    ctx.timings["search_s"] = time.perf_counter() - t0
    compact = [{k: r.get(k) for k in ("id", "vanilla_correct", "vanilla_tokens", "budget", "tokens", "budget_list", "tried", "token_list")}
               for r in rows]
    _save_rows(ctx, "search.jsonl", rows)
    return {**summary, "per_question": compact, **_common(env, questions)}


def validate_elasticity(job: Job) -> None:
    budgets = job.options["budgets"]
    if not budgets or any(b < 1 for b in budgets):
        raise BadOptionError("--budgets needs positive integers, e.g. 8,16,32,64,128")
    validate(job)


def run_elasticity(job: Job, ctx: Context) -> dict:
    s, questions, env = _start(job, ctx)
    t0 = time.perf_counter()
    table, rows = R.elasticity(env.backend, env.counter, questions, sorted(set(job.options["budgets"])), s, progress=_progress(ctx))
    ctx.timings["elasticity_s"] = time.perf_counter() - t0
    title = f"token elasticity: {job.backend.model}, {len(questions)} questions"
    _save_rows(ctx, "log.jsonl", rows)
    ctx.save(lambda folder: R.plot_elasticity(table, folder / "elasticity.png", title))
    return {"table": table, **_common(env, questions)}


def _train_examples(job: Job) -> list[dict]:
    from llmslim.budget import train as T

    source, targets, cfg = job.options["search_file"], job.options["targets"], job.options["config"]
    templates = P.load_templates(job.templates)
    if targets == "gold":
        examples = T.examples_from_gold(read_records(source), templates)
    else:
        examples = T.examples_from_search(read_search(source), templates, cfg.only_improved)
    return examples[: job.limit] if job.limit else examples


def validate_train(job: Job) -> None:
    if job.options["targets"] not in ("search", "gold"):
        raise BadOptionError(f"unknown --targets {job.options['targets']!r}; use search or gold")
    job.options["config"].check()
    if not _train_examples(job):
        raise DataError(f"{job.options['search_file']}: no training examples")
    job.backend.check()


def run_train(job: Job, ctx: Context) -> dict:
    from llmslim.budget import train as T
    from llmslim.core.load import load_model
    from llmslim.core.save import save_model

    cfg, examples = job.options["config"], _train_examples(job)
    t0 = time.perf_counter()
    with distributed.main_first():  # a GGUF is converted once, into a cache the other processes then read
        loaded = load_model(job.backend.model or MODEL, device=job.backend.device, dtype=job.backend.dtype, purpose="training")
    ctx.timings["load_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    steps = cfg.steps(len(examples))
    with tempfile.TemporaryDirectory() as work:
        model, info = T.train(loaded.model, loaded.tokenizer, examples, cfg, Path(work), ctx.step(f"TALE-PT ({cfg.algo}, LoRA)", steps))
    ctx.timings["train_s"] = time.perf_counter() - t0
    ctx.save(lambda folder: save_model(model, loaded.tokenizer, folder))
    ctx.save(lambda folder: (folder / "train_examples.jsonl").write_text(_jsonl(examples), encoding="utf-8"))
    return {"algo": cfg.algo, "targets": job.options["targets"], "examples": len(examples),
            "improved_examples": sum(e["improved"] for e in examples), "steps": info["steps"], "processes": distributed.world(),
            "first_loss": info["losses"][0] if info["losses"] else None,
            "last_loss": info["losses"][-1] if info["losses"] else None, "losses": info["losses"],
            "config": asdict(cfg), "base_model": job.backend.model, "peak_memory_mb": peak_memory_mb(loaded.device),
            **where_it_ran(loaded.device, loaded.dtype)}


def drop_journal(job: Job) -> None:
    """After --out is published: the stopped-run journal is no longer needed."""
    import shutil

    if _journal(job) is not None:
        shutil.rmtree(_journal(job).parent, ignore_errors=True)
