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


def draw_device(device: torch.device, generator: torch.Generator | None = None) -> torch.device:
    """Where float64 draws happen: the generator's device, else the tensor's (MPS has no
    float64: its draws go to the CPU)."""
    if generator is not None:
        return generator.device
    return torch.device("cpu") if device.type == "mps" else device


def gumbel_categorical(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """argmax(probs / Exp(1)) = a draw proportional to probs (no normalisation needed), in float64."""
    work = draw_device(probs.device, generator)
    p = probs.to(work, torch.float64)
    noise = -torch.log(torch.rand(p.shape, generator=generator, device=work, dtype=torch.float64) + 1e-20)
    return (p / (noise + 1e-20)).argmax(-1).to(probs.device)


def transition(log_p: torch.Tensor, x: torch.Tensor, mask_id: int, mc_t: torch.Tensor, mc_s: torch.Tensor,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """One ancestral step from time t to s (move chances mc_t > mc_s, scalars or one per row):
    a masked position becomes token v with probability p(x_0 = v) (mc_t - mc_s) / mc_t and
    stays MASK with probability mc_s / mc_t; unmasked tokens are copied.

    Drawn in two parts with the same law (p gives MASK no mass, so the step's categorical over
    p (mc_t - mc_s) and MASK's mc_s sums to mc_t): whether a masked position is revealed, with
    probability (mc_t - mc_s) / mc_t, then its token from p, only where one is revealed. A draw
    over every position's whole vocabulary cost about one forward pass per step; this one costs
    that once over all steps (each position is revealed once)."""
    work = draw_device(log_p.device, generator)
    mc_t = torch.as_tensor(mc_t, dtype=torch.float64, device=work).reshape(-1, 1)
    mc_s = torch.as_tensor(mc_s, dtype=torch.float64, device=work).reshape(-1, 1)
    coin = torch.rand(x.shape, generator=generator, device=work, dtype=torch.float64)
    reveal = (x == mask_id).to(work) & (coin < (mc_t - mc_s) / mc_t)
    out = x.clone()
    if reveal.any():
        chosen = log_p[reveal.to(log_p.device)].to(work, torch.float64).exp()  # [revealed, V]
        out[reveal.to(x.device)] = gumbel_categorical(chosen, generator).to(x.device)
    return out


def output_device(model) -> torch.device:
    """The device the logits come out on (the last one when a model is spread over GPUs)."""
    return model.get_output_embeddings().weight.device


@torch.no_grad()
def sample(model, mask_id: int, *, steps: int, length: int, batch: int = 1, prefix: torch.Tensor | None = None,
           seed: int | None = None, cache: bool = True, eps: float = EPS, progress=None) -> Sampled:
    """`batch` sequences of `length` tokens in `steps` denoising steps; `prefix` ([P] or [B, P] ids,
    at least one token: the shift needs a position 0) stays fixed at the start. `seed` makes
    the draws repeatable (a generator where the draws happen)."""
    device = next(model.parameters()).device
    if prefix is None:
        raise ValueError("a prefix of at least one token is needed (position 0 is never masked)")
    generator = None
    if seed is not None:
        generator = torch.Generator(device=draw_device(output_device(model))).manual_seed(seed)
    prefix = prefix.to(device).reshape(-1, prefix.shape[-1]).expand(batch, -1)
    x = torch.full((batch, length), mask_id, dtype=torch.long, device=device)
    x[:, : prefix.shape[1]] = prefix
    times = torch.linspace(1, SAMPLE_EPS, steps + 1, dtype=torch.float64)
    log_p, passes, unmasked_counts = None, 0, []
    for i in range(steps):
        if log_p is None:
            log_p = denoise(model, x, mask_id)
            passes += 1
        x_next = transition(log_p, x, mask_id, move_chance(times[i], eps), move_chance(times[i + 1], eps), generator)
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
        x = torch.where(x == mask_id, log_p.argmax(-1).to(x.device), x)
    return Sampled(tokens=x, forward_passes=passes, steps=steps, unmasked_per_step=unmasked_counts)
