"""Answering a question set in one mode and scoring it: the pure core of `budget run`,
`budget estimate`, `budget search` and `budget elasticity`.

Modes (TALE §4): `vanilla` (CoT), `direct` (no reasoning), `tale-ep` (zero-shot budget estimate,
then the budget-constrained CoT prompt), `budget:N` (a fixed budget), `searched` (each question's
budget from a `budget search` file), `regression` (budgets from a fit on a search file).
"""

from __future__ import annotations

import json
import math
import re
import statistics
from dataclasses import dataclass, field
from typing import Callable

from llmslim.budget import prompts as P
from llmslim.budget.backends import Backend, Completion
from llmslim.budget.counting import Counter
from llmslim.budget.parse import DEFAULT_BUDGET, is_correct, parse_budget
from llmslim.budget.questions import Question, question_key
from llmslim.budget.search import Attempt
from llmslim.budget.search import search as run_search
from llmslim.core.errors import BadOptionError, DataError

MODES = ("vanilla", "direct", "tale-ep", "budget:N", "searched", "regression")
ESTIMATE_MAX_TOKENS = 256
PARSE_WARN = 0.5  # below this share of parsed estimates a tale-ep row is mostly the default budget


@dataclass
class Settings:
    max_new_tokens: int = 512
    # the estimator's output cap: "Budget: [[N]]" is a few tokens, but a model that reasons first
    # needs room to get there (at 64, most SmolLM2 estimates were cut before any [[N]])
    estimate_max_tokens: int = ESTIMATE_MAX_TOKENS
    default_budget: int = DEFAULT_BUDGET  # when the estimate does not parse
    max_budget: int | None = None  # clamp estimates (None: no clamp)
    rel_tol: float = 1e-4
    templates: P.Templates = field(default_factory=P.Templates)
    price_in: float | None = None  # $ per 1M input tokens (cost column; None: not shown)
    price_out: float | None = None


def _tokens(c: Completion, counter: Counter) -> int:
    if c.n_tokens is not None:
        return c.n_tokens
    n = counter.model_tokens(c.text)
    return n if n is not None else (counter.gpt4_tokens(c.text) or len(c.text.split()))


def ask(backend: Backend, counter: Counter, prompts: list[str], max_new_tokens: int, progress=None) -> list[dict]:
    outs = backend.complete(prompts, max_new_tokens, progress=progress)
    return [{"output": c.text, "out_tokens": _tokens(c, counter), "gpt4_tokens": counter.gpt4_tokens(c.text),
             "in_tokens": c.prompt_tokens, "finished": c.finished} for c in outs]


def parse_mode(mode: str) -> tuple[str, int | None]:
    m = re.fullmatch(r"budget[:=](\d+)", mode)
    if m:
        if int(m.group(1)) < 1:
            raise BadOptionError("a fixed budget must be >= 1")
        return "budget", int(m.group(1))
    if mode not in MODES or mode == "budget:N":
        raise BadOptionError(f"unknown mode {mode!r}; use one of {', '.join(MODES)} (e.g. budget:50)")
    return mode, None


def estimate_budgets(backend, counter, questions: list[Question], s: Settings, progress=None) -> list[dict]:
    """Zero-shot self-estimation: the estimator prompt, then `[[N]]` or the stated default."""
    # the reference fills {question} with the question as the answering prompt shows it (for a
    # number question, the whole CoT prompt; its extract_question strips only the choice
    # instructions): the estimator sees what it will be asked
    prompts = [P.estimate(q.question if q.kind == "choice" else P.cot(q.question, q.kind, s.templates), s.templates)
               for q in questions]
    outs = ask(backend, counter, prompts, s.estimate_max_tokens, progress)
    rows = []
    for q, o in zip(questions, outs):
        b = parse_budget(o["output"], s.default_budget, maximum=s.max_budget)
        rows.append({"id": q.id, "budget": b.value, "budget_parsed": b.parsed, "estimate_output": o["output"],
                     "estimate_in_tokens": o["in_tokens"], "estimate_out_tokens": o["out_tokens"]})
    return rows


