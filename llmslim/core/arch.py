"""Architecture adapters: the one place that knows where each model family keeps its parts.

prune, sparsity and info reach the decoder layers, the FFN and the attention only through an
adapter, so a new family is one `ArchAdapter` here plus one line in `ADAPTERS`.

A FFN *neuron* j is: row j of every input projection (gate_proj and up_proj, or fc1 and its
bias) and column j of the output projection (down_proj or fc2). Fused projections (phi3's
gate_up_proj) hold several input parts in one matrix; `RowBlock.offset` says where each starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from llmslim.core.errors import UnsupportedArchitectureError


@dataclass
class RowBlock:
    """Rows [offset, offset + width) of `linear` are one input part of the FFN."""

    linear: nn.Linear
    offset: int


@dataclass
class FFN:
    inputs: list[RowBlock]  # gate then up (gated MLPs) or fc1
    output: nn.Linear  # down_proj / fc2: its columns are the neurons
    width: int  # intermediate size of this layer
    gated: bool
    module: nn.Module  # the module whose forward computes the FFN (mlp, or the whole OPT layer)


@dataclass
class Attention:
    q: RowBlock
    k: RowBlock
    v: RowBlock
    o: nn.Linear  # its input columns are head_dim-wide slices, one per query head
    n_heads: int
    n_kv_heads: int
    head_dim: int
    module: nn.Module


class ArchAdapter(Protocol):
    family: str

    def decoder_layers(self, model: nn.Module) -> list[nn.Module]: ...

    def ffn(self, layer: nn.Module, config) -> FFN: ...

    def attention(self, layer: nn.Module, config) -> Attention: ...

    def ffn_width_key(self) -> str: ...


def _head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def _base_model(model: nn.Module) -> nn.Module:
    # CausalLM wrappers keep the decoder in `.model`; multimodal gemma3 nests a language_model.
    base = getattr(model, "model", model)
    return getattr(base, "language_model", base)


class GatedAdapter:
    """Llama-style decoders: layers at model.layers, gate/up/down MLP, q/k/v/o attention."""

    def __init__(self, family: str):
        self.family = family

    def decoder_layers(self, model):
        return list(_base_model(model).layers)

    def ffn(self, layer, config):
        mlp = layer.mlp
        width = mlp.down_proj.in_features
        return FFN([RowBlock(mlp.gate_proj, 0), RowBlock(mlp.up_proj, 0)], mlp.down_proj, width, True, mlp)

    def attention(self, layer, config):
        attn = layer.self_attn
        n_heads, n_kv = config.num_attention_heads, config.num_key_value_heads
        return Attention(
            RowBlock(attn.q_proj, 0), RowBlock(attn.k_proj, 0), RowBlock(attn.v_proj, 0),
            attn.o_proj, n_heads, n_kv, _head_dim(config), attn,
        )

    def ffn_width_key(self):
        return "intermediate_size"


class Phi3Adapter(GatedAdapter):
    """Phi-3 fuses gate and up into gate_up_proj and q, k, v into qkv_proj."""

    def __init__(self):
        super().__init__("phi3")

    def ffn(self, layer, config):
        mlp = layer.mlp
        width = mlp.down_proj.in_features
        fused = mlp.gate_up_proj
        return FFN([RowBlock(fused, 0), RowBlock(fused, width)], mlp.down_proj, width, True, mlp)

    def attention(self, layer, config):
        attn = layer.self_attn
        n_heads, n_kv, hd = config.num_attention_heads, config.num_key_value_heads, _head_dim(config)
        qkv = attn.qkv_proj
        return Attention(
            RowBlock(qkv, 0), RowBlock(qkv, n_heads * hd), RowBlock(qkv, (n_heads + n_kv) * hd),
            attn.o_proj, n_heads, n_kv, hd, attn,
        )


class OPTAdapter:
    """OPT: layers at model.decoder.layers, fc1/fc2 on the layer itself, out_proj."""

    family = "opt"

    def decoder_layers(self, model):
        return list(_base_model(model).decoder.layers)

    def ffn(self, layer, config):
        return FFN([RowBlock(layer.fc1, 0)], layer.fc2, layer.fc2.in_features, False, layer)

    def attention(self, layer, config):
        attn = layer.self_attn
        n = config.num_attention_heads
        return Attention(
            RowBlock(attn.q_proj, 0), RowBlock(attn.k_proj, 0), RowBlock(attn.v_proj, 0),
            attn.out_proj, n, n, config.hidden_size // n, attn,
        )

    def ffn_width_key(self):
        return "ffn_dim"


ADAPTERS: dict[str, ArchAdapter] = {
    "llama": GatedAdapter("llama"),
    "mistral": GatedAdapter("mistral"),
    "qwen2": GatedAdapter("qwen2"),
    "qwen3": GatedAdapter("qwen3"),
    "gemma": GatedAdapter("gemma"),
    "gemma2": GatedAdapter("gemma2"),
    "gemma3": GatedAdapter("gemma3"),
    "gemma3_text": GatedAdapter("gemma3_text"),
    "phi3": Phi3Adapter(),
    "opt": OPTAdapter(),
}


def text_config(config):
    """The decoder's config (multimodal gemma3 nests it as text_config)."""
    return getattr(config, "text_config", None) or config


