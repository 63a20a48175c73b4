"""SmolLM2-135M-Instruct on real Alpaca prompts: one GRPO step avoids the truncation trap."""

import pytest

from llmslim.shorten.jobs import select_refs
from llmslim.shorten.reference import get_references
from llmslim.shorten.reward import Embedder
from llmslim.shorten.rl import RLConfig, train_rl

pytestmark = pytest.mark.integration


def test_smollm2_one_grpo_step_learns_something(smollm2_copy, data_dir, tmp_path):
    from llmslim.core.data import alpaca_prompts

    prompts = [alpaca_prompts(data_dir)[i] for i in (5, 11, 14)]  # short natural answers (< 20 tokens)
    smollm2 = smollm2_copy  # trained below: never the session's shared model
    model, tok = smollm2.model, smollm2.tokenizer
    refs = select_refs(get_references(model, tok, prompts, model_id=smollm2.path, cache_root=tmp_path,
                                      max_new_tokens=32), max_ref_tokens=None, keep_unfinished=False)
    assert refs.refs and all(r.finished for r in refs.refs)
    res = train_rl(model, tok, refs, Embedder(), RLConfig(steps=1, batch_size=1, num_generations=3, lam=0.5, seed=0),
                   work_dir=tmp_path / "work")
    row = [h for h in res["history"] if "loss" in h][0]
    assert res["completion_limit"] > refs.max_tokens
    assert row["clipped_ratio"] < 1.0  # not every completion was cut: the rewards can differ
    assert row["reward_std"] > 0.0 and not res["warnings"]
