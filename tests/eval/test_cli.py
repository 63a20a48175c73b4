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
