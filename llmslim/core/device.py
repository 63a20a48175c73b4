"""Device and dtype choice: one place, so no module assumes `cuda`."""

from __future__ import annotations

import math

import torch

from llmslim.core import distributed
from llmslim.core.errors import BadOptionError

DEVICES = ("auto", "cuda", "mps", "cpu")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name: str = "auto") -> torch.device:
    if name not in DEVICES:
        raise BadOptionError(f"unknown device {name!r}; choose one of {', '.join(DEVICES)}")
    if name in ("auto", "cuda") and torch.cuda.is_available() and distributed.launched():
        return torch.device("cuda", distributed.local_rank())  # one GPU per process
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise BadOptionError("--device cuda asked for, but torch sees no CUDA GPU")
    if name == "mps" and not torch.backends.mps.is_available():
        raise BadOptionError("--device mps asked for, but torch sees no MPS device")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device, purpose: str = "inference") -> torch.dtype:
    """`auto`: bf16 on CUDA; fp16 on MPS (fp32 for gradients); fp32 on CPU; fp32 everywhere
    for "training" (weights an optimizer updates: a bf16 weight near 1 cannot move by less than
    2^-8, so small AdamW steps round away; on CUDA the Trainer computes in bf16 by autocast).

    `purpose` is "gradients" (calibration, no optimizer), "training", "inference" or "generation". CPU stays fp32 for every purpose:
    without AMX/AVX512-BF16 units, bf16 decode measured 3.3x slower than fp32 on this project's
    CI CPU (SmolLM2: 4.7 vs 15.5 tokens/s); `--dtype bfloat16` still asks for it.
    """
    if name != "auto":
        if name not in DTYPES:
            raise BadOptionError(f"unknown dtype {name!r}; choose auto or one of {', '.join(DTYPES)}")
        return DTYPES[name]
    if purpose == "training":
        return torch.float32
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float32 if purpose == "gradients" else torch.float16
    return torch.float32


DEVICE_MAPS = ("one", "auto")
_MEMORY_UNITS = ("GiB", "MiB", "KiB", "GB", "MB", "KB")


def parse_max_memory(text: str | None) -> dict | None:
    """--max-memory as accelerate's `max_memory`: "0=70GiB,1=70GiB,cpu=200GiB" ->
    {0: "70GiB", 1: "70GiB", "cpu": "200GiB"} (GPU indices, cpu; sizes as accelerate reads them)."""
    if text is None:
        return None
    caps = {}
    for item in text.split(","):
        key, sep, size = (part.strip() for part in item.partition("="))
        number = size[: -len(unit)] if (unit := next((u for u in _MEMORY_UNITS if size.endswith(u)), "")) else size
        try:
            ok = bool(sep) and math.isfinite(float(number)) and float(number) > 0 and (key == "cpu" or int(key) >= 0)
        except ValueError:
            ok = False
        if not ok:
            raise BadOptionError(f"--max-memory: cannot read {item.strip()!r}; write GPU=SIZE pairs such as 0=70GiB,1=70GiB,cpu=200GiB")
        device = key if key == "cpu" else int(key)
        if device in caps:
            raise BadOptionError(f"--max-memory names {key} twice")
        caps[device] = size if unit else int(float(number))
    if all(device == "cpu" for device in caps):
        raise BadOptionError("--max-memory names no GPU: give each GPU to use a size (0=70GiB,1=70GiB)")
    return caps


def check_device_map(device_map: str, max_memory: str | None, device: torch.device) -> dict | None:
    """Validate --device-map and --max-memory before anything loads; returns max_memory parsed.
    `auto` spreads a model over the visible GPUs (accelerate's big-model dispatch); on a CPU or
    MPS machine there is one device, and the model goes there whole."""
    if device_map not in DEVICE_MAPS:
        raise BadOptionError(f"unknown --device-map {device_map!r}; use one (the whole model on --device) or auto (spread over the GPUs)")
    if device_map == "auto" and distributed.launched():
        raise BadOptionError("--device-map auto spreads one model over the GPUs, but torchrun / accelerate launch gives each "
                             "process a GPU of its own: run one process, or drop --device-map")
    caps = parse_max_memory(max_memory)
    if caps is not None:
        if device_map != "auto":
            raise BadOptionError("--max-memory caps what --device-map auto puts on each device: add --device-map auto")
        if device.type != "cuda":
            raise BadOptionError(f"--max-memory needs CUDA GPUs to spread over; the device is {device.type}")
        gpus = [k for k in caps if k != "cpu"]
        if any(k >= torch.cuda.device_count() for k in gpus):
            raise BadOptionError(f"--max-memory names GPU {max(gpus)}, but torch sees {torch.cuda.device_count()}")
    return caps


def device_label(device: torch.device) -> str:
    """What a result says it ran on: the GPU's name, the CPU with its torch thread count, or the
    device itself (mps)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)" if device.type == "cpu" else str(device)


def where_it_ran(device: torch.device, dtype: torch.dtype) -> dict:
    """The `device` and `dtype` fields of a command's result: a GPU figure needs both."""
    return {"device": device_label(device), "dtype": str(dtype).removeprefix("torch.")}


def seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def cuda_devices_in_use(device: torch.device | str = "cuda") -> list[int]:
    """The GPUs this process has memory on: `device`'s alone under a launcher (one GPU per
    process), every GPU holding some of it otherwise (a model spread by --device-map auto).
    Asking the caching allocator opens no CUDA context on an unused GPU."""
    device = torch.device(device)
    own = device.index if device.index is not None else torch.cuda.current_device()
    if distributed.launched():
        return [own]
    return sorted({own} | {i for i in range(torch.cuda.device_count()) if torch.cuda.memory_reserved(i) > 0})


def peak_memory_mb(device: torch.device | str = "cpu") -> float:
    """Peak memory so far: CUDA's max allocated bytes on a GPU, else the process's peak RSS."""
    if torch.device(device).type == "cuda":  # every GPU it used: a model spread by --device-map auto uses several
        return sum(torch.cuda.max_memory_allocated(i) for i in cuda_devices_in_use(device)) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
