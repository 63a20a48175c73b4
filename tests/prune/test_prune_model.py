"""End to end on tiny random models: prune, reload with plain transformers, cached scores."""

import json

import pytest
import torch

from llmslim.core.arch import adapter_for, text_config
from llmslim.core.errors import LlmslimError
from llmslim.prune.calibrate import collect, collect_gram
from llmslim.prune.run import PruneConfig, collect_for, load_stats, neuron_scores, prune_model, save_stats
from llmslim.prune.scores import ScoreConfig
from tests.conftest import DEVICES, tiny_config, tiny_model

WINDOWS = torch.randint(0, 128, (3, 24), generator=torch.Generator().manual_seed(0))
METHODS = ["afr", "afr:mean-abs", "afr:trim", "snip", "refer", "magnitude", "wanda-sp", "flap", "llm-pruner-vector"]


@pytest.fixture(scope="module")
def stats_and_model():
    model = tiny_model("llama")
    return collect_for(model, WINDOWS, METHODS), model


@pytest.mark.parametrize("method", METHODS)
def test_every_method_prunes_and_runs(stats_and_model, method):
    stats, base = stats_and_model
    model = tiny_model("llama")
    rep = prune_model(model, stats, PruneConfig(ratio=0.5, method=method))
    assert rep["widths"] == [48, 48] and model.config.intermediate_size == 48
    assert rep["params_after"] < rep["params_before"]
    assert torch.isfinite(model(WINDOWS[:1]).logits).all()


def test_pruned_model_reloads_with_plain_transformers(tmp_path, stats_and_model):
    from transformers import AutoModelForCausalLM

    stats, _ = stats_and_model
    model = tiny_model("llama")
    prune_model(model, stats, PruneConfig(ratio=0.25, method="afr"))
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(WINDOWS).logits, model(WINDOWS).logits)


def test_flap_bias_saved_and_reloaded(tmp_path, stats_and_model):
    from transformers import AutoModelForCausalLM

    stats, _ = stats_and_model
    model = tiny_model("llama")
    prune_model(model, stats, PruneConfig(ratio=0.5, method="flap"))
    assert model.config.mlp_bias and model.model.layers[0].mlp.down_proj.bias.abs().sum() > 0
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(WINDOWS).logits, model(WINDOWS).logits)


@pytest.mark.parametrize("method,compensation,biased", [("flap", "auto", True), ("magnitude", "auto", False), ("magnitude", "on", True),
                                                          ("flap", "off", False)])
def test_bias_compensation_for_any_method(stats_and_model, method, compensation, biased):
    """--bias-compensation on: any method's removed neurons leave their mean contribution,
    W_down[:, removed] @ E[act_removed], as the down projection's bias; auto does it for FLAP only."""
    stats, _ = stats_and_model
    model = tiny_model("llama")
    down = model.model.layers[0].mlp.down_proj.weight.detach().clone()
    rep = prune_model(model, stats, PruneConfig(ratio=0.5, method=method, bias_compensation=compensation))
    bias = model.model.layers[0].mlp.down_proj.bias
    assert (bias is not None) == biased and bool(getattr(model.config, "mlp_bias", False)) == biased
    if biased:
        removed = torch.ones(down.shape[1], dtype=torch.bool)
        removed[rep["kept"][0]] = False
        torch.testing.assert_close(bias.data, down[:, removed] @ stats.act_mean[0][removed])


