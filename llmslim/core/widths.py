"""Models whose layers have different FFN widths (global-threshold pruning).

transformers configs hold one `intermediate_size`, so such a model records its per-layer widths
as `llmslim_ffn_widths` in config.json; this builds the model at full width, shrinks each layer
to its recorded width, then loads the saved weights strictly (a shape mismatch is an error).
"""

from __future__ import annotations

from pathlib import Path

import torch


def build_with_widths(folder: str, config, dtype: torch.dtype):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from llmslim.core.arch import adapter_for, text_config
    from llmslim.core.surgery import keep_ffn_neurons

    widths = list(config.llmslim_ffn_widths)
    # Built on the CPU at full width (not on `meta`), so rotary buffers are computed as usual.
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    adapter = adapter_for(model)
    for layer, width in zip(adapter.decoder_layers(model), widths):
        keep_ffn_neurons(adapter.ffn(layer, text_config(config)), torch.arange(width))
    state = {}
    for shard in sorted(Path(folder).glob("*.safetensors")):
        state.update(load_file(shard))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if set(missing) - tied or unexpected:
        raise ValueError(f"saved weights do not match the recorded widths: missing {missing[:3]}, unexpected {unexpected[:3]}")
    if tied:
        model.tie_weights()
    return model.to(dtype)
