"""GMM clipping: the rule on hand-made rows, and agreement with sklearn's GaussianMixture.

Real scores: LLMSLIM_SCORES=path/to/scores.pt (a tensor [rows, values], or a dict / list of
them) adds test_agrees_with_sklearn_on_real_scores; it is skipped otherwise.
"""

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from llmslim.prune import gmm
from llmslim.prune.gmm import (
    _em,
    _fit,
    _fit_indices,
    _init_params,
    _kmeans_labels,
    _kmeanspp,
    _kmeanspp_draws,
    _standardize,
    gmm_apply,
    gmm_clip,
    gmm_fit,
    sklearn_gmm_clip,
)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # many small batched ops: on a shared 2-core box, extra threads mostly wait on each other
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):  # sklearn's KMeans / BLAS
        yield
    torch.set_num_threads(before)


def heavy_tailed_rows(n: int, m: int = 1728, seed: int = 0) -> np.ndarray:
    """Rows shaped like per-neuron weight x gradient scores, cycling through three kinds:
    [gate | up | down] products with a few massive input channels, Student-t(3), and a
    two-scale Laplace mixture. float32, scale ~1e-5 like raw scores."""
    rng = np.random.default_rng(seed)
    third = m // 3
    channels = np.ones(third)
    channels[rng.choice(third, 6, replace=False)] = rng.uniform(10, 40, 6)
    rows = []
    for i in range(n):
        if i % 3 == 0:
            parts = [rng.normal(0, 0.02, third) * rng.laplace(0, 1, third) * channels for _ in range(2)]
            parts.append(rng.normal(0, 0.02, m - 2 * third) * rng.standard_t(4, m - 2 * third))
            row = np.concatenate(parts) * 1e-3
        elif i % 3 == 1:
            row = rng.standard_t(3, m) * 1e-5
        else:
            wide = rng.random(m) < 0.3
            row = np.where(wide, rng.laplace(0.5, 3, m), rng.laplace(0, 1, m)) * 1e-5
        rows.append(row * np.exp(rng.normal(0, 0.5)))
    return np.stack(rows).astype(np.float32)


def compare_with_sklearn(rows: np.ndarray, seed: int = 0, fit: str = "exact"):
    """(K agreement, fraction of rows whose both bounds match to 1e-6 row std, worst bound
    gap in row stds) between gmm_clip and sklearn_gmm_clip."""
    _, info = gmm_clip(torch.from_numpy(rows), seed=seed, return_info=True, fit=fit)
    ref = [sklearn_gmm_clip(r, seed=seed, return_info=True)[1] for r in rows]
    std = rows.astype(np.float64).std(1)
    k_same = info.k.numpy() == np.array([r["k"] for r in ref])
    gap = np.maximum(
        np.abs(info.lower.numpy() - np.array([r["lower"] for r in ref])),
        np.abs(info.upper.numpy() - np.array([r["upper"] for r in ref])),
    ) / std
    return k_same.mean(), (gap <= 1e-6).mean(), gap.max()


def with_outliers(n_normal: int = 995, seed: int = 0):
    rng = np.random.default_rng(seed)
    normal = rng.standard_normal(n_normal)
    outliers = np.array([50.0, 57.0, 63.0, -40.0, -46.0])
    return np.concatenate([normal, outliers]), normal


def test_outliers_clipped_to_boundary_rest_untouched():
    x, normal = with_outliers()
    # 5 of 1000 values are outliers: the 0.5% lowest-density values are exactly those
    out, info = gmm_clip(torch.tensor(x)[None], low_density_frac=0.005, return_info=True)
    out = out[0].numpy()
    assert (info.n_low.item(), info.n_high.item()) == (2, 3)
    assert np.array_equal(out[:-5], normal)  # bit for bit
    assert np.array_equal(out[-5:], [normal.max()] * 3 + [normal.min()] * 2)
    assert sklearn_gmm_clip(x, low_density_frac=0.005).tolist() == out.tolist()


