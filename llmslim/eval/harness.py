"""Zero-shot (or few-shot) benchmarks through lm-eval-harness, on local files, for a model object.

The task YAMLs in `tasks/` mirror lm-eval 0.4.13's built-in ones (prompt, choices, target,
metrics) but read the shared data dir. Data paths differ per machine, so `render_tasks()` writes
them with absolute paths into the cache dir; that folder is an ordinary lm-eval include path:

    lm_eval --model hf --model_args pretrained=DIR --include_path RENDERED --tasks llmslim_arc_easy

Inside lm-eval the tasks are named `llmslim_<name>` so they never collide with the built-ins;
users type `<name>` and results come back under `<name>`.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
import logging
import os
import sys
from pathlib import Path

from llmslim.core.data import data_dir as default_data_dir
from llmslim.core.errors import BadOptionError, DataError, OutputExistsError
from llmslim.core.load import cache_dir
from llmslim.core.outputs import atomic_dir
from llmslim.eval.local_data import MMLU_CATEGORIES, MMLU_SUBJECTS, convert

log = logging.getLogger(__name__)

TASKS_DIR = Path(__file__).parent / "tasks"
PREFIX = "llmslim_"

# name users type -> files (under the data dir) it reads; one line per YAML in tasks/
TASKS: dict[str, tuple[str, ...]] = {
    "arc_easy": ("arc/ARC-Easy-Test.jsonl", "arc/ARC-Easy-Dev.jsonl"),
    "arc_challenge": ("arc/ARC-Challenge-Test.jsonl", "arc/ARC-Challenge-Dev.jsonl"),
    "piqa": ("piqa/valid.jsonl", "piqa/valid-labels.lst"),
    "winogrande": ("winogrande/dev_reconstructed.jsonl",),
    "hellaswag": ("hellaswag/hellaswag_val_full_preprocessed.jsonl",),
    "boolq": ("boolq/val.jsonl",),
    "lambada": ("lambada/lambada_test.jsonl",),
    "mmlu": tuple(f"mmlu/{split}/{s}_{split}.csv" for s in MMLU_SUBJECTS for split in ("test", "dev")),
}
# MMLU's four categories and 57 subjects can be asked for one by one too (mmlu_stem, mmlu_anatomy)
TASKS.update({
    f"mmlu_{c}": tuple(p for s, cat in MMLU_SUBJECTS.items() if cat == c for p in (f"mmlu/test/{s}_test.csv", f"mmlu/dev/{s}_dev.csv"))
    for c in MMLU_CATEGORIES
})
TASKS.update({f"mmlu_{s}": (f"mmlu/test/{s}_test.csv", f"mmlu/dev/{s}_dev.csv") for s in MMLU_SUBJECTS})

MAIN_TASKS = ("arc_easy", "arc_challenge", "piqa", "winogrande", "hellaswag", "boolq", "mmlu", "lambada")


# ---------------------------------------------------------------- names and data
def resolve_tasks(names: str | list[str]) -> list[str]:
    """Validate a comma list (or list) of task names; unknown ones get near matches listed."""
    if isinstance(names, str):
        names = names.split(",")
    wanted = [n.strip() for n in names if n.strip()]
    if not wanted:
        raise BadOptionError(f"no task names given; known: {', '.join(MAIN_TASKS)}")
    for name in wanted:
        if name not in TASKS:
            near = difflib.get_close_matches(name, list(TASKS), n=3)
            hint = f" (did you mean {', '.join(near)}?)" if near else ""
            raise BadOptionError(
                f"unknown task {name!r}{hint}; known: {', '.join(MAIN_TASKS)}, "
                f"and mmlu_<category> / mmlu_<subject>"
            )
    return list(dict.fromkeys(wanted))


def check_data(tasks: list[str], data_dir: Path | str | None = None) -> Path:
    """Fail before any model work if a file a task reads is missing; return the data dir."""
    root = Path(data_dir) if data_dir else default_data_dir()
    for name in tasks:
        for rel in TASKS[name]:
            if not (root / rel).is_file():
                raise DataError(
                    f"task {name!r} needs {root / rel}, which is missing "
                    f"(data dir {root}: set --data-dir or LLMSLIM_DATA)"
                )
    return root


# ---------------------------------------------------------------- rendering
def _yaml_str(path: Path) -> str:
    return json.dumps(str(path))[1:-1]  # the inside of a double-quoted YAML (= JSON) string


def _subject_yaml(subject: str, category: str, converted: Path) -> str:
    description = f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"
    return (
        "# rendered by llmslim from _mmlu_template.yaml (lm-eval's tasks/mmlu/default)\n"
        "dataset_kwargs:\n  data_files:\n"
        f'    test: "{_yaml_str(converted / "mmlu" / "test" / f"{subject}.jsonl")}"\n'
        f'    dev: "{_yaml_str(converted / "mmlu" / "dev" / f"{subject}.jsonl")}"\n'
        f"description: {json.dumps(description)}\n"
        f"tag: {PREFIX}mmlu_{category}_tasks\n"
        "include: _mmlu_template.yaml\n"
        f"task: {PREFIX}mmlu_{subject}\n"
        f"task_alias: {subject}\n"
    )


def render_tasks(data_dir: Path | str | None = None) -> Path:
    """Write the shipped task YAMLs with absolute data paths; return that folder (an lm-eval
    include path). Cached: the same data dir and YAMLs give the same folder, written once."""
    root = (Path(data_dir) if data_dir else default_data_dir()).resolve()
    converted = convert(root)
    shipped = sorted(p for p in TASKS_DIR.iterdir() if p.suffix in (".yaml", ".py"))
    files = {}
    for path in shipped:
        text = path.read_text(encoding="utf-8")
        files[path.name] = text.replace("@DATA@", _yaml_str(root)).replace("@CONVERTED@", _yaml_str(converted))
    for subject, category in MMLU_SUBJECTS.items():
        files[f"mmlu_{subject}.yaml"] = _subject_yaml(subject, category, converted)
    digest = hashlib.sha256()
    for name, text in sorted(files.items()):
        digest.update(f"{name}\0{text}\0".encode())
    target = cache_dir() / "eval" / "tasks" / digest.hexdigest()[:16]
    if target.is_dir():
        return target
    try:
        with atomic_dir(target) as tmp:
            for name, text in files.items():
                (tmp / name).write_text(text, encoding="utf-8")
    except (OutputExistsError, OSError):
        if not target.is_dir():  # another process writing the same folder first is fine
            raise
    return target


# ---------------------------------------------------------------- running
@contextlib.contextmanager
def _harness_output(show_progress: bool):
    """lm-eval print()s (bootstrap notes) and draws tqdm bars: keep stdout clean for --json,
    and drop both when the user asked for quiet."""
    with contextlib.ExitStack() as stack:
        if show_progress:
            stack.enter_context(contextlib.redirect_stdout(sys.stderr))
        else:
            devnull = stack.enter_context(open(os.devnull, "w"))
            stack.enter_context(contextlib.redirect_stdout(devnull))
            stack.enter_context(contextlib.redirect_stderr(devnull))
        yield


def _metric_key(key: str) -> str | None:
    """'acc,none' -> 'acc', 'acc_stderr,none' -> 'acc_stderr'; 'alias' and the like -> None."""
    if "," not in key:
        return None
    metric, filt = key.split(",", 1)
    return metric if filt == "none" else key


def _user_name(internal: str) -> str:
    return internal[len(PREFIX):] if internal.startswith(PREFIX) else internal


def shape_results(raw: dict) -> dict:
    """lm-eval's output, keyed by the names users type, metrics without the ',none' filter."""
    results = {}
    for task, metrics in raw.get("results", {}).items():
        row = {}
        for key, value in metrics.items():
            name = _metric_key(key)
            if name is not None:
                row[name] = None if value == "N/A" else value
        results[_user_name(task)] = row

    def rename(per_task: dict | None) -> dict:
        return {_user_name(k): v for k, v in (per_task or {}).items()}

    return {
        "results": results,
        "groups": sorted(_user_name(g) for g in raw.get("groups", {})),
        "n-samples": rename(raw.get("n-samples")),
        "n-shot": rename(raw.get("n-shot")),
        "versions": rename(raw.get("versions")),
        "higher_is_better": rename(raw.get("higher_is_better")),
    }


