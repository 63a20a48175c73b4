"""Which parameters train: the attention input projections (the paper's choice: q/k/v_proj, a
fused qkv_proj, or `in_proj` of Mamba-style layers) with the rest frozen, or LoRA adapters."""

from __future__ import annotations

from llmslim.core.errors import BadOptionError

# the paper fine-tunes the attention input projections only; whichever names the family uses
DEFAULT_MODULES = "q_proj,k_proj,v_proj,qkv_proj,query_key_value,in_proj"


def parse_modules(spec: str) -> list[str]:
    names = [m.strip() for m in spec.split(",") if m.strip()]
    if not names:
        raise BadOptionError("--train-modules is empty")
    return names


def matching_linear_names(model, names: list[str]) -> list[str]:
    """Module leaf names among `names` that exist in the model."""
    present = {full.rsplit(".", 1)[-1] for full, _ in model.named_modules()}
    return [n for n in names if n in present]


def freeze_except(model, names: list[str]) -> dict:
    """requires_grad only on parameters of modules whose leaf name is in `names`."""
    found = matching_linear_names(model, names)
    if not found:
        present = sorted({full.rsplit(".", 1)[-1] for full, m in model.named_modules() if len(list(m.children())) == 0})
        raise BadOptionError(f"--train-modules {','.join(names)} matches no module; this model has: {', '.join(present[:20])}")
    wanted = set(found)
    trainable = 0
    for full, module in model.named_modules():
        leaf = full.rsplit(".", 1)[-1]
        for p in module.parameters(recurse=False):
            p.requires_grad_(leaf in wanted)
            trainable += p.numel() if leaf in wanted else 0
    total = sum(p.numel() for p in model.parameters())
    return {"modules": found, "trainable_params": trainable, "total_params": total}


def lora_config(model, names: list[str], r: int, alpha: int, dropout: float = 0.0):
    from peft import LoraConfig

    found = matching_linear_names(model, names)
    if not found:
        raise BadOptionError(f"--train-modules {','.join(names)} matches no module for LoRA")
    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=found, task_type="CAUSAL_LM")


def count_trainable(model) -> dict:
    return {"trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "total_params": sum(p.numel() for p in model.parameters())}
