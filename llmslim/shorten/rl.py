"""On-policy shortening with TRL's GRPOTrainer: the similarity + length reward as the reward
function, a KL penalty (beta) to the frozen input model, attention input projections (or LoRA)
trained. GRPO needs no value model: with a 135M policy on a CPU that halves the memory and the
work per step compared with PPO, and the group baseline suits a reward that is only meaningful
relative to other answers to the same prompt.

The known trap: if the completion limit is below the answers' natural length, every completion
is truncated, all rewards in a group are equal, advantages are 0 and nothing is learned. So the
limit defaults to above the longest reference answer trained on, and the clipped ratio and the
reward spread are logged and checked.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from llmslim.core.device import peak_memory_mb
from llmslim.core.errors import BadOptionError
from llmslim.core.generate import generate
from llmslim.core.training import mixed_bf16
from llmslim.shorten.params import DEFAULT_MODULES, count_trainable, freeze_except, lora_config, parse_modules
from llmslim.shorten.reference import ReferenceSet
from llmslim.shorten.reward import RewardConfig, ShortenReward

log = logging.getLogger(__name__)


@dataclass
class RLConfig:
    lam: float = 0.5  # λ of the reward (paper sweeps 0.1 ... 1.0)
    reward_clip: float = 1.0  # reward clipped to [-c, c]
    beta: float = 0.04  # KL(π ‖ π_ref) coefficient (TRL's estimator, per token)
    learning_rate: float = 1e-5
    steps: int = 100  # optimizer steps
    batch_size: int = 2  # prompts per step
    num_generations: int = 4  # sampled answers per prompt (the GRPO group)
    completion_limit: int | None = None  # None: above the longest reference (see module doc)
    temperature: float = 1.0
    train_modules: str = DEFAULT_MODULES
    lora: bool = False
    lora_r: int = 16
    lora_alpha: int = 32
    eval_every: int = 0  # validation pass (greedy mean length on held-out prompts) every K steps
    save_every: int = 0  # checkpoint every N steps (0: none)
    max_grad_norm: float = 1.0
    seed: int = 0

    def validate(self) -> None:
        RewardConfig(self.lam, self.reward_clip)
        for name, option in (("steps", "--max-steps"), ("batch_size", "--batch-size"), ("num_generations", "--num-generations")):
            if getattr(self, name) < 1:
                raise BadOptionError(f"{option} must be >= 1")
        if self.num_generations < 2:
            raise BadOptionError("--num-generations must be >= 2: GRPO compares answers within a group")
        if self.learning_rate <= 0 or self.beta < 0:
            raise BadOptionError("--lr must be > 0 and --beta >= 0")
        if self.completion_limit is not None and self.completion_limit < 1:
            raise BadOptionError("--completion-limit must be >= 1")


def auto_completion_limit(refs: ReferenceSet, margin: float = 1.25) -> int:
    """Above the longest reference answer: a shorter limit truncates every completion (the trap)."""
    return int(math.ceil(refs.max_tokens * margin)) + 8


def _dataset(refs: ReferenceSet, tokenizer):
    from datasets import Dataset

    chat = bool(tokenizer.chat_template)
    rows = [{"prompt": [{"role": "user", "content": r.prompt}] if chat else r.prompt, "ref_text": r.text, "ref_tokens": r.n_tokens}
            for r in refs.refs]
    return Dataset.from_list(rows)


def _callbacks(reward: ShortenReward, history: list, val_prompts: list[str], tokenizer, cfg: RLConfig, limit: int, progress):
    from transformers import TrainerCallback

    class Monitor(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            if not logs or "loss" not in logs and "reward" not in logs:
                return
            row = {"step": state.global_step}
            for key, name in (("loss", "loss"), ("reward", "reward"), ("reward_std", "reward_std"), ("kl", "kl"),
                              ("completions/mean_length", "mean_length"), ("completions/clipped_ratio", "clipped_ratio"),
                              ("frac_reward_zero_std", "frac_reward_zero_std"), ("grad_norm", "grad_norm")):
                if key in logs:
                    row[name] = float(logs[key])
            row.update({f"sim_{k}": v for k, v in reward.stats.last.items() if k in ("cos", "reward_clipped_frac")})
            history.append(row)
            if progress:
                progress(row)

        def on_step_end(self, args, state, control, model=None, **kw):
            # under torchrun one process validates; the others wait for it at the next step's sync
            if cfg.eval_every and val_prompts and state.global_step % cfg.eval_every == 0 and state.is_world_process_zero:
                was_training = model.training
                model.eval()
                gens = generate(model, tokenizer, val_prompts, max_new_tokens=limit, batch_size=len(val_prompts))
                if was_training:
                    model.train()
                mean = sum(g.n_tokens for g in gens) / len(gens)
                history.append({"step": state.global_step, "val_mean_length": mean,
                                "val_finished": sum(g.finished for g in gens) / len(gens)})
                log.info("step %d: validation mean length %.1f tokens", state.global_step, mean)

    return [Monitor()]


def check_learning(history: list[dict]) -> list[str]:
    """Warnings for the trap: every completion truncated, or no reward spread in any group."""
    rows = [h for h in history if "clipped_ratio" in h]
    warnings = []
    if rows and all(h["clipped_ratio"] >= 1.0 for h in rows):
        warnings.append("every completion hit the completion limit (clipped ratio 1): raise --completion-limit")
    if rows and all(h.get("reward_std", 1.0) == 0.0 for h in rows):
        warnings.append("rewards never differed within a group (reward spread 0): nothing was learned")
    return warnings


def _grpo_args(cfg: RLConfig, work_dir: Path, limit: int, device: torch.device, dtype: torch.dtype):
    """TRL's GRPOConfig for one prompt batch of cfg.batch_size x cfg.num_generations answers per step."""
    from trl import GRPOConfig

    return GRPOConfig(
        output_dir=str(work_dir),
        per_device_train_batch_size=cfg.batch_size * cfg.num_generations,
        gradient_accumulation_steps=1,
        num_generations=cfg.num_generations,
        max_completion_length=limit,
        temperature=cfg.temperature,
        beta=cfg.beta,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type="constant",
        max_steps=cfg.steps,
        max_grad_norm=cfg.max_grad_norm,
        logging_steps=1,
        save_strategy="steps" if cfg.save_every else "no",
        save_steps=cfg.save_every or 500,
        save_only_model=False,
        report_to="none",
        disable_tqdm=True,
        remove_unused_columns=False,
        gradient_checkpointing=False,
        bf16=mixed_bf16(device, dtype),
        fp16=False,
        use_cpu=device.type == "cpu",
        seed=cfg.seed,
        data_seed=cfg.seed,
        dataloader_num_workers=0,
        log_completions=False,
    )


