"""`--target attn`: whole kv groups (with their query heads) scored, removed, saved and reloaded."""

import pytest
import torch

from llmslim.core.errors import BadOptionError, UnsupportedArchitectureError
from llmslim.prune.apply import prune_heads
from llmslim.prune.calibrate import collect, collect_gram
from llmslim.prune.run import PruneConfig, collect_for, prune_model
from llmslim.prune.units import layer_units, weight_groups
from tests.conftest import FAMILIES, tiny_model

WINDOWS = torch.randint(0, 128, (3, 24), generator=torch.Generator().manual_seed(0))
METHODS = ["afr", "afr:mean-abs", "snip", "magnitude", "wanda-sp", "flap", "llm-pruner-vector", "llm-pruner-element"]
HD = 16  # tiny models: hidden 64, 4 query heads, 2 kv heads -> head_dim 16, 2 query heads per group


@pytest.fixture(scope="module")
def attn_stats():
    return collect_for(tiny_model("llama"), WINDOWS, METHODS, target="attn")


def test_head_group_layout_matches_hand_slicing():
    model = tiny_model("llama")
    attn = model.model.layers[0].self_attn
    groups = weight_groups(layer_units(model, "attn")[0])
    assert groups.shape == (2, (2 + 1 + 1 + 2) * HD * 64)
    g = 1  # kv group 1 = kv head 1 and query heads 2, 3
    expected = torch.cat([
        attn.q_proj.weight[2 * HD : 4 * HD].reshape(-1),
        attn.k_proj.weight[HD : 2 * HD].reshape(-1),
        attn.v_proj.weight[HD : 2 * HD].reshape(-1),
        attn.o_proj.weight[:, 2 * HD : 4 * HD].T.reshape(-1),
    ])
    torch.testing.assert_close(groups[g], expected)


def test_attn_stats_have_per_group_scores(attn_stats):
    assert attn_stats.meta["target"] == "attn"
    assert [s.shape[0] for s in attn_stats.snip] == [2, 2]
    assert attn_stats.meta["channels_per_unit"] == 2 * HD
    assert attn_stats.act_sq[0].shape == (4 * HD,)
    assert all(s.abs().sum() > 0 for s in attn_stats.snip + attn_stats.refer)


@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "opt"])
def test_removing_silent_kv_groups_keeps_outputs(family):
    """A kv group whose o_proj columns are zero contributes nothing: removing it is exact."""
    model = tiny_model(family)
    units = layer_units(model, "attn")
    drop = 0
    with torch.no_grad():
        for u in units:
            c = u.channels_per_unit
            u.output.weight[:, drop * c : (drop + 1) * c] = 0
        before = model(WINDOWS).logits
    prune_heads(model, [torch.tensor([i for i in range(u.count) if i != drop]) for u in units])
    with torch.no_grad():
        torch.testing.assert_close(model(WINDOWS).logits, before, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_prunes_heads_and_reloads(tmp_path, attn_stats, method):
    from transformers import AutoModelForCausalLM

    model = tiny_model("llama")
    rep = prune_model(model, attn_stats, PruneConfig(ratio=0.5, method=method))
    assert rep["target"] == "attn" and rep["widths"] == [1, 1]
    assert model.config.num_key_value_heads == 1 and model.config.num_attention_heads == 2
    assert rep["params_after"] < rep["params_before"]
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(WINDOWS).logits, model(WINDOWS).logits)
    if method == "flap":
        assert reloaded.config.attention_bias and reloaded.model.layers[0].self_attn.o_proj.bias.abs().sum() > 0


def test_head_scores_rank_the_louder_group_higher(attn_stats):
    """Magnitude on hand-set weights: the group with the larger weights is kept."""
    model = tiny_model("llama")
    with torch.no_grad():
        for u in layer_units(model, "attn"):
            u.part.v.linear.weight[:HD] *= 10  # kv group 0's v rows
    rep = prune_model(model, attn_stats, PruneConfig(ratio=0.5, method="magnitude"))
    assert [k.tolist() for k in rep["kept"]] == [[0], [0]]


def test_attn_refuses_global_allocation(attn_stats):
    with pytest.raises(BadOptionError, match="uniform"):
        prune_model(tiny_model("llama"), attn_stats, PruneConfig(ratio=0.5, method="magnitude", allocation="global"))


def test_opt_head_pruning_is_refused_before_anything_changes():
    """OPT derives head_dim from the head count: fewer heads would not reload, so say so."""
    model = tiny_model("opt")
    stats = collect(model, WINDOWS[:1], target="attn", refer=False)
    before = sum(p.numel() for p in model.parameters())
    with pytest.raises(UnsupportedArchitectureError, match="head_dim"):
        prune_model(model, stats, PruneConfig(ratio=0.5, method="flap"))
    assert sum(p.numel() for p in model.parameters()) == before


def test_reconstruct_refits_o_proj_on_the_kept_groups_and_reloads(tmp_path):
    """--reconstruct on kv groups: the kept group's o_proj channels (its query heads x head_dim,
    in order) are refit, so layer 0's attention output on the calibration windows is closer to
    the dense one than with FLAP's bias alone; saved with attention_bias, it reloads. Catches
    a group expanded to the wrong o_proj channels or a bias left out of the saved config."""
    from transformers import AutoModelForCausalLM

    def o_proj_output(model):
        seen = {}
        handle = model.model.layers[0].self_attn.o_proj.register_forward_hook(lambda m, a, out: seen.update(y=out.double()))
        with torch.no_grad():
            model(WINDOWS)
        handle.remove()
        return seen["y"]

    dense = tiny_model("llama")
    stats = collect_for(dense, WINDOWS, ["magnitude"], target="attn")
    stats.act_gram = collect_gram(dense, WINDOWS, target="attn")
    assert stats.act_gram[0].shape == (4 * HD, 4 * HD)
    errors = {}
    for name, cfg in (("bias", PruneConfig(ratio=0.5, method="magnitude", bias_compensation="on")),
                      ("refit", PruneConfig(ratio=0.5, method="magnitude", reconstruct=True, reconstruct_damp=0.0))):
        model = tiny_model("llama")
        prune_model(model, stats, cfg)
        errors[name] = (o_proj_output(model) - o_proj_output(dense)).pow(2).mean().item()
    assert errors["refit"] < 0.9 * errors["bias"], errors
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert reloaded.config.attention_bias
    with torch.no_grad():
        torch.testing.assert_close(reloaded(WINDOWS).logits, model(WINDOWS).logits)
