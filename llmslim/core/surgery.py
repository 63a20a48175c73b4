"""Physically remove FFN neurons and attention heads: smaller matrices, not masks."""

from __future__ import annotations

import torch
from torch import nn

from llmslim.core.arch import FFN, Attention


def _keep_rows(linear: nn.Linear, index: torch.Tensor) -> None:
    index = index.to(linear.weight.device)
    linear.weight = nn.Parameter(linear.weight.data.index_select(0, index).clone(), requires_grad=linear.weight.requires_grad)
    if linear.bias is not None:
        linear.bias = nn.Parameter(linear.bias.data.index_select(0, index).clone(), requires_grad=linear.bias.requires_grad)
    linear.out_features = index.numel()


def _keep_cols(linear: nn.Linear, index: torch.Tensor) -> None:
    index = index.to(linear.weight.device)
    linear.weight = nn.Parameter(linear.weight.data.index_select(1, index).clone(), requires_grad=linear.weight.requires_grad)
    linear.in_features = index.numel()


def _row_index(blocks, keep: torch.Tensor) -> dict[int, tuple[nn.Linear, torch.Tensor]]:
    """Group kept rows by matrix, so a fused matrix (phi3) is sliced once with all its parts."""
    grouped: dict[int, tuple[nn.Linear, list[torch.Tensor]]] = {}
    for block in blocks:
        grouped.setdefault(id(block.linear), (block.linear, []))[1].append(keep + block.offset)
    return {k: (lin, torch.cat(parts)) for k, (lin, parts) in grouped.items()}


def keep_ffn_neurons(ffn: FFN, keep: torch.Tensor) -> None:
    """Keep only neurons `keep` (sorted indices) of this FFN, in place."""
    keep = torch.as_tensor(keep, dtype=torch.long).sort().values
    for linear, index in _row_index(ffn.inputs, keep).values():
        _keep_rows(linear, index)
    _keep_cols(ffn.output, keep)
    ffn.width = keep.numel()
    # transformers' MLPs read intermediate_size only at init, except a few that cache it
    if hasattr(ffn.module, "intermediate_size"):
        ffn.module.intermediate_size = ffn.width


def keep_kv_groups(attn: Attention, keep_groups: torch.Tensor) -> None:
    """Keep only the kv groups `keep_groups` and their query heads (GQA-aware), in place."""
    keep_groups = torch.as_tensor(keep_groups, dtype=torch.long).sort().values
    hd, per_group = attn.head_dim, attn.n_heads // attn.n_kv_heads
    step = torch.arange(max(per_group, hd), device=keep_groups.device)
    q_heads = (keep_groups[:, None] * per_group + step[:per_group]).flatten()
    q_rows = (q_heads[:, None] * hd + step[:hd]).flatten()
    kv_rows = (keep_groups[:, None] * hd + step[:hd]).flatten()
    blocks = [(attn.q, q_rows), (attn.k, kv_rows), (attn.v, kv_rows)]
    grouped: dict[int, tuple[nn.Linear, list[torch.Tensor]]] = {}
    for block, rows in blocks:
        grouped.setdefault(id(block.linear), (block.linear, []))[1].append(rows + block.offset)
    for linear, parts in grouped.values():
        _keep_rows(linear, torch.cat(parts))
    _keep_cols(attn.o, q_rows)
    attn.n_heads = q_heads.numel()
    attn.n_kv_heads = keep_groups.numel()
    # some attention modules cache head counts at init (phi3 slices its fused qkv with them)
    for name, value in (("num_key_value_heads", attn.n_kv_heads), ("num_heads", attn.n_heads)):
        if isinstance(getattr(attn.module, name, None), int):
            setattr(attn.module, name, value)
