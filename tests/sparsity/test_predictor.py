"""The predictors learn a planted input-dependent importance pattern; masks allocate as told."""

import pytest
import torch

from llmslim.sparsity import masks as M
from llmslim.sparsity.collect import Traces
from llmslim.sparsity.predictor import TrainConfig, load, save, spearman, train


def planted(n=300, d=16, L=3, U=24, H=4, seed=0):
    """Scores are a fixed random nonlinear function of the feature: which units matter depends
    on the input, so a static mask cannot know them and a predictor can."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    P = torch.randn(d, L * U, generator=g)
    Q = torch.randn(d, L * H, generator=g)
    neurons = torch.tanh(x @ P).view(n, L, U).exp()
    heads = (x @ Q).view(n, L, H).abs()
    layer_inputs = x[:, None, :].expand(n, L, d) + 0.01 * torch.randn(n, L, d, generator=g)
    return Traces(x, layer_inputs.half(), {"plainact": heads}, {"plainact": neurons}, {"layers": L})


def test_shadow_and_dejavu_learn_the_planted_pattern_and_beat_static(tmp_path):
    traces = planted()
    cfg = TrainConfig(hidden=64, head="full", epochs=50, batch_size=32, lr=3e-3, holdout=0.25, dejavu_rank=16)
    out = train(traces, "plainact", cfg)
    m = out["metrics"]["neurons"]
    assert m["shadow"]["spearman"] > 0.8, m["shadow"]["spearman"]
    assert m["dejavu"]["spearman"] > 0.8, m["dejavu"]["spearman"]
    assert m["static"]["spearman"] < 0.3  # the pattern is input dependent
    assert out["metrics"]["heads"]["shadow"]["spearman"] > m["static"]["spearman"]
    # a low-rank output head also learns it, with fewer parameters
    lr = train(traces, "plainact", TrainConfig(hidden=64, head="lowrank:8", epochs=50, lr=3e-3, holdout=0.25), kinds=("neurons",), which=("shadow",))
    assert lr["metrics"]["neurons"]["shadow"]["spearman"] > 0.7
    assert lr["metrics"]["neurons"]["shadow"]["params"] < m["shadow"]["params"]
    # save / load round trip predicts the same
    save(out, traces.meta, tmp_path)
    back = load(tmp_path)
    x = traces.features[:1]
    assert torch.allclose(back["shadow"].predict(x)["neurons"], out["shadow"].predict(x)["neurons"])
    assert torch.allclose(back["dejavu"].predict_layer(1, x)["neurons"], out["dejavu"].predict_layer(1, x)["neurons"])


def test_spearman_known_values():
    a = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    assert spearman(a, a).item() == pytest.approx(1.0)
    assert spearman(a, -a).item() == pytest.approx(-1.0)
    assert spearman(a, a.exp()).item() == pytest.approx(1.0)  # ranks, not values (Pearson gives less)
    # unsorted input, where ranking with a single argsort goes wrong (it gives 0.8 here)
    assert spearman(torch.tensor([[3.0, 1.0, 4.0, 2.0]]), torch.tensor([[3.0, 1.0, 2.0, 4.0]])).item() == pytest.approx(0.2)
    from scipy.stats import spearmanr

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(5, 50, generator=g), torch.randn(5, 50, generator=g)
    y = y + x  # correlated rows, no ties
    want = [spearmanr(x[i].numpy(), y[i].numpy()).statistic for i in range(5)]
    assert spearman(x, y).tolist() == pytest.approx(want, abs=1e-5)


def test_allocations():
    scores = torch.tensor([[5.0, 1.0, 3.0, 2.0], [0.1, 0.4, 0.3, 0.2]])
    per = M.select(scores, 0.5, "perlayer")
    assert per[0].tolist() == [0, 2] and per[1].tolist() == [1, 2]
    glob = M.select(torch.tensor([[1.0, 0.9, 0.8, 0.0], [1.0, 0.0, 0.0, 0.0]]), 0.5, "global")
    assert sum(k.numel() for k in glob) == 4 and glob[0].tolist() == [0, 1, 2] and glob[1].tolist() == [0]
    hyb = M.select(torch.tensor([[1.0, 0.9, 0.8, 0.0], [1.0, 0.0, 0.0, 0.0]]), 0.75, "hybrid", min_keep=1.0)
    assert all(k.numel() >= 1 for k in hyb) and sum(k.numel() for k in hyb) == 2
    assert M.select(scores, 0.0) == [None, None]
    # GQA: 4 query heads in 2 kv groups; group 1 holds the two best heads
    groups = M.head_keep(torch.tensor([[0.1, 0.2, 0.9, 0.8]]), 0.5, 4, 2)
    assert groups[0].tolist() == [1]
    with pytest.raises(Exception, match="sparsity"):
        M.select(scores, 1.0)
