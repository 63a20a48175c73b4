"""Per-example importance criteria for attention heads and FFN neurons.

A *unit* is one attention head or one FFN neuron. For one example with LM loss L:

- head h: A[t, d] is the head's output at token t before the output projection (the input
  columns of o_proj / out_proj that belong to h), and g = dL/dA;
- neuron j: we use the **activation x gradient form**: A[t, 0] = h_j(t), the neuron's
  intermediate activation (the input of down_proj / fc2: act(gate) * up for gated MLPs,
  act(fc1) for OPT), g = dL/dh_j. A neuron is then a "head" of width 1 and every criterion
  has one definition for both kinds of unit. (ShadowLLM's OPT code scores fc1/fc2 rows by
  |W * dL/dW| summed over the row; for down_proj that sum equals sum_i |W_ij sum_t x_ti g_ti|,
  a weight-space cousin of the form used here. We chose the activation form because it needs
  no weight gradients, costs one backward to activations only, and is exact for the units that
  gathered execution removes: the h_j that feed down_proj.)

Definitions, written from abdelfattah-lab/shadow_llm `lm_eval/base.py` (calculate_plainact,
calculate_l2_norm, calculate_fisher, calculate_snip, calculate_grad_norm), per example:

    plainact  sum_t | sum_d A*g |          ShadowLLM's choice (head form of calculate_plainact)
    l2norm    || A ||_F over t, d          DejaVu-style, needs no gradient
    fisher    sum_d mean_t (A*g)^2         calculate_fisher: (A*g)^2 averaged over tokens
    snip      | sum_t sum_d A*g |          |dL/dm| for a gate m = 1 on the unit (SNIP's
                                           connection sensitivity). The reference code hooks the
                                           module's output gradient instead (sum |g| of the block
                                           output), which does not depend on the unit; we use the
                                           definition the method names.
    gradnorm  || g ||_F over t, d          calculate_grad_norm (head form)
"""

from __future__ import annotations

import difflib
from typing import Callable

import torch

from llmslim.core.errors import BadOptionError

Criterion = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

CRITERIA: dict[str, Criterion] = {}
NEEDS_GRAD: dict[str, bool] = {}


def register(name: str, needs_grad: bool = True):
    def deco(fn: Criterion) -> Criterion:
        CRITERIA[name] = fn
        NEEDS_GRAD[name] = needs_grad
        return fn

    return deco


# Every criterion takes A and g of shape [tokens, units, width] (width = head_dim for heads, 1
# for neurons; g may be None when the criterion needs no gradient) and returns [units].


@register("plainact")
def plainact(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return (a * g).sum(-1).abs().sum(0)


@register("l2norm", needs_grad=False)
def l2norm(a: torch.Tensor, g: torch.Tensor | None = None) -> torch.Tensor:
    return a.pow(2).sum(dim=(0, 2)).sqrt()


@register("fisher")
def fisher(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return (a * g).pow(2).mean(0).sum(-1)


@register("snip")
def snip(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return (a * g).sum(dim=(0, 2)).abs()


@register("gradnorm")
def gradnorm(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return g.pow(2).sum(dim=(0, 2)).sqrt()


def parse(names: str | list[str]) -> list[str]:
    """'plainact,l2norm' or 'all' -> checked names; unknown names get near matches listed."""
    items = list(CRITERIA) if names == "all" else [n.strip() for n in (names.split(",") if isinstance(names, str) else names) if n.strip()]
    if not items:
        raise BadOptionError("no criterion given; choose from " + ", ".join(CRITERIA))
    for name in items:
        if name not in CRITERIA:
            close = difflib.get_close_matches(name, list(CRITERIA), n=2, cutoff=0.5)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise BadOptionError(f"unknown criterion {name!r}{hint} (choose from {', '.join(CRITERIA)})")
    return list(dict.fromkeys(items))


def score(name: str, a: torch.Tensor, g: torch.Tensor | None) -> torch.Tensor:
    """One criterion on one example's [tokens, units, width] activations (float32 math)."""
    a = a.float()
    g = g.float() if g is not None else None
    if NEEDS_GRAD[name] and g is None:
        raise ValueError(f"criterion {name!r} needs the gradient")
    return CRITERIA[name](a, g)
