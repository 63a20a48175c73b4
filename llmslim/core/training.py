"""What every command that trains with transformers' Trainer shares (recover, diffuse): its
arguments, the bf16 choice, and a callback that advances the command's progress bar."""

from __future__ import annotations

import torch
from transformers import TrainerCallback


def mixed_bf16(device: torch.device, dtype: torch.dtype) -> bool:
    """The Trainer's bf16 flag: on a CUDA card with bf16, fp32 weights compute in bf16 by
    autocast (and bf16 weights, asked for with --dtype, stay bf16)."""
    return device.type == "cuda" and dtype in (torch.float32, torch.bfloat16) and torch.cuda.is_bf16_supported()


def training_args(work_dir, *, batch_size: int, lr: float, max_steps: int, warmup_steps: int, scheduler: str, seed: int,
                  device: torch.device, dtype: torch.dtype, save_every: int = 0):
    """AdamW at `lr` with the `scheduler` after a linear warm-up, gradient clipping 1.0, no weight
    decay, a log line per step, checkpoints every `save_every` steps (0: none; only the last two
    are kept: they exist for --resume, and a full fine-tune's is weights + AdamW). Under torchrun
    `batch_size` is per process and each step sees batch_size x processes sequences."""
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(work_dir), per_device_train_batch_size=batch_size, learning_rate=lr, max_steps=max_steps,
        lr_scheduler_type=scheduler, warmup_steps=warmup_steps, weight_decay=0.0, max_grad_norm=1.0,
        logging_steps=1, save_strategy="steps" if save_every else "no", save_steps=save_every or 500,
        save_total_limit=2,
        report_to=[], disable_tqdm=True, remove_unused_columns=False, dataloader_num_workers=0,
        use_cpu=device.type == "cpu", bf16=mixed_bf16(device, dtype), seed=seed, data_seed=seed,
        # under torchrun the Trainer wraps the model in DDP: every trained weight gets a gradient
        # (LoRA or all), so no extra pass looking for unused ones
        ddp_find_unused_parameters=False,
    )


class Advance(TrainerCallback):
    """One tick of the command's progress per optimizer step."""

    def __init__(self, advance):
        self.advance = advance

    def on_step_end(self, args, state, control, **kwargs):
        if self.advance:
            self.advance(1)


class ProcessSeed(TrainerCallback):
    """Under torchrun, a seed per process for the noise a loss draws itself (diffusion times and
    masks, SDTT's teacher steps, LoRA dropout): the Trainer seeds every process alike, so without
    this process r's i-th window would get process 0's draws. The seed + rank, as accelerate's
    device-specific seed (which TRL's GRPOTrainer uses); set before the first step, so --resume
    still restores each process's saved state. One process: nothing changes."""

    def on_train_begin(self, args, state, control, **kwargs):
        from accelerate.utils import set_seed

        from llmslim.core import distributed

        if distributed.world() > 1:
            set_seed(args.seed + distributed.rank())
