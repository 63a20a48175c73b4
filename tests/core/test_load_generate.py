import pytest

from llmslim.core.errors import ModelNotFoundError
from llmslim.core.generate import generate
from llmslim.core.load import load_model, resolve_model


def test_resolve_errors(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no model at"):
        resolve_model("no-such-alias")
    with pytest.raises(ModelNotFoundError, match="GGUF file not found"):
        resolve_model(str(tmp_path / "m.gguf"))
    with pytest.raises(ModelNotFoundError, match=r"not a model folder \(no config.json or .gguf inside\)$"):
        resolve_model(str(tmp_path))
    for name in ("round-1", "round-0"):  # diffuse distill's output holds one model a round
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text("{}")
    with pytest.raises(ModelNotFoundError, match="the model folders in it: round-0, round-1$"):
        resolve_model(str(tmp_path))


def test_load_local_folder_and_generate_counts(tiny_llama_dir):
    loaded = load_model(str(tiny_llama_dir), device="cpu", dtype="float32")
    assert loaded.model.config.model_type == "llama"
    gens = generate(loaded.model, loaded.tokenizer, ["w1 w2 w3", "w4"], max_new_tokens=7, batch_size=2, chat=False)
    assert len(gens) == 2
    for g in gens:
        assert 1 <= g.n_tokens <= 7
        assert g.finished or g.n_tokens == 7


@pytest.mark.integration
def test_smollm2_alias_real_architecture(smollm2):
    from llmslim.core.arch import describe

    info = describe(smollm2.model)
    assert (info["layers"], info["hidden"], info["ffn"], info["heads"], info["kv_heads"]) == (30, 576, 1536, 9, 3)
    assert abs(info["params"]["total"] - 134.5e6) < 0.1e6
    gens = generate(smollm2.model, smollm2.tokenizer, ["What is 2+2?"], max_new_tokens=16)
    assert gens[0].n_tokens > 0 and gens[0].text.strip()
