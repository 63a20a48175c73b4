"""Self-Distillation Through Time (Deschenaux & Gulcehre, ICLR 2025; reference jdeschena/sdtt,
src/sdtt/core/distill/multi_round_sdtt.py): a student learns to do in one denoising step what
the teacher does in k = 2 steps of size dt.

Per window: x_t from the data (SDTT's time sampling: one uniform per batch, spread evenly);
the frozen teacher takes k ancestral steps from t, at times t, t - dt, ..., each to the next
time minus dt; a masked position's target is the teacher's x_0 distribution at the step where it
was unmasked, and for positions still masked after k steps the last step's. The student does
one forward pass on x_t. The divergence is taken on masked positions only, averaged per masked
token.

Deviation from the reference, on purpose: the reference interpolates the teacher's times as
`t * space + (1 - t) * t_end`, which for k = 2 gives t + (1 - t)(t - 2 dt) >= t and then
(1 - t)(t - 2 dt): the teacher's first step can start later than the sample's own time and the
second far earlier. Here the teacher's i-th step runs from t - i dt to t - (i + 1) dt, as the
paper describes. A step whose end would fall below 0 ends at 0 (every remaining mask is revealed).
"""

from __future__ import annotations

import torch

from llmslim.diffuse.mdlm import EPS, add_noise, denoise, move_chance
from llmslim.diffuse.sample import SAMPLE_EPS, transition

DIVERGENCES = ("kl", "kl-fwd", "mse", "tvd")
TEACHER_STEPS = 2  # k: SDTT's num_distill_steps


def sdtt_times(n: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """SDTT's time sampling: one uniform u, times (u + i/n) mod 1, mapped to [SAMPLE_EPS, 1]."""
    u = torch.rand(1, generator=generator, device=device)
    offsets = torch.arange(n, device=device) / n
    return (1 - SAMPLE_EPS) * ((u + offsets) % 1) + SAMPLE_EPS


@torch.no_grad()
def teacher_targets(teacher, xt: torch.Tensor, t: torch.Tensor, dt: float, mask_id: int, k: int = TEACHER_STEPS,
                    generator: torch.Generator | None = None, eps: float = EPS) -> torch.Tensor:
    """[B, L, V] log-probabilities: for each position the teacher's x_0 prediction at the step
    where the teacher unmasked it, or (still masked after k steps) at its last step."""
    x, targets, last = xt, None, None
    for i in range(k):
        start = (t - i * dt).clamp(min=0)
        end = (t - (i + 1) * dt).clamp(min=0)
        log_p = denoise(teacher, x, mask_id)
        x_next = transition(log_p, x, mask_id, move_chance(start.cpu().double(), eps), move_chance(end.cpu().double(), eps),
                            generator)
        revealed = (x_next != x)[..., None].to(log_p.device)
        targets = torch.where(revealed, log_p, log_p if targets is None else targets)
        x, last = x_next, log_p
    still_masked = (x == mask_id)[..., None].to(last.device)
    return torch.where(still_masked, last, targets)


def divergence(student: torch.Tensor, teacher: torch.Tensor, kind: str, mask_id: int) -> torch.Tensor:
    """Per-token divergence of [N, V] log-probabilities, averaged over the N tokens.
    kl: KL(student || teacher), the reference's default (kl-bwd); kl-fwd: KL(teacher || student);
    mse: mean squared difference of the log-probabilities (the reference's, without the MASK
    column, whose -1e6 entries only add rounding noise); tvd: total variation
    0.5 * sum |p_s - p_t| (the reference's "tvd" is an L1 distance between log-probabilities)."""
    keep = torch.ones(student.shape[-1], dtype=torch.bool, device=student.device)
    keep[mask_id] = False
    s, t = student[:, keep], teacher[:, keep]
    if kind == "kl":
        return (s.exp() * (s - t)).sum(-1).mean()
    if kind == "kl-fwd":
        return (t.exp() * (t - s)).sum(-1).mean()
    if kind == "mse":
        return ((s - t) ** 2).mean()
    if kind == "tvd":
        return 0.5 * (s.exp() - t.exp()).abs().sum(-1).mean()
    raise ValueError(f"unknown divergence {kind!r}; use {', '.join(DIVERGENCES)}")


def sdtt_loss(student, teacher, x0: torch.Tensor, dt: float, mask_id: int, kind: str = "kl",
              k: int = TEACHER_STEPS, generator: torch.Generator | None = None) -> torch.Tensor:
    """One SDTT batch: noise x0, teacher targets by k steps, student's one step, divergence on
    the masked positions."""
    t = sdtt_times(x0.shape[0], generator, x0.device)
    xt = add_noise(x0, t, mask_id, generator)
    masked = xt == mask_id
    if not masked.any():
        # nothing to distil, but the student's forward still runs: under DDP every process must
        # take part in each step's gradient sync, and a process that skipped it would hang the rest
        return denoise(student, xt, mask_id).sum() * 0.0
    # the teacher first: its passes' [B, L, V] tensors are freed before the student's graph exists
    target = teacher_targets(teacher, xt, t, dt, mask_id, k, generator)
    log_q = denoise(student, xt, mask_id)
    return divergence(log_q[masked], target[masked], kind, mask_id)