def train_rl(model, tokenizer, refs: ReferenceSet, embedder, cfg: RLConfig, *, work_dir: Path, resume: bool = False,
             val_prompts: list[str] | None = None, progress=None) -> dict:
    """Train `model` in place (or its LoRA adapters) and return the trained model and a report.

    `work_dir` holds TRL's checkpoints (checkpoint-N/); `resume` continues from the latest.
    """
    from transformers.trainer_utils import get_last_checkpoint
    from trl import GRPOTrainer

    cfg.validate()
    if not refs.refs:
        raise BadOptionError("no training prompts left (check --max-ref-tokens / unfinished references)")
    limit = cfg.completion_limit or auto_completion_limit(refs)
    if limit <= refs.max_tokens:
        log.warning("--completion-limit %d is not above the longest reference answer (%d tokens): completions "
                    "will be truncated and rewards may not differ", limit, refs.max_tokens)
    device = next(model.parameters()).device
    names = parse_modules(cfg.train_modules)
    peft_config = None
    if cfg.lora:
        peft_config = lora_config(model, names, cfg.lora_r, cfg.lora_alpha)
        trainable = {"modules": list(peft_config.target_modules), "lora_r": cfg.lora_r}
    else:
        trainable = freeze_except(model, names)

    reward = ShortenReward(embedder, RewardConfig(cfg.lam, cfg.reward_clip))
    args = _grpo_args(cfg, work_dir, limit, device, model.dtype)
    history: list[dict] = []
    trainer = GRPOTrainer(
        model=model, reward_funcs=reward, args=args, train_dataset=_dataset(refs, tokenizer),
        processing_class=tokenizer, peft_config=peft_config,
        callbacks=_callbacks(reward, history, val_prompts or [], tokenizer, cfg, limit, progress),
    )
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # it prints every log dict on stdout (breaks --json)
    if cfg.lora:
        trainable.update(count_trainable(trainer.model))
    t0 = time.perf_counter()
    resume_from = get_last_checkpoint(str(work_dir)) if resume else None
    if resume and resume_from is None:
        raise BadOptionError(f"--resume: no checkpoint-N folder in {work_dir}")
    trainer.train(resume_from_checkpoint=resume_from)
    train_s = time.perf_counter() - t0
    trained = trainer.model
    return {
        "model": trained,
        "history": history,
        "completion_limit": limit,
        "trainable": trainable,
        "warnings": check_learning(history),
        "train_s": train_s,
        "peak_memory_mb": peak_memory_mb(device),
        "resumed_from": resume_from,
        "config": asdict(cfg),
    }
