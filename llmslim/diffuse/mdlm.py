"""Masked diffusion on a transformers causal LM: MDLM's objective (Sahoo et al. 2024, reference
kuleshov-group/mdlm) with DiffuLLaMA's adaptation of an AR model (Gong et al. 2024, reference
HKUNLP/DiffuLLaMA): full attention, the one-position shift kept, no time conditioning.

Absorbing-state noise with the log-linear schedule: sigma(t) = -log(1 - (1 - eps) t), so a token
is masked with probability move_chance(t) = 1 - exp(-sigma) = (1 - eps) t. SUBS: the MASK id gets
no probability and unmasked positions carry their token over (log p = 0 at it). The loss weight
dsigma / expm1(sigma) is exactly 1/t for this schedule.

The shift: the AR model's logit at position i predicts token i + 1, and DiffuLLaMA found that
removing this hurts most, so the prediction for position j is read from logit j - 1. Position 0
has no logit that predicts it, so it is never masked (a BOS or the first prompt token).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llmslim.core.errors import BadOptionError

EPS = 1e-3  # MDLM's noise eps (LogLinearNoise) and its training sampling_eps
NEG = -1e6  # MDLM's "neg_infinity": finite, so 0 * NEG stays 0 in the loss


@dataclass(frozen=True)
class DiffusionConfig:
    """What a diffusion checkpoint needs besides its weights; saved in config.json under
    `llmslim_diffusion`."""

    mask_token_id: int
    seqlen: int = 128  # training window
    eps: float = EPS

    def to_dict(self) -> dict:
        return {"mask_token_id": self.mask_token_id, "seqlen": self.seqlen, "eps": self.eps, "shift": True,
                "noise": "loglinear", "parameterization": "subs", "time_conditioning": False}

    @classmethod
    def from_model(cls, model) -> "DiffusionConfig":
        saved = getattr(model.config, "llmslim_diffusion", None)
        if not saved:
            raise ValueError("not a diffusion model (its config.json has no llmslim_diffusion)")
        return cls(mask_token_id=saved["mask_token_id"], seqlen=saved["seqlen"], eps=saved["eps"])


def move_chance(t: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Probability that a token is masked at time t in [0, 1]: 1 - exp(-sigma(t)) = (1 - eps) t."""
    return (1 - eps) * t


def antithetic_times(n: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """MDLM's _sample_t: n times stratified over [0, 1) (one uniform per stratum), mapped to [EPS, 1]."""
    u = torch.rand(n, generator=generator, device=device)
    u = (u / n + torch.arange(n, device=device) / n) % 1
    return (1 - EPS) * u + EPS


def add_noise(x0: torch.Tensor, t: torch.Tensor, mask_id: int, generator: torch.Generator | None = None,
              eps: float = EPS) -> torch.Tensor:
    """q(x_t | x_0): each token but position 0 replaced by MASK with probability move_chance(t)."""
    chance = move_chance(t, eps)[:, None]
    masked = torch.rand(x0.shape, generator=generator, device=x0.device) < chance
    masked[:, 0] = False
    return torch.where(masked, torch.full_like(x0, mask_id), x0)


def attention_mask(batch: int, length: int, dtype: torch.dtype, device, attn_implementation: str,
                   causal_fraction: float = 0.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """A 4D mask transformers uses as given ([B, 1, L, L]): every position sees every other one,
    or, while annealing (DiffuLLaMA's DiffuGPT recipe), the causal triangle plus each upper entry
    with probability 1 - causal_fraction. Passed explicitly (any family returns a 4D mask
    as given): without one the model builds its causal mask."""
    allowed = torch.ones(length, length, dtype=torch.bool, device=device)
    if causal_fraction > 0:
        upper = torch.rand(length, length, generator=generator, device=device) >= causal_fraction
        allowed = torch.tril(allowed) | upper
    allowed = allowed[None, None].expand(batch, 1, length, length)
    if attn_implementation == "sdpa":
        return allowed
    if attn_implementation == "eager":  # added to the scores
        return torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(~allowed, torch.finfo(dtype).min)
    # flash attention ignores a 4D mask (is_causal stays on); flex adds a bool mask to the scores
    raise BadOptionError(f"masked diffusion needs sdpa or eager attention, not {attn_implementation!r}")


def denoise(model, xt: torch.Tensor, mask_id: int, causal_fraction: float = 0.0,
            generator: torch.Generator | None = None) -> torch.Tensor:
    """log p_theta(x_0 | x_t) with SUBS and the shift: [B, L, V] float32 log-probabilities.
    `model` may be wrapped for DDP (the Trainer under torchrun): the forward goes through the
    wrapper (it syncs gradients), the dtype and config come from the model inside."""
    inner = getattr(model, "module", model)
    mask4d = attention_mask(xt.shape[0], xt.shape[1], inner.dtype, xt.device,
                            inner.config._attn_implementation, causal_fraction, generator)
    logits = model(input_ids=xt, attention_mask=mask4d, use_cache=False).logits.float()
    return subs(logits, xt, mask_id)


def subs(logits: torch.Tensor, xt: torch.Tensor, mask_id: int) -> torch.Tensor:
    """MDLM's SUBS on shifted logits: position j takes logit j - 1, MASK gets NEG, log-softmax,
    then every unmasked position (position 0 included) is a one-hot of its token."""
    shifted = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)  # row 0 is overwritten below (never masked)
    shifted[..., mask_id] += NEG
    log_p = shifted - torch.logsumexp(shifted, dim=-1, keepdim=True)
    unmasked = xt != mask_id
    log_p[unmasked] = NEG
    log_p[unmasked, xt[unmasked]] = 0.0
    return log_p


def mdlm_loss(log_p: torch.Tensor, x0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """MDLM's NELBO: -log p(x_0) / t at every position, summed and divided by all tokens (the
    unmasked ones contribute exactly 0 under SUBS)."""
    nll = -log_p.gather(-1, x0[..., None]).squeeze(-1)
    return (nll / t[:, None]).sum() / x0.numel()
