"""Multiple-choice items from the shared data files in lm-eval's prompt formats: the traces'
examples (the train split) and the size of the eval split that `sparsity eval` hands lm-eval
(lm-eval reads each file from its start, the traces from the end, so they never overlap).

    arc_easy   "Question: {stem}\\nAnswer:" + " {choice}"     eval: ARC-Easy-Test, train: -Dev
    piqa       "Question: {goal}\\nAnswer:" + " {sol}"        eval: first rows, train: last rows
    hellaswag  "{ctx}" + " {ending}", both preprocess()ed    eval: first rows, train: last rows
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from llmslim.core.errors import BadOptionError
from llmslim.core.data import read_records

TASKS = ("arc_easy", "piqa", "hellaswag")


@dataclass
class MCItem:
    context: str
    choices: list[str]
    label: int


def _arc(root: Path, split: str) -> list[MCItem]:
    rows = read_records(root / "arc" / f"ARC-Easy-{'Test' if split == 'eval' else 'Dev'}.jsonl")
    items = []
    for r in rows:
        labels = [c["label"] for c in r["question"]["choices"]]
        if r["answerKey"] not in labels:
            continue
        items.append(MCItem(f"Question: {r['question']['stem']}\nAnswer:", [" " + c["text"] for c in r["question"]["choices"]],
                            labels.index(r["answerKey"])))
    return items


def _half(rows: list, split: str) -> list:
    """One file, two disjoint splits: eval reads its first half from the start, train its
    second half from the end (so small --limit values use the same items as before)."""
    mid = len(rows) // 2
    return rows[:mid] if split == "eval" else rows[mid:][::-1]


def _piqa(root: Path, split: str) -> list[MCItem]:
    from llmslim.eval.local_data import piqa_rows

    rows = _half(piqa_rows(root), split)
    return [MCItem(f"Question: {r['goal']}\nAnswer:", [" " + r["sol1"], " " + r["sol2"]], int(r["label"])) for r in rows]


def _hellaswag(root: Path, split: str) -> list[MCItem]:
    # The eval YAML's own cleaning (WikiHow's bracket artefacts), so traces see the text lm-eval scores.
    from llmslim.eval.tasks.hellaswag_utils import preprocess

    rows = _half(read_records(root / "hellaswag" / "hellaswag_val_full_preprocessed.jsonl"), split)
    return [MCItem(preprocess(r["ctx"]), [" " + preprocess(e) for e in r["endings"]], int(r["label"])) for r in rows]


READERS = {"arc_easy": _arc, "piqa": _piqa, "hellaswag": _hellaswag}


def parse_tasks(names: str) -> list[str]:
    items = [n.strip() for n in names.split(",") if n.strip()]
    for n in items:
        if n not in READERS:
            raise BadOptionError(f"unknown task {n!r}; choose from {', '.join(TASKS)}")
    return items


def load_items(task: str, root: Path, split: str = "eval", limit: int | None = None) -> list[MCItem]:
    """The first `limit` items of the task's eval (or train) split; train and eval never overlap
    (ARC: its Test and Dev files; PIQA, HellaSwag: the two halves of one file)."""
    if task not in READERS:
        raise BadOptionError(f"unknown task {task!r}; choose from {', '.join(TASKS)}")
    items = READERS[task](Path(root), split)
    return items[:limit] if limit else items
