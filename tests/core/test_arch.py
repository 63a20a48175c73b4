import pytest
import torch

from llmslim.core.arch import adapter_for, describe, text_config
from llmslim.core.errors import UnsupportedArchitectureError
from llmslim.core.surgery import keep_ffn_neurons, keep_kv_groups
from tests.conftest import FAMILIES, tiny_model


@pytest.mark.parametrize("family", FAMILIES)
def test_adapter_finds_parts_and_counts_params(family):
    model = tiny_model(family)
    info = describe(model)
    assert info["layers"] == 2 and info["hidden"] == 64 and info["ffn"] == 96
    p = info["params"]
    assert p["embeddings"] + p["attention"] + p["ffn"] + p["lm_head"] + p["other"] == p["total"]
    assert p["ffn"] > 0 and p["attention"] > 0 and p["other"] >= 0


@pytest.mark.parametrize("family", FAMILIES)
def test_zeroed_neurons_removed_keep_outputs(family):
    """Neurons whose output column is zero contribute nothing: removing them changes nothing."""
    model = tiny_model(family)
    adapter = adapter_for(model)
    config = text_config(model.config)
    keep = torch.arange(0, 96, 2)
    with torch.no_grad():
        for layer in adapter.decoder_layers(model):
            ffn = adapter.ffn(layer, config)
            dropped = torch.ones(96, dtype=torch.bool)
            dropped[keep] = False
            ffn.output.weight[:, dropped] = 0
    ids = torch.randint(0, 128, (2, 12))
    with torch.no_grad():
        before = model(ids).logits
        for layer in adapter.decoder_layers(model):
            keep_ffn_neurons(adapter.ffn(layer, config), keep)
        after = model(ids).logits
    assert adapter.ffn(adapter.decoder_layers(model)[0], config).width == 48
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["llama", "qwen3", "phi3"])
def test_removing_zeroed_kv_group_keeps_outputs(family):
    model = tiny_model(family)
    adapter = adapter_for(model)
    config = text_config(model.config)
    with torch.no_grad():
        for layer in adapter.decoder_layers(model):
            attn = adapter.attention(layer, config)
            per_group = attn.n_heads // attn.n_kv_heads
            cols = slice(per_group * attn.head_dim, 2 * per_group * attn.head_dim)  # group 1's heads
            attn.o.weight[:, cols] = 0
    ids = torch.randint(0, 128, (1, 10))
    with torch.no_grad():
        before = model(ids).logits
        for layer in adapter.decoder_layers(model):
            keep_kv_groups(adapter.attention(layer, config), torch.tensor([0]))
        model.config.num_attention_heads //= 2
        model.config.num_key_value_heads //= 2
        after = model(ids).logits
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)


def test_unknown_family_is_a_clear_error():
    class Cfg:
        model_type = "mamba"

    with pytest.raises(UnsupportedArchitectureError, match="unsupported architecture 'mamba'"):
        adapter_for(Cfg())


def test_fingerprint_ignores_how_a_model_was_loaded_but_not_its_weights():
    """Cached scores and predictors must survive a bf16 GPU load or another folder, and must
    not survive pruning or a fine-tuning step."""
    from llmslim.core.arch import model_fingerprint

    model = tiny_model("llama")
    base = model_fingerprint(model)
    as_bf16 = tiny_model("llama").to(torch.bfloat16)
    as_bf16.config._name_or_path = "/elsewhere/model"
    as_bf16.config.torch_dtype = torch.bfloat16
    assert model_fingerprint(as_bf16) == base

    tuned = tiny_model("llama")
    with torch.no_grad():
        w = adapter_for(tuned).ffn(adapter_for(tuned).decoder_layers(tuned)[0], text_config(tuned.config)).output.weight
        w.add_(1e-3 * torch.randn_like(w))
    assert model_fingerprint(tuned) != base
    assert model_fingerprint(tiny_model("llama", seed=1)) != base