def test_default_frac_clips_only_the_tails():
    x, normal = with_outliers()
    out, info = gmm_clip(torch.tensor(x)[None], return_info=True)
    out, lower, upper = out[0].numpy(), info.lower.item(), info.upper.item()
    assert normal.min() <= lower < -2 and 2 < upper <= normal.max()
    assert np.array_equal(out[-5:], [upper] * 3 + [lower] * 2)
    inside = (x >= lower) & (x <= upper)
    assert np.array_equal(out[inside], x[inside])
    assert np.array_equal(out[~inside], np.clip(x[~inside], lower, upper))
    assert info.n_low.item() + info.n_high.item() <= 20  # at most 2% of 1000
    assert info.n_low.item() == (x < lower).sum() and info.n_high.item() == (x > upper).sum()


def test_low_density_value_between_modes_is_kept():
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.normal(-6, 1, 500), rng.normal(6, 1, 500), [0.0]])
    out, info = gmm_clip(torch.tensor(x)[None], return_info=True)
    assert info.k.item() == 2
    assert out[0, -1].item() == 0.0  # lowest density of all, but not at an end
    assert info.n_low.item() > 0 and info.n_high.item() > 0


@pytest.mark.parametrize("true_k", [1, 2, 3, 4])
def test_bic_picks_the_number_of_clear_modes_like_sklearn(true_k):
    rng = np.random.default_rng(true_k)
    x = np.concatenate([rng.normal(12 * c, 1 + 0.3 * c, 600) for c in range(true_k)])
    _, info = gmm_clip(torch.tensor(x)[None], return_info=True, fit="exact")
    _, fast = gmm_clip(torch.tensor(x)[None], return_info=True, fit="fast")
    _, ref = sklearn_gmm_clip(x, return_info=True)
    assert info.k.item() == fast.k.item() == ref["k"] == true_k
    assert np.allclose(info.bic[0].numpy(), ref["bic"], rtol=1e-9)  # the exact fit is sklearn's
    # the fast fit's grouped log-likelihood is a lower bound (Jensen), so its BIC is a bit higher
    assert np.all(fast.bic[0].numpy() >= np.array(ref["bic"]) - 1e-3)


def test_agrees_with_sklearn_on_heavy_tailed_rows():
    k_agree, bounds_agree, worst = compare_with_sklearn(heavy_tailed_rows(24))
    print(f"K agreement {k_agree:.0%}, bounds equal {bounds_agree:.0%}, worst gap {worst:.2g} std")
    assert k_agree == 1.0 and bounds_agree == 1.0  # measured: 100% and 100% (gap 0)


def sklearn_self_agreement(rows: np.ndarray) -> tuple[float, float]:
    """K and bound agreement of sklearn with seed 0 against sklearn with seed 1."""
    a = [sklearn_gmm_clip(r, seed=0, return_info=True)[1] for r in rows]
    b = [sklearn_gmm_clip(r, seed=1, return_info=True)[1] for r in rows]
    k = np.mean([x["k"] == y["k"] for x, y in zip(a, b)])
    std = rows.astype(np.float64).std(1)
    gap = np.maximum(np.abs([x["lower"] - y["lower"] for x, y in zip(a, b)]),
                     np.abs([x["upper"] - y["upper"] for x, y in zip(a, b)])) / std
    return k, (gap <= 1e-6).mean()


def test_fast_fit_agrees_with_sklearn_at_least_as_well_as_sklearn_with_another_seed():
    rows = heavy_tailed_rows(36, seed=5)
    k_fast, bounds_fast, _ = compare_with_sklearn(rows, fit="fast")
    k_self, bounds_self = sklearn_self_agreement(rows)
    print(f"fast: K {k_fast:.0%}, bounds {bounds_fast:.0%}; sklearn seed 1: K {k_self:.0%}, bounds {bounds_self:.0%}")
    assert k_fast >= k_self and bounds_fast >= bounds_self


def test_fast_fit_clips_planted_outliers_like_the_exact_fit():
    x, normal = with_outliers()
    for fit in ("fast", "exact"):
        out, info = gmm_clip(torch.tensor(x)[None], low_density_frac=0.005, return_info=True, fit=fit)
        assert (info.n_low.item(), info.n_high.item()) == (2, 3), fit
        assert np.array_equal(out[0].numpy()[:-5], normal), fit