# ---------------------------------------------------------------- regression estimator
def fit_regression(records: list[dict], counter: Counter) -> dict:
    """Least squares budget ~ a * question_tokens + b on searched budgets (a `budget search`
    file); the regression estimator of TALE §3.2, with question length as the feature."""
    pts = [(counter.model_tokens(r["question"]) or len(r["question"].split()), r["budget"])
           for r in records if r.get("budget") and r.get("question")]
    if len(pts) < 2:
        raise DataError("the regression estimator needs at least 2 searched budgets")
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mx) ** 2 for x in xs)
    a = sum((x - mx) * (y - my) for x, y in pts) / var if var else 0.0
    return {"slope": a, "intercept": my - a * mx, "n": len(pts), "feature": "question tokens"}


def predict_regression(fit: dict, questions: list[Question], counter: Counter, minimum: int = 1) -> list[int]:
    out = []
    for q in questions:
        x = counter.model_tokens(q.question) or len(q.question.split())
        out.append(max(minimum, int(round(fit["slope"] * x + fit["intercept"]))))
    return out


# ---------------------------------------------------------------- one mode on a question set
CHUNK = 16  # questions answered between two journal writes


def prompt_key(mode: str, prompt: str, s: Settings) -> str:
    """A row's identity in the journal: its mode, the prompt that starts it (the estimator's for
    tale-ep) and the token limits."""
    import hashlib

    blob = json.dumps([mode, prompt, s.max_new_tokens, s.estimate_max_tokens, s.default_budget, s.max_budget])
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def run_mode(
    backend: Backend, counter: Counter, questions: list[Question], mode: str, s: Settings,
    *, searched: dict[str, int] | None = None, regression: dict | None = None,
    progress: Callable[[str, int], Callable[[int], None]] | None = None,
    journal: dict[str, dict] | None = None, record: Callable[[dict], None] | None = None,
) -> tuple[dict, list[dict]]:
    """Answer every question in `mode`; return (summary, per-question rows). `journal`: rows
    already answered, by prompt_key (their questions are not asked again); `record(row)` is
    called for each new row, CHUNK questions at a time (a long run that fails keeps them)."""
    name, fixed = parse_mode(mode)
    t = s.templates
    first_prompt = (lambda q: P.estimate(q.question, t)) if name == "tale-ep" else (lambda q: P.cot(q.question, q.kind, t))
    keys = [prompt_key(mode, first_prompt(q), s) for q in questions]
    done = {k: journal[k] for k in keys if journal and k in journal}
    pending = [i for i, k in enumerate(keys) if k not in done]
    new_rows: dict[int, dict] = {}
    est = progress("estimating budgets", len(pending)) if progress and name == "tale-ep" else None
    ans = progress(f"answering ({mode})", len(pending)) if progress else None
    for start in range(0, len(pending), CHUNK):
        chunk = [questions[i] for i in pending[start : start + CHUNK]]
        rows = _answer(backend, counter, chunk, mode, name, fixed, s, searched, regression, est, ans)
        for i, row in zip(pending[start : start + CHUNK], rows):
            new_rows[i] = row | {"key": keys[i]}
            if record:
                record(new_rows[i])
    rows = [done[k] if k in done else new_rows[i] for i, k in enumerate(keys)]
    return summarize(mode, rows, s, counter), rows


