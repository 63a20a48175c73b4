"""Paired comparison of two models scored on the same documents.

Two pruned variants of one model get most items right or wrong together, so the difference of
their mean accuracies varies far less than two independent accuracies would: the standard error
of the per-item differences (Miller, "Adding Error Bars to Evals", 2024) is the one
that says whether a +.004 is real. lm-eval reports only each model's own (unpaired) stderr.

The score compared is the benchmark table's: the mean over tasks of each task's mean, so
    diff = 1/T * sum_t mean_i(a_ti - b_ti),  stderr^2 = 1/T^2 * sum_t var_i(a_ti - b_ti) / n_t
(sample variance, ddof 1, as lm-eval's acc_stderr), the tasks independent of each other.
"""

from __future__ import annotations

import math

Items = dict[str, list[float]]  # task -> one value per document, in document order


def items_to_bits(items: Items) -> dict[str, str]:
    """{task: [1.0, 0.0, ...]} -> {task: "10..."}: 0/1 scores as a benchmark results file keeps them."""
    if any(v not in (0.0, 1.0) for values in items.values() for v in values):
        raise ValueError("only 0/1 scores fit in a string of bits")
    return {task: "".join(str(int(v)) for v in values) for task, values in items.items()}


def items_from_bits(bits: dict[str, str]) -> Items:
    """The inverse of items_to_bits."""
    return {task: [float(c) for c in digits] for task, digits in bits.items()}


def mean_score(items: Items) -> float:
    """The mean over tasks of each task's mean (the table's mean accuracy)."""
    return sum(sum(v) / len(v) for v in items.values()) / len(items)


def _variance(values: list[float]) -> float:
    if len(values) < 2:
        return 0.0
    mean = sum(values) / len(values)
    return sum((v - mean) ** 2 for v in values) / (len(values) - 1)


def paired_difference(a: Items, b: Items) -> dict:
    """a's mean score minus b's, with its paired standard error and, for contrast, the unpaired
    one (as if the two had been scored on different documents)."""
    if set(a) != set(b):
        raise ValueError(f"different tasks: {sorted(a)} and {sorted(b)}")
    for task in a:
        if len(a[task]) != len(b[task]) or not a[task]:
            raise ValueError(f"{task}: {len(a[task])} and {len(b[task])} items; a paired comparison needs the same documents")
    tasks = sorted(a)
    paired = sum(_variance([x - y for x, y in zip(a[t], b[t])]) / len(a[t]) for t in tasks)
    unpaired = sum((_variance(a[t]) + _variance(b[t])) / len(a[t]) for t in tasks)
    return {"a": mean_score(a), "b": mean_score(b), "diff": mean_score(a) - mean_score(b), "stderr": math.sqrt(paired) / len(tasks),
            "unpaired_stderr": math.sqrt(unpaired) / len(tasks), "items": sum(len(a[t]) for t in tasks)}


def headline_difference(mine: dict[str, Items], theirs: dict[str, Items], tasks: list[str]) -> dict:
    """paired_difference of the mean of each task's headline metric (acc_norm for ARC-Challenge,
    HellaSwag and OpenBookQA, acc elsewhere: the number prune's summaries and the pruning tables
    report), with "of": the task/metric pairs averaged."""
    from llmslim.eval.run import headline

    chosen = headline({task: mine[task] for task in tasks if task in mine})
    out = paired_difference({t: mine[t][m] for t, (m, _) in chosen.items()}, {t: theirs[t][m] for t, (m, _) in chosen.items()})
    return {**out, "of": [f"{t}/{m}" for t, (m, _) in chosen.items()]}


def compare(mine: dict[str, Items], theirs: dict[str, Items], tasks: list[str]) -> dict[str, dict]:
    """Two models' per-document scores (harness.run_tasks' per_item) on `tasks` -> {"task/metric":
    paired_difference(mine, theirs)} for every metric, and "mean": headline_difference, over 2+ tasks."""
    out = {}
    for task in tasks:
        for metric in mine.get(task, {}):
            out[f"{task}/{metric}"] = paired_difference({task: mine[task][metric]}, {task: theirs[task][metric]})
    if len([t for t in tasks if t in mine]) > 1:
        out["mean"] = headline_difference(mine, theirs, tasks)
    return out
