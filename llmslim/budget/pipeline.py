"""Glue for the `budget` commands: build a backend from options, load questions, write outputs
(atomic folder + run.json). The CLI builds a job and renders the dict these return."""

from __future__ import annotations

import json
import math
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from llmslim.budget import prompts as P
from llmslim.budget import run as R
from llmslim.budget.backends import HTTPBackend, LocalBackend
from llmslim.budget.counting import Counter
from llmslim.budget.questions import load_questions
from llmslim.core.data import read_records
from llmslim.core.device import peak_memory_mb, seed_everything
from llmslim.core.errors import BadOptionError, DataError
from llmslim.core.outputs import atomic_dir, check_writable, to_jsonable, write_manifest


@dataclass
class BackendSpec:
    model: str | None = "smollm2-135m"  # local model (or, with api_base, the model name sent to the API)
    api_base: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    api_tokenizer: str | None = None  # local tokenizer for model-token counts of API answers
    concurrency: int = 4
    retries: int = 3
    timeout: float = 60.0
    batch_size: int = 8
    device: str = "auto"
    dtype: str = "auto"
    seed: int = 0


@dataclass
class Job:
    backend: BackendSpec = field(default_factory=BackendSpec)
    data: Path | None = None
    limit: int | None = None
    offset: int = 0
    templates: Path | None = None
    settings: dict = field(default_factory=dict)
    out: Path | None = None
    force: bool = False
    seed: int = 0


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
        if not spec.model:
            raise BadOptionError("--api-base needs the model name the endpoint serves (the MODEL argument)")
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

    if spec.batch_size < 1:
        raise BadOptionError("--batch-size must be >= 1")
    loaded = load_model(spec.model or "smollm2-135m", device=spec.device, dtype=spec.dtype, purpose="inference")
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


def bar_factory(bar):
    if bar is None:
        return None

    def make(desc: str, total: int):
        task = bar.add_task(desc, total=total)
        return lambda n: bar.advance(task, n)

    return make


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(to_jsonable(r), ensure_ascii=False) + "\n" for r in rows)


def write(job: Job, command: str, result: dict, files: dict, timings: dict) -> None:
    """files: name -> list of rows (.jsonl) | callable(path) | str."""
    with atomic_dir(job.out, job.force) as tmp:
        for name, content in files.items():
            if callable(content):
                content(tmp / name)
            elif isinstance(content, list):
                (tmp / name).write_text(_jsonl(content), encoding="utf-8")
            else:
                (tmp / name).write_text(content, encoding="utf-8")
        (tmp / "summary.json").write_text(json.dumps(to_jsonable(result), indent=2) + "\n")
        write_manifest(tmp, command=f"budget {command}", args=to_jsonable(asdict(job)), seed=job.seed, timings=timings, results=result)
    result["out"] = str(job.out)


def _start(job: Job):
    if job.out is not None:
        check_writable(job.out, job.force)
    s = settings(job)
    questions = load_questions(job.data, limit=job.limit, offset=job.offset)
    seed_everything(job.seed)
    env = make_env(job.backend)
    return s, questions, env


def _common(env: Env, questions, timings) -> dict:
    return {"backend": env.backend.name, "n_questions": len(questions), "gpt4_counter": env.counter.gpt4_source,
            "timings": timings, "peak_memory_mb": peak_memory_mb(env.device) if env.device is not None else None}


# ---------------------------------------------------------------- commands
def estimate_job(job: Job, regression_from: Path | None = None, bar=None) -> dict:
    s, questions, env = _start(job)
    t0 = time.perf_counter()
    if regression_from:
        fit = R.fit_regression(read_search(regression_from), env.counter)
        budgets = R.predict_regression(fit, questions, env.counter)
        rows = [{"id": q.id, "question": q.question, "budget": b, "budget_parsed": True} for q, b in zip(questions, budgets)]
        method = {"estimator": "regression", **fit}
    else:
        rows = R.estimate_budgets(env.backend, env.counter, questions, s, bar_factory(bar)("estimating", len(questions)) if bar else None)
        for r, q in zip(rows, questions):
            r["question"] = q.question
        method = {"estimator": "zero-shot", "default_budget": s.default_budget,
                  "parse_rate": sum(r["budget_parsed"] for r in rows) / len(rows)}
    timings = {"load_s": env.load_s, "estimate_s": time.perf_counter() - t0}
    budgets = [r["budget"] for r in rows]
    result = {**method, "mean_budget": sum(budgets) / len(budgets), "min_budget": min(budgets), "max_budget": max(budgets),
              "budgets": rows, **_common(env, questions, timings)}
    if job.out is not None:
        write(job, "estimate", {k: v for k, v in result.items() if k != "budgets"}, {"budgets.jsonl": rows}, timings)
        result["out"] = str(job.out)
    return result


