"""Random-weight presets build the shapes they name, seeded, fast, with clear errors."""

import pytest
import torch

from llmslim.bench.synthetic import PRESETS, parse_spec, random_config, random_model
from llmslim.core.arch import describe
from llmslim.core.errors import BadOptionError

# published sizes (the model cards): tied embeddings counted once
EXPECTED = {
    "llama-1b": dict(hidden_size=2048, num_hidden_layers=16, intermediate_size=8192, num_attention_heads=32,
                     num_key_value_heads=8, vocab_size=128256, params=1_235_814_400),
    "llama3-8b": dict(hidden_size=4096, num_hidden_layers=32, intermediate_size=14336, num_attention_heads=32,
                      num_key_value_heads=8, vocab_size=128256, params=8_030_261_248),
    "llama3-70b": dict(hidden_size=8192, num_hidden_layers=80, intermediate_size=28672, num_attention_heads=64,
                       num_key_value_heads=8, vocab_size=128256, params=70_553_706_496),
    "smollm2-135m": dict(hidden_size=576, num_hidden_layers=30, intermediate_size=1536, num_attention_heads=9,
                         num_key_value_heads=3, vocab_size=49152, params=134_515_008),
    "gemma3-270m": dict(hidden_size=640, num_hidden_layers=18, intermediate_size=2048, num_attention_heads=4,
                        num_key_value_heads=1, vocab_size=262144, params=268_098_176),
}


def _count_params(config) -> int:
    """Parameter count of a config without allocating it (meta device)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    model.tie_weights()
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_presets_have_the_published_shape(name):
    config = random_config(f"random:{name}")
    expected = dict(EXPECTED[name])
    params = expected.pop("params")
    for key, value in expected.items():
        assert getattr(config, key) == value, key
    assert _count_params(config) == params


def test_every_preset_is_checked_or_tiny():
    assert set(PRESETS) == set(EXPECTED) | {"tiny"}


def test_width_override_builds_a_pruned_twin():
    config = random_config("random:llama-1b?intermediate_size=4096&num_hidden_layers=2")
    assert config.intermediate_size == 4096 and config.num_hidden_layers == 2 and config.hidden_size == 2048


def test_parse_spec_values():
    assert parse_spec("random:tiny?intermediate_size=32&rms_norm_eps=1e-6&tie_word_embeddings=false") == (
        "tiny", {"intermediate_size": 32, "rms_norm_eps": 1e-6, "tie_word_embeddings": False})


def test_random_model_shapes_and_seed():
    a = random_model("random:tiny?intermediate_size=48", torch.float32, seed=1)
    info = describe(a)
    assert (info["layers"], info["hidden"], info["ffn"], info["heads"], info["kv_heads"]) == (2, 64, 48, 4, 2)
    assert info["tied_embeddings"]
    b = random_model("random:tiny?intermediate_size=48", torch.float32, seed=1)
    c = random_model("random:tiny?intermediate_size=48", torch.float32, seed=2)
    wa, wb, wc = (m.model.layers[0].mlp.up_proj.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)
    assert 0.01 < wa.std().item() < 0.03
    assert torch.all(a.model.norm.weight == 1)
    with torch.no_grad():
        logits = a(torch.randint(0, 256, (1, 5))).logits
    assert torch.isfinite(logits).all() and not a.training


def test_random_model_dtype_and_per_layer_widths():
    config = random_config("random:tiny")
    config.llmslim_ffn_widths = [128, 32]
    model = random_model(config, torch.bfloat16, seed=0)
    assert [l.mlp.down_proj.in_features for l in model.model.layers] == [128, 32]
    assert next(model.parameters()).dtype == torch.bfloat16


def test_random_model_from_a_local_config_folder(tmp_path):
    random_config("random:tiny").save_pretrained(tmp_path)
    config = random_config(f"random:{tmp_path}?num_hidden_layers=1")
    assert config.num_hidden_layers == 1 and config.hidden_size == 64


@pytest.mark.parametrize("spec, needle", [
    ("random:llama1b", "did you mean llama-1b"),
    ("random:", "unknown random model preset"),
    ("random:llama-1b?intermediat_size=4096", "did you mean intermediate_size"),
    ("random:llama-1b?intermediate_size", "write key=value"),
])
def test_bad_specs(spec, needle):
    with pytest.raises(BadOptionError, match=needle):
        random_config(spec)
