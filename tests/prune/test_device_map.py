"""--device-map auto for calibration: the hooks work under accelerate's dispatch, and every
buffer is made beside its layer (a model spread over GPUs has no single device)."""

import pytest
import torch

from llmslim.core.errors import BadOptionError
from llmslim.prune.run import collect_for
from tests.conftest import tiny_model


def _dispatched(model):
    """The tiny model under accelerate's per-module device hooks, as from_pretrained(device_map=...)
    leaves a model spread over GPUs (here every part on the CPU: the one device this machine has)."""
    from accelerate import dispatch_model

    names = ["model.embed_tokens", "model.rotary_emb", "model.norm", "lm_head"] + [f"model.layers.{i}" for i in range(len(model.model.layers))]
    return dispatch_model(model, device_map={name: "cpu" for name in names}, force_hooks=True)


def test_calibration_under_dispatch_hooks_equals_the_plain_model():
    windows = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(0))
    methods = ["afr", "flap", "wanda-sp"]
    plain = collect_for(tiny_model("llama"), windows, methods)
    spread = _dispatched(tiny_model("llama"))
    assert hasattr(spread.model.layers[0], "_hf_hook")  # the hooks are really there
    dispatched = collect_for(spread, windows, methods)
    for key in plain.neuron:
        torch.testing.assert_close(dispatched.neuron[key], plain.neuron[key])
    torch.testing.assert_close(dispatched.act_mean, plain.act_mean)
    torch.testing.assert_close(dispatched.act_sq, plain.act_sq)


def test_activation_sums_are_made_on_their_layers_device():
    from llmslim.prune.calibrate import _Pass
    from llmslim.prune.units import layer_units

    model = tiny_model("llama")
    model.model.layers[1].mlp.to("meta")  # a second device: layer 1 "on another GPU"
    units = layer_units(model, "ffn")
    run = _Pass(units, torch.device("cpu"), [], [])
    assert [t.device.type for t in run.act_sum] == ["cpu", "meta"]
    assert [t.device.type for t in run.act_sq] == ["cpu", "meta"]


def test_offloaded_layers_are_refused():
    from llmslim.core.load import check_not_offloaded

    model = tiny_model("llama")
    check_not_offloaded(model, "pruning")  # not dispatched: nothing to refuse
    model.hf_device_map = {"model.embed_tokens": 0, "model.layers.0": 0, "model.layers.1": 1, "lm_head": 1}
    check_not_offloaded(model, "pruning")  # spread over GPUs: fine
    from llmslim.core.load import placement

    assert placement(tiny_model("llama")) is None and placement(model) == {"0": 2, "1": 2}
    model.hf_device_map |= {"model.layers.1": "cpu"}
    with pytest.raises(BadOptionError, match=r"pruning needs every layer on a GPU, but 1 modules did not fit and were offloaded \(first: model.layers.1\)"):
        check_not_offloaded(model, "pruning")


def test_prune_refuses_a_model_with_offloaded_layers_even_without_gradients(monkeypatch, tiny_llama_dir, tmp_path):
    # wanda-sp needs no gradients, but cutting an offloaded layer's weights leaves accelerate's
    # full-size copy, which the next forward loads into the cut layer
    from typer.testing import CliRunner

    from llmslim.cli import app
    from llmslim.core import load

    real = load.load_model

    def offloaded(*args, **kwargs):
        loaded = real(*args, **kwargs)
        loaded.model.hf_device_map = {"model.embed_tokens": 0, "model.layers.0": 0, "model.layers.1": "disk", "lm_head": 0}
        return loaded

    monkeypatch.setattr(load, "load_model", offloaded)
    result = CliRunner().invoke(app, ["prune", str(tiny_llama_dir), "--method", "wanda-sp", "--nsamples", "2", "--seqlen", "16",
                                      "--calib", "self", "--out", str(tmp_path / "out")])
    error = str(result.exception)
    assert isinstance(result.exception, BadOptionError) and "\n" not in error
    assert "pruning needs every layer on a GPU" in error and "first: model.layers.1" in error
    assert not (tmp_path / "out").exists()


def test_a_model_with_per_layer_widths_is_placed_as_from_pretrained_places_one(tiny_llama_dir):
    # transformers' own device-map inference and dispatch, here with the CPU as the only device
    from llmslim.core.load import _dispatch

    model = tiny_model("llama")
    reference = tiny_model("llama")
    dispatched = _dispatch(model, {"cpu": "1GiB"})
    assert set(dispatched.hf_device_map.values()) == {"cpu"}
    ids = torch.randint(0, 128, (1, 8), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(dispatched(ids).logits, reference(ids).logits)


def test_a_spread_that_would_offload_is_refused_before_loading(tiny_llama_dir):
    # the placement from_pretrained would make, inferred on a meta-device build of the config:
    # with room for nothing, every module would go to disk
    from llmslim.core.load import check_fits_spread

    with pytest.raises(BadOptionError, match=r"pruning needs every layer on a GPU, but \d+ modules did not fit"):
        check_fits_spread(str(tiny_llama_dir), "float32", {"cpu": "1KB"}, "pruning")
