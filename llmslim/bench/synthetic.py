"""Random-weight models of real architectures, so speed claims can be made at sizes where compute
dominates without downloading anything.

    random:llama-1b                           Llama-3.2-1B shape
    random:llama-1b?intermediate_size=4096    the same with half-width FFNs (a pruned twin)
    random:llama3-8b?num_hidden_layers=8      any config field can be overridden

Weights do not change speed (dense kernels do the same work for any values), so they are not
initialised the slow way: the model is built under transformers' `no_init_weights` and every
matrix is filled from one seeded N(0, 0.02) pool, shifted per parameter (norm weights are 1,
biases 0). Building llama-1b takes about a second instead of ~20 s for `normal_` in bf16.
"""

from __future__ import annotations

import difflib
import inspect
from pathlib import Path

import torch
from torch import nn

from llmslim.core.errors import BadOptionError

PREFIX = "random:"

# Shapes copied from each model's config.json on the hub; only the numbers that set the cost.
PRESETS: dict[str, tuple[str, dict]] = {
    # meta-llama/Llama-3.2-1B: 1.24B params, tied embeddings, llama3 rope scaling
    "llama-1b": ("llama", dict(
        hidden_size=2048, num_hidden_layers=16, intermediate_size=8192, num_attention_heads=32,
        num_key_value_heads=8, head_dim=64, vocab_size=128256, tie_word_embeddings=True,
        max_position_embeddings=131072, rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
    )),
    # meta-llama/Llama-3.1-8B (Llama-3-8B shape): 8.0B params, 16 GB in bf16
    "llama3-8b": ("llama", dict(
        hidden_size=4096, num_hidden_layers=32, intermediate_size=14336, num_attention_heads=32,
        num_key_value_heads=8, head_dim=128, vocab_size=128256, tie_word_embeddings=False,
        max_position_embeddings=131072, rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
    )),
    # meta-llama/Llama-3.1-70B: 70.6B params, 141 GB in bf16 (for memory plans; too big to build here)
    "llama3-70b": ("llama", dict(
        hidden_size=8192, num_hidden_layers=80, intermediate_size=28672, num_attention_heads=64,
        num_key_value_heads=8, head_dim=128, vocab_size=128256, tie_word_embeddings=False,
        max_position_embeddings=131072, rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
    )),
    # HuggingFaceTB/SmolLM2-135M-Instruct: 134.5M params, 30 thin layers
    "smollm2-135m": ("llama", dict(
        hidden_size=576, num_hidden_layers=30, intermediate_size=1536, num_attention_heads=9,
        num_key_value_heads=3, head_dim=64, vocab_size=49152, tie_word_embeddings=True,
        max_position_embeddings=8192, rms_norm_eps=1e-5, rope_parameters={"rope_type": "default", "rope_theta": 100000.0},
    )),
    # google/gemma-3-270m: 268M params, 168M of them in the 262k-token embedding; 5 sliding : 1 full
    "gemma3-270m": ("gemma3_text", dict(
        hidden_size=640, num_hidden_layers=18, intermediate_size=2048, num_attention_heads=4,
        num_key_value_heads=1, head_dim=256, vocab_size=262144, tie_word_embeddings=True,
        max_position_embeddings=32768, sliding_window=512, query_pre_attn_scalar=256, rms_norm_eps=1e-6,
    )),
    # for tests and smoke runs: builds in milliseconds
    "tiny": ("llama", dict(
        hidden_size=64, num_hidden_layers=2, intermediate_size=128, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, vocab_size=256, tie_word_embeddings=True,
        max_position_embeddings=512, rms_norm_eps=1e-5,
    )),
}

STD = 0.02  # the initializer_range of every preset
_POOL = 1_048_573  # a prime, so the pool's period never lines up with a row


def is_random(spec) -> bool:
    return isinstance(spec, str) and spec.startswith(PREFIX)


def _value(text: str):
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _near(name: str, known) -> str:
    close = difflib.get_close_matches(name, list(known), n=3, cutoff=0.5)
    return f"; did you mean {', '.join(close)}?" if close else ""


