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


def test_gradients_through_offloaded_layers_are_refused():
    from llmslim.core.load import check_not_offloaded

    model = tiny_model("llama")
    check_not_offloaded(model, "calibration")  # not dispatched: nothing to refuse
    model.hf_device_map = {"model.embed_tokens": 0, "model.layers.0": 0, "model.layers.1": 1, "lm_head": 1}
    check_not_offloaded(model, "calibration")  # spread over GPUs: fine
    model.hf_device_map |= {"model.layers.1": "cpu"}
    with pytest.raises(BadOptionError, match=r"1 modules did not fit the GPUs and were offloaded \(first: model.layers.1\)"):
        check_not_offloaded(model, "calibration")
