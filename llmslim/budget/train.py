"""TALE-PT (TALE §3.3): teach the model to be concise *without* a budget in the prompt, from the
answers `budget search` found.

- `sft`: TRL's SFTTrainer with a LoRA adapter on (vanilla CoT prompt -> the searched, shorter
  correct answer), loss on the answer tokens only (prompt-completion data).
- `dpo`: TRL's DPOTrainer with a LoRA adapter: chosen = the searched answer, rejected = the longer
  vanilla answer, prompt = the vanilla CoT prompt (no budget).

The adapter is merged into the weights and saved as a plain HF folder (`load_model` reads it back;
`budget run` evaluates it); the unmerged adapter is kept beside it in `adapter/`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from llmslim.budget import prompts as P
from llmslim.core.errors import BadOptionError, DataError
from llmslim.core.generate import render_prompt

log = logging.getLogger(__name__)
ALGOS = ("sft", "dpo")


@dataclass
class TrainConfig:
    algo: str = "sft"
    # LoRA: TALE-PT fine-tunes with LoRA; r/alpha/dropout are PEFT's common small-model defaults
    rank: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    lr: float = 2e-4
    epochs: int = 2
    max_steps: int | None = None  # overrides epochs when set
    batch_size: int = 4
    max_length: int = 768
    beta: float = 0.1  # DPO temperature (TRL default)
    seed: int = 0
    # TALE-PT trains on answers the budget search made shorter; the rest are the model's own vanilla
    # answers (self-distillation, not TALE-PT): only with --all-searched
    only_improved: bool = True

    def check(self) -> None:
        if self.algo not in ALGOS:
            raise BadOptionError(f"unknown --algo {self.algo!r}; use {' or '.join(ALGOS)}")
        if self.epochs < 1 or (self.max_steps is not None and self.max_steps < 1):
            raise BadOptionError("--epochs and --max-steps must be >= 1")
        if self.rank < 1 or self.batch_size < 1 or self.max_length < 2 or self.lr <= 0:
            raise BadOptionError("--lora-r and --batch-size must be >= 1, --max-length >= 2, --lr > 0")

    def steps(self, rows: int) -> int:
        """Optimizer steps: --max-steps, or --epochs passes over `rows`. Under torchrun each step
        takes --batch-size rows in every process, so an epoch is that many times shorter."""
        from llmslim.core import distributed

        return self.max_steps or self.epochs * math.ceil(rows / (self.batch_size * distributed.world()))


def examples_from_search(records: list[dict], t: P.Templates = P.DEFAULT, only_improved: bool = True) -> list[dict]:
    """{prompt, chosen, rejected} from `budget search` rows: searched, correct answers that the
    search made shorter than vanilla CoT (all searched ones with only_improved=False)."""
    if only_improved and any(r.get("searched") for r in records) and not any(r.get("improved") for r in records):
        raise DataError("the budget search found no answer shorter than vanilla CoT: TALE-PT would train on the model's own "
                        "vanilla answers (self-distillation); --all-searched does that anyway")
    out = []
    for r in records:
        if not r.get("searched") or r.get("answer") is None or (only_improved and not r.get("improved")):
            continue
        if "question" not in r:
            raise DataError("search records need 'question' (write them with `budget search --out`)")
        out.append({"prompt": P.cot(r["question"], r.get("kind", "number"), t), "chosen": r["answer"],
                    "rejected": r.get("vanilla_output") or "", "improved": bool(r.get("improved"))})
    if not out:
        raise DataError("no usable search records: none was answered correctly by vanilla CoT")
    return out


def gold_target(solution: str) -> str:
    """A GSM8K reference solution as a concise TALE-format answer: calculator annotations
    `<<...>>` dropped, `#### N` -> `Answer: [[N]]`."""
    import re

    from llmslim.budget.parse import gsm8k_gold

    body = re.sub(r"<<[^>]*>>", "", solution.split("####")[0]).strip()
    return f"{body}\nAnswer: [[{gsm8k_gold(solution)}]]"


def examples_from_gold(records: list[dict], t: P.Templates = P.DEFAULT) -> list[dict]:
    """{prompt, chosen} from GSM8K-format records ({question, answer '... #### N'}): a stand-in
    for searched answers where the model itself solves too few training questions (a 135M
    model). Not TALE-PT's data: the targets come from the dataset, not from the model."""
    out = [{"prompt": P.cot(r["question"].strip(), "number", t), "chosen": gold_target(r["answer"]), "rejected": "",
            "improved": False} for r in records if "####" in str(r.get("answer", ""))]
    if not out:
        raise DataError("no GSM8K-format records ({question, answer: '... #### N'}) for --targets gold")
    return out


