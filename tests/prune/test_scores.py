"""Each score on hand-made statistics with a known answer."""

import pytest
import torch

from llmslim.core.errors import BadOptionError
from llmslim.prune.calibrate import CalibStats
from llmslim.prune.scores import ScoreConfig, get_score


def stats(snip=None, refer=None, act_mean=None, act_sq=None, tokens=10, hidden=2):
    return CalibStats(snip=snip or [], refer=refer or [], act_mean=act_mean or [], act_sq=act_sq or [],
                      tokens=tokens, windows=1, meta={"parts": 3, "hidden": hidden})


# two neurons, hidden 2: groups are [gate(2) | up(2) | down column(2)]
W = [torch.tensor([[1.0, -1.0, 2.0, 0.0, 3.0, -4.0], [0.5, 0.5, 0.5, 0.5, 0.5, 0.5]])]
S = [torch.tensor([[1.0, -1.0, 2.0, -2.0, 3.0, -3.0], [0.1, 0.1, 0.1, 0.1, 0.1, 0.1]])]


def test_magnitude_is_group_l2_norm():
    out = get_score("magnitude")(stats(), W, ScoreConfig())
    torch.testing.assert_close(out[0], torch.tensor([(1 + 1 + 4 + 0 + 9 + 16) ** 0.5, 6 ** 0.5 * 0.5]))


def test_llm_pruner_vector_and_element():
    vec = get_score("llm-pruner-vector")(stats(snip=S), W, ScoreConfig())[0]
    ele = get_score("llm-pruner-element")(stats(snip=S), W, ScoreConfig())[0]
    # vector-wise: per matrix |sum|, summed over gate, up, down
    torch.testing.assert_close(vec, torch.tensor([0.0 + 0.0 + 0.0, 0.2 + 0.2 + 0.2]))
    torch.testing.assert_close(ele, torch.tensor([12.0, 0.6]))


def test_wanda_sp_uses_down_column_and_activation_rms():
    act_sq = [torch.tensor([4.0, 1.0])]  # E[x^2] per neuron
    out = get_score("wanda-sp")(stats(act_sq=act_sq, act_mean=[torch.zeros(2)]), W, ScoreConfig())[0]
    torch.testing.assert_close(out, torch.tensor([(3 + 4) / 2 * 2.0, 0.5 * 1.0]))


def test_flap_fluctuation_times_column_energy_standardised():
    act_mean, act_sq = [torch.tensor([1.0, 0.0])], [torch.tensor([2.0, 1.0])]
    st = stats(act_mean=act_mean, act_sq=act_sq, tokens=10)
    var = torch.tensor([1.0, 1.0]) * 10 / 9  # unbiased
    raw = var * torch.tensor([25.0, 0.5])
    out = get_score("flap")(st, W, ScoreConfig())[0]
    torch.testing.assert_close(out, (raw - raw.mean()) / raw.std())


def test_flap_with_one_global_threshold_is_the_reference_codes_adaptive_structure():
    """FLAP's lib/prune.py (AL-MM): standardise each layer's WIFV, then one threshold over all
    layers. A layer whose metric is another's x100 loses the same neurons (unstandardised scores
    would keep all of it), and a layer with one outlier loses more than the others."""
    from llmslim.prune.allocate import allocate

    base = torch.tensor([[0.0, 0.0, 0.0, 0.0, c, 0.0] for c in (1.0, 2.0, 3.0, 4.0)])  # down column energies 1..16
    outlier = torch.tensor([[0.0, 0.0, 0.0, 0.0, c, 0.0] for c in (1.0, 1.1, 1.2, 20.0)])
    weights = [base, base * 10, outlier]
    act_mean, act_sq = [torch.zeros(4)] * 3, [torch.ones(4)] * 3  # the same unit variance everywhere
    scores = get_score("flap")(stats(act_mean=act_mean, act_sq=act_sq, tokens=10), weights, ScoreConfig())
    raw = torch.stack([w[:, 4] ** 2 for w in weights])
    z = (raw - raw.mean(1, keepdim=True)) / raw.std(1, keepdim=True)
    threshold = z.flatten().sort(descending=True).values[5 - 1]  # keep 5 of 12
    kept = allocate(scores, 7 / 12, "global")
    assert [k.tolist() for k in kept] == [torch.nonzero(row >= threshold).flatten().tolist() for row in z]
    assert [len(k) for k in kept] == [2, 2, 1]


def test_snip_mean_abs_vs_abs():
    st = stats(snip=S)
    mean_abs = get_score("snip")(st, W, ScoreConfig(aggregate="mean-abs", accumulate="signed-sum"))[0]
    signed = get_score("snip")(st, W, ScoreConfig(aggregate="abs", accumulate="signed-sum"))[0]
    torch.testing.assert_close(mean_abs, torch.tensor([2.0, 0.1]))
    torch.testing.assert_close(signed, torch.tensor([0.0, 0.1]))  # signs cancel in neuron 0


def test_afr_paper_recipe_zscores_each_then_sums():
    refer = [torch.tensor([[2.0, 2.0, 2.0, 2.0, 2.0, 2.0], [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])]
    st = stats(snip=S, refer=refer)
    out = get_score("afr")(st, W, ScoreConfig(aggregate="abs", afr_recipe="paper", accumulate="signed-sum"))[0]
    flat_r, flat_s = refer[0].flatten(), S[0].flatten()
    zr = (refer[0] - flat_r.mean()) / flat_r.std()
    zs = (S[0] - flat_s.mean()) / flat_s.std()
    torch.testing.assert_close(out, (zr + zs).mean(1).abs())


def test_afr_reference_recipe_squares_snip():
    refer = [torch.tensor([[2.0] * 6, [1.0] * 6])]
    st = stats(snip=S, refer=refer)
    out = get_score("afr")(st, W, ScoreConfig(aggregate="abs", afr_recipe="reference", accumulate="signed-sum"))[0]
    r = torch.tensor([2.0, 1.0])
    s = torch.tensor([0.0, 0.1]) ** 2
    torch.testing.assert_close(out, (r - r.mean()) / r.std() + (s - s.mean()) / s.std())


def test_group_sum_adds_parts_elementwise():
    st = stats(snip=S)
    out = get_score("snip")(st, W, ScoreConfig(aggregate="mean-abs", group="sum", accumulate="signed-sum"))[0]
    # neuron 0: gate+up+down = [1+2+3, -1-2-3] -> mean |.| = 6
    torch.testing.assert_close(out, torch.tensor([6.0, 0.3]))


def test_unknown_score_suggests():
    with pytest.raises(BadOptionError, match="did you mean wanda-sp"):
        get_score("wanda")


def test_missing_gradients_is_clear():
    with pytest.raises(BadOptionError, match="needs SNIP"):
        get_score("snip")(stats(), W, ScoreConfig(accumulate="signed-sum"))
    with pytest.raises(BadOptionError, match="no per-window snip:abs"):
        get_score("snip")(stats(), W, ScoreConfig(aggregate="abs"))