def test_apply_reuses_a_fitted_mixture_in_standardised_units():
    rows = torch.from_numpy(heavy_tailed_rows(12, m=600, seed=2))
    mixture, _ = gmm_fit(rows, seed=0)
    clipped, info = gmm_clip(rows, seed=0, return_info=True)
    assert torch.equal(gmm_apply(rows, info.mixture), clipped)  # fit + apply == gmm_clip
    # another window of the same neurons at another scale and offset: the same positions clip
    moved = rows * 3.0 + 0.5
    assert torch.allclose(gmm_apply(moved, mixture), clipped * 3.0 + 0.5, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="rows"):
        gmm_apply(rows[:3], mixture)


@pytest.mark.skipif(not os.environ.get("LLMSLIM_SCORES"), reason="set LLMSLIM_SCORES=scores.pt to compare on real scores")
def test_agrees_with_sklearn_on_real_scores():
    path = Path(os.environ["LLMSLIM_SCORES"])
    if not path.exists():
        pytest.skip(f"LLMSLIM_SCORES={path} does not exist")
    obj = torch.load(path, map_location="cpu", weights_only=True)
    tensors = obj if isinstance(obj, torch.Tensor) else list(obj.values() if isinstance(obj, dict) else obj)
    tensors = [obj] if isinstance(obj, torch.Tensor) else tensors
    rows = [t.reshape(-1, t.shape[-1]) for t in tensors if isinstance(t, torch.Tensor) and t.dim() >= 1]
    rows = [r for r in rows if r.shape[1] == rows[0].shape[1]]
    rows = torch.cat(rows).double()
    pick = torch.linspace(0, len(rows) - 1, min(32, len(rows))).round().long()  # spread over layers
    k_agree, bounds_agree, worst = compare_with_sklearn(rows[pick].numpy(), fit="exact")
    print(f"{path}: K agreement {k_agree:.0%}, bounds equal {bounds_agree:.0%}, worst gap {worst:.2g} std")
    assert k_agree >= 0.9 and bounds_agree >= 0.9


@pytest.mark.parametrize("k", [3, 5])
def test_kmeans_and_em_match_sklearn_step_for_step(k):
    from sklearn.cluster import KMeans
    from sklearn.mixture import GaussianMixture

    z = _standardize(torch.from_numpy(heavy_tailed_rows(3, m=900, seed=k)).double().sort(1).values)
    first, uniforms = _kmeanspp_draws(1, z.shape[1], k, seed=0)
    first, uniforms = first.expand(3), uniforms.expand(3, -1, -1)
    centres = _kmeanspp(z, k, first, uniforms)
    labels = _kmeans_labels(z, centres)
    w0, mu0, var0 = _init_params(z, k, first, uniforms, 1e-6)
    w, mu, var, _, n_iter = _em(z, w0, mu0, var0, 1e-3, 1e-6, 100)
    for i in range(3):
        zi = z[i].numpy()[:, None]
        km = KMeans(k, init=centres[i].numpy()[:, None], n_init=1).fit(zi)
        rank = np.argsort(np.argsort(km.cluster_centers_[:, 0]))
        assert np.array_equal(rank[km.labels_], labels[i].numpy())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gm = GaussianMixture(k, weights_init=w0[i].numpy(), means_init=mu0[i].numpy()[:, None],
                                 precisions_init=1 / var0[i].numpy()[:, None, None]).fit(zi)
        assert gm.n_iter_ == n_iter[i].item()
        np.testing.assert_allclose(gm.means_[:, 0], mu[i].numpy(), atol=1e-9)
        np.testing.assert_allclose(gm.covariances_[:, 0, 0], var[i].numpy(), atol=1e-9)
        np.testing.assert_allclose(gm.weights_, w[i].numpy(), atol=1e-9)