def _lora(model, cfg: TrainConfig):
    from peft import LoraConfig

    names = {n.split(".")[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    targets = [t for t in cfg.target_modules if t in names]
    if not targets:
        raise BadOptionError(f"none of the LoRA target modules {list(cfg.target_modules)} exist in this model")
    return LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets, task_type="CAUSAL_LM")


def _callbacks(progress) -> list:
    """The progress tick and a seed per process under torchrun (LoRA dropout)."""
    from llmslim.core.training import Advance, ProcessSeed

    return [Advance(progress), ProcessSeed()]


def _mixed_bf16(model) -> bool:
    from llmslim.core.training import mixed_bf16

    p = next(model.parameters())
    return mixed_bf16(p.device, p.dtype)


def sft(model, tokenizer, examples: list[dict], cfg: TrainConfig, workdir: Path, progress=None) -> tuple[object, dict]:
    """LoRA SFT with TRL's SFTTrainer on (vanilla prompt, searched answer) pairs, the loss on
    the answer only (prompt-completion data); 10% warmup, then linear decay. Returns (the PEFT
    model, {losses, steps})."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    rows = [{"prompt": render_prompt(tokenizer, e["prompt"]), "completion": e["chosen"]} for e in examples]
    steps = cfg.steps(len(rows))
    args = SFTConfig(
        output_dir=str(workdir), per_device_train_batch_size=cfg.batch_size, learning_rate=cfg.lr, max_steps=steps,
        lr_scheduler_type="linear", warmup_steps=max(1, steps // 10), max_grad_norm=1.0, weight_decay=0.0,
        max_length=cfg.max_length, completion_only_loss=True, packing=False, logging_steps=1, save_strategy="no",
        report_to=[], seed=cfg.seed, data_seed=cfg.seed, use_cpu=next(model.parameters()).device.type == "cpu",
        bf16=_mixed_bf16(model), disable_tqdm=True, dataloader_num_workers=0,
        ddp_find_unused_parameters=False,  # under torchrun: every LoRA weight gets a gradient
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                         peft_config=_lora(model, cfg), callbacks=_callbacks(progress))
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # it prints every log dict on stdout (breaks --json)
    trainer.train()
    trainer.model.eval()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return trainer.model, {"losses": losses, "steps": trainer.state.global_step}


def dpo(model, tokenizer, examples: list[dict], cfg: TrainConfig, workdir: Path, progress=None) -> tuple[object, dict]:
    """DPO with TRL (LoRA adapter; the reference policy is the adapter switched off)."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    pairs = [e for e in examples if e["rejected"] and e["rejected"] != e["chosen"]]
    if not pairs:
        raise DataError("DPO needs pairs with a different (vanilla) rejected answer; search found none")
    rows = [{"prompt": [{"role": "user", "content": e["prompt"]}] if tokenizer.chat_template else e["prompt"],
             "chosen": [{"role": "assistant", "content": e["chosen"]}] if tokenizer.chat_template else e["chosen"],
             "rejected": [{"role": "assistant", "content": e["rejected"]}] if tokenizer.chat_template else e["rejected"]}
            for e in pairs]
    steps = cfg.steps(len(rows))
    args = DPOConfig(
        output_dir=str(workdir), per_device_train_batch_size=cfg.batch_size, learning_rate=cfg.lr, max_steps=steps,
        beta=cfg.beta, max_length=cfg.max_length, logging_steps=1, save_strategy="no", report_to=[], seed=cfg.seed,
        use_cpu=next(model.parameters()).device.type == "cpu", bf16=_mixed_bf16(model), disable_tqdm=True,
        ddp_find_unused_parameters=False,
    )
    trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                         peft_config=_lora(model, cfg), callbacks=_callbacks(progress))
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # it prints every log dict on stdout (breaks --json)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    trainer.model.eval()
    return trainer.model, {"losses": losses, "steps": steps, "pairs": len(rows)}


def train(model, tokenizer, examples: list[dict], cfg: TrainConfig, workdir: Path, progress=None) -> tuple[object, dict]:
    if cfg.algo not in ALGOS:
        raise BadOptionError(f"unknown --algo {cfg.algo!r}; use {' or '.join(ALGOS)}")
    if cfg.rank < 1 or cfg.lr <= 0 or cfg.batch_size < 1:
        raise BadOptionError("--rank and --batch-size must be >= 1 and --lr > 0")
    if cfg.algo == "sft":
        return sft(model, tokenizer, examples, cfg, workdir, progress)
    return dpo(model, tokenizer, examples, cfg, workdir, progress)