def adapter_for(model_or_config) -> ArchAdapter:
    config = getattr(model_or_config, "config", model_or_config)
    family = getattr(config, "model_type", None)
    if family not in ADAPTERS:
        raise UnsupportedArchitectureError(
            f"unsupported architecture {family!r}; supported: {', '.join(sorted(ADAPTERS))}"
        )
    return ADAPTERS[family]


def rows(block: RowBlock, width: int) -> torch.Tensor:
    """The weight rows of one input part (a view)."""
    return block.linear.weight[block.offset : block.offset + width]


def describe(model: nn.Module) -> dict:
    """Family, shape and parameter count by part, as `llmslim info` prints them."""
    adapter = adapter_for(model)
    config = text_config(model.config)
    layers = adapter.decoder_layers(model)
    counted: set[int] = set()

    def count(modules) -> int:
        total = 0
        for module in modules:
            for p in module.parameters():
                if id(p) not in counted:
                    counted.add(id(p))
                    total += p.numel()
        return total

    ffn_widths = [adapter.ffn(layer, config).width for layer in layers]
    attn = adapter.attention(layers[0], config)
    embeddings = count([model.get_input_embeddings()])
    pos = _base_model(model)
    if hasattr(pos, "decoder"):  # OPT keeps learned positions beside the token embeddings
        embeddings += count([m for n, m in pos.decoder.named_children() if "embed" in n])
    attention = count([adapter.attention(layer, config).module for layer in layers])
    ffn = 0
    for layer in layers:
        parts = adapter.ffn(layer, config)
        ffn += count([b.linear for b in parts.inputs] + [parts.output])
    lm_head = count([model.get_output_embeddings()]) if model.get_output_embeddings() is not None else 0
    total = sum(p.numel() for p in model.parameters())
    return {
        "family": adapter.family,
        "layers": len(layers),
        "hidden": config.hidden_size,
        "ffn": ffn_widths[0] if len(set(ffn_widths)) == 1 else ffn_widths,
        "heads": attn.n_heads,
        "kv_heads": attn.n_kv_heads,
        "head_dim": attn.head_dim,
        "vocab": config.vocab_size,
        "tied_embeddings": lm_head == 0,
        "params": {
            "total": total,
            "embeddings": embeddings,
            "attention": attention,
            "ffn": ffn,
            "lm_head": lm_head,
            "other": total - embeddings - attention - ffn - lm_head,
        },
    }


# Config keys that say how or where a model was loaded, not which weights it has: the same
# model loaded in bf16 on a GPU or from another folder must keep its cached scores and predictors.
_LOAD_KEYS = ("_name_or_path", "torch_dtype", "dtype", "transformers_version", "use_cache",
              "_attn_implementation", "_attn_implementation_autoset", "_commit_hash")


def model_fingerprint(model) -> str:
    """Identifies the weights a saved artefact (prune scores, sparsity traces and predictors) was
    computed on: the architecture config plus a checksum of every FFN output matrix. The checksum
    is taken on the weights rounded to bf16, to 5 digits, so fp32 and bf16 loads of one checkpoint
    agree (fp16 loads round differently and may not), while pruning or fine-tuning changes it."""
    import hashlib
    import json

    adapter = adapter_for(model)
    config = text_config(model.config)
    described = {k: v for k, v in config.to_dict().items() if k not in _LOAD_KEYS}
    h = hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode())
    for layer in adapter.decoder_layers(model):
        w = adapter.ffn(layer, config).output.weight.detach().to(torch.bfloat16).double()
        h.update(f"{tuple(w.shape)}:{w.sum().item():.4e}:{w.square().sum().item():.4e}".encode())
    return h.hexdigest()[:16]
