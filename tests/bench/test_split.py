"""The per-module split finds attention, FFN and lm_head through the arch adapter and its parts
sum to the total."""

import pytest
import torch

from llmslim.bench.speed import SpeedConfig
from llmslim.bench.split import PARTS, module_parts, time_split
from llmslim.bench.synthetic import random_model

from tests.conftest import tiny_model

from .conftest import FAST


def _check(split, cfg):
    assert split["prefill"]["calls"] == 1
    assert split["decode"]["calls"] == cfg.new_tokens - 1
    for phase in ("prefill", "decode"):
        p = split[phase]
        assert set(p["seconds"]) == set(PARTS)
        assert sum(p["seconds"].values()) == pytest.approx(p["total_s"])
        assert sum(p["fraction"].values()) == pytest.approx(1.0)
        for part in ("attention", "ffn", "lm_head"):
            assert p["seconds"][part] > 0, (phase, part)


def test_split_sums_to_total():
    model = random_model("random:tiny", torch.float32, seed=0)
    cfg = SpeedConfig(**FAST)
    _check(time_split(model, None, cfg), cfg)
    assert not model._forward_hooks and not model._forward_pre_hooks  # hooks removed


@pytest.mark.parametrize("family", ["gemma3_text", "opt"])
def test_split_other_families(family):
    """OPT's FFN 'module' is the whole layer: attention nested in it is not counted twice."""
    model = tiny_model(family)
    cfg = SpeedConfig(**FAST)
    _check(time_split(model, None, cfg), cfg)


def test_module_parts():
    model = random_model("random:tiny", torch.float32, seed=0)
    parts = module_parts(model)
    assert parts["attention"] == [l.self_attn for l in model.model.layers]
    assert parts["ffn"] == [l.mlp for l in model.model.layers]
    assert parts["lm_head"] == [model.lm_head]