@pytest.mark.parametrize("k", [2, 4])
def test_fit_equals_sklearn_gaussian_mixture(k):
    # same k-means++ draws as sklearn, so the whole fit is sklearn's, not just the EM
    from sklearn.mixture import GaussianMixture

    z = _standardize(torch.from_numpy(heavy_tailed_rows(4, m=900, seed=k)).double().sort(1).values)
    w, mu, var, loglik = _fit(z, k, *_kmeanspp_draws(1, z.shape[1], k, seed=7), 1e-3, 1e-6, 100)
    for i in range(4):
        zi = z[i].numpy()[:, None]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gm = GaussianMixture(k, random_state=7).fit(zi)
        ours, theirs = np.argsort(mu[i].numpy()), np.argsort(gm.means_[:, 0])  # component order differs
        np.testing.assert_allclose(gm.means_[theirs, 0], mu[i].numpy()[ours], atol=1e-9)
        np.testing.assert_allclose(gm.covariances_[theirs, 0, 0], var[i].numpy()[ours], atol=1e-9)
        np.testing.assert_allclose(gm.weights_[theirs], w[i].numpy()[ours], atol=1e-9)
        assert loglik[i].item() == pytest.approx(gm.score(zi) * len(zi), abs=1e-6)


def test_deterministic_row_independent_and_dtype_kept():
    rows = torch.from_numpy(heavy_tailed_rows(6, m=600))
    a, info_a = gmm_clip(rows, seed=3, return_info=True)
    b = gmm_clip(rows, seed=3)
    assert torch.equal(a, b) and a.dtype == torch.float32
    assert torch.equal(gmm_clip(rows[4:5], seed=3), a[4:5])
    half = gmm_clip(rows.to(torch.bfloat16))
    assert half.dtype == torch.bfloat16
    assert set(torch.unique(a[2]).tolist()) <= set(rows[2].tolist())  # clipped to existing values


def test_long_row_is_fitted_on_a_subsample():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.standard_normal(60_000), [80.0, 90.0, -70.0]])
    assert _fit_indices(len(x), 2**14, seed=0).shape == (2**14,)
    out, info = gmm_clip(torch.tensor(x, dtype=torch.float32)[None], max_fit_values=2**14, return_info=True)
    assert out.shape == (1, len(x))
    assert info.upper.item() < 6 and info.lower.item() > -6  # the planted outliers are clipped
    assert out.max().item() == pytest.approx(info.upper.item())


def test_degenerate_rows():
    const = torch.zeros(2, 50)
    assert torch.equal(gmm_clip(const), const)  # equal densities: nothing is below the quantile
    tiny = torch.tensor([[1.0, 2.0, 3.0]])
    out, info = gmm_clip(tiny, return_info=True)
    assert out.shape == tiny.shape and info.k.item() <= 3
    with pytest.raises(ValueError, match="rows, values"):
        gmm_clip(torch.zeros(10))
    with pytest.raises(ValueError, match="NaN"):
        gmm_clip(torch.tensor([[1.0, float("nan"), 2.0]]))


def test_per_row_seeds_fit_each_block_as_its_own_call(monkeypatch):
    # several layers' rows in one call (accumulate.py batches a small model's layers on a GPU)
    rows = torch.from_numpy(heavy_tailed_rows(40, m=600))
    a, info_a = gmm_clip(rows[:20], seed=0, return_info=True)
    b, info_b = gmm_clip(rows[20:], seed=5, return_info=True)
    assert not torch.equal(gmm_clip(rows[20:], seed=0), b)  # the seed matters for these rows
    out, info = gmm_clip(rows, seed=torch.tensor([0] * 20 + [5] * 20), return_info=True)
    assert torch.equal(out, torch.cat([a, b]))
    for field in ("bic", "lower", "upper"):
        assert torch.equal(getattr(info, field), torch.cat([getattr(info_a, field), getattr(info_b, field)]))
    assert torch.equal(info.mixture.mu, torch.cat([info_a.mixture.mu, info_b.mixture.mu]))
    # unsorted seeds over chunks of 7 rows: each chunk takes its own rows' draws
    seeds = torch.tensor([5] * 13 + [0] * 14 + [9] * 13)
    monkeypatch.setattr(gmm, "chunk_values", lambda device: 600 * 7)
    parts = [gmm_clip(rows[a:b], seed=int(seeds[a])) for a, b in ((0, 13), (13, 27), (27, 40))]
    assert torch.equal(gmm_clip(rows, seed=seeds), torch.cat(parts))
    with pytest.raises(ValueError, match="per-row seeds"):
        gmm_clip(rows, seed=torch.zeros(40, dtype=torch.long), fit="exact")
    with pytest.raises(ValueError, match="one per row"):
        gmm_clip(rows, seed=torch.zeros(3, dtype=torch.long))
