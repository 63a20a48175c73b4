"""Training for `diffuse adapt` (MDLM's loss on an AR model made bidirectional) and `diffuse
distill` (SDTT rounds), both on transformers' Trainer (core/training.py's arguments with a
constant lr after warm-up, as MDLM and SDTT); a MASK token; the student's EMA."""

from __future__ import annotations

import copy

import torch
from transformers import Trainer, TrainerCallback

from llmslim.diffuse.mdlm import add_noise, antithetic_times, denoise, mdlm_loss
from llmslim.diffuse.sdtt import sdtt_loss

MASK_TOKEN = "<|mdlm_mask|>"


def add_mask_token(model, tokenizer) -> int:
    """The MASK id: the tokenizer's own mask token, else a new special token; the embeddings
    grow by one row (initialised at the mean of the others, transformers' mean_resizing) when
    the vocabulary has no spare row for it."""
    if tokenizer.mask_token_id is None:
        tokenizer.add_special_tokens({"mask_token": MASK_TOKEN})
    mask_id = tokenizer.mask_token_id
    if mask_id >= model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(mask_id + 1, mean_resizing=True)
    return mask_id


def small_config(config, hidden: int = 256, layers: int = 4, heads: int = 4):
    """`--from-scratch`: the family's config at a small size (same vocabulary and tokenizer)."""
    small = copy.deepcopy(config)
    head_dim = hidden // heads
    small.hidden_size, small.num_hidden_layers, small.num_attention_heads = hidden, layers, heads
    small.num_key_value_heads, small.intermediate_size = heads, 4 * hidden
    if hasattr(small, "head_dim"):
        small.head_dim = head_dim
    for name in ("layer_types",):  # per-layer lists sized by the old depth
        if getattr(small, name, None) is not None:
            setattr(small, name, getattr(small, name)[:layers])
    return small


def causal_fraction(step: int, anneal_steps: int) -> float:
    """DiffuLLaMA's annealing (LLaMA-Factory's ddm trainer): each upper-triangle entry of the
    attention mask is open with probability min(1, (step + 1) / anneal_steps); 0 = full attention."""
    if anneal_steps <= 0:
        return 0.0
    return max(0.0, 1.0 - (step + 1) / anneal_steps)


class MaskedDiffusionTrainer(Trainer):
    """Trainer with MDLM's loss: antithetic times, absorbing noise, SUBS, 1/t-weighted NLL."""

    def __init__(self, *args, mask_id: int, anneal_steps: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        self.mask_id, self.anneal_steps = mask_id, anneal_steps

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        x0 = inputs["input_ids"]
        t = antithetic_times(x0.shape[0], device=x0.device)
        xt = add_noise(x0, t, self.mask_id)
        log_p = denoise(model, xt, self.mask_id, causal_fraction(self.state.global_step, self.anneal_steps))
        loss = mdlm_loss(log_p, x0, t)
        return (loss, log_p) if return_outputs else loss


class SDTTTrainer(Trainer):
    """Trainer with SDTT's loss against a frozen teacher (kept out of the module tree, so the
    optimizer and checkpoints never see it)."""

    def __init__(self, *args, teacher, dt: float, mask_id: int, divergence: str, teacher_steps: int, **kwargs):
        super().__init__(*args, **kwargs)
        self._teacher = [teacher]
        self.dt, self.mask_id, self.divergence, self.teacher_steps = dt, mask_id, divergence, teacher_steps

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = sdtt_loss(model, self._teacher[0], inputs["input_ids"], self.dt, self.mask_id, self.divergence, self.teacher_steps)
        return (loss, None) if return_outputs else loss


class EMA:
    """Exponential moving average of the student's weights, with the reference's warm-up:
    decay_n = min(decay, (1 + n) / (10 + n)) after the n-th update."""

    def __init__(self, model, decay: float, updates: int = 0, shadow: dict | None = None):
        self.decay, self.updates = decay, updates
        self.shadow = shadow or {k: v.detach().clone().float() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].mul_(d).add_(v.detach().float(), alpha=1 - d)
            else:
                self.shadow[k].copy_(v)

    def copy_to(self, model):
        """A copy of `model` holding the averaged weights."""
        averaged = copy.deepcopy(model)
        averaged.load_state_dict({k: v.to(model.state_dict()[k].dtype) for k, v in self.shadow.items()})
        return averaged


class EMAUpdate(TrainerCallback):
    def __init__(self, ema: EMA, model):
        self.ema, self.model = ema, model

    def on_step_end(self, args, state, control, **kwargs):
        self.ema.update(self.model)
