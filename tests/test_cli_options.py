"""One name and one default per meaning across every command, and every command validates its
options before it loads a model."""

import pytest
import typer
from typer.testing import CliRunner

from llmslim.cli import app
from llmslim.core import load


def _commands() -> list[tuple[str, object]]:
    def walk(cmd, path):
        if hasattr(cmd, "commands"):  # a group (typer vendors its own click: no isinstance)
            for name, sub in sorted(cmd.commands.items()):
                yield from walk(sub, path + [name])
        else:
            yield " ".join(path), cmd

    return list(walk(typer.main.get_command(app), []))


COMMANDS = _commands()
# names that meant the same as a shared option in earlier versions: none may come back
RETIRED = {"--eval", "--eval-limit", "--n", "--steps", "--rank", "--ppl-windows", "--lora-rank"}


def test_every_command_is_seen():
    names = {name for name, _ in COMMANDS}
    assert {"info", "eval", "bench", "prune", "recover", "shorten rl", "shorten sft", "shorten eval", "budget estimate", "budget run",
            "budget search", "budget elasticity", "budget train", "budget serve", "sparsity collect", "sparsity train",
            "sparsity eval", "sparsity generate", "sparsity bench", "diffuse adapt", "diffuse distill", "diffuse sample", "diffuse eval"} == names


@pytest.mark.parametrize("name, command", COMMANDS, ids=[name for name, _ in COMMANDS])
def test_shared_options_have_one_name_and_one_default(name, command):
    params = {p.name: p for p in command.params}
    flags = {flag for p in command.params for flag in getattr(p, "opts", [])}
    assert not flags & RETIRED, f"{name}: retired option names {flags & RETIRED}"
    if "device" in params:
        assert params["device"].default == "auto", name
    if "dtype" in params:
        assert params["dtype"].default == "auto", name
    if "seed" in params:
        assert params["seed"].default == 0, name
    if "model" in params:
        assert params["model"].param_type_name == "argument", f"{name}: MODEL is positional everywhere"
    if "tasks" in params:
        assert "--tasks" in params["tasks"].opts, name
    if "limit" in params:
        assert "--limit" in params["limit"].opts and params["limit"].default in (None, 64), name
    if "batch_size" in params:
        assert "--batch-size" in params["batch_size"].opts, name
    help_text = CliRunner().invoke(app, name.split() + ["--help"], terminal_width=200).output
    for option in ("--device", "--seed", "--json", "--out", "--tasks", "--limit"):
        assert (option in help_text) == (option in flags), f"{name} --help and its options disagree on {option}"


def refuse(*args, **kwargs):
    raise AssertionError("a model was loaded before the options were validated")


