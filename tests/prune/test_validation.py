"""Every bad prune option fails with its one-line error before a model is loaded (a loader
that raises if called proves it), and the model-shaped checks fire before calibration."""

import pytest
import torch

from llmslim.core import load
from llmslim.core.errors import BadOptionError, LlmslimError
from llmslim.core.job import run_command
from llmslim.prune import jobs
from llmslim.prune.cli import PRUNE
from llmslim.prune.jobs import PruneJob
from tests.conftest import tiny_model


def run_job(job):
    return run_command(PRUNE, job, quiet=True)


@pytest.fixture
def no_loading(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the options were validated")

    monkeypatch.setattr(load, "load_model", refuse)


@pytest.mark.parametrize("options, needle", [
    (dict(aggregate="median"), "unknown --aggregate 'median'"),
    (dict(method="afr:median"), "unknown aggregation 'median'"),
    (dict(method="wanda"), "did you mean wanda-sp"),
    (dict(accumulate="sum"), "unknown --accumulate 'sum'"),
    (dict(gmm_refit="never"), "unknown --gmm-refit 'never'"),
    (dict(gmm_scope="row"), "unknown --gmm-scope 'row'"),
    (dict(afr_recipe="code"), "unknown --afr-recipe 'code'"),
    (dict(group="mean"), "unknown --group 'mean'"),
    (dict(snip_loss="last"), "unknown --snip-loss 'last'"),
    (dict(ratio=1.5), "--ratio must be between 0 and 1"),
    (dict(nsamples=0), "--nsamples must be >= 1"),
    (dict(limit=0), "--limit must be >= 1"),
    (dict(round_to=0), "--round-to must be >= 1"),
    (dict(bias_compensation="yes"), "unknown --bias-compensation 'yes'"),
    (dict(reconstruct=True, bias_compensation="on"), "drop --bias-compensation on"),
    (dict(recover_data="self"), "--recover-data needs --recover-steps"),
    (dict(tasks="arc_esay"), "unknown task 'arc_esay'"),
    (dict(target="attn", group="sum"), "--group sum needs equal-sized parts"),
    (dict(target="attn", allocation="global"), "uniform only"),
    (dict(calib="/nonexistent/corpus.txt"), "no such file"),
    (dict(scores="/nonexistent/scores.pt"), "scores file not found"),
    (dict(out="/proc/llmslim-out"), "not writable"),
    (dict(save_scores="/proc/llmslim-scores.pt"), "not writable"),
])
def test_bad_option_fails_before_loading(no_loading, options, needle):
    with pytest.raises(LlmslimError, match=needle.replace("(", r"\(")) as info:
        run_job(PruneJob(**options))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("content, needle", [
    (b"garbage", "is not an llmslim scores file"),
    (None, "is not an llmslim scores file (holds a Tensor)"),
    ({"snip": []}, "is not an llmslim scores file"),
])
def test_malformed_scores_file_fails_before_loading(no_loading, tmp_path, content, needle):
    path = tmp_path / "scores.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(torch.zeros(3) if content is None else content, path)
    with pytest.raises(LlmslimError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        run_job(PruneJob(scores=path))


def test_reconstruct_from_scores_without_gram_fails_before_loading(no_loading, tmp_path):
    path = tmp_path / "scores.pt"
    torch.save({"snip": [], "refer": [], "act_mean": [], "act_sq": [], "tokens": 1, "windows": 1}, path)
    with pytest.raises(LlmslimError, match="holds no Gram matrices"):
        run_job(PruneJob(scores=path, reconstruct=True))


def test_existing_out_needs_force_before_loading(no_loading, tmp_path):
    with pytest.raises(LlmslimError, match="--force"):
        run_job(PruneJob(out=tmp_path))


@pytest.mark.parametrize("target, ratio, needle", [
    ("attn", 0.99, "removes every one of a layer's 2 kv groups"),
    ("attn", 0.1, "removes nothing: a layer has 2 kv groups"),
    ("ffn", 0.001, "removes nothing: a layer has 96 neurons"),
])
def test_model_shaped_checks_fire_before_calibration(monkeypatch, target, ratio, needle):
    class Loaded:
        model, tokenizer, device = tiny_model("llama"), None, torch.device("cpu")

    monkeypatch.setattr(load, "load_model", lambda *a, **k: Loaded())

    def refuse(*args, **kwargs):
        raise AssertionError("calibration started before the model-shaped checks")

    monkeypatch.setattr(jobs, "calibration_windows", refuse)
    with pytest.raises(BadOptionError, match=needle):
        run_job(PruneJob(target=target, ratio=ratio, calib="self"))
