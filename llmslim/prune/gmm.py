"""GMM clipping of per-weight scores, batched over rows (AFR, "GMM-based outlier clipping").

Each row of `values` is one set of signed scores: one FFN neuron's weights (scope "neuron",
as in the paper) or a whole layer's (scope "layer", as in the reference code). Per row:

1. Fit a 1-D Gaussian mixture by EM for K = 1..max_components; keep the K with the lowest
   BIC (ties: the smaller K).
2. Evaluate the fitted density at every value; the `low_density_frac` lowest-density values
   (strictly below that quantile of the log-density) are *low-density*.
3. Sort the row. The contiguous run of low-density values at the bottom and the one at the
   top are the outliers. They are winsorised, not dropped: clamped to the smallest / largest
   value outside the runs. A low-density value with a normal value on each side (say, in the
   gap between two modes) is left alone.

`gmm_clip` does all rows at once in torch, on the device of its input. `sklearn_gmm_clip`
applies the same rule to one vector with sklearn's GaussianMixture; tests and
benchmarks/gmm_speed.py compare the two.

The torch side reproduces sklearn's GaussianMixture with its defaults (tol 1e-3, reg_covar
1e-6, max_iter 100, n_init 1, init "kmeans"), step for step:

- init: KMeans(n_init=1) as sklearn runs it: greedy k-means++ (2 + int(log K) local trials)
  with sklearn's own draws - a numpy RandomState(seed) per K, as sklearn reseeds each fit;
  the draws depend only on (seed, number of values, K), so one set serves every row - then
  Lloyd (max_iter 300, stop when labels repeat or the squared centre shift is <= 1e-4 *
  variance). In 1-D Lloyd needs no distance matrix: on sorted values each cluster is the
  segment between midpoints of adjacent centres (searchsorted + cumsum). The hard labels
  give the starting weights, means and variances.
- EM: float64 throughout; sklearn's E and M steps (nk + 10 * eps, variance + reg_covar,
  weights renormalised), each written as one bmm against the powers [1, x, x^2] of the
  values; each row stops on its own when its mean log-likelihood moves by less than tol,
  and drops out of later iterations. The BIC and the final density use sklearn's form.
- BIC = -2 * total log-likelihood + (3K - 1) * log(n).

With the same draws the whole fit is sklearn's: parameters equal to ~1e-13 with the same
iteration counts (tests/prune/test_gmm.py), so gmm_clip and sklearn_gmm_clip (which fits the
same sorted values) chose the same K and bounds on every row compared so far (~200 synthetic
heavy-tailed rows, some with heavy ties). That matters because the choice of K is fragile:
on 1536 heavy-tailed synthetic rows, changing only the seed changes K on 25% of rows and the
clip bounds on 35% (by up to 33 standard deviations). n_init > 1 (sklearn's option, on both
sides) steadies K at n_init times the cost.

Two choices of ours:

- standardize (default on): each row is centred and scaled to unit variance before fitting.
  The rule is unchanged by an affine map except for reg_covar, which is absolute; raw
  importance scores are often ~1e-6 in size, where reg_covar=1e-6 would swamp every
  variance and the "mixture" would degenerate into a wide single bump. Densities only
  change by a constant factor per row, so the ranking of values is the same.
- max_fit_values (default 2**16): a row longer than this is fitted on a seeded random
  subsample of that many values (the same positions in every row), and the density is then
  evaluated on all its values, in column blocks. A layer-scope row (1536 * 1728 = 2.65M
  values for SmolLM2) takes seconds and a few hundred MB this way; the BIC then uses the
  subsample's size. Neuron-scope rows (1728 values) are never subsampled.

The fast fit (`fit="fast"`, the default) changes how the mixture is fitted, not the rule:

- float32 instead of float64 (values are standardised, so nothing is near underflow), and
  rows sorted by numpy on CPU (5x torch's sort there);
- a compressed row: from each end inwards single values, then pairs, fours and eights
  (`FAST_GROUPS`), runs of `FAST_MIDDLE_GROUP` in the middle, each group kept as its count,
  sum and sum of squares; each boundary is moved to the widest gap between neighbouring
  values near it, so that no group straddles two modes. 178 groups for 1,728 values;
- sklearn's k-means++ draws on the compressed row (a drawn group stands for its mean; a
  group's potential is exact from its sums), then Lloyd on all values - Lloyd on the
  groups lost agreement with sklearn (K 96% -> 91%);
- EM on the compressed row: a group's points share one responsibility, evaluated with the
  group's mean of x and of x^2, so the M step's sums are exact and only the E step is
  approximated ("data bubbles"); finished rows leave the batch in steps;
- the BIC from that same grouped log-likelihood;
- the density for the clip rule is evaluated at every value, as in the exact fit.

benchmarks/gmm_speed.py measures how often it picks sklearn's K and clip bounds next to how
often sklearn agrees with itself under another seed, and the time on CPU and GPU;
docs/prune.md has the tables. `fit="exact"` keeps the sklearn-reproducing path.

A fitted mixture can be reused (`gmm_fit` then `gmm_apply`): each new row is standardised
by its own mean and std and clipped by the rule under the stored mixture, with no EM. The
per-window calibration uses that for `gmm_refit="once"`.

Where this differs from the reference code's gmm_edge_outlier_removal: it clamps to the
innermost outlier rather than the first inlier, it leaves a bottom run of exactly one
value unclipped (`if j_L > 0`), it thresholds the density itself (far outliers underflow
to 0 and tie), and it fits with max_iter=200, random_state=42. Its alpha_edge=5% limit
never binds here: both runs together hold at most low_density_frac = 2% of the values.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

# Defaults: AFR uses K in 1..5 chosen by BIC and q = 2% (the reference code's
# gmm_edge_outlier_removal(..., q_tail=0.02, check_bic=True, K_range=(1, 5)));
# EM settings are sklearn.mixture.GaussianMixture's defaults.
MAX_COMPONENTS = 5
LOW_DENSITY_FRAC = 0.02
TOL = 1e-3
REG_COVAR = 1e-6
MAX_ITER = 100
N_INIT = 1
MAX_FIT_VALUES = 2**16
FIT_METHODS = ("fast", "exact")
# The compressed row: single values in the outer 0.5% at each end, then pairs, fours and
# eights, runs of 16 in the middle: 178 groups for 1,728 values. Measured on 4,608 real
# SmolLM2 rows (same K / same bounds as the exact fit, i.e. sklearn): single values in the
# outer 5% (271 groups) 96.4% / 94.4%; this 96.8% / 94.7% in 70% of the time; runs of 32
# in the middle lose agreement (94.6% / 91.6%). sklearn with another seed: 81.3% / 67.9%.
FAST_GROUPS = ((0.005, 1), (0.02, 2), (0.05, 4), (0.1, 8))
FAST_MIDDLE_GROUP = 16
KMEANS_MAX_ITER = 300  # sklearn KMeans defaults
KMEANS_TOL = 1e-4

_EPS = float(np.finfo(np.float64).eps)
_EPS32 = float(np.finfo(np.float32).eps)
_LOG_2PI = math.log(2 * math.pi)
# Rows are processed in chunks of about this many values (rows * values per row): the
# [rows, K, values] float64 temporaries stay cache-sized on CPU (smaller chunks measured
# faster there); on a GPU a SmolLM2 layer takes two chunks and peaks near 1 GB.
_CHUNK_VALUES = {"cpu": 2**18}
_FAST_CHUNK_VALUES = {"cpu": 2**22}  # measured on 2 cores: 2**23 the same, 2**20 25% slower
# On a GPU the fast fit is bound by kernel launches and syncs per chunk, so chunks are as
# large as free memory allows at this many bytes per value (peak seen: ~95 at 2**27 values)
_FAST_GPU_BYTES_PER_VALUE = 128
_CHUNK_VALUES_DEFAULT = 2**23


@dataclass(frozen=True)
class GmmClipInfo:
    k: Tensor  # [n] int64: components chosen by BIC
    lower: Tensor  # [n] values below were raised to this (the row minimum if none were)
    upper: Tensor  # [n] values above were lowered to this
    n_low: Tensor  # [n] int64: size of the outlier run at the bottom
    n_high: Tensor  # [n] int64: size of the outlier run at the top
    bic: Tensor  # [n, max_components] float64, inf where K exceeded the row length
    mixture: "Mixture | None" = None  # the chosen fit, for gmm_apply


@dataclass(frozen=True)
class Mixture:
    """Each row's chosen mixture in standardised units, padded to max_components with
    zero-weight components: weights, means, variances [n, max_components]."""

    w: Tensor
    mu: Tensor
    var: Tensor
    standardize: bool = True


def gmm_clip(
    values: Tensor,
    max_components: int = MAX_COMPONENTS,
    low_density_frac: float = LOW_DENSITY_FRAC,
    seed: int | Tensor = 0,
    return_info: bool = False,
    *,
    standardize: bool = True,
    max_fit_values: int = MAX_FIT_VALUES,
    n_init: int = N_INIT,
    tol: float = TOL,
    reg_covar: float = REG_COVAR,
    max_iter: int = MAX_ITER,
    fit: str = "fast",
) -> Tensor | tuple[Tensor, GmmClipInfo]:
    """Clip each row's low-density tails, fitted by a per-row GMM. [n, m] in, [n, m] out.

    The output has the input's dtype and device; every output value is a value of its row.
    Deterministic for a given seed; a row's result does not depend on the other rows.
    `seed`: one for every row, or (fast fit) a [n] tensor of per-row seeds, so that the rows of
    several layers, each with its own seed, are fitted in one call as each layer's own call would
    (bit for bit on a CPU, tested; benchmarks/gmm_speed.py --layers reports it for a GPU).
    `fit`: "fast" (float32, compressed EM; see the module doc) or "exact" (sklearn's fit).
    """
    if fit not in FIT_METHODS:
        raise ValueError(f"unknown GMM fit {fit!r}; use {' or '.join(FIT_METHODS)}")
    if isinstance(seed, Tensor) and fit != "fast":
        raise ValueError("per-row seeds need the fast fit")
    _check(values, low_density_frac)
    n, m = values.shape
    device = values.device if values.device.type != "mps" else torch.device("cpu")  # no float64 on MPS
    if fit == "fast":
        mixture, bic, clip = _fit_mixtures(values, max_components, seed, standardize, max_fit_values, tol,
                                           reg_covar, max_iter, frac=low_density_frac)
        lower, upper, n_low, n_high = clip
        out = _clamp(values, lower, upper)
        if not return_info:
            return out
        return out, GmmClipInfo(k=bic.argmin(1) + 1, lower=lower, upper=upper, n_low=n_low, n_high=n_high,
                                bic=bic, mixture=mixture)
    x_sorted = values.detach().to(device, torch.float64).sort(dim=1).values
    z_sorted = _standardize(x_sorted) if standardize else x_sorted
    fit_idx = _fit_indices(m, max_fit_values, seed)
    z_fit = z_sorted if fit_idx is None else z_sorted[:, fit_idx.to(device)]  # still sorted
    n_fit = z_fit.shape[1]
    ks = range(1, min(max_components, n_fit) + 1)

    # sklearn's k-means++ draws (numpy RandomState(seed), reseeded per K as sklearn reseeds
    # each fit): the same for every row, so no result depends on chunking or the device.
    draws = {k: _kmeanspp_draws(n_init, n_fit, k, seed) for k in ks}
    budget = _CHUNK_VALUES.get(device.type, _CHUNK_VALUES_DEFAULT)
    rows = max(1, budget // (n_fit * n_init))
    block = max(1, budget // rows)  # columns per step when evaluating the density on all values
    bic = torch.full((n, max_components), math.inf, dtype=torch.float64, device=device)
    log_dens = torch.empty((n, m), dtype=torch.float64, device=device)
    for start in range(0, n, rows):
        sl = slice(start, min(start + rows, n))
        fits = []
        for k in ks:
            w, mu, var, ll = _fit(z_fit[sl], k, *draws[k], tol, reg_covar, max_iter)
            bic[sl, k - 1] = -2 * ll + (3 * k - 1) * math.log(n_fit)
            fits.append((w, mu, var))
        best = bic[sl].argmin(1)  # the first minimum: ties go to the smaller K
        log_dens[sl] = _log_density(z_sorted[sl], *_pick(fits, best), block=block)

    lower, upper, n_low, n_high = _edge_runs(x_sorted, log_dens, low_density_frac)
    lo, hi = (b.to(values.dtype).to(values.device)[:, None] for b in (lower, upper))
    out = values.clamp(lo, hi)
    if not return_info:
        return out
    k_best = bic.argmin(1) + 1
    return out, GmmClipInfo(k=k_best, lower=lower, upper=upper, n_low=n_low, n_high=n_high, bic=bic)


def gmm_fit(
    values: Tensor,
    max_components: int = MAX_COMPONENTS,
    seed: int = 0,
    *,
    standardize: bool = True,
    max_fit_values: int = MAX_FIT_VALUES,
    tol: float = TOL,
    reg_covar: float = REG_COVAR,
    max_iter: int = MAX_ITER,
) -> tuple[Mixture, Tensor]:
    """The fast fit of each row's mixture (K by BIC), without clipping: (mixture, bic [n, K])."""
    _check(values)
    return _fit_mixtures(values, max_components, seed, standardize, max_fit_values, tol, reg_covar, max_iter)[:2]


def _fit_mixtures(values, max_components, seed, standardize, max_fit_values, tol, reg_covar, max_iter, frac=None):
    """The fast fit of every row: (Mixture, bic [n, K]) and, given frac, the clip bounds
    (lower, upper, n_low, n_high) from the same sorted rows. `seed`: an int, or per-row [n]."""
    n, m = values.shape
    device = values.device
    per_row = isinstance(seed, Tensor)
    if per_row and (seed.shape != (n,) or m > max_fit_values):
        raise ValueError(f"per-row seeds: want one per row ({n}) and rows of at most max_fit_values values")
    fit_idx = None if per_row else _fit_indices(m, max_fit_values, seed)
    n_fit = m if fit_idx is None else len(fit_idx)
    ks = range(1, min(max_components, n_fit) + 1)
    draws = {k: _row_draws(seed, n_fit, k) if per_row else _kmeanspp_draws(1, n_fit, k, seed) for k in ks}
    bounds = _group_bounds(n_fit).to(device)
    bic = torch.full((n, max_components), math.inf, dtype=torch.float64, device=device)
    w = torch.zeros((n, max_components), dtype=torch.float32, device=device)
    mu, var = torch.zeros_like(w), torch.ones_like(w)
    clipped = []
    for sl, x_sorted, z in _sorted_chunks(values, standardize):
        z_fit = z if fit_idx is None else z[:, fit_idx.to(device)]
        groups = _compress(z_fit, bounds)
        fits = []
        for k in ks:
            first, uniforms = draws[k]
            if per_row:
                first, uniforms = first[sl], uniforms[sl]
            wk, muk, vark, ll = _fit_fast(groups, k, first, uniforms, tol, reg_covar, max_iter)
            bic[sl, k - 1] = -2 * ll + (3 * k - 1) * math.log(n_fit)
            fits.append((wk, muk, vark))
        w[sl], mu[sl], var[sl] = _pick(fits, bic[sl].argmin(1), max_components)
        if frac is not None:
            clipped.append(_edge_runs(x_sorted, _log_density(z, w[sl], mu[sl], var[sl]), frac))
    bounds_out = tuple(torch.cat(p) for p in zip(*clipped)) if clipped else None
    return Mixture(w, mu, var, standardize), bic, bounds_out


def gmm_apply(values: Tensor, mixture: Mixture, low_density_frac: float = LOW_DENSITY_FRAC) -> Tensor:
    """Clip each row by the rule under an already fitted mixture (e.g. from another window's
    scores of the same neurons): standardise the row by its own mean and std, no EM."""
    _check(values, low_density_frac)
    if mixture.w.shape[0] != values.shape[0]:
        raise ValueError(f"mixture has {mixture.w.shape[0]} rows, values {values.shape[0]}")
    parts = [
        _edge_runs(x_sorted, _log_density(z, mixture.w[sl], mixture.mu[sl], mixture.var[sl]), low_density_frac)
        for sl, x_sorted, z in _sorted_chunks(values, mixture.standardize)
    ]
    lower, upper = (torch.cat(p) for p in list(zip(*parts))[:2])
    return _clamp(values, lower, upper)


def _clamp(values: Tensor, lower: Tensor, upper: Tensor) -> Tensor:
    """Each row clamped to its bounds (values of that row, so exact in its dtype)."""
    return values.clamp(lower.to(values.dtype)[:, None], upper.to(values.dtype)[:, None])


def _check(values: Tensor, low_density_frac: float = LOW_DENSITY_FRAC) -> None:
    if values.dim() != 2:
        raise ValueError(f"gmm_clip wants a [rows, values] tensor, got shape {tuple(values.shape)}")
    if not values.is_floating_point():
        raise ValueError(f"gmm_clip wants floating-point scores, got {values.dtype}")
    if not 0 <= low_density_frac < 0.5:
        raise ValueError(f"low_density_frac must be in [0, 0.5), got {low_density_frac}")
    if not torch.isfinite(values).all():
        raise ValueError("gmm_clip: the scores contain NaN or inf")


def _sorted_chunks(values: Tensor, standardize: bool):
    """(rows, sorted rows, the same standardised in float32) for chunks of about
    _FAST_CHUNK_VALUES values. The sorted rows keep a float64 input's dtype (the clip bounds
    are values of the row); float32 holds every float16 / bfloat16 value exactly."""
    n, m = values.shape
    rows = max(1, chunk_values(values.device) // m)
    for start in range(0, n, rows):
        sl = slice(start, min(start + rows, n))
        x = values[sl].detach()
        x_sorted = _sort_rows(x if x.dtype == torch.float64 else x.float())
        yield sl, x_sorted, (_standardize(x_sorted) if standardize else x_sorted).float()


def chunk_values(device: torch.device) -> int:
    """How many values (rows x values per row) the fast fit takes in one chunk on `device`:
    callers with many small fits (a model's layers) batch rows up to this to pay the per-chunk
    kernel launches and syncs once."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0] // _FAST_GPU_BYTES_PER_VALUE
    return _FAST_CHUNK_VALUES.get(device.type, _CHUNK_VALUES_DEFAULT)


def _sort_rows(x: Tensor) -> Tensor:
    # numpy's vectorised (x86-simd-sort) sort is ~5x faster than torch's on CPU (2,427 x 1,728
    # float32 rows: 29 ms vs 146 ms, numpy 2.4 / torch 2.13 on 2 cores)
    if x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64):
        return torch.from_numpy(np.sort(x.numpy(), axis=1))
    return x.sort(dim=1).values


def _group_bounds(m: int) -> Tensor:
    """Cut points of a sorted row of m values, the same at both ends: from the edge inwards,
    FAST_GROUPS gives (fraction of the row reached, values per group); the rest of the
    middle goes in runs of about FAST_MIDDLE_GROUP."""
    cuts, pos = {0, m}, 0
    for upto, size in FAST_GROUPS:
        end = min(math.ceil(upto * m), m // 2)
        while pos < end:
            cuts |= {pos, m - pos}
            pos = min(pos + size, end)
    cuts |= {pos, m - pos}
    middle = m - 2 * pos
    if middle > 0:
        n_runs = max(1, round(middle / FAST_MIDDLE_GROUP))
        cuts |= set(torch.linspace(pos, m - pos, n_runs + 1).round().long().tolist())
    return torch.tensor(sorted(cuts))


@dataclass(frozen=True)
class _Groups:
    """Sorted rows z [n, m] with their cumulative sums of z and z^2 [n, m + 1], and the same
    rows compressed: each row's group boundaries [n, G + 1], and each group's point count,
    sum and sum of squares [n, G]."""

    z: Tensor
    csum: Tensor
    csq: Tensor
    bounds: Tensor
    count: Tensor
    s1: Tensor
    s2: Tensor

    @property
    def variance(self) -> Tensor:
        m = self.z.shape[1]
        return self.csq[:, -1] / m - (self.csum[:, -1] / m) ** 2


def _compress(z: Tensor, bounds: Tensor) -> _Groups:
    """Compress sorted rows at `bounds` (from _group_bounds), each inner boundary moved to
    the widest gap between neighbouring values within half the distance to the next one.
    A group that straddled the gap between two modes would pull its far half into one
    component (its E step sees only the group's mean of x and x^2): on two clear modes the
    fit then picked K = 4."""
    n, m = z.shape
    csum = torch.nn.functional.pad(z.cumsum(1), (1, 0))
    csq = torch.nn.functional.pad((z * z).cumsum(1), (1, 0))
    inner = bounds[1:-1]
    reach = torch.minimum(inner - bounds[:-2], bounds[2:] - inner) // 2  # [G - 1]
    row_bounds = bounds.expand(n, -1).clone()
    for h in reach.unique().tolist():
        if h == 0:
            continue
        pick = (reach == h).nonzero()[:, 0]
        candidates = inner[pick, None] + torch.arange(-h, h, device=z.device)  # boundary at p: gap z[p] - z[p - 1]
        flat = candidates.flatten()
        widest = (z[:, flat] - z[:, flat - 1]).view(n, len(pick), 2 * h).argmax(2)
        row_bounds[:, pick + 1] = candidates[torch.arange(len(pick), device=z.device), widest]
    lo, hi = row_bounds[:, :-1], row_bounds[:, 1:]
    return _Groups(z, csum, csq, row_bounds, (hi - lo).to(z.dtype),
                   csum.gather(1, hi) - csum.gather(1, lo), csq.gather(1, hi) - csq.gather(1, lo))


def _fit_fast(groups: _Groups, k, first, uniforms, tol, reg_covar, max_iter):
    """One K-component fit per row: sklearn's k-means init with its draws (k-means++ on the
    compressed row, Lloyd on all values), then EM on the compressed row. Returns weights,
    means, variances [n, K] and the grouped log-likelihood [n] (float64)."""
    g = groups
    x1 = g.s1 / g.count  # each group's mean
    if k > 1:  # first: [1] or [n] (per-row draws), uniforms [1 or n, K - 1, trials]
        first_group = torch.searchsorted(g.bounds, first.to(x1.device).view(-1, 1).expand(len(x1), 1).contiguous(),
                                         right=True) - 1
        centres = _kmeanspp_grouped(x1, g.s1, g.s2, g.count, k, first_group, uniforms.to(x1.device, x1.dtype))
        cuts = _kmeans_cuts(g.z, centres, shift_tol=KMEANS_TOL * g.variance, csum=g.csum)
    else:
        cuts = torch.tensor([[0, g.z.shape[1]]], device=x1.device).expand(len(x1), 2)
    count = (cuts[:, 1:] - cuts[:, :-1]).to(x1.dtype)
    segment = [count] + [c.gather(1, cuts[:, 1:]) - c.gather(1, cuts[:, :-1]) for c in (g.csum, g.csq)]
    w, mu, var = _m_step(torch.stack(segment, dim=2), reg_covar, eps=10 * _EPS32)
    return _em_grouped(x1, g.s2 / g.count, g.count, w, mu, var, tol, reg_covar, max_iter)


def _kmeanspp_grouped(x1, s1, s2, count, k, first, uniforms):
    """sklearn's greedy k-means++ from its draws (_kmeanspp) on compressed rows: a group's
    share of the potential is its points' summed squared distance, s2 - 2 c s1 + c^2 count,
    and a drawn group stands for its mean. x1, s1, s2, count: [n, G]; first: [n, 1] the
    first centre's group; uniforms [1 or n, K - 1, trials]. Returns the centres [n, K]."""
    def dist(c):  # [n, t] centres -> [n, t, G]
        c = c[:, :, None]
        return (s2[:, None, :] - 2 * c * s1[:, None, :] + c * c * count[:, None, :]).clamp(min=0)

    n, n_groups = x1.shape
    rows = torch.arange(n, device=x1.device)
    chosen = [x1.gather(1, first)]  # [n, 1]
    closest = dist(chosen[0])[:, 0]  # [n, G]
    pot = closest.sum(1)
    for c in range(1, k):
        targets = uniforms[:, c - 1] * pot[:, None]  # [n, trials]
        cand = torch.searchsorted(closest.cumsum(1), targets).clamp(max=n_groups - 1)
        cand_x = x1.gather(1, cand)  # [n, trials]
        trial = torch.minimum(closest[:, None, :], dist(cand_x))  # [n, trials, G]
        best = trial.sum(2).argmin(1)
        closest = trial[rows, best]
        pot = closest.sum(1)
        chosen.append(cand_x[rows, best][:, None])
    return torch.cat(chosen, dim=1)


def _em_grouped(x1, x2, count, w, mu, var, tol, reg_covar, max_iter):
    """EM where column g of a row stands for count[:, g] points with mean of x x1[:, g] and
    mean of x^2 x2[:, g]; rows stop on their own when the mean log-likelihood moves by less
    than tol. Returns the parameters and the grouped log-likelihood [n] (float64) under them.

    Fewer passes over the [rows, K, G] tensor than _em: the log-probabilities are two
    addcmuls, and the responsibilities are never normalised - 1 / norm goes into the
    [rows, G] weights of the M step's sums instead. Finished rows stay in the batch (their
    parameters frozen) until a third of it has finished: gathering every step cost more.
    """
    total = count[0].sum()
    rows = torch.arange(x1.shape[0], device=x1.device)  # the batch's rows in the output
    lb = torch.full_like(rows, -math.inf, dtype=x1.dtype)
    w, mu, var = w.clone(), mu.clone(), var.clone()
    bw, bmu, bvar, bx1, bx2, bcount = w, mu, var, x1, x2, count
    running = torch.ones_like(rows, dtype=torch.bool)
    for _ in range(max_iter):
        top, dens, norm = _mixture_terms(bw, bmu, bvar, bx1, bx2)
        weight = bcount / norm  # [n, G]
        sums = torch.bmm(dens, torch.stack([weight, weight * bx1, weight * bx2], dim=1).transpose(1, 2))
        new = _m_step(sums, reg_covar, eps=10 * _EPS32)
        bw, bmu, bvar = (torch.where(running[:, None], a, b) for a, b in zip(new, (bw, bmu, bvar)))
        lb_new = ((top + norm.log()) * bcount).sum(1) / total  # mean log-likelihood before this M step
        running &= (lb_new - lb[rows]).abs() >= tol
        lb[rows] = torch.where(running, lb_new, lb[rows])
        left = int(running.sum())  # one sync per step on a GPU
        if left == 0:
            break
        if left < 2 * len(running) / 3:
            w[rows], mu[rows], var[rows] = bw, bmu, bvar
            rows, bw, bmu, bvar, bx1, bx2, bcount = (t[running] for t in (rows, bw, bmu, bvar, bx1, bx2, bcount))
            running = running[running]
    w[rows], mu[rows], var[rows] = bw, bmu, bvar
    top, _, norm = _mixture_terms(w, mu, var, x1, x2)
    return w, mu, var, ((top + norm.log()).double() * count.double()).sum(1)


def _mixture_terms(w, mu, var, x, x2):
    """Per value: the largest component log-probability top [n, G], exp(log-probs - top)
    [n, K, G] and their sum norm [n, G], so log p(x) = top + log(norm)."""
    q = _quadratic(w, mu, var)  # [n, K, 3]
    log_p = torch.addcmul(q[:, :, :1], q[:, :, 1:2], x[:, None, :]).addcmul_(q[:, :, 2:], x2[:, None, :])
    top = log_p.amax(1, keepdim=True)
    dens = log_p.sub_(top).exp_()
    return top[:, 0], dens, dens.sum(1)


def sklearn_gmm_clip(
    vec: np.ndarray,
    max_components: int = MAX_COMPONENTS,
    low_density_frac: float = LOW_DENSITY_FRAC,
    seed: int = 0,
    return_info: bool = False,
    *,
    standardize: bool = True,
    max_fit_values: int = MAX_FIT_VALUES,
    n_init: int = N_INIT,
) -> np.ndarray | tuple[np.ndarray, dict]:
    """Reference: the same rule on one vector, one sklearn GaussianMixture per K (default EM
    settings, random_state=seed). Slow; for tests and benchmarks/gmm_speed.py.

    Standardisation, the fitting subsample and the clipping rule are gmm_clip's own code;
    only the mixture fits and their BIC and density come from sklearn.
    """
    from sklearn.mixture import GaussianMixture

    vec = np.asarray(vec)
    x_sorted = torch.from_numpy(np.sort(vec.astype(np.float64).ravel()))[None]
    z_sorted = _standardize(x_sorted) if standardize else x_sorted
    fit_idx = _fit_indices(z_sorted.shape[1], max_fit_values, seed)
    z_fit = (z_sorted[0] if fit_idx is None else z_sorted[0, fit_idx]).numpy()[:, None]
    bics, models = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning: gmm_clip does not warn either
        for k in range(1, min(max_components, len(z_fit)) + 1):
            gm = GaussianMixture(n_components=k, n_init=n_init, random_state=seed).fit(z_fit)
            bics.append(gm.bic(z_fit))
            models.append(gm)
    best = int(np.argmin(bics))
    log_dens = torch.from_numpy(models[best].score_samples(z_sorted[0].numpy()[:, None]))[None]
    lower, upper, n_low, n_high = (t.item() for t in _edge_runs(x_sorted, log_dens, low_density_frac))
    out = np.clip(vec, np.asarray(lower, vec.dtype), np.asarray(upper, vec.dtype))
    if not return_info:
        return out
    info = dict(k=best + 1, lower=lower, upper=upper, n_low=n_low, n_high=n_high, bic=bics)
    return out, info


# --- the rule ----------------------------------------------------------------------------


def _moments(x: Tensor) -> tuple[Tensor, Tensor]:
    """Each row's mean and (population) std, [n, 1]; a zero std becomes 1."""
    std = x.std(dim=1, correction=0, keepdim=True)
    return x.mean(dim=1, keepdim=True), torch.where(std > 0, std, torch.ones_like(std))


def _standardize(x: Tensor) -> Tensor:
    mean, std = _moments(x)
    return (x - mean) / std


def _fit_indices(m: int, max_fit_values: int, seed: int) -> Tensor | None:
    """Sorted positions of the seeded fitting subsample, or None to fit on everything."""
    if m <= max_fit_values:
        return None
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(m, generator=gen)[:max_fit_values].sort().values


def _edge_runs(x_sorted: Tensor, log_dens: Tensor, frac: float):
    """Clip bounds from the low-density runs at both ends of each sorted row.

    Low density means strictly below the `frac` quantile of the row's log-density (linear
    interpolation, numpy's default). The quantile is taken of the log, not of the density as
    the reference code does: the order is the same, and far outliers no longer underflow to
    a density of exactly 0 and tie with the threshold.
    """
    m = x_sorted.shape[1]
    inlier = log_dens >= _quantile(log_dens, frac)[:, None]
    any_inlier = inlier.any(1)
    n_low = torch.where(any_inlier, inlier.to(torch.uint8).argmax(1), m)  # the first inlier
    n_high = torch.where(any_inlier, inlier.flip(1).to(torch.uint8).argmax(1), m)
    lower = x_sorted.gather(1, n_low.clamp(max=m - 1)[:, None])[:, 0]
    upper = x_sorted.gather(1, (m - 1 - n_high).clamp(min=0)[:, None])[:, 0]
    return lower, upper, n_low, n_high


def _quantile(v: Tensor, q: float) -> Tensor:
    """Each row's q quantile with linear interpolation (numpy's default), by selection."""
    m = v.shape[1]
    pos = q * (m - 1)
    lo = int(math.floor(pos))
    hi = min(lo + 1, m - 1)
    if v.device.type == "cpu":  # one np.partition for both ranks: 35% faster than two kthvalues
        part = torch.from_numpy(np.partition(v.detach().contiguous().numpy(), sorted({lo, hi}), axis=1))
        a, b = part[:, lo], part[:, hi]
    else:
        a, b = v.kthvalue(lo + 1, dim=1).values, v.kthvalue(hi + 1, dim=1).values
    return a if pos == lo else torch.lerp(a, b, pos - lo)


# --- batched EM --------------------------------------------------------------------------


def _fit(x, k, first, uniforms, tol, reg_covar, max_iter):
    """Best of n_init fits of a K-component mixture to each row of x ([n, m] float64, sorted).

    Returns weights, means, variances [n, K] and the summed log-likelihood [n]. Like sklearn
    it keeps the init with the best last lower bound (the first such on ties).
    """
    n, n_init = x.shape[0], first.shape[0]
    x_rep = x.repeat(n_init, 1)  # init i of row r is row i * n + r
    first = first.to(x.device).repeat_interleave(n)
    uniforms = uniforms.to(x.device).repeat_interleave(n, dim=0)
    w, mu, var = _init_params(x_rep, k, first, uniforms, reg_covar)
    w, mu, var, lb, _ = _em(x_rep, w, mu, var, tol, reg_covar, max_iter)
    pick = lb.view(n_init, n).argmax(0) * n + torch.arange(n, device=x.device)
    w, mu, var = w[pick], mu[pick], var[pick]
    return w, mu, var, _log_density(x, w, mu, var).sum(1)


def _init_params(x, k, first, uniforms, reg_covar):
    """sklearn's init_params="kmeans": k-means hard labels, then one M step."""
    labels = _kmeans_labels(x, _kmeanspp(x, k, first, uniforms))
    resp = torch.nn.functional.one_hot(labels, k).to(x.dtype).transpose(1, 2)  # [n, K, m]
    return _m_step(torch.bmm(resp, _powers(x).transpose(1, 2)), reg_covar)


def _em(x, w, mu, var, tol, reg_covar, max_iter):
    """EM from the given parameters; each row stops when its mean log-likelihood moves by
    less than tol (sklearn's rule). Returns the parameters, the last lower bound (mean
    log-likelihood before the last M step) and the iteration count, per row.

    log(w N(x; mu, var)) is a quadratic in x, so with the powers [1, x, x^2] of the values
    the E step's [n, K, m] log-probabilities are one bmm and the M step's sums another;
    the responsibilities are updated in place. About 2x faster on CPU than sklearn's
    elementwise form, which it matches to ~1e-13.
    """
    n = x.shape[0]
    powers = _powers(x)  # [n, 3, m]
    w, mu, var = w.clone(), mu.clone(), var.clone()
    lb = torch.full((n,), -math.inf, dtype=x.dtype, device=x.device)
    n_iter = torch.zeros(n, dtype=torch.long, device=x.device)
    active = torch.arange(n, device=x.device)
    for _ in range(max_iter):
        pa = powers[active]
        resp = torch.bmm(_quadratic(w[active], mu[active], var[active]), pa)  # [n, K, m]
        top = resp.amax(1, keepdim=True)
        total = resp.sub_(top).exp_().sum(1, keepdim=True)
        resp.div_(total)  # responsibilities
        w[active], mu[active], var[active] = _m_step(torch.bmm(resp, pa.transpose(1, 2)), reg_covar)
        lb_new = (top + total.log()).mean((1, 2))  # log-likelihood before this M step
        n_iter[active] += 1
        done = (lb_new - lb[active]).abs() < tol
        lb[active] = lb_new
        active = active[~done]
        if active.numel() == 0:
            break
    return w, mu, var, lb, n_iter


def _powers(x):
    return torch.stack([torch.ones_like(x), x, x * x], dim=1)


def _quadratic(w, mu, var):
    """Coefficients [n, K, 3] of log(w N(x; mu, var)) = c0 + c1 x + c2 x^2."""
    a = -0.5 / var
    c0 = w.log() - 0.5 * (_LOG_2PI + var.log()) + a * mu * mu
    return torch.stack([c0, -2 * a * mu, a], dim=2)


def _m_step(sums, reg_covar, eps=10 * _EPS):
    """sklearn's M step from the responsibility-weighted sums [n, K, 3] of 1, x, x^2:
    nk = sum r + 10 eps, mean = sum r x / nk, var = sum r (x - mean)^2 / nk + reg_covar."""
    s0, s1, s2 = sums.unbind(2)
    nk = s0 + eps
    mu = s1 / nk
    sq = (s2 - 2 * mu * s1 + mu * mu * s0).clamp(min=0)
    return nk / nk.sum(1, keepdim=True), mu, sq / nk + reg_covar


def _log_density(x, w, mu, var, block=None):
    """log p(x) under each row's mixture, `block` columns at a time: [n, m] and [n, K] ->
    [n, m]. Zero-weight (padding) components at the end are skipped."""
    used = int((w > 0).sum(1).max())
    w, mu, var = w[:, :used], mu[:, :used, None], var[:, :used]
    const = (w.log() - 0.5 * (_LOG_2PI + var.log()))[:, :, None]
    scale = (-0.5 / var)[:, :, None]
    block = block or x.shape[1]
    out = torch.empty_like(x)
    for j in range(0, x.shape[1], block):
        log_p = (x[:, None, j : j + block] - mu).square_().mul_(scale).add_(const)  # [n, K, block]
        top = log_p.amax(1)
        out[:, j : j + block] = log_p.sub_(top[:, None]).exp_().sum(1).log_().add_(top)
    return out


def _pick(fits, best, k_max=None):
    """Each row's parameters for its chosen K, padded with zero-weight components."""
    n, k_max = best.shape[0], k_max or len(fits)
    w = torch.zeros(n, k_max, dtype=fits[0][0].dtype, device=best.device)
    mu, var = torch.zeros_like(w), torch.ones_like(w)
    for i, (wk, muk, vark) in enumerate(fits):
        rows = best == i
        w[rows, : i + 1], mu[rows, : i + 1], var[rows, : i + 1] = wk[rows], muk[rows], vark[rows]
    return w, mu, var


# --- batched 1-D k-means (sklearn KMeans(n_init=1): k-means++ then Lloyd) -----------------


def _kmeanspp_draws(n_init: int, m: int, k: int, seed: int) -> tuple[Tensor, Tensor]:
    """sklearn's own k-means++ draws for a K-component GaussianMixture(random_state=seed) on
    m values: per init, the first centre's index and the uniforms of the local trials,
    [n_init] and [n_init, K - 1, trials]. They depend only on (seed, m, K), never on the
    values, so every row of a batch gets the draws sklearn would make for it alone."""
    rs = np.random.RandomState(seed)
    trials = 2 + int(np.log(k))
    first, uniforms = [], []
    for _ in range(n_init):  # GaussianMixture runs its inits on one RandomState, in turn
        first.append(rs.choice(m, p=np.full(m, 1.0) / m))  # KMeans' unit sample weights
        uniforms.append([rs.uniform(size=trials) for _ in range(k - 1)])
    u = torch.tensor(np.array(uniforms, dtype=np.float64).reshape(n_init, k - 1, trials))
    return torch.tensor(first, dtype=torch.long), u


def _row_draws(seeds: Tensor, m: int, k: int) -> tuple[Tensor, Tensor]:
    """_kmeanspp_draws(1, m, k, seed) of each row's seed: first [n], uniforms [n, K - 1, trials]."""
    unique, which = seeds.cpu().unique(return_inverse=True)
    draws = [_kmeanspp_draws(1, m, k, int(s)) for s in unique]
    return torch.cat([f for f, _ in draws])[which], torch.cat([u for _, u in draws])[which]


def _kmeanspp(x, k, first, uniforms):
    """Greedy k-means++ seeding, as sklearn's _kmeans_plusplus, from given draws.

    x: [n, m]; first: [n] index of the first centre; uniforms: [n, K - 1, trials].
    Returns the centres [n, K].
    """
    n, m = x.shape
    centres = [x.gather(1, first[:, None])]
    closest = (x - centres[0]) ** 2  # [n, m]
    pot = closest.sum(1)
    for c in range(1, k):
        targets = uniforms[:, c - 1, :] * pot[:, None]  # [n, trials]
        cand = torch.searchsorted(closest.cumsum(1), targets).clamp(max=m - 1)
        cand_x = x.gather(1, cand)
        dist = torch.minimum(closest[:, None, :], (x[:, None, :] - cand_x[:, :, None]) ** 2)
        pots = dist.sum(2)  # [n, trials]
        best = pots.argmin(1)
        pot = pots.gather(1, best[:, None])[:, 0]
        closest = dist[torch.arange(n, device=x.device), best]
        centres.append(cand_x.gather(1, best[:, None]))
    return torch.cat(centres, dim=1)


def _kmeans_cuts(x, centres, count=None, shift_tol=None, csum=None):
    """Lloyd from the given centres on sorted rows x ([n, m]); returns the final segment
    boundaries [n, K + 1] (cluster j is positions [cuts[j], cuts[j+1])).

    In 1-D each cluster is the segment of the sorted row between two midpoints of adjacent
    centres: an iteration is a searchsorted and a cumsum, no distance matrix. Stops per row
    as sklearn's lloyd does: labels unchanged, or squared centre shift <= shift_tol (default
    1e-4 * variance). count [m]: how many points each column stands for (a compressed row;
    default one each); csum: the rows' cumulative weighted sums [n, m + 1] if known.
    """
    n, m = x.shape
    k = centres.shape[1]
    if k == 1:
        return torch.tensor([[0, m]], device=x.device).expand(n, 2)
    weights = torch.ones(m, dtype=x.dtype, device=x.device) if count is None else count
    ccount = torch.nn.functional.pad(weights.cumsum(0), (1, 0))  # [m + 1]
    if csum is None:
        csum = torch.nn.functional.pad((x * weights).cumsum(1), (1, 0))  # [n, m + 1]
    if shift_tol is None:
        shift_tol = KMEANS_TOL * x.var(1, correction=0)

    def cuts(rows_x, c):  # segment boundaries [rows, K + 1]; x == midpoint goes left (argmin's tie rule)
        mid = (c[:, 1:] + c[:, :-1]) / 2
        edge = torch.zeros((len(c), 1), dtype=torch.long, device=x.device)
        return torch.cat([edge, torch.searchsorted(rows_x, mid.contiguous(), right=True), edge + m], 1)

    # Finished rows stay in the batch (centres frozen) until two thirds of it has finished,
    # then the batch is cut down to the running rows: a searchsorted costs ~100 ns per
    # query on CPU, so stragglers should not drag every row along, but gathering rows of
    # m values every step would cost more than it saves.
    centres = centres.sort(1).values
    rows = torch.arange(n, device=x.device)  # the batch's rows in the output
    bx, bsum, btol, bc = x, csum, shift_tol, centres
    running = torch.ones(n, dtype=torch.bool, device=x.device)
    prev = None
    for _ in range(KMEANS_MAX_ITER):
        b = cuts(bx, bc)
        size = ccount[b[:, 1:]] - ccount[b[:, :-1]]
        total = bsum.gather(1, b[:, 1:]) - bsum.gather(1, b[:, :-1])
        # an empty cluster keeps its centre (sklearn moves it to a far point; rare in 1-D)
        new = torch.where(size > 0, total / size.clamp(min=1), bc).sort(1).values
        moved = ((new - bc) ** 2).sum(1)
        bc = torch.where(running[:, None], new, bc)
        unchanged = torch.zeros_like(running) if prev is None else (b == prev).all(1)
        running &= ~(unchanged | (moved <= btol))
        prev = b
        left = int(running.sum())
        if left == 0:
            break
        if left * 3 < len(running):
            centres[rows] = bc
            rows, bx, bsum, btol, bc, prev = (t[running] for t in (rows, bx, bsum, btol, bc, prev))
            running = running[running]
    centres[rows] = bc
    return cuts(x, centres)  # final segments agree with the final centres


def _kmeans_labels(x, centres):
    """Lloyd from the given centres on sorted rows x ([n, m]); returns labels [n, m]."""
    n, m = x.shape
    inner = _kmeans_cuts(x, centres)[:, 1:-1].contiguous()
    positions = torch.arange(m, device=x.device).expand(n, m).contiguous()
    return torch.searchsorted(inner, positions, right=True)