@pytest.mark.parametrize("allocation", ["global", "adaptive"])
@pytest.mark.parametrize("device", DEVICES)
def test_per_layer_widths_reload_through_llmslim(tmp_path, stats_and_model, tiny_llama_dir, device, allocation):
    from llmslim.core.load import load_model

    stats, _ = stats_and_model
    model = tiny_model("llama")
    rep = prune_model(model, stats, PruneConfig(ratio=0.5, method="magnitude", allocation=allocation))
    assert len(set(rep["widths"])) > 1, rep["widths"]
    assert sum(rep["widths"]) == round(0.5 * 96 * len(rep["widths"]))
    model.save_pretrained(tmp_path)
    for f in tiny_llama_dir.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens")):
            (tmp_path / f.name).write_bytes(f.read_bytes())
    assert json.loads((tmp_path / "config.json").read_text())["llmslim_ffn_widths"] == rep["widths"]
    loaded = load_model(str(tmp_path), device=device, dtype="float32")
    assert {p.device.type for p in loaded.model.parameters()} == {device}  # per-layer widths on the asked device
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(WINDOWS.to(device)).logits.cpu(), model(WINDOWS).logits, atol=1e-4, rtol=1e-4)


def test_cached_scores_give_identical_pruning(tmp_path, stats_and_model):
    stats, base = stats_and_model
    path = tmp_path / "scores.pt"
    save_stats(path, stats, base)
    again = load_stats(path, base)
    for method in ("afr", "wanda-sp"):
        a = neuron_scores(base, stats, method, ScoreConfig())
        b = neuron_scores(base, again, method, ScoreConfig())
        assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_scores_of_another_model_are_refused(tmp_path, stats_and_model):
    from llmslim.core.errors import DataError

    stats, base = stats_and_model
    path = tmp_path / "scores.pt"
    save_stats(path, stats, base)
    with pytest.raises(DataError, match="different model"):
        load_stats(path, tiny_model("llama", seed=1))


def test_pruning_zero_neurons_keeps_outputs():
    """Neurons with all-zero weights score lowest by magnitude and their removal is exact."""
    model = tiny_model("llama")
    adapter = adapter_for(model)
    config = text_config(model.config)
    with torch.no_grad():
        for layer in adapter.decoder_layers(model):
            ffn = adapter.ffn(layer, config)
            for b in ffn.inputs:
                b.linear.weight[:24] = 0
            ffn.output.weight[:, :24] = 0
        before = model(WINDOWS).logits
    stats = collect(model, WINDOWS[:1], refer=False, snip=False)
    rep = prune_model(model, stats, PruneConfig(ratio=0.25, method="magnitude"))
    assert all(k.min() >= 24 for k in rep["kept"])
    with torch.no_grad():
        torch.testing.assert_close(model(WINDOWS).logits, before, atol=1e-5, rtol=1e-5)


def _down_proj_io(model, layer: int = 0):
    """Layer `layer`'s down_proj inputs and outputs over WINDOWS, [tokens, width] and [tokens, hidden]."""
    seen = {}
    down = model.model.layers[layer].mlp.down_proj
    handle = down.register_forward_hook(lambda m, a, out: seen.update(x=a[0].reshape(-1, a[0].shape[-1]), y=out.reshape(-1, out.shape[-1])))
    with torch.no_grad():
        model(WINDOWS)
    handle.remove()
    return seen["x"].double(), seen["y"].double()


