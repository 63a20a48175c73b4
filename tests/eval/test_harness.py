"""run_tasks on an in-memory model gives the numbers the `lm_eval` CLI prints for the saved folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llmslim.core.errors import BadOptionError
from llmslim.eval.harness import MAIN_TASKS, PREFIX, render_tasks, run_tasks


def lm_eval_cli(folder: str, tasks: list[str], include: Path, out: Path, *, limit: int, batch_size: int, seed: int = 1234,
                threads: int | None = None) -> dict:
    """`python -m lm_eval run` on a saved model folder; its results JSON."""
    cmd = [
        sys.executable, "-m", "lm_eval", "run", "--model", "hf", "--model_args", f"pretrained={folder},dtype=float32",
        "--tasks", ",".join(PREFIX + t for t in tasks), "--include_path", str(include), "--limit", str(limit),
        "--batch_size", str(batch_size), "--seed", str(seed), "--device", "cpu", "--output_path", str(out),
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (found,) = out.rglob("results_*.json")
    return json.loads(found.read_text())


def assert_same(ours: dict, cli: dict, tol: float = 1e-6) -> int:
    compared = 0
    for task, metrics in cli["results"].items():
        mine = ours["results"][task[len(PREFIX):]]
        for key, value in metrics.items():
            if "," not in key:
                continue
            metric = key.split(",")[0]
            theirs = None if value == "N/A" else value
            if theirs is None:
                assert mine[metric] is None, (task, metric)
            else:
                assert mine[metric] == pytest.approx(theirs, abs=tol, rel=tol), (task, metric, mine[metric], theirs)
            compared += 1
    for task, n in cli["n-samples"].items():
        assert ours["n-samples"][task[len(PREFIX):]] == n
    return compared


def test_in_memory_equals_lm_eval_cli(bpe_llama, bpe_llama_dir, fake_data, eval_cache, tmp_path):
    tasks = [t for t in MAIN_TASKS if t != "mmlu"] + ["mmlu_stem"]  # a group; all 57 subjects only cost time
    ours = run_tasks(bpe_llama.model, bpe_llama.tokenizer, tasks, limit=3, batch_size=4, data_dir=fake_data, show_progress=False)
    cli = lm_eval_cli(str(bpe_llama_dir), tasks, render_tasks(fake_data), tmp_path / "cli", limit=3, batch_size=4, threads=1)
    assert assert_same(ours, cli) > 50  # every task, the group and its subjects, with stderrs
    assert ours["groups"] == ["mmlu_stem"]
    assert ours["results"]["lambada"]["perplexity"] > 1


def test_results_layout(bpe_llama, fake_data, eval_cache, capfd):
    out = run_tasks(bpe_llama.model, bpe_llama.tokenizer, "arc_easy,boolq", limit=2, data_dir=fake_data, show_progress=False)
    assert set(out["results"]) == {"arc_easy", "boolq"}
    assert set(out["results"]["arc_easy"]) == {"acc", "acc_stderr", "acc_norm", "acc_norm_stderr"}
    assert out["n-samples"]["boolq"] == {"original": 6, "effective": 2}
    assert out["n-shot"] == {"arc_easy": 0, "boolq": 0}
    assert capfd.readouterr().out == ""  # lm-eval's prints never reach stdout (--json stays clean)


def test_per_item_values_average_to_the_task_scores(bpe_llama, fake_data, eval_cache):
    out = run_tasks(bpe_llama.model, bpe_llama.tokenizer, "arc_easy,piqa", limit=3, data_dir=fake_data, show_progress=False,
                    per_item=True)
    for task in ("arc_easy", "piqa"):
        for metric in ("acc", "acc_norm"):
            values = out["per_item"][task][metric]
            assert len(values) == 3 and set(values) <= {0.0, 1.0}
            assert sum(values) / 3 == pytest.approx(out["results"][task][metric])
    # the random model gets some items right and some wrong, so a constant list would fail above
    assert {v for t in out["per_item"].values() for v in t["acc"]} == {0.0, 1.0}
    assert "per_item" not in run_tasks(bpe_llama.model, bpe_llama.tokenizer, "arc_easy", limit=1, data_dir=fake_data,
                                       show_progress=False)


def test_few_shot_uses_the_local_dev_split(bpe_llama, fake_data, eval_cache):
    out = run_tasks(bpe_llama.model, bpe_llama.tokenizer, ["arc_easy"], limit=2, num_fewshot=2, data_dir=fake_data, show_progress=False)
    assert out["n-shot"] == {"arc_easy": 2}


def test_limit_must_be_positive(bpe_llama, fake_data):
    with pytest.raises(BadOptionError, match="--limit must be an integer >= 1"):
        run_tasks(bpe_llama.model, bpe_llama.tokenizer, ["arc_easy"], limit=-1, data_dir=fake_data)


@pytest.mark.integration
def test_smollm2_real_data_equals_lm_eval_cli(smollm2, data_dir, tmp_path):
    tasks = ["arc_easy", "arc_challenge", "piqa", "winogrande", "hellaswag", "boolq", "lambada", "mmlu_anatomy"]
    ours = run_tasks(smollm2.model, smollm2.tokenizer, tasks, limit=4, batch_size=8, data_dir=data_dir, show_progress=False)
    cli = lm_eval_cli(smollm2.path, tasks, render_tasks(data_dir), tmp_path / "cli", limit=4, batch_size=8)
    # 4 metrics (acc, acc_norm and their stderrs) for arc x2, piqa, hellaswag; lambada: perplexity,
    # acc and stderrs; 2 (acc, stderr) for winogrande, boolq, mmlu_anatomy
    assert assert_same(ours, cli) == 26
