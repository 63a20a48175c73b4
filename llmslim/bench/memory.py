"""Peak memory of one generation run, per model, even with two models in one process.

peak = weight bytes (parameters + buffers, exact) + the largest increase over the pre-run
baseline while the run lasts (activations, KV cache, temporaries):

- CUDA: `torch.cuda.max_memory_allocated` after `reset_peak_memory_stats`, minus the allocated
  bytes before the run (tensors only; the caching allocator's reserve is not counted).
- CPU on Linux: the process resident set. Freed heap is first handed back (`malloc_trim`), the
  peak counter VmHWM is reset (`/proc/self/clear_refs` <- 5), and after the run VmHWM minus
  the baseline VmRSS is the increase. Where the counter cannot be reset (macOS, locked-down
  kernels) `ru_maxrss` is used, which is the peak of the whole process so far: the increase
  is then a lower bound and the method says so.
- MPS: not measured (None).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import resource
import sys
from pathlib import Path

import torch
from torch import nn

STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")


def weights_bytes(model: nn.Module) -> int:
    """Bytes of the model's parameters and buffers, tied tensors counted once."""
    seen: set[int] = set()
    total = 0
    for t in [*model.parameters(), *model.buffers()]:
        if id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total


def _status_kib(field: str) -> int | None:
    try:
        for line in STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_hwm() -> bool:
    try:
        CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


def _trim() -> None:
    gc.collect()
    name = ctypes.util.find_library("c")
    try:
        ctypes.CDLL(name).malloc_trim(0)
    except (OSError, AttributeError, TypeError):  # not glibc: nothing to hand back
        pass


def _maxrss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def process_peak_rss() -> int:
    """The whole process's peak resident set so far, in bytes."""
    return _maxrss_bytes()


def peak_increase(run, device: torch.device) -> tuple[int | None, str]:
    """Call `run()`; return (largest memory increase over the baseline in bytes, method)."""
    if device.type == "cuda":  # summed over the GPUs in use (a model spread by --device-map auto)
        from llmslim.core.device import cuda_devices_in_use

        gpus = cuda_devices_in_use(device)
        for i in gpus:
            torch.cuda.synchronize(i)
            torch.cuda.reset_peak_memory_stats(i)
        base = sum(torch.cuda.memory_allocated(i) for i in gpus)
        run()
        for i in gpus:
            torch.cuda.synchronize(i)
        return sum(torch.cuda.max_memory_allocated(i) for i in gpus) - base, "cuda max_memory_allocated"
    if device.type != "cpu":
        run()
        return None, f"not measured on {device.type}"
    _trim()
    base_kib = _status_kib("VmRSS")
    if base_kib is not None and _reset_hwm():
        run()
        peak_kib = _status_kib("VmHWM")
        return max(0, peak_kib - base_kib) * 1024, "cpu rss (VmHWM reset, malloc_trim)"
    import psutil

    base = psutil.Process().memory_info().rss
    before_peak = _maxrss_bytes()
    run()
    return max(0, _maxrss_bytes() - max(base, before_peak)), "cpu ru_maxrss (process peak; a lower bound)"
