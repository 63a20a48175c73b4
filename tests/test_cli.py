"""The CLI's contract: bad input gives one clear line on stderr and a non-zero exit."""

import subprocess
import sys

import pytest


def run(*args, env=None):
    return subprocess.run([sys.executable, "-m", "llmslim", *args], capture_output=True, text=True, timeout=300, env=env)


def one_line_error(proc, needle):
    assert proc.returncode != 0
    lines = [l for l in proc.stderr.strip().splitlines() if l.strip()]
    assert "Traceback" not in proc.stderr, proc.stderr
    assert any(needle in l for l in lines), proc.stderr
    return lines


def test_help_lists_commands():
    proc = run("--help")
    assert proc.returncode == 0
    for cmd in ("info", "eval", "bench", "prune", "shorten", "budget", "sparsity"):
        assert cmd in proc.stdout


def test_missing_path(tmp_path):
    one_line_error(run("info", str(tmp_path / "nope")), "no model at")


def test_unknown_alias():
    one_line_error(run("info", "smollm9"), "no model at 'smollm9'")


def test_missing_gguf(tmp_path):
    one_line_error(run("info", str(tmp_path / "m.gguf")), "GGUF file not found")


def test_unsupported_architecture(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "bert", "architectures": ["BertModel"]}')
    one_line_error(run("info", str(tmp_path)), "unsupported architecture")


def test_bad_prune_ratio(tiny_llama_dir):
    one_line_error(run("prune", str(tiny_llama_dir), "--ratio", "1.5"), "--ratio must be between 0 and 1")


def test_prune_refuses_existing_out(tiny_llama_dir, tmp_path):
    (tmp_path / "out").mkdir()
    one_line_error(run("prune", str(tiny_llama_dir), "--out", str(tmp_path / "out"), "--calib", "self",
                       "--nsamples", "1", "--seqlen", "8", "--method", "magnitude"), "--force")



def test_prune_attention_heads_through_the_cli(tiny_llama_dir, tmp_path):
    import json

    proc = run("prune", str(tiny_llama_dir), "--target", "attn", "--ratio", "0.5", "--method", "wanda-sp",
               "--calib", "self", "--nsamples", "2", "--seqlen", "8", "--out", str(tmp_path / "out"), "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["target"] == "attn" and result["widths"] == [1, 1]
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert (config["num_attention_heads"], config["num_key_value_heads"]) == (2, 1)


def test_prune_unknown_target(tiny_llama_dir):
    one_line_error(run("prune", str(tiny_llama_dir), "--target", "embeddings"), "unknown --target")


def test_prune_attention_refuses_group_sum_before_loading(tiny_llama_dir):
    one_line_error(run("prune", str(tiny_llama_dir), "--target", "attn", "--group", "sum"), "--group sum")


def test_bad_input_exits_1_and_a_bug_exits_2_with_how_to_see_it(monkeypatch, capsys, tmp_path):
    from llmslim import cli
    from llmslim.core import load

    monkeypatch.setenv("LLMSLIM_DEBUG", "")  # --debug below sets it; restored (unset) after the test
    with pytest.raises(SystemExit) as bad:
        cli.main(["info", str(tmp_path / "nope")])
    assert bad.value.code == 1 and capsys.readouterr().err.startswith("error: no model at")

    def broken(*args, **kwargs):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(load, "load_model", broken)
    with pytest.raises(SystemExit) as bug:
        cli.main(["info", "smollm2-135m"])
    err = capsys.readouterr().err
    assert bug.value.code == cli.INTERNAL_ERROR == 2
    assert err.startswith("internal error: ZeroDivisionError: division by zero") and "--debug" in err
    assert "Traceback" not in err
    with pytest.raises(ZeroDivisionError):  # --debug lets it through, traceback and all
        cli.main(["--debug", "info", "smollm2-135m"])


def test_version_and_a_usage_error():
    import llmslim

    proc = run("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == llmslim.__version__
    proc = run("prune", "--no-such-option")
    assert proc.returncode == 1 and "No such option: --no-such-option" in proc.stderr and "internal error" not in proc.stderr
