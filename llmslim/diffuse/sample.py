"""MDLM's ancestral sampler (reference: mdlm diffusion.py _sample / _ddpm_caching_update).

Times t_i = linspace(1, SAMPLE_EPS, steps + 1); from t to s = t - dt each still-masked position
becomes a token with probability (mc_t - mc_s) / mc_t, drawn from p_theta(x_0 | x_t), and stays
MASK otherwise; unmasked tokens never change; after the last step the remaining masks take their
argmax (MDLM's noise removal). Categorical draws use the Gumbel trick in float64: gen-PPL depends on
the draw's precision (low precision truncates the tail, lowering gen-PPL and entropy; Zheng et al.
2024), so float64 it is. The caching trick: the model has no time input, so when a step unmasked
nothing, the next step's p(x_0 | x_t) is the same and is not computed again.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from llmslim.diffuse.mdlm import EPS, denoise, move_chance

SAMPLE_EPS = 1e-5  # MDLM's sampler eps


@dataclass
class Sampled:
    tokens: torch.Tensor  # [B, L]
    forward_passes: int
    steps: int
    unmasked_per_step: list[int] = field(default_factory=list)


def gumbel_categorical(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """argmax(probs / Exp(1)) = a draw proportional to probs (no normalisation needed), in float64."""
    probs = probs.double()
    noise = -torch.log(torch.rand(probs.shape, generator=generator, device=probs.device, dtype=torch.float64) + 1e-20)
    return (probs / (noise + 1e-20)).argmax(-1)


@torch.no_grad()
def sample(model, mask_id: int, *, steps: int, length: int, batch: int = 1, prefix: torch.Tensor | None = None,
           generator: torch.Generator | None = None, cache: bool = True, eps: float = EPS, progress=None) -> Sampled:
    """`batch` sequences of `length` tokens in `steps` denoising steps; `prefix` ([P] or [B, P] ids,
    at least one token: the shift needs a position 0) stays fixed at the start."""
    device = next(model.parameters()).device
    if prefix is None:
        raise ValueError("a prefix of at least one token is needed (position 0 is never masked)")
    prefix = prefix.to(device).reshape(-1, prefix.shape[-1]).expand(batch, -1)
    x = torch.full((batch, length), mask_id, dtype=torch.long, device=device)
    x[:, : prefix.shape[1]] = prefix
    times = torch.linspace(1, SAMPLE_EPS, steps + 1, dtype=torch.float64)
    log_p, passes, unmasked_counts = None, 0, []
    for i in range(steps):
        t, s = times[i], times[i + 1]
        if log_p is None:
            log_p = denoise(model, x, mask_id)
            passes += 1
        mc_t, mc_s = move_chance(t, eps).item(), move_chance(s, eps).item()
        probs = log_p.double().exp() * (mc_t - mc_s)
        probs[..., mask_id] = mc_s
        proposal = gumbel_categorical(probs, generator)
        masked = x == mask_id
        x_next = torch.where(masked, proposal, x)
        changed = int((x_next != x).sum())
        unmasked_counts.append(changed)
        if changed or not cache:
            log_p = None
        x = x_next
        if progress:
            progress(1)
    if (x == mask_id).any():  # noise removal: the last masks take their most likely token
        if log_p is None:
            log_p = denoise(model, x, mask_id)
            passes += 1
        x = torch.where(x == mask_id, log_p.argmax(-1), x)
    return Sampled(tokens=x, forward_passes=passes, steps=steps, unmasked_per_step=unmasked_counts)
