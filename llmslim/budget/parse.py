"""Parsing: budgets from the estimator's `[[N]]`, answers from outputs, gold labels from datasets,
and correctness (numeric with tolerance, or a choice letter). As TALE's `AccEvaluator`, plus the
tolerance and the stated fallback the reference code lacks (it would prompt "use less than -1
tokens" when the estimate does not parse)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from fractions import Fraction

from llmslim.core.errors import DataError

DEFAULT_BUDGET = 256  # used when the estimate does not parse; stated in every result as `budget_default`
_BUDGET = re.compile(r"\[\[\s*(\d[\d,]*)\s*(?:tokens?)?\s*\]\]", re.IGNORECASE)
_BRACKETS = re.compile(r"\[\[(.*?)\]\]", re.DOTALL)
# TALE's fallback regex: a run of digits/$/./, of length >= 2, or a (signed) integer
_NUMBER = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
_GOLD = re.compile(r"####\s*(.+?)\s*$", re.MULTILINE)
LETTERS = "ABCDEFGHIJ"


@dataclass(frozen=True)
class Budget:
    value: int
    parsed: bool  # False: `value` is the fallback default


def parse_budget(text: str, default: int = DEFAULT_BUDGET, *, minimum: int = 1, maximum: int | None = None) -> Budget:
    """The first `[[N]]` in `text` (as the reference's extract_number), clamped to
    [minimum, maximum]; `default` when there is none or it is 0."""
    if default < 1:
        raise ValueError(f"the fallback budget must be >= 1, got {default}")
    match = _BUDGET.search(text or "")
    if not match:
        return Budget(default, False)
    value = int(match.group(1).replace(",", ""))
    if value < 1:
        return Budget(default, False)
    value = max(minimum, value)
    if maximum is not None:
        value = min(maximum, value)
    return Budget(value, True)


def extract_answer(text: str) -> str | None:
    """The last `[[...]]`, else the last number (TALE's AccEvaluator.extract_predicted_answer)."""
    found = _BRACKETS.findall(text or "")
    if found:
        return found[-1].strip()
    matches = _NUMBER.findall(text or "")
    if not matches:
        return None
    value = next(m for m in matches[-1] if m).strip()
    value = re.sub(r"[,$]", "", value)
    return re.sub(r"\.$", "", value) or None


def to_number(text: str | None) -> float | None:
    """A number from an answer string: '$1,234.50' -> 1234.5, '3/4' -> 0.75, '15%' -> 15,
    'Answer: 42 apples' -> 42 (the last number inside). None when there is no number."""
    if text is None:
        return None
    s = str(text).strip().replace(",", "").replace("$", "").replace("\\%", "%")
    s = re.sub(r"\\(?:boxed|text|mathrm)\{([^}]*)\}", r"\1", s)
    s = s.rstrip(".").rstrip("%").strip()
    try:
        return float(Fraction(s)) if re.fullmatch(r"-?\d+\s*/\s*\d+", s) and not s.endswith("/0") else float(s)
    except ValueError:
        pass
    nums = re.findall(r"-?\d+(?:\.\d+)?(?:/\d+)?", s)
    if not nums:
        return None
    last = nums[-1]
    if "/" in last:
        num, den = last.split("/")
        return float(num) / float(den) if float(den) else None
    return float(last)


def numbers_equal(a: float | None, b: float | None, rel_tol: float = 1e-4, abs_tol: float = 1e-6) -> bool:
    if a is None or b is None or math.isnan(a) or math.isnan(b):
        return False
    return math.isclose(a, b, rel_tol=rel_tol, abs_tol=abs_tol)


def gsm8k_gold(answer: str) -> str:
    """The gold answer of a GSM8K record: what follows `#### ` (commas dropped)."""
    found = _GOLD.findall(answer or "")
    if not found:
        raise DataError(f"no '#### <answer>' line in GSM8K answer: {str(answer)[-80:]!r}")
    return found[-1].replace(",", "").strip()


def extract_choice(text: str, letters: str = LETTERS[:4]) -> str | None:
    """A choice letter: the last `[[X]]` that names one, else the last lone letter of the last
    line (or after 'the correct answer is'), as TALE's AccEvaluator.find_answer."""
    for inside in reversed(_BRACKETS.findall(text or "")):
        m = re.fullmatch(rf"\s*(?:choice\s*:?\s*)?\(?([{letters}])\)?[.:)]?\s*(?:[.:)].*)?", inside, re.IGNORECASE | re.DOTALL)
        if m:
            return m.group(1).upper()
    text = (text or "").strip()
    tail = text[text.rfind("\n") + 1 :]
    if len(tail) < 5:
        idx = text.lower().find("the correct answer is")
        if idx != -1:
            tail = text[idx + len("the correct answer is") :]
    found = re.findall(rf"\b([{letters}])\b", tail)
    return found[-1] if found else None


def is_correct(output: str, gold: str, kind: str = "number", rel_tol: float = 1e-4) -> tuple[bool, str | None]:
    """(correct, the extracted prediction)."""
    if kind == "choice":
        pred = extract_choice(output)
        return (pred is not None and pred == str(gold).strip().upper()), pred
    pred = extract_answer(output)
    return numbers_equal(to_number(pred), to_number(gold), rel_tol=rel_tol), pred
