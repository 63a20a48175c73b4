"""Each aggregation on hand-made scores with a known answer."""

import pytest
import torch

from llmslim.core.errors import BadOptionError
from llmslim.prune.aggregate import AGGREGATIONS, aggregate
from llmslim.prune.gmm import gmm_clip


def with_outliers() -> torch.Tensor:
    """200 scores: 100 x +1, 96 x -1 and four outliers. The outliers are the 2% lowest-density
    values (every other value sits on a tie), so GMM clipping maps +50, +60 to +1 and
    -40, -45 to -1: 102 x +1 and 98 x -1."""
    return torch.tensor([1.0] * 100 + [-1.0] * 96 + [50.0, 60.0, -40.0, -45.0])


def test_registry_names():
    assert list(AGGREGATIONS) == ["mean-abs", "abs", "gmm", "abs+gmm", "trim"]


@pytest.mark.parametrize(
    "row, mean_abs, signed",
    [([1.0, -1.0, 2.0, -2.0], 1.5, 0.0), ([1.0, 2.0, 3.0, 4.0], 2.5, 2.5), ([-1.0, -2.0, -3.0, -4.0], 2.5, 2.5)],
)
def test_mean_abs_and_abs(row, mean_abs, signed):
    s = torch.tensor([row])
    assert aggregate("mean-abs", s).tolist() == [mean_abs]
    assert aggregate("abs", s).tolist() == [signed]


def test_gmm_aggregations_clip_before_averaging():
    s = with_outliers()[None]
    assert aggregate("mean-abs", s).item() == pytest.approx(391 / 200)  # 196 + 50 + 60 + 40 + 45
    assert aggregate("abs", s).item() == pytest.approx(29 / 200)  # 100 - 96 + 110 - 85
    assert aggregate("gmm", s).item() == pytest.approx(1.0)  # every clipped value is +-1
    assert aggregate("abs+gmm", s).item() == pytest.approx(4 / 200)  # 102 - 98


def test_gmm_scopes():
    row = with_outliers()
    s = torch.stack([row, -row])
    # neuron scope: one mixture per row; layer scope: one for all 400 values (8 outliers = 2%)
    for scope in ("neuron", "layer"):
        assert aggregate("abs+gmm", s, scope=scope).tolist() == pytest.approx([0.02, 0.02])
        assert aggregate("gmm", s, scope=scope).tolist() == pytest.approx([1.0, 1.0])
    # a wider neuron makes the narrow one's "outliers" ordinary at layer scope
    wide = torch.linspace(-100, 100, 200)
    s = torch.stack([row, wide])
    layer = gmm_clip(s.reshape(1, -1)).reshape(s.shape)
    assert torch.equal(aggregate("gmm", s, scope="layer"), layer.abs().mean(1))
    assert aggregate("gmm", s, scope="layer")[0].item() != pytest.approx(1.0)


def test_trim_drops_two_percent_at_each_end():
    # 100 values: int(100 * 2%) = 2 dropped at each end, leaving 96 ones
    s = torch.tensor([[-1000.0, -900.0] + [1.0] * 96 + [4000.0, 5000.0]])
    assert aggregate("trim", s).tolist() == [1.0]
    assert aggregate("trim", -s).tolist() == [1.0]  # |mean|
    # 49 values: int(0.98) = 0, nothing dropped (the reference's s[0:-0] would keep nothing)
    s = torch.tensor([[3.0] * 48 + [-51.0]])
    assert aggregate("trim", s).tolist() == [pytest.approx(3 * 48 / 49 - 51 / 49)]


def test_half_precision_scores_give_float32():
    s = torch.tensor([[1.0, -1.0, 2.0, -2.0]], dtype=torch.bfloat16)
    for name in AGGREGATIONS:
        assert aggregate(name, s).dtype == torch.float32


def test_unknown_names_suggest():
    with pytest.raises(BadOptionError, match=r"unknown aggregation 'abs-gmm'; did you mean abs\+gmm"):
        aggregate("abs-gmm", torch.zeros(2, 4))
    with pytest.raises(BadOptionError, match="known: mean-abs, abs, gmm, abs\\+gmm, trim"):
        aggregate("median", torch.zeros(2, 4))
    with pytest.raises(BadOptionError, match="scope 'model'"):
        aggregate("abs+gmm", torch.zeros(2, 4), scope="model")