# per-document metrics whose task score is their mean (a lambada 'perplexity' item is a log-likelihood)
ITEM_METRICS = ("acc", "acc_norm", "exact_match")


def item_metrics(samples: dict, group_subtasks: dict | None = None) -> dict[str, dict[str, list[float]]]:
    """lm-eval's logged samples -> {task: {metric: [value per document, by doc_id]}}; a group
    (mmlu, mmlu_stem) gets its subtasks' documents one after another, whose mean is the group's
    score where, as in every group here, lm-eval weights subtasks by size."""
    out = {}
    for task, logged in samples.items():
        ordered = sorted(logged, key=lambda example: example["doc_id"])
        out[_user_name(task)] = {m: [float(example[m]) for example in ordered]
                                 for m in ITEM_METRICS if ordered and m in ordered[0]}
    group_subtasks = group_subtasks or {}

    def leaves(task: str) -> list[str]:
        return [leaf for sub in group_subtasks[task] for leaf in leaves(sub)] if task in group_subtasks else [task]

    for group in group_subtasks:
        parts = [out[_user_name(leaf)] for leaf in leaves(group) if _user_name(leaf) in out]
        if parts:
            metrics = set.intersection(*(set(part) for part in parts))
            out[_user_name(group)] = {m: [v for part in parts for v in part[m]] for m in ITEM_METRICS if m in metrics}
    return out


