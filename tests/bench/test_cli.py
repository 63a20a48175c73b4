"""`llmslim bench` end to end on random tiny models: table, JSON, --out files, one-line errors.
One test goes through a real subprocess (the console entry point); the rest call `main` in
process, which is the same code path without paying torch's import per test."""

import json
import subprocess
import sys

import pytest

from llmslim.cli import main

FAST = ["--prompt-len", "8", "--new-tokens", "3", "--repeats", "1", "--warmup", "0", "--threads", "1"]


def bench(capsys, *args):
    try:
        main(["bench", *args])
        code = 0
    except SystemExit as done:
        code = done.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_subprocess_json_with_against_and_split(tmp_path):
    out = tmp_path / "b"
    proc = subprocess.run(
        [sys.executable, "-m", "llmslim", "bench", "random:tiny", "--against", "random:tiny?intermediate_size=32",
         "-b", "2", "--split", "--json", "--out", str(out), *FAST],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert [m["name"] for m in data["models"]] == ["random:tiny", "random:tiny?intermediate_size=32"]
    assert set(data["ratios"]["random:tiny?intermediate_size=32"]) >= {"decode_tok_s@1", "decode_tok_s@2", "params"}
    assert "split" in data["models"][0]["batches"]["2"]
    assert json.loads((out / "results.json").read_text())["ratios"] == data["ratios"]
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["command"] == "bench" and manifest["args"]["against"] == "random:tiny?intermediate_size=32"


def test_table(capsys):
    code, out, err = bench(capsys, "random:tiny", "--against", "random:tiny?num_hidden_layers=1", "-b", "1", "-q", *FAST)
    assert code == 0, err
    for text in ("decode tok/s, b=1", "model vs against", "parameters", "peak memory, b=1"):
        assert text in out


def test_static_cache_is_reported(capsys):
    code, out, err = bench(capsys, "random:tiny", "-b", "1", "--static-cache", "--json", *FAST)
    assert code == 0, err
    run = json.loads(out)["models"][0]["batches"]["1"]
    assert run["cache"] == "static" and run["compiled"] is False


@pytest.mark.parametrize("args, needle", [
    (["random:llama-2b"], "unknown random model preset 'llama-2b'"),
    (["random:tiny", "--batch-size", "0"], "batch size must be at least 1"),
    (["random:tiny", "--new-tokens", "1"], "new tokens must be at least 2"),
    (["random:tiny", "--threads", "0"], "--threads must be at least 1"),
    (["random:tiny?intermediat_size=3"], "did you mean intermediate_size"),
    (["smollm2-135m", "--against", "random:llama-2b"], "unknown random model preset"),  # before loading MODEL
])
def test_bad_input_is_one_line(capsys, args, needle):
    code, out, err = bench(capsys, *args, *([] if "--threads" in args else ["--threads", "1"]))
    assert code == 1
    assert "Traceback" not in err
    lines = [l for l in err.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and needle in lines[0], err


def test_refuses_existing_out(capsys, tmp_path):
    (tmp_path / "o").mkdir()
    code, out, err = bench(capsys, "random:tiny", "--out", str(tmp_path / "o"), *FAST)
    assert code == 1 and "--force" in err


def test_versus_reads_as_speed_up_and_share():
    from llmslim.bench.cli import _versus

    # ratios are against / model: model decodes 12.5 tok/s, against 10 -> 0.8
    assert _versus(0.8, "decode_tok_s@1") == "1.25× faster"
    assert _versus(1.25, "prefill_tok_s@4") == "1.25× slower"
    assert _versus(1.134, "params") == "0.882×"  # model is 0.882 of against's size
    assert _versus(None, "params") == "-"
