"""The real thing: prune SmolLM2-135M-Instruct on real WikiText-2 windows through the CLI core,
save, reload with plain transformers, evaluate perplexity before and after."""

import math

import pytest
import torch

from llmslim.core.job import run_command
from llmslim.prune.cli import PRUNE
from llmslim.prune.jobs import PruneJob

pytestmark = pytest.mark.integration


def run_job(job):
    return run_command(PRUNE, job, quiet=True)


def test_prune_smollm2_end_to_end(smollm2, data_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "pruned"
    scores = tmp_path / "scores.pt"
    job = PruneJob(model="smollm2-135m", ratio=0.2, method="afr:abs", compare="magnitude", calib="wikitext2",
                   nsamples=2, seqlen=64, ppl=True, ppl_seqlen=256, ppl_limit=2, out=out, save_scores=scores,
                   device="cpu", dtype="float32")
    result = run_job(job)
    assert result["widths"] == [1229] * 30
    assert result["device"].startswith("cpu (") and result["dtype"] == "float32"
    assert result["params_after"] < result["params_before"] == 134_515_008
    dense, afr, magnitude = result["rows"]
    assert dense["method"] == "dense" and afr["method"] == "afr:abs" and magnitude["method"] == "magnitude"
    for row in result["rows"]:  # magnitude at 20% reaches ~1e6 on SmolLM2: finite is the contract
        assert 1 < row["eval"]["wikitext2_ppl"] and math.isfinite(row["eval"]["wikitext2_ppl"])
    # pruning without recovery costs perplexity
    assert afr["eval"]["wikitext2_ppl"] > dense["eval"]["wikitext2_ppl"]

    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.intermediate_size == 1229
    assert (out / "run.json").is_file() and (out / "results.json").is_file()

    # re-pruning from the cached scores needs no calibration and gives the same model
    again = run_job(PruneJob(model="smollm2-135m", ratio=0.2, method="afr:abs", scores=scores, out=tmp_path / "again",
                             device="cpu", dtype="float32"))
    assert again["calibration"]["source"].startswith("scores from")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "again")
    for a, b in zip(model.state_dict().values(), reloaded.state_dict().values()):
        assert torch.equal(a, b)


def test_prune_smollm2_attention_heads(smollm2, data_dir, tmp_path):
    """--target attn on the real model: one of the three kv groups (and its 3 query heads) per layer."""
    from transformers import AutoModelForCausalLM

    out = tmp_path / "heads"
    result = run_job(PruneJob(model="smollm2-135m", target="attn", ratio=0.34, method="afr:abs", compare="wanda-sp",
                              calib="wikitext2", nsamples=2, seqlen=64, ppl=True, ppl_seqlen=256, ppl_limit=2,
                              out=out, device="cpu", dtype="float32"))
    assert result["target"] == "attn" and result["widths"] == [2] * 30
    # 30 layers x one group: q (3 x 64 x 576) + k, v (64 x 576 each) + o (576 x 3 x 64)
    assert result["params_before"] - result["params_after"] == 30 * 8 * 64 * 576
    for row in result["rows"]:
        assert math.isfinite(row["eval"]["wikitext2_ppl"])
    model = AutoModelForCausalLM.from_pretrained(out)
    assert (model.config.num_attention_heads, model.config.num_key_value_heads, model.config.head_dim) == (6, 2, 64)
