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
