import pytest
import torch

from llmslim.core.errors import BadOptionError
from llmslim.prune.allocate import allocate


def test_uniform_keeps_top_per_layer():
    scores = [torch.tensor([0.1, 0.9, 0.5, 0.3]), torch.tensor([5.0, 1.0, 2.0, 3.0])]
    keep = allocate(scores, 0.5)
    assert [k.tolist() for k in keep] == [[1, 2], [0, 3]]


def test_global_threshold_and_round_to():
    scores = [torch.arange(16.0), torch.arange(16.0) + 100]
    keep = allocate(scores, 0.5, "global")
    assert [len(k) for k in keep] == [1, 16]  # at least one neuron per layer
    keep = allocate([torch.arange(100.0)], 0.33, round_to=8)
    assert len(keep[0]) == 64  # 67 -> nearest multiple of 8
    assert keep[0].tolist() == list(range(36, 100))


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5])
def test_bad_ratio(ratio):
    with pytest.raises(BadOptionError, match="ratio"):
        allocate([torch.ones(4)], ratio)


def test_adaptive_ratios_follow_layer_importance_within_bounds_and_keep_the_total():
    from llmslim.prune.allocate import adaptive_ratios

    g = torch.Generator().manual_seed(0)
    # layer i's scores grow with i: the last layer matters most, so it is pruned least
    scores = [torch.rand(96, generator=g) * (1 + i) for i in range(6)]
    ratios = adaptive_ratios(scores, 0.3, max_deviation=0.1)
    assert ratios == sorted(ratios, reverse=True)
    assert 0.2 - 1e-9 <= ratios[-1] and ratios[0] <= 0.4 + 1e-9 and ratios[0] - ratios[-1] == pytest.approx(0.2, abs=1e-3)  # 2 x deviation
    assert sum(ratios) / len(ratios) == pytest.approx(0.3)
    keep = allocate(scores, 0.3, "adaptive", max_deviation=0.1)
    assert sum(len(k) for k in keep) == round(6 * 96 * 0.7)  # the overall ratio, exactly
    assert [len(k) for k in keep] == sorted(len(k) for k in keep)
    for s, k in zip(scores, keep):  # each layer keeps its own best neurons
        assert set(k.tolist()) == set(torch.sort(s, descending=True, stable=True).indices[: len(k)].tolist())


def test_adaptive_with_unequal_widths_weights_the_mean_and_rounds():
    from llmslim.prune.allocate import adaptive_ratios

    scores = [torch.full((256,), 1.0), torch.full((64,), 3.0), torch.full((128,), 2.0)]
    ratios = adaptive_ratios(scores, 0.5, max_deviation=0.2)
    widths = [256, 64, 128]
    assert sum(r * w for r, w in zip(ratios, widths)) / sum(widths) == pytest.approx(0.5)
    assert all(0.3 - 1e-9 <= r <= 0.7 + 1e-9 for r in ratios) and ratios[1] < ratios[2] < ratios[0]
    keep = allocate(scores, 0.5, "adaptive", round_to=16, max_deviation=0.2)
    assert all(len(k) % 16 == 0 for k in keep) and sum(len(k) for k in keep) == 224
    # equal importance everywhere: adaptive is uniform
    assert adaptive_ratios([torch.ones(8), torch.ones(8)], 0.25) == [0.25, 0.25]
    with pytest.raises(BadOptionError, match="--max-deviation"):
        adaptive_ratios(scores, 0.5, max_deviation=1.5)
