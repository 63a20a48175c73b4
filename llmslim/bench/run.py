"""`bench.run`: models in, one results dict out (size, memory, speed at each batch size, split,
and against/model ratios). No printing; the CLI renders what this returns."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from llmslim.bench import speed
from llmslim.bench.memory import process_peak_rss, weights_bytes
from llmslim.bench.split import time_split
from llmslim.bench.synthetic import is_random, random_config, random_model
from llmslim.core.device import device_label
from llmslim.core.errors import BadOptionError
from llmslim.core.params import count_params

log = logging.getLogger(__name__)

WEIGHT_FILES = (".safetensors", ".bin", ".gguf", ".pt", ".pth")


@dataclass
class Subject:
    """A model under test, with what we know about where it came from."""

    name: str
    model: nn.Module
    vocab: int | object  # an int, or a tokenizer (only its length is used)
    source: str  # the HF folder, or "random"
    disk_bytes: int | None = None  # its weight files; None for random models
    source_bytes: int | None = None  # the .gguf it was converted from, if any
    load_s: float | None = None


@dataclass
class BenchConfig:
    speed: speed.SpeedConfig = field(default_factory=speed.SpeedConfig)
    batch_sizes: tuple[int, ...] = (1,)  # each measured with all models interleaved
    split: bool = False  # add the per-module time split (one hooked run per model and batch size)
    memory: bool = True


def batch_sizes(batch_size: int) -> tuple[int, ...]:
    """Batch 1 always, and batch N when N > 1."""
    if batch_size < 1:
        raise BadOptionError(f"batch size must be at least 1, got {batch_size}")
    return (1,) if batch_size == 1 else (1, batch_size)


def folder_weight_bytes(folder: str | Path) -> int | None:
    path = Path(folder)
    if not path.is_dir():
        return None
    return sum(f.stat().st_size for f in path.iterdir() if f.suffix in WEIGHT_FILES) or None


def check_spec(spec: str) -> None:
    """Fail fast on a bad spec: a random one builds only its config, any other must resolve
    to a model (no loading)."""
    if is_random(spec):
        random_config(spec)
    else:
        from llmslim.core.load import resolve_model

        resolve_model(spec)


def load_subject(spec: str, *, device: str = "auto", dtype: str = "auto", seed: int = 0, device_map: str = "one",
                 max_memory: dict | None = None) -> Subject:
    """`random:PRESET[?key=value&...]` builds a seeded random model on `device`; anything else goes
    through core.load_model (`device_map`, `max_memory` as there). dtype `auto` picks the
    generation dtype (bf16 on CPU and CUDA)."""
    from llmslim.core.device import resolve_device, resolve_dtype
    from llmslim.core.load import load_model, resolve_model

    t0 = time.perf_counter()
    if is_random(spec):
        torch_device = resolve_device(device)
        model = random_model(spec, resolve_dtype(dtype, torch_device, "generation"), seed, torch_device)
        return Subject(spec, model, speed.vocab_size(model), "random", load_s=time.perf_counter() - t0)
    loaded = load_model(spec, device=device, dtype=dtype, purpose="generation", device_map=device_map, max_memory=max_memory)
    folder, gguf = resolve_model(spec)
    source_bytes = (Path(folder) / gguf).stat().st_size if gguf else None
    return Subject(
        spec, loaded.model, loaded.tokenizer, loaded.path, folder_weight_bytes(loaded.path), source_bytes,
        time.perf_counter() - t0,
    )


def describe_subject(subject: Subject) -> dict:
    model = subject.model
    first = next(model.parameters())
    return {
        "name": subject.name,
        "source": subject.source,
        "family": getattr(model.config, "model_type", None),
        "params": count_params(model),
        "disk_bytes": subject.disk_bytes,
        "source_bytes": subject.source_bytes,
        "weights_bytes": weights_bytes(model),
        "dtype": str(first.dtype).replace("torch.", ""),
        "device": str(first.device),
        "load_s": subject.load_s,
    }


def _loadavg() -> float | None:
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):
        return None


def auto_threads(device: str) -> tuple[int, str | None]:
    """CPU threads for a run when the user gave none: torch's default (one per core), or only
    the cores other jobs leave free (at least 1) when the 1-minute load average says the machine
    is shared. Threads of one matmul wait on each other whenever another job holds a core: on a
    busy 2-core machine a tiny model's forward took 400 ms on 2 threads and 3 ms on 1.
    Returns (threads, why it is fewer than the default, or None)."""
    threads = torch.get_num_threads()
    load, cores = _loadavg(), os.cpu_count() or 1
    if device != "cpu" or load is None or threads == 1:
        return threads, None
    free = int(cores - load + 0.5)
    if free >= threads:
        return threads, None
    chosen = max(1, free)
    return chosen, (f"the machine is busy (load {load:.1f} on {cores} cores): using {chosen} thread(s) instead of "
                    f"{threads}, as oversubscribed threads make timings slow and erratic (--threads N to choose)")


def steps(cfg: BenchConfig, n_models: int) -> int:
    """Progress ticks `run` makes, for a progress bar."""
    per_batch = speed.steps(cfg.speed, n_models, cfg.memory) + (n_models if cfg.split else 0)
    return per_batch * len(cfg.batch_sizes)


# Ratios printed with --against: against / model for each (with their unit's direction).
RATIO_KEYS = ("params", "disk_bytes", "source_bytes", "weights_bytes")
BATCH_RATIO_KEYS = ("prefill_tok_s", "decode_tok_s", "peak_bytes")


def _ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def ratios(base: dict, other: dict) -> dict:
    """other / base for sizes, and per batch size for prefill and decode speed and peak memory.
    > 1 on a speed means `other` is faster; < 1 on a size means it is smaller."""
    out = {k: _ratio(other.get(k), base.get(k)) for k in RATIO_KEYS}
    for b, result in base["batches"].items():
        theirs = other["batches"].get(b)
        if theirs is None:
            continue
        for k in BATCH_RATIO_KEYS:
            mine = result["memory"]["peak_bytes"] if k == "peak_bytes" and result.get("memory") else result.get(k)
            yours = theirs["memory"]["peak_bytes"] if k == "peak_bytes" and theirs.get("memory") else theirs.get(k)
            out[f"{k}@{b}"] = _ratio(yours, mine)
    return out


def run(subjects: list[Subject], cfg: BenchConfig, progress: Callable[[str], None] | None = None) -> dict:
    """Measure every subject at every batch size, interleaved; the first subject is the base
    for the ratios (the others / it)."""
    if not subjects:
        raise BadOptionError("nothing to benchmark")
    models = [describe_subject(s) for s in subjects]
    for m in models:
        m["batches"] = {}
    t0 = time.perf_counter()
    load_start = _loadavg()
    for b in cfg.batch_sizes:
        scfg = replace(cfg.speed, batch_size=b)
        tick = (lambda what, b=b: progress(f"batch {b}: {what}")) if progress else None
        results = speed.measure_many([(s.model, s.vocab) for s in subjects], scfg, memory=cfg.memory, progress=tick)
        for m, s, r in zip(models, subjects, results):
            if cfg.split:
                r["split"] = time_split(s.model, s.vocab, scfg)
                if tick:
                    tick("split")
            m["batches"][str(b)] = r
    out = {
        "settings": {**speed.config_dict(cfg.speed), "batch_sizes": list(cfg.batch_sizes), "split": cfg.split},
        "environment": {
            "device": models[0]["device"], "device_name": device_label(torch.device(models[0]["device"])),
            "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
            "loadavg_1min": [load_start, _loadavg()],  # at the start and the end: how shared the machine was
        },
        "models": models,
        "ratios": {m["name"]: ratios(models[0], m) for m in models[1:]},
        "process_peak_rss_bytes": process_peak_rss(),
        "bench_s": time.perf_counter() - t0,
    }
    return out