def run_job(job: Job, modes: list[str], searched_from: Path | None = None, bar=None) -> dict:
    for m in modes:
        R.parse_mode(m)
    s, questions, env = _start(job)
    searched, regression = None, None
    if any(m in ("searched", "regression") for m in modes):
        if searched_from is None:
            raise BadOptionError("modes 'searched' and 'regression' need --searched FILE (from `budget search --out`)")
        recs = read_search(searched_from)
        searched = {str(r["id"]): r["budget"] for r in recs if r.get("budget")}
        regression = R.fit_regression(recs, env.counter) if "regression" in modes else None
    timings, summaries, rows = {"load_s": env.load_s}, [], []
    for mode in modes:
        t0 = time.perf_counter()
        summary, mode_rows = R.run_mode(env.backend, env.counter, questions, mode, s, searched=searched,
                                        regression=regression, progress=bar_factory(bar))
        timings[f"{mode}_s"] = time.perf_counter() - t0
        summary["seconds"] = timings[f"{mode}_s"]
        summaries.append(summary)
        rows += mode_rows
    result = {"modes": summaries, **_common(env, questions, timings)}
    if job.out is not None:
        write(job, "run", dict(result), {"log.jsonl": rows}, timings)
        result["out"] = str(job.out)
    result["rows"] = rows
    return result


def search_job(job: Job, method: str, max_steps: int, bar=None) -> dict:
    s, questions, env = _start(job)
    t0 = time.perf_counter()
    summary, rows = R.search_budgets(env.backend, env.counter, questions, s, method=method, max_steps=max_steps, progress=bar_factory(bar))
    timings = {"load_s": env.load_s, "search_s": time.perf_counter() - t0}
    compact = [{k: r.get(k) for k in ("id", "vanilla_correct", "vanilla_tokens", "budget", "tokens", "budget_list", "tried", "token_list")}
               for r in rows]
    result = {**summary, "per_question": compact, **_common(env, questions, timings)}
    if job.out is not None:
        write(job, "search", dict(result), {"search.jsonl": rows}, timings)
        result["out"] = str(job.out)
    result["rows"] = rows
    return result


def elasticity_job(job: Job, budgets: list[int], bar=None) -> dict:
    if not budgets or any(b < 1 for b in budgets):
        raise BadOptionError("--budgets needs positive integers, e.g. 8,16,32,64,128")
    s, questions, env = _start(job)
    t0 = time.perf_counter()
    table, rows = R.elasticity(env.backend, env.counter, questions, sorted(set(budgets)), s, progress=bar_factory(bar))
    timings = {"load_s": env.load_s, "elasticity_s": time.perf_counter() - t0}
    result = {"table": table, **_common(env, questions, timings)}
    if job.out is not None:
        title = f"token elasticity: {job.backend.model}, {len(questions)} questions"
        write(job, "elasticity", dict(result), {"log.jsonl": rows, "elasticity.png": lambda p: R.plot_elasticity(table, p, title)}, timings)
        result["out"] = str(job.out)
        result["plot"] = str(Path(job.out) / "elasticity.png")
    return result


def train_job(job: Job, search_file: Path, cfg, bar=None, targets: str = "search") -> dict:
    from llmslim.budget import train as T
    from llmslim.core.load import load_model

    if job.out is None:
        raise BadOptionError("budget train needs --out: the folder the trained model is written to")
    if targets not in ("search", "gold"):
        raise BadOptionError(f"unknown --targets {targets!r}; use search or gold")
    check_writable(job.out, job.force)
    t_ = P.load_templates(job.templates)
    if targets == "gold":
        examples = T.examples_from_gold(read_records(search_file), t_)
    else:
        examples = T.examples_from_search(read_search(search_file), t_, cfg.only_improved)
    if job.limit:
        examples = examples[: job.limit]
    seed_everything(job.seed)
    t0 = time.perf_counter()
    loaded = load_model(job.backend.model or "smollm2-135m", device=job.backend.device, dtype=job.backend.dtype, purpose="gradients")
    timings = {"load_s": time.perf_counter() - t0}
    t0 = time.perf_counter()
    steps = cfg.max_steps or cfg.epochs * math.ceil(len(examples) / cfg.batch_size)
    advance = bar_factory(bar)(f"TALE-PT ({cfg.algo}, LoRA)", steps) if bar else None
    with tempfile.TemporaryDirectory() as work:
        model, info = T.train(loaded.model, loaded.tokenizer, examples, cfg, Path(work), advance)
    timings["train_s"] = time.perf_counter() - t0
    result = {"algo": cfg.algo, "targets": targets, "examples": len(examples), "improved_examples": sum(e["improved"] for e in examples),
              "steps": info["steps"], "first_loss": info["losses"][0] if info["losses"] else None,
              "last_loss": info["losses"][-1] if info["losses"] else None, "losses": info["losses"],
              "config": asdict(cfg), "base_model": job.backend.model, "timings": timings,
              "peak_memory_mb": peak_memory_mb(loaded.device)}
    with atomic_dir(job.out, job.force) as tmp:
        T.save(model, loaded.tokenizer, tmp)
        (tmp / "train_examples.jsonl").write_text(_jsonl(examples), encoding="utf-8")
        (tmp / "summary.json").write_text(json.dumps(to_jsonable(result), indent=2) + "\n")
        write_manifest(tmp, command="budget train", args=to_jsonable(asdict(job)), seed=job.seed, timings=timings, results=result)
    result["out"] = str(job.out)
    return result