def run_tasks(
    model,
    tokenizer,
    tasks: str | list[str],
    *,
    limit: int | None = None,
    batch_size: int = 8,
    num_fewshot: int | None = None,
    seed: int = 1234,
    data_dir: Path | str | None = None,
    bootstrap_iters: int = 100_000,
    show_progress: bool = True,
    lm=None,
    per_item: bool = False,
) -> dict:
    """Evaluate an in-memory causal LM on local lm-eval tasks; return shaped results. `lm`: an
    lm-eval LM to run instead of HFLM over `model` (the sparse model of `sparsity eval`).
    `per_item`: also return out["per_item"] = {task: {metric: [value per document, in document
    order]}} for the mean-aggregated metrics (lm-eval's --log_samples), which paired comparisons
    of two models on the same documents need (eval/paired.py).

    Same numbers as `lm_eval --model hf --model_args pretrained=<saved folder> --include_path
    <render_tasks()> --tasks llmslim_<name> --batch_size B --seed S` (whose default bootstrap,
    100000 draws, sets the perplexity stderr). `seed` fills all four lm-eval seed slots.
    """
    names = resolve_tasks(tasks)
    if limit is not None and limit < 1:
        raise BadOptionError(f"--limit must be an integer >= 1 (got {limit})")
    root = check_data(names, data_dir)
    include = render_tasks(root)

    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    # HFLM warns that other arguments are ignored when given a model object: expected here.
    hf_log = logging.getLogger("lm_eval.models.huggingface")
    level = hf_log.level
    hf_log.setLevel(logging.ERROR)
    try:
        lm = lm or HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    finally:
        hf_log.setLevel(level)
    manager = TaskManager(include_path=str(include), include_defaults=False)
    with _harness_output(show_progress):
        raw = simple_evaluate(
            model=lm, tasks=[PREFIX + n for n in names], num_fewshot=num_fewshot, batch_size=batch_size,
            limit=limit, bootstrap_iters=bootstrap_iters, log_samples=per_item, task_manager=manager,
            random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed,
        )
    out = shape_results(raw)
    if per_item:
        out["per_item"] = item_metrics(raw["samples"], raw.get("group_subtasks"))
    out["tasks"] = names
    out["include_path"] = str(include)
    return out
