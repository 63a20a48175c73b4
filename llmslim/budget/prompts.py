"""TALE's prompt templates (arXiv 2412.18547; code GeniusHTX/TALE, `utils/prompt_template.py` and
`TALE-EP.py`), byte for byte, and rendering. Every template can be overridden from a JSON file.

Placeholders are `{question}` and `{budget}`; they are substituted with `str.replace` (as the
reference code does), so a template or question holding other braces renders unchanged.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from llmslim.core.errors import BadOptionError, DataError

KINDS = ("number", "choice")  # GSM8K-style cloze with a numeric answer; multiple choice A/B/C/D


@dataclass(frozen=True)
class Templates:
    # GSM8K 'reasoning' (vanilla CoT), `gsm8k_prompts` in the reference code
    cot_number: str = (
        "Q: {question}\nPlease Give the response by strictly following this format: [[answer]], "
        "for example: Answer: [[50]].Let's think step by step:\n"
    )
    # create_gsm8k_prompt(budget): the CoT line with "and use less than {budget} tokens"
    budget_number: str = (
        "Q: {question}\nPlease Give the response by strictly following this format: [[answer]], "
        "for example: Answer: [[50]].Let's think step by step and use less than {budget} tokens:\n"
    )
    # GSM8K 'no_reasoning' (direct answering)
    direct_number: str = (
        "Please answer the following question and give the answer directly without any reasoning process. "
        "Please Give the response by strictly following this format: [[answer]], for example: Answer: [[50]].\n"
        "Q: {question}"
    )
    # GPQA / single-choice 'reasoning' (note the reference's missing space after the comma)
    cot_choice: str = (
        "{question}\nPlease Give the response by strictly following this format: [[choice]],"
        "for example: Choice: [[A]].\nLet's think step by step:\n"
    )
    budget_choice: str = (
        "{question}\nPlease Give the response by strictly following this format: [[choice]],"
        "for example: Choice: [[A]].\nLet's think step by step and use less than {budget} tokens:\n"
    )
    direct_choice: str = (
        "Please answer the following question directly and give the answer directly without any reasoning "
        "process. Please strictly follow the format: [[choice]],for example: Choice: [[A]].\n{question}\n"
    )
    # zero-shot budget estimator: create_zero_shot_context() + TALE-EP.py's PromptTemplate
    estimate: str = (
        "Task: Analyze the given question and estimate the minimum number of tokens required to generate "
        "a complete and accurate response. Please Give the response by strictly following this format: "
        "[[budget]],for example: Budget: [[12]].\n\nBelow is the question:\n\nQuestion: \"{question}\"\n"
    )


DEFAULT = Templates()


def load_templates(path: Path | str | None) -> Templates:
    """Defaults, with any field named in a JSON object file replaced: {"cot_number": "..."}."""
    if path is None:
        return DEFAULT
    path = Path(path)
    if not path.is_file():
        raise DataError(f"templates file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON ({err.msg})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object of template names to strings")
    names = {f.name for f in fields(Templates)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise DataError(f"{path}: unknown template(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    for name, value in data.items():
        if not isinstance(value, str):
            raise DataError(f"{path}: template {name!r} must be a string")
        if "{question}" not in value:
            raise DataError(f"{path}: template {name!r} has no {{question}} placeholder")
        if name.startswith("budget_") and "{budget}" not in value:
            raise DataError(f"{path}: template {name!r} has no {{budget}} placeholder")
    return Templates(**(asdict(DEFAULT) | data))


def _kind(kind: str) -> str:
    if kind not in KINDS:
        raise BadOptionError(f"unknown question kind {kind!r}; use {' or '.join(KINDS)}")
    return kind


def cot(question: str, kind: str = "number", t: Templates = DEFAULT) -> str:
    return getattr(t, f"cot_{_kind(kind)}").replace("{question}", question)


def direct(question: str, kind: str = "number", t: Templates = DEFAULT) -> str:
    return getattr(t, f"direct_{_kind(kind)}").replace("{question}", question)


def budgeted(question: str, budget: int, kind: str = "number", t: Templates = DEFAULT) -> str:
    if budget < 1:
        raise BadOptionError(f"a token budget must be >= 1, got {budget}")
    return getattr(t, f"budget_{_kind(kind)}").replace("{budget}", str(int(budget))).replace("{question}", question)


def estimate(question: str, t: Templates = DEFAULT) -> str:
    return t.estimate.replace("{question}", question)
