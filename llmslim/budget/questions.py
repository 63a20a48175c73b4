"""Question sets: GSM8K (`{question, answer: "... #### N"}`), plain `{question, answer|gold}`
records, ARC (`{question: {stem, choices}, answerKey}`) and `{question, choices, answer}`
multiple choice. Each becomes a `Question` with its kind: "number" or "choice"."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from llmslim.core.data import data_dir, read_records
from llmslim.core.errors import DataError
from llmslim.budget.parse import LETTERS, gsm8k_gold


@dataclass(frozen=True)
class Question:
    id: str
    question: str  # with the lettered options appended for multiple choice
    gold: str
    kind: str  # "number" | "choice"


def default_gsm8k(split: str = "test") -> Path:
    return data_dir() / "gsm8k" / f"{split}.jsonl"


def _options(choices) -> tuple[str, list[str]]:
    if isinstance(choices, dict) and "text" in choices:  # HF ARC: {"text": [...], "label": [...]}
        labels, texts = choices.get("label") or list(LETTERS[: len(choices["text"])]), choices["text"]
    elif choices and isinstance(choices[0], dict):  # ARC jsonl: [{"text", "label"}]
        labels, texts = [c.get("label", LETTERS[i]) for i, c in enumerate(choices)], [c["text"] for c in choices]
    else:
        labels, texts = list(LETTERS[: len(choices)]), list(choices)
    # numeric labels (1..4) are shown as letters A..D, as TALE's get_number() formats options
    letters = [LETTERS[i] for i in range(len(texts))]
    return "".join(f"{letter}. {text}\n" for letter, text in zip(letters, texts)), [str(label) for label in labels]


def _record(row: dict, n: int, source) -> Question:
    qid = str(row.get("id", row.get("question_id", n)))
    q = row.get("question")
    if isinstance(q, dict) and "stem" in q:  # ARC
        block, labels = _options(q["choices"])
        key = str(row.get("answerKey", "")).strip()
        if key not in labels:
            raise DataError(f"{source}: record {n}: answerKey {key!r} is not one of {labels}")
        return Question(qid, f"{q['stem']}\n{block}".rstrip("\n"), LETTERS[labels.index(key)], "choice")
    if not isinstance(q, str):
        raise DataError(f"{source}: record {n} has no 'question' text")
    if "choices" in row or "options" in row:
        block, labels = _options(row.get("choices", row.get("options")))
        ans = str(row.get("answer", row.get("answerKey", row.get("gold", "")))).strip()
        if ans.isdigit() and int(ans) < len(labels) and ans not in labels:  # 0-based index (MMLU style)
            ans = LETTERS[int(ans)]
        elif ans in labels:
            ans = LETTERS[labels.index(ans)]
        if ans.upper() not in LETTERS[: len(labels)]:
            raise DataError(f"{source}: record {n}: answer {ans!r} names no option")
        return Question(qid, f"{q.strip()}\n{block}".rstrip("\n"), ans.upper(), "choice")
    if "gold" in row:
        return Question(qid, q.strip(), str(row["gold"]).strip(), "number")
    ans = row.get("answer")
    if ans is None:
        raise DataError(f"{source}: record {n} has no 'answer' or 'gold'")
    ans = str(ans)
    return Question(qid, q.strip(), gsm8k_gold(ans) if "####" in ans else ans.replace(",", "").strip(), "number")


def load_questions(source: Path | str | None = None, *, limit: int | None = None, offset: int = 0) -> list[Question]:
    """Questions from a records file (default: the shared GSM8K test set), `offset`/`limit` applied."""
    source = Path(source) if source is not None else default_gsm8k()
    rows = read_records(source)
    if offset < 0 or (limit is not None and limit < 1):
        raise DataError("--offset must be >= 0 and --limit >= 1")
    rows = rows[offset : offset + limit if limit is not None else None]
    if not rows:
        raise DataError(f"{source}: no questions (offset {offset}, limit {limit})")
    return [_record(row, offset + i, source) for i, row in enumerate(rows)]


def question_key(text: str) -> str:
    """What matches a question to its searched budget: a hash of its text (ids are positions
    for files without one, so a search file from another split or --offset would otherwise
    give its budgets to other questions)."""
    import hashlib

    return hashlib.sha1(text.strip().encode("utf-8")).hexdigest()[:16]