def _answer(backend, counter, questions: list[Question], mode: str, name: str, fixed: int | None, s: Settings,
            searched, regression, est_progress, progress) -> list[dict]:
    t = s.templates
    budgets: list[dict] = [{} for _ in questions]
    if name == "tale-ep":
        budgets = estimate_budgets(backend, counter, questions, s, est_progress)
    elif name == "budget":
        budgets = [{"budget": fixed} for _ in questions]
    elif name == "searched":
        if not searched:
            raise DataError("mode 'searched' needs a search file (--searched FILE from `budget search`)")
        budgets = [{"budget": searched.get(question_key(q.question))} for q in questions]  # keyed by text, not position
    elif name == "regression":
        if not regression:
            raise DataError("mode 'regression' needs a regression fit (--searched FILE from `budget search`)")
        budgets = [{"budget": b} for b in predict_regression(regression, questions, counter)]

    def prompt(q: Question, b: dict) -> str:
        if name == "direct":
            return P.direct(q.question, q.kind, t)
        if name == "vanilla" or b.get("budget") is None:  # searched: no budget found -> vanilla prompt
            return P.cot(q.question, q.kind, t)
        return P.budgeted(q.question, b["budget"], q.kind, t)

    prompts_ = [prompt(q, b) for q, b in zip(questions, budgets)]
    outs = ask(backend, counter, prompts_, s.max_new_tokens, progress)
    rows = []
    for q, b, p, o in zip(questions, budgets, prompts_, outs):
        correct, pred = is_correct(o["output"], q.gold, q.kind, s.rel_tol)
        rows.append({"mode": mode, "id": q.id, "question": q.question, "gold": q.gold, "kind": q.kind,
                     "budget": b.get("budget"), **{k: v for k, v in b.items() if k not in ("id", "budget")},
                     "prompt": p, **o, "prediction": pred, "correct": correct})
    return rows


def summarize(mode: str, rows: list[dict], s: Settings, counter: Counter | None = None) -> dict:
    n = len(rows)
    out_tok = [r["out_tokens"] for r in rows]
    g4 = [r["gpt4_tokens"] for r in rows if r.get("gpt4_tokens") is not None]
    in_total = sum((r.get("in_tokens") or 0) + (r.get("estimate_in_tokens") or 0) for r in rows)
    out_total = sum(out_tok) + sum(r.get("estimate_out_tokens") or 0 for r in rows)
    budgets = [r["budget"] for r in rows if r.get("budget") is not None]
    summary = {
        "mode": mode, "n": n,
        "accuracy": sum(r["correct"] for r in rows) / n if n else math.nan,
        "mean_out_tokens": statistics.fmean(out_tok) if out_tok else math.nan,
        "mean_gpt4_tokens": statistics.fmean(g4) if len(g4) == n and n else None,
        "truncated": sum(not r["finished"] for r in rows) / n if n else 0.0,
        "mean_budget": statistics.fmean(budgets) if budgets else None,
        "in_tokens_total": in_total, "out_tokens_total": out_total,  # estimator calls included
    }
    if any("budget_parsed" in r for r in rows):
        summary["budget_parse_rate"] = rate = sum(bool(r.get("budget_parsed")) for r in rows) / n
        summary["budget_default"] = s.default_budget
        if rate < PARSE_WARN:
            summary["warning"] = (f"{mode}: the estimator wrote a parsable [[N]] for {100 * rate:.0f}% of the questions; the "
                                  f"rest got the default budget {s.default_budget}, so this row mostly measures budget:{s.default_budget}")
    if s.price_in is not None or s.price_out is not None:
        summary["cost_usd"] = in_total * (s.price_in or 0) / 1e6 + out_total * (s.price_out or 0) / 1e6
    return summary


