"""Local benchmark files -> files lm-eval's `json` loader reads exactly like the hub datasets.

Most task YAMLs read the shared data dir in place. Two need work first, done once into the
llmslim cache dir (never the repo), keyed by the sources' path, size and mtime:
- PIQA: valid.jsonl has no label; it is on the same line of valid-labels.lst.
- MMLU: per-subject CSVs (question,choice0..choice3,answer) become the hub schema
  {question, subject, choices, answer}; read with the csv module so a choice such as "None"
  stays a string (pandas, behind datasets' csv loader, would read it as missing).
"""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

from llmslim.core.data import read_records
from llmslim.core.errors import DataError, OutputExistsError
from llmslim.core.load import cache_dir
from llmslim.core.outputs import atomic_dir

FORMAT_VERSION = 1  # bump when a conversion changes, so old cache entries are not reused

# lm-eval 0.4.13 tasks/mmlu/default/*.yaml: subject -> category
MMLU_SUBJECTS = {
    "abstract_algebra": "stem",
    "anatomy": "stem",
    "astronomy": "stem",
    "business_ethics": "other",
    "clinical_knowledge": "other",
    "college_biology": "stem",
    "college_chemistry": "stem",
    "college_computer_science": "stem",
    "college_mathematics": "stem",
    "college_medicine": "other",
    "college_physics": "stem",
    "computer_security": "stem",
    "conceptual_physics": "stem",
    "econometrics": "social_sciences",
    "electrical_engineering": "stem",
    "elementary_mathematics": "stem",
    "formal_logic": "humanities",
    "global_facts": "other",
    "high_school_biology": "stem",
    "high_school_chemistry": "stem",
    "high_school_computer_science": "stem",
    "high_school_european_history": "humanities",
    "high_school_geography": "social_sciences",
    "high_school_government_and_politics": "social_sciences",
    "high_school_macroeconomics": "social_sciences",
    "high_school_mathematics": "stem",
    "high_school_microeconomics": "social_sciences",
    "high_school_physics": "stem",
    "high_school_psychology": "social_sciences",
    "high_school_statistics": "stem",
    "high_school_us_history": "humanities",
    "high_school_world_history": "humanities",
    "human_aging": "other",
    "human_sexuality": "social_sciences",
    "international_law": "humanities",
    "jurisprudence": "humanities",
    "logical_fallacies": "humanities",
    "machine_learning": "stem",
    "management": "other",
    "marketing": "other",
    "medical_genetics": "other",
    "miscellaneous": "other",
    "moral_disputes": "humanities",
    "moral_scenarios": "humanities",
    "nutrition": "other",
    "philosophy": "humanities",
    "prehistory": "humanities",
    "professional_accounting": "other",
    "professional_law": "humanities",
    "professional_medicine": "other",
    "professional_psychology": "social_sciences",
    "public_relations": "social_sciences",
    "security_studies": "social_sciences",
    "sociology": "social_sciences",
    "us_foreign_policy": "social_sciences",
    "virology": "other",
    "world_religions": "humanities",
}
MMLU_CATEGORIES = ("stem", "other", "social_sciences", "humanities")


def _sources(data_dir: Path) -> list[Path]:
    found = [data_dir / "piqa" / "valid.jsonl", data_dir / "piqa" / "valid-labels.lst"]
    for split in ("test", "dev"):
        found += sorted((data_dir / "mmlu" / split).glob("*.csv"))
    return [p for p in found if p.is_file()]


def converted_dir(data_dir: Path) -> Path:
    """Where the converted files of this data dir live (depends on the sources' stat)."""
    h = hashlib.sha256(f"v{FORMAT_VERSION}\n{data_dir.resolve()}\n".encode())
    for path in _sources(data_dir):
        st = path.stat()
        h.update(f"{path.relative_to(data_dir)}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return cache_dir() / "eval" / "data" / h.hexdigest()[:16]


def piqa_rows(data_dir: Path) -> list[dict]:
    questions = data_dir / "piqa" / "valid.jsonl"
    labels_file = data_dir / "piqa" / "valid-labels.lst"
    rows = read_records(questions)
    labels = [line.strip() for line in labels_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(labels) != len(rows):
        raise DataError(f"{labels_file} has {len(labels)} labels for {len(rows)} questions in {questions}")
    for n, (row, label) in enumerate(zip(rows, labels), 1):
        if label not in ("0", "1"):
            raise DataError(f"{labels_file}:{n}: label {label!r} is not 0 or 1")
        row["label"] = int(label)
    return rows


def mmlu_rows(csv_file: Path, subject: str) -> list[dict]:
    with csv_file.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        need = ["question", "choice0", "choice1", "choice2", "choice3", "answer"]
        if reader.fieldnames is None or any(k not in reader.fieldnames for k in need):
            raise DataError(f"{csv_file}: needs the CSV header {','.join(need)}")
        rows = []
        for n, r in enumerate(reader, 2):
            if r["answer"] not in ("0", "1", "2", "3"):
                raise DataError(f"{csv_file}:{n}: answer {r['answer']!r} is not 0..3")
            rows.append({
                "question": r["question"], "subject": subject,
                "choices": [r[f"choice{i}"] for i in range(4)], "answer": int(r["answer"]),
            })
    return rows


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def convert(data_dir: Path) -> Path:
    """Write (once) the converted PIQA and MMLU files of `data_dir`; return their folder.

    Sources that are absent are skipped: the tasks that need them fail with a clear error
    before anything runs (see harness.check_data)."""
    data_dir = Path(data_dir)
    target = converted_dir(data_dir)
    if target.is_dir():
        return target
    try:
        with atomic_dir(target) as tmp:
            if (data_dir / "piqa" / "valid.jsonl").is_file() and (data_dir / "piqa" / "valid-labels.lst").is_file():
                _write_jsonl(tmp / "piqa" / "valid.jsonl", piqa_rows(data_dir))
            for split in ("test", "dev"):
                for subject in MMLU_SUBJECTS:
                    src = data_dir / "mmlu" / split / f"{subject}_{split}.csv"
                    if src.is_file():
                        _write_jsonl(tmp / "mmlu" / split / f"{subject}.jsonl", mmlu_rows(src, subject))
    except (OutputExistsError, OSError):
        if not target.is_dir():  # another process finishing first is fine; anything else is not
            raise
    return target
