"""How many neurons each layer keeps, and which."""

from __future__ import annotations

import torch

from llmslim.core.errors import BadOptionError

ALLOCATIONS = ("uniform", "global", "adaptive")
MAX_DEVIATION = 0.1  # OWL's lambda for 7B models is 0.08; adaptive ratios stay within ratio +- this


def _round(count: int, width: int, round_to: int) -> int:
    """Nearest multiple of round_to (hardware-friendly widths), at least one neuron, at most width."""
    if round_to > 1:
        count = int(round(count / round_to)) * round_to
        count = max(count, min(round_to, width))
    return max(1, min(count, width))


def _top(scores: torch.Tensor, k: int) -> torch.Tensor:
    # stable: equal scores keep the lower index, so runs are repeatable
    order = torch.sort(scores.float(), descending=True, stable=True).indices
    return order[:k].sort().values


def allocate(scores: list[torch.Tensor], ratio: float, mode: str = "uniform", round_to: int = 1,
             max_deviation: float = MAX_DEVIATION) -> list[torch.Tensor]:
    """Indices of the neurons to keep in each layer.

    uniform: every layer keeps round((1 - ratio) * width) of its own best neurons.
    global: one threshold over all layers' scores (scores must be comparable across layers).
    adaptive: per-layer ratios from the layers' importance (adaptive_ratios), then each layer
    keeps its own best neurons.
    """
    if not 0.0 <= ratio < 1.0:
        raise BadOptionError(f"pruning ratio must be in [0, 1), got {ratio}")
    if round_to < 1:
        raise BadOptionError(f"--round-to must be >= 1, got {round_to}")
    if mode == "uniform":
        return [_top(s, _round(int(round(s.numel() * (1 - ratio))), s.numel(), round_to)) for s in scores]
    if mode == "global":
        flat = torch.cat([s.float() for s in scores])
        n_keep = max(1, int(round(flat.numel() * (1 - ratio))))
        threshold = torch.sort(flat, descending=True, stable=True).values[n_keep - 1]
        counts = [int((s.float() >= threshold).sum()) for s in scores]
        return [_top(s, _round(c, s.numel(), round_to)) for s, c in zip(scores, counts)]
    if mode == "adaptive":
        ratios = adaptive_ratios(scores, ratio, max_deviation)
        counts = _counts(ratios, [s.numel() for s in scores], ratio, round_to)
        return [_top(s, c) for s, c in zip(scores, counts)]
    raise BadOptionError(f"unknown allocation {mode!r}; use one of {', '.join(ALLOCATIONS)}")


def adaptive_ratios(scores: list[torch.Tensor], ratio: float, max_deviation: float = MAX_DEVIATION) -> list[float]:
    """Per-layer pruning ratios, OWL's rule (Yin et al. 2024, "Outlier Weighed Layerwise
    Sparsity") with the method's own scores in place of OWL's outlier ratio: a layer's
    importance is the mean of its neurons' scores; min-max normalised to a in [0, 1], the layer
    gets ratio + d * (1 - 2a) (the most important layer ratio - d, the least ratio + d), then all
    are shifted so that the width-weighted mean is `ratio`, within [ratio - d, ratio + d]."""
    if not 0.0 <= max_deviation < 1.0:
        raise BadOptionError(f"--max-deviation must be in [0, 1), got {max_deviation}")
    widths = torch.tensor([float(s.numel()) for s in scores], dtype=torch.float64)
    importance = torch.stack([s.double().mean() for s in scores])
    spread = importance.max() - importance.min()
    a = (importance - importance.min()) / spread if spread > 0 else torch.full_like(importance, 0.5)
    low, high = max(0.0, ratio - max_deviation), min(0.99, ratio + max_deviation)
    ratios = ratio + max_deviation * (1 - 2 * a)
    for _ in range(50):  # shift, clip, repeat: clipping moves the mean, the bounds stay
        ratios = (ratios + ratio - (ratios * widths).sum() / widths.sum()).clamp(low, high)
        if abs(float((ratios * widths).sum() / widths.sum()) - ratio) < 1e-9:
            break
    return ratios.tolist()


def _counts(ratios: list[float], widths: list[int], ratio: float, round_to: int) -> list[int]:
    """Kept neurons per layer for these ratios, with the total the overall ratio asks for
    (to the nearest round_to per layer where round_to > 1)."""
    counts = [_round(int(round(w * (1 - r))), w, round_to) for r, w in zip(ratios, widths)]
    target = int(round(sum(widths) * (1 - ratio)))
    step = round_to
    # hand out (or take back) the rounding difference, a step at a time, where it moves a layer least
    order = sorted(range(len(widths)), key=lambda i: ratios[i])
    for i in (order if sum(counts) < target else order[::-1]) * 2:
        gap = target - sum(counts)
        if abs(gap) < step or (gap > 0 and counts[i] + step > widths[i]) or (gap < 0 and counts[i] - step < 1):
            continue
        counts[i] += step if gap > 0 else -step
    return counts