# ---------------------------------------------------------------- search on a question set
def search_budgets(
    backend: Backend, counter: Counter, questions: list[Question], s: Settings, *, method: str = "halving",
    max_steps: int = 8, progress=None, vanilla_rows: list[dict] | None = None,
) -> tuple[dict, list[dict]]:
    """Vanilla CoT first (or `vanilla_rows` from a `run_mode(..., "vanilla")` on the same
    questions), then the budget search per correctly answered question (TALE §3)."""
    if vanilla_rows is None:
        _, vanilla_rows = run_mode(backend, counter, questions, "vanilla", s, progress=progress)
    if len(vanilla_rows) != len(questions):
        raise ValueError("vanilla_rows must answer the same questions, in order")
    vanilla = [Attempt(r["correct"], r["out_tokens"], r["output"]) for r in vanilla_rows]

    def ask_budgets(pending: list[tuple[int, int]]) -> list[Attempt]:
        ps = [P.budgeted(questions[i].question, b, questions[i].kind, s.templates) for i, b in pending]
        outs = ask(backend, counter, ps, s.max_new_tokens, progress(f"searching ({len(ps)} probes)", len(ps)) if progress else None)
        res = []
        for (i, _), o in zip(pending, outs):
            ok, _ = is_correct(o["output"], questions[i].gold, questions[i].kind, s.rel_tol)
            res.append(Attempt(ok, o["out_tokens"], o["output"]))
        return res

    found = run_search(vanilla, ask_budgets, method=method, max_steps=max_steps)
    rows = []
    for q, v, f in zip(questions, vanilla_rows, found):
        rows.append({"id": q.id, "question": q.question, "gold": q.gold, "kind": q.kind, "method": method,
                     "vanilla_output": v["output"], "vanilla_correct": v["correct"], **f,
                     "gpt4_vanilla_tokens": v["gpt4_tokens"],
                     "gpt4_tokens": counter.gpt4_tokens(f["answer"]) if f.get("answer") is not None else None})
    searched = [r for r in rows if r["searched"]]
    improved = [r for r in searched if r.get("improved")]
    summary = {
        "method": method, "n": len(rows), "vanilla_accuracy": sum(r["vanilla_correct"] for r in rows) / len(rows),
        "searched": len(searched), "improved": len(improved),
        "mean_vanilla_tokens_searched": statistics.fmean([r["vanilla_tokens"] for r in searched]) if searched else None,
        "mean_optimal_tokens_searched": statistics.fmean([r["tokens"] for r in searched]) if searched else None,
        "mean_budget": statistics.fmean([r["budget"] for r in improved]) if improved else None,
        "probes": sum(len(r["tried"]) for r in rows),
    }
    return summary, rows


# ---------------------------------------------------------------- elasticity
def elasticity(
    backend: Backend, counter: Counter, questions: list[Question], budgets: list[int], s: Settings,
    *, include_vanilla: bool = True, progress=None,
) -> tuple[list[dict], list[dict]]:
    """Mean output tokens and accuracy at each fixed budget (TALE Fig. 3: too small a budget can
    cost *more* tokens than a reasonable one)."""
    table, all_rows = [], []
    modes = (["vanilla"] if include_vanilla else []) + [f"budget:{b}" for b in budgets]
    for mode in modes:
        summary, rows = run_mode(backend, counter, questions, mode, s, progress=progress)
        summary["budget"] = None if mode == "vanilla" else int(mode.split(":")[1])
        table.append(summary)
        all_rows += rows
    return table, all_rows


def plot_elasticity(table: list[dict], path, title: str = "token elasticity") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [r for r in table if r.get("budget") is not None]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    ax.plot([r["budget"] for r in pts], [r["mean_out_tokens"] for r in pts], "o-", label="output tokens at budget")
    ax.plot([r["budget"] for r in pts], [r["budget"] for r in pts], ":", color="grey", label="budget (y = x)")
    van = next((r for r in table if r.get("budget") is None), None)
    if van:
        ax.axhline(van["mean_out_tokens"], color="red", ls="--", label=f"vanilla CoT ({van['mean_out_tokens']:.0f})")
    ax.set_xscale("log")
    ax.set_xlabel("token budget in the prompt")
    ax.set_ylabel("mean output tokens")
    ax.set_title(title)
    ax2 = ax.twinx()
    ax2.plot([r["budget"] for r in pts], [100 * r["accuracy"] for r in pts], "s--", color="green", alpha=0.6, label="accuracy %")
    ax2.set_ylabel("accuracy (%)")
    lines = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    labels = ax.get_legend_handles_labels()[1] + ax2.get_legend_handles_labels()[1]
    ax.legend(lines, labels, fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
