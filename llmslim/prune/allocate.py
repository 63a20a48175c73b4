"""How many neurons each layer keeps, and which."""

from __future__ import annotations

import torch

from llmslim.core.errors import BadOptionError

ALLOCATIONS = ("uniform", "global")


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


def allocate(scores: list[torch.Tensor], ratio: float, mode: str = "uniform", round_to: int = 1) -> list[torch.Tensor]:
    """Indices of the neurons to keep in each layer.

    uniform: every layer keeps round((1 - ratio) * width) of its own best neurons.
    global: one threshold over all layers' scores (scores must be comparable across layers).
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
    raise BadOptionError(f"unknown allocation {mode!r}; use one of {', '.join(ALLOCATIONS)}")