def parse_spec(spec: str) -> tuple[str, dict]:
    """'random:llama-1b?intermediate_size=4096&num_hidden_layers=8' -> ('llama-1b', {...})."""
    body = spec[len(PREFIX):] if spec.startswith(PREFIX) else spec
    base, _, query = body.partition("?")
    overrides = {}
    for part in filter(None, query.split("&")):
        key, eq, value = part.partition("=")
        if not eq or not key.strip():
            raise BadOptionError(f"bad override {part!r} in {spec!r}; write key=value, e.g. intermediate_size=4096")
        overrides[key.strip()] = _value(value.strip())
    return base.strip(), overrides


def random_config(spec: str):
    """The transformers config a `random:` spec names: a preset (or a local folder with a
    config.json) with the overrides applied. Unknown presets and fields are errors."""
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    from llmslim.core.arch import adapter_for

    base, overrides = parse_spec(spec)
    if base in PRESETS:
        model_type, fields = PRESETS[base]
        config_cls = CONFIG_MAPPING[model_type]
        fields = {**fields}
    elif base and (Path(base).expanduser() / "config.json").is_file():
        config = AutoConfig.from_pretrained(str(Path(base).expanduser()))  # a local folder: never the hub
        config_cls, fields = type(config), config.to_dict()
        for meta in ("model_type", "transformers_version", "architectures"):
            fields.pop(meta, None)
    else:
        raise BadOptionError(
            f"unknown random model preset {base!r}{_near(base, PRESETS)}; presets: {', '.join(PRESETS)} "
            "(or random:FOLDER with a config.json)"
        )
    known = set(inspect.signature(config_cls.__init__).parameters) - {"self", "kwargs"} | set(fields)
    for key in overrides:
        if key not in known:
            raise BadOptionError(f"{config_cls.__name__} has no field {key!r}{_near(key, known)}")
    fields.update(overrides)
    try:
        config = config_cls(**fields)
    except (ValueError, TypeError) as err:
        raise BadOptionError(f"bad random model config {spec!r}: {str(err).splitlines()[0]}") from None
    adapter_for(config)
    return config


@torch.no_grad()
def fill_random(model: nn.Module, seed: int = 0, std: float = STD) -> nn.Module:
    """Seeded weights, fast: matrices from one N(0, std) pool at a random shift per parameter,
    1-D weights (norms) 1, biases 0. Same seed, same weights."""
    gen = torch.Generator().manual_seed(seed)
    pools: dict[torch.dtype, torch.Tensor] = {}
    seen: set[int] = set()
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in seen:
            continue
        seen.add(id(param))
        if param.ndim < 2:
            param.fill_(0.0 if name.endswith("bias") else 1.0)
            continue
        if param.dtype not in pools:
            pools[param.dtype] = (torch.randn(2 * _POOL, generator=gen) * std).to(param.dtype)
        pool = pools[param.dtype].to(param.device)
        flat = param.view(-1)
        shift = int(torch.randint(0, _POOL, (1,), generator=gen))
        for start in range(0, flat.numel(), _POOL):
            n = min(_POOL, flat.numel() - start)
            flat[start : start + n].copy_(pool[shift : shift + n])
    return model


def random_model(spec, dtype: torch.dtype = torch.float32, seed: int = 0, device: torch.device | str = "cpu") -> nn.Module:
    """A causal LM of the architecture `spec` names (a 'random:...' string or a transformers
    config) with seeded random weights, in eval mode. A config carrying `llmslim_ffn_widths`
    (as pruned models save it) gets those per-layer FFN widths."""
    from transformers import AutoModelForCausalLM
    from transformers.initialization import no_init_weights

    config = random_config(spec) if isinstance(spec, str) else spec
    with no_init_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.tie_weights()  # no_init_weights also skips the tying that init_weights does
    widths = getattr(config, "llmslim_ffn_widths", None)
    if widths:
        from llmslim.core.arch import adapter_for, text_config
        from llmslim.core.surgery import keep_ffn_neurons

        adapter = adapter_for(model)
        for layer, width in zip(adapter.decoder_layers(model), widths):
            keep_ffn_neurons(adapter.ffn(layer, text_config(config)), torch.arange(int(width)))
    model.to(device)
    fill_random(model, seed)
    return model.eval()
