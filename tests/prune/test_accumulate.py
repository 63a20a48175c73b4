"""Per-window accumulation (the AFR reference code's order) against the signed-sum order, on
hand-made windows whose answers differ between the two."""

import pytest
import torch

from llmslim.core.errors import BadOptionError
from llmslim.prune.accumulate import PerWindow, window_keys
from llmslim.prune.calibrate import CalibStats
from llmslim.prune.gmm import gmm_clip
from llmslim.prune.run import collect_for
from llmslim.prune.scores import ScoreConfig, get_score
from tests.conftest import tiny_model

SIZES = [2, 2, 2]  # hidden 2: a neuron's group is [gate(2) | up(2) | down column(2)]
# two windows of one layer, two neurons. Neuron 0 pulls +1 in window 1 and -1 in window 2:
# summed first it cancels to 0; per window it scores |+1| + |-1| = 2. Neuron 1 is steady.
WIN1 = torch.tensor([[1.0] * 6, [0.5] * 6])
WIN2 = torch.tensor([[-1.0] * 6, [0.5] * 6])


def folded(keys, windows, **kw):
    acc = PerWindow(keys, part_sizes=SIZES, **kw)
    for snip in windows:
        acc.fold({"snip": [snip]})
    return acc


def stats_from(acc: PerWindow, snip_sum=None) -> CalibStats:
    return CalibStats(snip=[snip_sum] if snip_sum is not None else [], refer=[], act_mean=[], act_sq=[], tokens=2,
                      windows=acc.windows, meta={"hidden": 2, "part_sizes": SIZES, "per_window": acc.settings()},
                      neuron=acc.sums)


def test_per_window_sums_magnitudes_where_the_signed_sum_cancels():
    acc = folded(["snip:abs", "snip:mean-abs"], [WIN1, WIN2])
    torch.testing.assert_close(acc.sums["snip:abs"][0], torch.tensor([2.0, 1.0]))
    torch.testing.assert_close(acc.sums["snip:mean-abs"][0], torch.tensor([2.0, 1.0]))
    st = stats_from(acc, snip_sum=WIN1 + WIN2)
    per_window = get_score("snip")(st, [], ScoreConfig(aggregate="abs"))[0]
    signed_sum = get_score("snip")(st, [], ScoreConfig(aggregate="abs", accumulate="signed-sum"))[0]
    torch.testing.assert_close(per_window, torch.tensor([2.0, 1.0]))
    torch.testing.assert_close(signed_sum, torch.tensor([0.0, 1.0]))  # neuron 0 cancels
    assert per_window.argmax() != signed_sum.argmax()  # the orders rank the neurons differently


def test_mean_abs_per_window_is_the_mean_of_per_weight_magnitude_sums():
    # mean-abs is linear in |S| per window, so per window = mean over weights of sum |S_w|,
    # while the signed-sum order takes mean |sum S_w|
    w1 = torch.tensor([[1.0, -2.0, 0.0, 0.0, 0.0, 0.0], [1.0] * 6])
    w2 = torch.tensor([[-1.0, 2.0, 0.0, 0.0, 0.0, 0.0], [1.0] * 6])
    acc = folded(["snip:mean-abs"], [w1, w2])
    torch.testing.assert_close(acc.sums["snip:mean-abs"][0], (w1.abs() + w2.abs()).mean(1))
    torch.testing.assert_close(acc.sums["snip:mean-abs"][0], torch.tensor([1.0, 2.0]))


def test_trim_and_group_sum_per_window_follow_the_reference_code():
    # reference: gate + up + down elementwise, sort, drop int(2% m) each end, |mean|, sum windows
    g = torch.Generator().manual_seed(0)
    wins = [torch.randn(3, 300, generator=g) for _ in range(2)]
    acc = PerWindow(["snip:trim"], group="sum", part_sizes=[100, 100, 100])
    for w in wins:
        acc.fold({"snip": [w]})
    expected = 0
    for w in wins:
        summed = w.reshape(3, 3, 100).sum(1).sort(1).values[:, 2:-2]  # int(0.02 * 100) = 2
        expected = expected + summed.mean(1).abs()
    torch.testing.assert_close(acc.sums["snip:trim@sum"][0], expected)


def test_afr_per_window_zscores_each_window_on_its_own():
    refer = [torch.tensor([[2.0] * 6, [0.0] * 6])]
    snip = [torch.tensor([[1.0, -1.0, 2.0, -2.0, 3.0, -3.0], [0.1] * 6])]
    acc = PerWindow(["afr:abs"], part_sizes=SIZES)
    acc.fold({"refer": refer, "snip": snip})
    acc.fold({"refer": [r * 100 for r in refer], "snip": snip})  # z-scores are scale-free per window
    z = lambda t: (t - t.mean()) / t.std()  # noqa: E731
    once = (z(refer[0]) + z(snip[0])).mean(1).abs()
    torch.testing.assert_close(acc.sums["afr:abs"][0], 2 * once)


def test_gmm_refit_once_reuses_the_first_windows_mixture():
    torch.manual_seed(1)
    base = torch.distributions.StudentT(3.0).sample((4, 600))
    moved = base * 5 + 1  # the same neurons at another scale: reuse clips the same positions
    once = PerWindow(["snip:abs+gmm"], part_sizes=[200, 200, 200], gmm_refit="once")
    for w in (base, moved):
        once.fold({"snip": [w]})
    assert list(once._mixtures) == [("snip", 0)]
    clipped = gmm_clip(base, seed=0).mean(1)
    expected = clipped.abs() + (5 * clipped + 1).abs()
    torch.testing.assert_close(once.sums["snip:abs+gmm"][0], expected, rtol=1e-4, atol=1e-5)
    every = PerWindow(["snip:abs+gmm"], part_sizes=[200, 200, 200])
    every.fold({"snip": [base]})
    assert not every._mixtures
    torch.testing.assert_close(every.sums["snip:abs+gmm"][0], clipped.abs())


