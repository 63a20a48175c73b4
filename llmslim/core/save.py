"""Saving a model that transformers loads: one helper for every command that writes one."""

from __future__ import annotations

from pathlib import Path


def save_model(model, tokenizer, folder: Path | str) -> dict:
    """Save `model` and its tokenizer as a plain HF folder (`from_pretrained(folder)` loads it).
    A PEFT model is saved twice: its adapter under folder/adapter, and merged into the base
    weights at the top. Returns what was written beside the weights ({"adapter": "adapter/"})."""
    folder = Path(folder)
    info = {}
    if hasattr(model, "peft_config"):
        model.save_pretrained(folder / "adapter")
        model = model.merge_and_unload()
        info["adapter"] = "adapter/"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return info
