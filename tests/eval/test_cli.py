"""`llmslim eval` through the root CLI, in process: outputs, --out folders, one-line errors."""

from __future__ import annotations

import json

import pytest

from llmslim.cli import main


def run(capsys, *args) -> tuple[int, str, str]:
    try:
        main(["eval", *map(str, args)])
        code = 0
    except SystemExit as done:
        code = done.code or 0
    out = capsys.readouterr()
    return code, out.out, out.err


def error_line(capsys, *args) -> str:
    code, _, err = run(capsys, *args)
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.fixture
def small(bpe_llama_dir, fake_data, eval_cache):
    """A model, data dir and sizes that make a full run take a second or two."""
    return [bpe_llama_dir, "--data-dir", fake_data, "--device", "cpu", "--quiet"]


def test_bad_input_is_one_line(capsys, small, tmp_path):
    assert "--limit must be an integer >= 1 (got -1)" in error_line(capsys, *small, "--tasks", "arc_easy", "--limit", "-1")
    line = error_line(capsys, *small, "--tasks", "arc_easy,hellaswg")
    assert "unknown task 'hellaswg' (did you mean hellaswag" in line and "known: arc_easy" in line
    assert "prompts file not found" in error_line(capsys, *small, "--gen-file", tmp_path / "none.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "hi"}\n{"prompt": \n')
    assert "bad.jsonl:2: not valid JSON" in error_line(capsys, *small, "--gen-file", bad)
    assert "--ppl-limit must be" in error_line(capsys, *small, "--ppl-limit", "0")
    assert "which is missing" in error_line(capsys, small[0], "--data-dir", tmp_path, "--tasks", "piqa")
    assert "data dir not found" in error_line(capsys, small[0], "--data-dir", tmp_path / "nope")


def test_json_has_tasks_perplexity_generation(capsys, small, fake_data):
    code, out, err = run(
        capsys, *small, "--tasks", "arc_easy,lambada", "--limit", "2", "--ppl-file", fake_data / "wikitext2" / "wiki.test.raw",
        "--ppl-seqlen", "32", "--ppl-limit", "3", "--gen-file", "mt_bench", "--gen-limit", "2", "--max-new-tokens", "4", "--json",
    )
    assert code == 0, err
    result = json.loads(out)
    assert set(result["results"]) == {"arc_easy", "lambada"}
    assert result["perplexity"]["windows"] == 3 and result["perplexity"]["seqlen"] == 32
    assert result["perplexity"]["corpus"] == "wiki.test.raw"
    gen = result["generation"]
    assert gen["prompts"] == 2 and gen["prompt_set"] == "mt_bench" and 1 <= gen["mean_tokens"] <= 4
    assert "samples" not in result  # the answers go to generations.jsonl with --out
    assert result["config"]["limit"] == 2 and result["config"]["dtype"] == "float32"
    assert {"load_s", "tasks_s", "perplexity_s", "generation_s", "total_s"} <= set(result["timings"])


def test_default_is_wikitext2_perplexity_capped_at_model_context(capsys, small):
    code, out, err = run(capsys, *small, "--ppl-limit", "2", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["perplexity"]["corpus"] == "wikitext2"
    assert result["perplexity"]["seqlen"] == 128  # the tiny model's max_position_embeddings
    assert result["results"] == {} and "generation" not in result


def test_out_folder_and_force(capsys, small, tmp_path):
    target = tmp_path / "eval"
    args = [*small, "--tasks", "boolq", "--limit", "2", "--gen-file", "mt_bench", "--gen-limit", "1",
            "--max-new-tokens", "3", "--out", target]
    code, out, err = run(capsys, *args)
    assert code == 0, err
    assert "boolq" in out  # the table
    assert sorted(p.name for p in target.iterdir()) == ["generations.jsonl", "results.json", "run.json"]
    results = json.loads((target / "results.json").read_text())
    manifest = json.loads((target / "run.json").read_text())
    assert manifest["command"] == "eval" and manifest["results"]["boolq/acc"] == results["results"]["boolq"]["acc"]
    sample = json.loads((target / "generations.jsonl").read_text().splitlines()[0])
    assert {"prompt", "text", "n_tokens", "finished"} <= set(sample)
    assert "--force" in error_line(capsys, *args)
    assert run(capsys, *args, "--force")[0] == 0


def test_json_keeps_stdout_for_the_result_and_progress_on_stderr(capsys, small):
    """A batch job's `--json > result.json 2> job.log`: the result alone on stdout, and plain
    progress lines in the log (an hour-long job must not be silent); --quiet silences them."""
    loud = [a for a in small if a != "--quiet"]
    code, out, err = run(capsys, *loud, "--ppl-limit", "2", "--json")
    assert code == 0, err
    assert json.loads(out)["perplexity"]["windows"] == 2
    assert "perplexity: started" in err and "perplexity: 2/2 done in" in err
    code, out, err = run(capsys, *small, "--ppl-limit", "2", "--json")
    assert code == 0 and json.loads(out)["perplexity"]["windows"] == 2 and "perplexity:" not in err


@pytest.fixture
def other_llama(bpe_llama_dir, tmp_path) -> str:
    """The tiny llama with its MLP outputs and head re-drawn: a second model that agrees with the first on some
    documents and not on others."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM

    folder = tmp_path / "other"
    shutil.copytree(bpe_llama_dir, folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    torch.manual_seed(1)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.down_proj.weight.normal_(0, 1.0)
        model.lm_head.weight.add_(torch.randn_like(model.lm_head.weight))
    model.save_pretrained(folder)
    return str(folder)


def test_against_pairs_documents(capsys, small, other_llama, tmp_path):
    from llmslim.eval.paired import paired_difference

    code, out, err = run(capsys, *small, "--tasks", "arc_easy,piqa,mmlu_stem", "--limit", "4", "--against", other_llama,
                         "--out", tmp_path / "run", "--json")
    assert code == 0, err
    result = json.loads(out)
    items = json.loads((tmp_path / "run" / "items.json").read_text())
    assert result["against"]["model_path"] == other_llama
    for task, metric in [("arc_easy", "acc"), ("arc_easy", "acc_norm"), ("piqa", "acc"), ("mmlu_stem", "acc")]:
        d = result["paired"][f"{task}/{metric}"]
        # the scores each side printed, and their difference
        assert d["a"] == pytest.approx(result["results"][task][metric])
        assert d["b"] == pytest.approx(result["against"]["results"][task][metric])
        assert d["diff"] == pytest.approx(d["a"] - d["b"])
        assert d == pytest.approx(paired_difference({task: items["model"][task][metric]}, {task: items["against"][task][metric]}))
    assert result["paired"]["mmlu_stem/acc"]["items"] > 4  # a group: every subject's documents
    mean = result["paired"]["mean"]
    assert mean["of"] == ["arc_easy/acc", "piqa/acc", "mmlu_stem/acc"]
    assert mean["diff"] == pytest.approx(sum(result["paired"][k]["diff"] for k in mean["of"]) / 3)
    # the two models disagree somewhere, so the comparison has something to measure
    assert any(result["paired"][k]["stderr"] > 0 for k in mean["of"])
    assert result["summary"]["vs_against/mean"] == mean["diff"]


def test_against_itself_is_zero_and_the_table_prints(capsys, small, bpe_llama_dir):
    code, out, err = run(capsys, *small[:-1], "--tasks", "arc_easy,piqa", "--limit", "3", "--against", bpe_llama_dir)
    assert code == 0, err
    assert "on the same documents" in " ".join(out.split())
    assert out.count("+0.0000") == 5  # acc and acc_norm of both tasks, and the mean


def test_against_needs_tasks_and_a_model(capsys, small, tmp_path):
    assert "--against compares task scores" in error_line(capsys, *small, "--against", small[0])
    assert "nope" in error_line(capsys, *small, "--tasks", "arc_easy", "--against", tmp_path / "nope")