# (argv, the one-line error): one bad option per command, and a bad common option for each
BAD = [
    (["info", "smollm2-135m", "--device", "tpu"], "unknown device 'tpu'"),
    (["eval", "smollm2-135m", "--limit", "0"], "--limit must be an integer >= 1"),
    (["eval", "smollm2-135m", "--tasks", "arc_esay"], "unknown task 'arc_esay'"),
    (["bench", "smollm2-135m", "--threads", "0"], "--threads must be at least 1"),
    (["bench", "smollm2-135m", "--against", "smollm9"], "no model at 'smollm9'"),
    (["prune", "smollm2-135m", "--aggregate", "median"], "unknown --aggregate 'median'"),
    (["prune", "smollm2-135m", "--dtype", "fp8"], "unknown dtype"),
    (["prune", "smollm2-135m", "--recover-steps", "-1"], "--recover-steps must be >= 0"),
    (["prune", "smollm2-135m", "--recover-full"], "--recover-full needs --recover-steps"),
    (["prune", "smollm2-135m", "--device-map", "balanced"], "unknown --device-map 'balanced'"),
    (["prune", "smollm2-135m", "--device-map", "auto", "--recover-steps", "2"], "--recover-steps trains on one device"),
    (["eval", "smollm2-135m", "--max-memory", "0=10GiB"], "add --device-map auto"),
    (["bench", "smollm2-135m", "--device-map", "auto", "--max-memory", "0:10GiB"], "--max-memory: cannot read '0:10GiB'"),
    (["prune", "smollm2-135m", "--preset", "afr-papr"], "unknown preset 'afr-papr'; did you mean afr-paper"),
    (["recover", "smollm2-135m", "--teacher", "smollm2-135m", "--kd", "1.5", "--out", "x"], "--kd must be in [0, 1]"),
    (["recover", "smollm2-135m", "--data", "/nonexistent.txt", "--out", "x"], "--data: use wikitext2, alpaca, self or a text file"),
    # recover's checks under the flags prune gives them
    (["prune", "smollm2-135m", "--recover-steps", "2", "--recover-data", "nope.txt"], "--recover-data: use wikitext2, alpaca, self or"),
    (["prune", "smollm2-135m", "--recover-steps", "2", "--recover-kd", "2"], "--recover-kd must be in [0, 1]"),
    (["prune", "smollm2-135m", "--recover-steps", "2", "--recover-batch-size", "0"], "--recover-batch-size must be >= 1"),
    (["prune", "smollm2-135m", "--recover-steps", "2", "--recover-data", "x--data.txt"], "(no such file: x--data.txt)"),
    (["shorten", "rl", "smollm2-135m", "--max-steps", "0"], "--max-steps must be >= 1"),
    (["diffuse", "adapt", "smollm2-135m", "--data", "nope.txt", "--out", "x"], "--data: use wikitext2, alpaca or a text file"),
    (["diffuse", "distill", "smollm2-135m", "--divergence", "js", "--out", "x"], "unknown --divergence 'js'"),
    (["diffuse", "distill", "smollm2-135m", "--rounds", "8", "--start-sampling-steps", "16", "--out", "x"], "cannot be divided by 2 8 times"),
    (["diffuse", "sample", "smollm2-135m", "--sampling-steps", "0"], "--sampling-steps must be >= 1"),
    (["diffuse", "eval", "smollm2-135m", "--sampling-steps", "8,x"], "comma list of integers"),
    (["diffuse", "sample", "smollm2-135m"], "smollm2-135m is not a diffusion model"),
    (["shorten", "sft", "smollm2-135m", "--top-p", "0"], "--top-p must be in (0, 1]"),
    (["shorten", "eval", "/nonexistent/model"], "no model at"),
    (["shorten", "rl", "smollm2-135m", "--sim-model", "minilm"], "--sim-model 'minilm': not a folder that exists"),
    (["budget", "estimate", "smollm2-135m", "--concurrency", "0"], "--concurrency must be >= 1"),
    (["budget", "run", "smollm2-135m", "--modes", "budget:x"], "budget"),
    (["budget", "search", "smollm2-135m", "--method", "ternary"], "unknown --method 'ternary'"),
    (["budget", "elasticity", "smollm2-135m", "--budgets", "0"], "--budgets needs positive integers"),
    (["budget", "train", "smollm2-135m", "--targets", "silver", "--out", "x"], "unknown --targets 'silver'"),
    (["sparsity", "collect", "smollm2-135m", "--limit", "0", "--out", "x"], "--limit and --batch-size must be >= 1"),
    (["sparsity", "collect", "smollm2-135m", "--importance", "answer", "--out", "x"], "unknown --importance 'answer'"),
    (["sparsity", "train", "x", "--feature", "mid"], "unknown --feature 'mid'"),
    (["sparsity", "eval", "smollm2-135m", "-p", "x", "--decide", "step"], "unknown --decide 'step'"),
    (["sparsity", "generate", "smollm2-135m", "-p", "x", "--decide", "prompt,token", "--prompt", "hi"], "--decide must be prompt or token"),
    (["sparsity", "bench", "smollm2-135m", "-p", "x", "--new-tokens", "1"], "--new-tokens >= 2"),
    (["sparsity", "eval", "smollm2-135m", "-p", "x", "--fallback-margin", "2"], "--fallback-margin and --fallback-threshold must be in [0, 1]"),
    (["sparsity", "eval", "smollm2-135m", "-p", "x", "--ffn-sparsity", "1.5"], "must be in [0, 1)"),
    (["sparsity", "eval", "smollm2-135m", "-p", "/nonexistent/pred"], "no predictors at"),
    (["sparsity", "eval", "smollm2-135m", "-p", "x", "--ppl-limit", "0", "--tasks", ""], "nothing to evaluate"),
]


@pytest.mark.parametrize("argv, needle", BAD, ids=[" ".join(a[:2]) + " " + a[-1] for a, _ in BAD])
def test_bad_options_fail_before_any_model_loads(monkeypatch, argv, needle):
    monkeypatch.setattr(load, "load_model", refuse)
    result = CliRunner().invoke(app, argv)
    assert result.exit_code != 0
    error = result.exception
    assert error is not None and not isinstance(error, AssertionError), f"{argv}: {error!r}"
    assert needle in str(error) and "\n" not in str(error), f"{argv}: {error}"
