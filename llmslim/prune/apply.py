"""Apply a pruning decision to a model in place (core/save.py saves the smaller model)."""

from __future__ import annotations

import torch
from torch import nn

from llmslim.core.arch import adapter_for, text_config
from llmslim.core.errors import BadOptionError, UnsupportedArchitectureError
from llmslim.core.surgery import keep_ffn_neurons
from llmslim.prune.units import layer_units


def flap_bias(model, keep: list[torch.Tensor], act_mean: list[torch.Tensor], target: str = "ffn") -> None:
    """FLAP bias compensation: the removed units' mean contribution, W[:, pruned] @ E[x_pruned]
    (their output-projection input channels), becomes a bias of the output projection, so the
    layer's expected output is unchanged."""
    for unit, kept, mean in zip(layer_units(model, target), keep, act_mean):
        pruned = ~_kept_channels(unit, kept)
        w = unit.output.weight.data
        shift = (w[:, pruned.to(w.device)].float() @ mean[pruned].to(w.device).float()).to(w.dtype)
        _output_bias(unit.output).add_(shift)
    _declare_bias(model, target)


def _kept_channels(unit, kept: torch.Tensor) -> torch.Tensor:
    """A mask over the output projection's input channels: True on those of the kept units (a
    kv group's are its query heads x head_dim, in order)."""
    mask = torch.zeros(unit.count, dtype=torch.bool)
    mask[kept] = True
    return mask.repeat_interleave(unit.channels_per_unit)


def _output_bias(out: nn.Linear) -> torch.Tensor:
    """The projection's bias (its data), a new zero one where it has none."""
    if out.bias is None:
        out.bias = nn.Parameter(torch.zeros(out.out_features, dtype=out.weight.dtype, device=out.weight.device), requires_grad=False)
    return out.bias.data


def _declare_bias(model, target: str) -> None:
    """Make the output projections' new biases part of the config, so plain transformers loads them."""
    if target == "ffn":
        _declare_mlp_bias(model)
    else:
        _declare_attention_bias(model)


RECONSTRUCT_DAMP = 0.1  # ridge weight toward the original columns (docs/prune.md: swept 0 .. 1 on SmolLM2)


def reconstruct(model, keep: list[torch.Tensor], gram: list[torch.Tensor], act_mean: list[torch.Tensor],
                target: str = "ffn", damp: float = RECONSTRUCT_DAMP) -> None:
    """Refit each output projection on the input channels it keeps, before they are cut: the
    least-squares W', b that best reproduce the unpruned layer's output on the calibration
    inputs, min E||W x + b0 - W' x_S - b||^2 + damp * mean(diag E[x_S x_S^T]) * ||W' - W_S||^2,
    from E[x x^T] (`gram`) and E[x] (`act_mean`) alone. The ridge pulls W' toward the original
    columns W_S: with few calibration tokens per weight the plain solution fits the calibration
    text and does worse elsewhere (docs/prune.md). It is the least-squares reconstruction of the
    next layer's weights from channel pruning for CNNs (He et al. 2017, "Channel pruning for
    accelerating very deep neural networks"; ThiNet, Luo et al. 2017) on a transformer's output
    projection, plus a bias: FLAP's bias compensation (b alone, W' = W_S) is its limit as the
    ridge grows, and Kwon et al. 2022's mask tuning (one least-squares scale per kept unit) a
    restricted form of it."""
    for unit, kept, g, mean in zip(layer_units(model, target), keep, gram, act_mean):
        channels = _kept_channels(unit, kept).nonzero().squeeze(1)  # the kept inputs, in order
        out = unit.output
        w = out.weight.data.double().cpu()
        b0 = _output_bias(out).double().cpu()
        g, mean = g.double(), mean.double()
        k = channels.numel()
        # normal equations of [x_S, 1] -> y = W x + b0: the moments of y follow from those of x
        lhs = torch.empty(k + 1, k + 1, dtype=torch.float64)
        lhs[:k, :k] = g[channels][:, channels]
        lhs[:k, k] = lhs[k, :k] = mean[channels]
        lhs[k, k] = 1.0
        rhs = torch.cat([g[channels] @ w.T + torch.outer(mean[channels], b0), (w @ mean + b0)[None]])
        ridge = damp * lhs.diagonal()[:k].mean()
        lhs.diagonal()[:k] += ridge
        rhs[:k] += ridge * w[:, channels].T
        solution = torch.linalg.solve(lhs, rhs)  # [k + 1, out]: W'^T over b
        refit = torch.zeros_like(w)
        refit[:, channels] = solution[:k].T  # the pruned columns go with their channels after this
        out.weight.data = refit.to(out.weight.dtype).to(out.weight.device)
        out.bias.data = solution[k].to(out.weight.dtype).to(out.weight.device)
    _declare_bias(model, target)


def _declare_attention_bias(model) -> None:
    """Llama-style configs have one `attention_bias` switch for q, k, v and o: zero q/k/v biases
    make the o_proj bias loadable by plain transformers."""
    config = text_config(model.config)
    if not hasattr(config, "attention_bias"):
        return
    for unit in layer_units(model, "attn"):
        for lin in unit.linears():
            if lin.bias is None:
                lin.bias = nn.Parameter(torch.zeros(lin.out_features, dtype=lin.weight.dtype, device=lin.weight.device), requires_grad=False)
    config.attention_bias = True


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


def prune_units(model, keep: list[torch.Tensor], target: str = "ffn") -> list[int]:
    """Keep units `keep[l]` in layer l; return per-layer unit counts (FFN width or kv groups)."""
    if target == "ffn":
        return prune_ffn(model, keep)
    return prune_heads(model, keep)


# families whose attention reads `config.head_dim` (so fewer heads keep their width on reload);
# OPT derives head_dim = hidden_size / num_attention_heads, which removing heads would change
HEAD_DIM_FAMILIES = {"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "gemma3_text", "phi3"}


def check_head_pruning(model) -> None:
    family = adapter_for(model).family
    if family not in HEAD_DIM_FAMILIES:
        raise UnsupportedArchitectureError(
            f"--target attn: {family} configs derive head_dim from the head count, so a model with fewer "
            "heads would not reload; prune its FFN instead"
        )


def prune_heads(model, keep: list[torch.Tensor]) -> list[int]:
    """Keep kv groups `keep[l]` (with their query heads) in layer l; the config gets the new head
    counts and an explicit head_dim, so plain transformers rebuilds the same shapes."""
    check_head_pruning(model)
    config = text_config(model.config)
    units = layer_units(model, "attn")
    counts = [k.numel() for k in keep]
    if len(set(counts)) != 1:
        raise BadOptionError("attention pruning needs the same number of kv groups in every layer")
    per_group, head_dim = units[0].per_group, units[0].part.head_dim
    for unit, kept in zip(units, keep):
        unit.keep(kept)
    config.head_dim = head_dim
    config.num_key_value_heads = counts[0]
    config.num_attention_heads = counts[0] * per_group
    return counts