def test_reconstruct_is_the_ridge_least_squares_refit_and_tends_to_flap_bias():
    """Catches a wrong normal equation (a missing bias row, the mean's outer product, W instead
    of W^T), a ridge that pulls toward zero instead of the original columns, a refit that
    leaves pruned columns non-zero, or kv-group channels expanded in the wrong order."""
    from llmslim.prune.apply import flap_bias, reconstruct

    gen = torch.Generator().manual_seed(1)
    base = tiny_model("llama")
    width = base.config.intermediate_size
    x = torch.randn(500, width, generator=gen, dtype=torch.float64) * torch.rand(width, generator=gen, dtype=torch.float64) + 0.3
    gram, mean = [x.T @ x / len(x)] * 2, [x.mean(0)] * 2
    keep = [torch.randperm(width, generator=gen)[: width // 2].sort().values for _ in range(2)]

    plain = tiny_model("llama")
    reconstruct(plain, keep, gram, mean, damp=0.0)
    for layer, kept in zip(range(2), keep):
        w = base.model.layers[layer].mlp.down_proj.weight.double()
        features = torch.cat([x[:, kept], torch.ones(len(x), 1, dtype=torch.float64)], 1)
        expected = torch.linalg.lstsq(features, x @ w.T).solution  # [kept + 1, hidden]
        down = plain.model.layers[layer].mlp.down_proj
        torch.testing.assert_close(down.weight[:, kept].double(), expected[:-1].T, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(down.bias.double(), expected[-1], rtol=1e-4, atol=1e-5)
        dropped = torch.ones(width, dtype=torch.bool)
        dropped[kept] = False
        assert (down.weight[:, dropped] == 0).all()
    assert plain.config.mlp_bias

    # a ridge that dominates keeps the original columns; the best bias for them is FLAP's
    stiff, flap = tiny_model("llama"), tiny_model("llama")
    reconstruct(stiff, keep, gram, mean, damp=1e9)
    flap_bias(flap, keep, [m.float() for m in mean])
    for a, b in zip(stiff.model.layers, flap.model.layers):
        kept_cols = a.mlp.down_proj.weight.abs().sum(0) > 0
        torch.testing.assert_close(a.mlp.down_proj.weight[:, kept_cols], b.mlp.down_proj.weight[:, kept_cols], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(a.mlp.down_proj.bias, b.mlp.down_proj.bias, rtol=1e-4, atol=1e-5)


def test_gram_passes_of_a_few_layers_each_equal_one_pass_of_all():
    """collect_gram in passes of one or two layers (the memory plan's chunks, each pass stopped
    after its last layer) gives every layer's E[x x^T] of one whole pass, in layer order.
    Catches a chunk's matrices appended out of order or for the wrong layers, a pass stopped
    before its last layer's input is added, or a wrong token count."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    config = tiny_config("llama")
    config.num_hidden_layers = layers = 3  # so that passes of 2 leave a shorter last one
    model = AutoModelForCausalLM.from_config(config).eval()
    expected = []
    for i in range(layers):
        x, _ = _down_proj_io(model, i)
        expected.append(x.T @ x / len(x))
    for per_pass in (None, 1, 2):
        grams = collect_gram(model, WINDOWS, layers_per_pass=per_pass)
        assert len(grams) == layers
        for got, want in zip(grams, expected):
            torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)


def test_reconstruct_from_calibration_beats_bias_compensation_and_reloads(tmp_path):
    """collect_gram sums E[x x^T] of each down_proj input, and prune_model's refit
    reproduces layer 0's dense output on the calibration windows better than FLAP's bias
    compensation alone (it minimises exactly that error); the result loads in plain
    transformers. Catches a Gram matrix over the wrong activations or tokens, or a refit that
    is not applied before the columns are cut."""
    from transformers import AutoModelForCausalLM

    dense = tiny_model("llama")
    x, y = _down_proj_io(dense)
    stats = collect_for(dense, WINDOWS, ["magnitude"])
    stats.act_gram = collect_gram(dense, WINDOWS)
    torch.testing.assert_close(stats.act_gram[0].double(), x.T @ x / len(x), rtol=1e-5, atol=1e-6)
    errors = {}
    for name, cfg in (("bias", PruneConfig(ratio=0.25, method="magnitude", bias_compensation="on")),
                      ("refit", PruneConfig(ratio=0.25, method="magnitude", reconstruct=True, reconstruct_damp=0.0))):
        model = tiny_model("llama")
        prune_model(model, stats, cfg)
        x_pruned, y_pruned = _down_proj_io(model)
        errors[name] = (y_pruned - y).pow(2).mean().item()
    assert errors["refit"] < 0.9 * errors["bias"], errors
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(WINDOWS).logits, model(WINDOWS).logits)
    with pytest.raises(LlmslimError, match="--reconstruct needs the calibration's Gram matrices"):
        prune_model(tiny_model("llama"), collect_for(dense, WINDOWS, ["magnitude"]), PruneConfig(method="magnitude", reconstruct=True))