def test_window_keys_per_recipe():
    assert window_keys([("afr", "abs+gmm", "paper")]) == ["afr:abs+gmm"]
    assert window_keys([("afr", "trim", "reference"), ("snip", "trim", "paper")]) == ["refer:trim", "snip:trim"]
    assert window_keys([("flap", "abs", "paper")]) == []
    with pytest.raises(BadOptionError, match="kind:aggregation"):
        PerWindow(["afr:median"])


def test_collect_for_keeps_only_per_neuron_buffers_by_default():
    model = tiny_model("llama")
    windows = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(0))
    stats = collect_for(model, windows, ["afr", "snip:mean-abs", "flap"])
    assert stats.snip == [] and stats.refer == []  # no per-weight buffers persist
    assert sorted(stats.neuron) == ["afr:abs+gmm", "snip:mean-abs"]
    assert [t.shape for t in stats.neuron["afr:abs+gmm"]] == [torch.Size([96])] * 2
    assert stats.meta["accumulate"] == ["per-window"] and stats.meta["per_window"]["windows"] == 2
    # the per-window snip:mean-abs equals the per-weight signed-sum path's mean of |S| summed per window
    both = collect_for(model, windows[:1], ["snip:mean-abs"], ScoreConfig(accumulate="signed-sum"))
    one = collect_for(model, windows[:1], ["snip:mean-abs"])
    torch.testing.assert_close(one.neuron["snip:mean-abs"][0], both.snip[0].abs().mean(1))


def test_reference_snip_loss_is_the_last_position_against_its_own_token():
    from llmslim.prune.calibrate import collect
    from llmslim.prune.units import layer_units

    model = tiny_model("llama")
    ids = torch.randint(0, 128, (1, 12), generator=torch.Generator().manual_seed(3))
    stats = collect(model, ids, refer=False, per_weight=("snip",), snip_loss="reference")
    down = model.model.layers[0].mlp.down_proj.weight
    loss = torch.nn.functional.cross_entropy(model(input_ids=ids).logits[:, -1].float(), ids[:, -1])
    (grad,) = torch.autograd.grad(loss, down)
    expected = (down * grad).detach().T  # down column j is neuron j's last part
    hidden = model.config.hidden_size
    torch.testing.assert_close(stats.snip[0][:, -hidden:], expected)
    assert stats.meta["snip_loss"] == "reference"
    assert len(layer_units(model, "ffn")) == 2


@pytest.mark.parametrize("refit", ["every", "once"])
def test_layers_fitted_in_one_call_equal_per_layer_fits(monkeypatch, refit):
    # three small layers fit one chunk, so their GMMs share one call (per-row seeds, seed + layer);
    # a chunk of one value forces a call per layer: the sums and stored mixtures must not change
    from llmslim.prune import accumulate
    from tests.prune.test_gmm import heavy_tailed_rows

    layers = torch.from_numpy(heavy_tailed_rows(36, m=600)).split(12)
    assert not torch.equal(gmm_clip(layers[1], seed=4), gmm_clip(layers[1], seed=3))  # seed + layer matters here
    windows = [list(layers), [2 * x + 1 for x in layers]]
    calls = []

    def fold(chunk):
        monkeypatch.setattr(accumulate, "chunk_values", lambda device: chunk)
        monkeypatch.setattr(accumulate, "gmm_clip", lambda rows, **kw: calls.append(len(rows)) or gmm_clip(rows, **kw))
        acc = PerWindow(["snip:abs+gmm", "snip:gmm", "snip:mean-abs"], part_sizes=[200] * 3, gmm_refit=refit, seed=3)
        for w in windows:
            acc.fold({"snip": w})
        return acc

    batched = fold(2**22)
    assert calls == ([36] if refit == "once" else [36, 36])
    calls.clear()
    single = fold(1)
    assert calls == [12] * (3 if refit == "once" else 6)
    for key in batched.sums:
        for a, b in zip(batched.sums[key], single.sums[key]):
            assert torch.equal(a, b), key
    assert batched._mixtures.keys() == single._mixtures.keys()
    for key, mixture in batched._mixtures.items():
        assert torch.equal(mixture.mu, single._mixtures[key].mu)


def test_gmm_batches_join_only_layers_that_can_share_a_fit(monkeypatch):
    from llmslim.prune import accumulate

    monkeypatch.setattr(accumulate, "chunk_values", lambda device: 1000)  # 900 values a batch
    layers = [(0, torch.zeros(4, 60)), (1, torch.zeros(4, 60)), (2, torch.zeros(4, 90)), (3, torch.zeros(4, 90)),
              (4, torch.zeros(4, 90)), (5, torch.zeros(4, 90))]
    acc = PerWindow(["snip:abs+gmm"], part_sizes=[20] * 3)
    # equal row lengths join up to the budget (3 x 360 > 900: the third 90-value layer starts a new batch)
    assert [[layer for layer, _ in b] for b in acc._batches("snip", iter(layers))] == [[0, 1], [2, 3], [4, 5]]
    acc._mixtures[("snip", 1)] = None  # a layer fitted on an earlier window (--gmm-refit once) fits alone
    assert [[layer for layer, _ in b] for b in acc._batches("snip", iter(layers[:2]))] == [[0], [1]]
    whole = PerWindow(["snip:abs+gmm"], part_sizes=[20] * 3, gmm_scope="layer")  # one mixture a layer
    assert [[layer for layer, _ in b] for b in whole._batches("snip", iter(layers))] == [[i] for i in range(6)]
