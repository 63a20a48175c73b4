"""A tiny random llama whose EOS is often the greedy choice, so answers end at varied lengths."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def eos_llama_dir(tmp_path_factory, tiny_llama_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tmp_path_factory.mktemp("eos-llama")
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    with torch.no_grad():  # a louder EOS row: greedy answers stop after a few to a dozen tokens
        model.lm_head.weight[tok.eos_token_id] *= 2.0
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture
def prompts_file(tmp_path):
    import json

    rows = [{"instruction": " ".join(f"w{(i * 7 + j) % 120}" for j in range(4 + i % 3))} for i in range(8)]
    path = tmp_path / "prompts.json"
    path.write_text(json.dumps(rows))
    return path
