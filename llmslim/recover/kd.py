"""The recovery loss and the trainer that computes it.

loss = kd * T^2 * KL(p_teacher^T || p_student^T) + (1 - kd) * CE(student, next token)

KL over the full vocabulary at every predicted position (the positions the CE scores), with
both distributions softened by temperature T and the T^2 factor of Hinton et al. (2015) that
keeps the gradient scale independent of T; `kd = 0` is LLM-Pruner's plain LoRA recovery, the
teacher then unused. Minitron distils with KL on logits the same way (T = 1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import Trainer


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
            kd: float, temperature: float = 1.0) -> tuple[torch.Tensor, dict]:
    """[B, T, V] logits and [B, T] labels (-100 = not scored; labels are the inputs, shifted
    here as transformers does). Returns (loss, {"kl": ..., "ce": ...})."""
    s = student_logits[:, :-1].float()
    target = labels[:, 1:]
    mask = target != -100
    ce = F.cross_entropy(s[mask], target[mask])
    if kd == 0:
        return ce, {"ce": ce.detach()}
    t = teacher_logits[:, :-1].float()[mask] / temperature
    log_p_student = F.log_softmax(s[mask] / temperature, dim=-1)
    log_p_teacher = F.log_softmax(t, dim=-1)
    kl = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(-1).mean() * temperature**2
    return kd * kl + (1 - kd) * ce, {"ce": ce.detach(), "kl": kl.detach()}


class DistillTrainer(Trainer):
    """transformers' Trainer with kd_loss; the teacher runs in no_grad on the student's device
    (its logits are computed per batch, never cached)."""

    def __init__(self, *args, teacher=None, kd: float = 0.0, temperature: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.teacher, self.kd, self.temperature = teacher, kd, temperature
        self.parts: list[dict] = []

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop("labels")
        out = model(**inputs)
        teacher_logits = None
        if self.kd > 0:
            with torch.no_grad():
                teacher_logits = self.teacher(**inputs).logits
        loss, parts = kd_loss(out.logits, teacher_logits, labels, self.kd, self.temperature)
        self.parts.append({k: float(v) for k, v in parts.items()})
        return (loss, out) if return_outputs else loss
