"""Which parameters train: one way to freeze a model around a pass and restore it after."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def trainable_only(model: nn.Module, params: Iterable[nn.Parameter] = ()) -> Iterator[None]:
    """Inside the block only `params` require gradients (every other parameter of `model` is
    frozen, so a backward pass computes no weight gradient it does not need); afterwards every
    parameter's requires_grad is as before and its .grad is cleared, also after an error."""
    saved = [(p, p.requires_grad) for p in model.parameters()]
    wanted = {id(p) for p in params}
    for p, _ in saved:
        p.requires_grad_(id(p) in wanted)
    try:
        yield
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)
            p.grad = None


def count_params(model: nn.Module) -> int:
    """Parameters, a tied embedding once (module.parameters() yields each shared tensor once)."""
    return sum(p.numel() for p in model.parameters())
