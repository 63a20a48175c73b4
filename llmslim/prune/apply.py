"""Apply a pruning decision to a model in place, and save the smaller model."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from llmslim.core.arch import adapter_for, text_config
from llmslim.core.surgery import keep_ffn_neurons


def flap_bias(model, keep: list[torch.Tensor], act_mean: list[torch.Tensor]) -> None:
    """FLAP bias compensation: the removed neurons' mean contribution, W[:, pruned] @ E[x_pruned],
    becomes a bias of the output projection, so the layer's expected output is unchanged."""
    adapter = adapter_for(model)
    config = text_config(model.config)
    for layer, kept, mean in zip(adapter.decoder_layers(model), keep, act_mean):
        ffn = adapter.ffn(layer, config)
        pruned = torch.ones(ffn.width, dtype=torch.bool)
        pruned[kept] = False
        w = ffn.output.weight.data
        shift = (w[:, pruned.to(w.device)].float() @ mean[pruned].to(w.device).float()).to(w.dtype)
        if ffn.output.bias is None:
            ffn.output.bias = nn.Parameter(torch.zeros(w.shape[0], dtype=w.dtype, device=w.device), requires_grad=False)
        ffn.output.bias.data += shift
    _declare_mlp_bias(model)


def _declare_mlp_bias(model) -> None:
    """Gated-MLP configs have one `mlp_bias` switch for gate, up and down: give the inputs zero
    biases so the saved model loads in plain transformers with mlp_bias=True."""
    config = text_config(model.config)
    if not hasattr(config, "mlp_bias"):
        return
    adapter = adapter_for(model)
    for layer in adapter.decoder_layers(model):
        ffn = adapter.ffn(layer, config)
        for block in ffn.inputs:
            lin = block.linear
            if lin.bias is None:
                lin.bias = nn.Parameter(torch.zeros(lin.out_features, dtype=lin.weight.dtype, device=lin.weight.device), requires_grad=False)
    config.mlp_bias = True


def prune_ffn(model, keep: list[torch.Tensor]) -> list[int]:
    """Keep neurons `keep[l]` in layer l; set the config so the model saves and reloads."""
    adapter = adapter_for(model)
    config = text_config(model.config)
    widths = []
    for layer, kept in zip(adapter.decoder_layers(model), keep):
        ffn = adapter.ffn(layer, config)
        keep_ffn_neurons(ffn, kept)
        widths.append(ffn.width)
    key = adapter.ffn_width_key()
    if len(set(widths)) == 1:
        setattr(config, key, widths[0])
        if hasattr(config, "llmslim_ffn_widths"):
            del config.llmslim_ffn_widths
    else:
        # transformers has one width per model: record per-layer widths for llmslim's loader
        setattr(config, key, max(widths))
        config.llmslim_ffn_widths = widths
    return widths


def save_model(model, tokenizer, folder: Path) -> None:
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def count_params(model) -> int:
    return sum(p.numel() for p in model.parameters())
