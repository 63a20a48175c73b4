"""`llmslim info MODEL`: architecture, parameter count by part, sizes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from llmslim.core import report
from llmslim.core.arch import describe
from llmslim.core.job import Command, CommonOptions, run_command
from llmslim.core.options import DEVICE, DTYPE, MODEL, DeviceOpt, DtypeOpt, JsonOpt, ModelArg, QuietOpt


def disk_bytes(folder: str) -> int | None:
    path = Path(folder)
    if not path.is_dir():
        return None
    return sum(f.stat().st_size for f in path.glob("*") if f.suffix in (".safetensors", ".bin", ".gguf"))


def model_info(loaded) -> dict:
    model = loaded.model
    info = describe(model)
    info["name"] = loaded.name
    info["path"] = loaded.path
    info["dtype"] = str(loaded.dtype).replace("torch.", "")
    info["device"] = str(loaded.device)
    info["disk_bytes"] = disk_bytes(loaded.path)
    info["memory_bytes"] = sum(p.numel() * p.element_size() for p in model.parameters()) + sum(
        b.numel() * b.element_size() for b in model.buffers()
    )
    return info


@dataclass(kw_only=True)
class InfoJob(CommonOptions):  # no --out, --force or --seed: nothing is written, nothing is random
    model: str = MODEL


def info(
    model: ModelArg = MODEL,
    device: DeviceOpt = DEVICE,
    dtype: DtypeOpt = DTYPE,
    json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Family, layers, hidden, FFN size, heads, parameters by part, on-disk and in-memory size."""
    run_command(INFO, InfoJob(model=model, device=device, dtype=dtype), json_out=json, quiet=quiet)


def render(data: dict) -> None:
    p = data["params"]
    rows = [
        ["family", data["family"]], ["layers", data["layers"]], ["hidden", data["hidden"]],
        ["ffn", data["ffn"]], ["heads / kv heads", f"{data['heads']} / {data['kv_heads']}"],
        ["head_dim", data["head_dim"]], ["vocab", data["vocab"]],
        ["params total", f"{p['total']:,} ({p['total'] / 1e6:.1f}M)"],
        ["  embeddings", f"{p['embeddings']:,}"], ["  attention", f"{p['attention']:,}"],
        ["  ffn", f"{p['ffn']:,}"], ["  lm_head", f"{p['lm_head']:,}" + (" (tied)" if data["tied_embeddings"] else "")],
        ["  other (norms)", f"{p['other']:,}"],
        ["on disk", f"{data['disk_bytes'] / 2**20:.1f} MiB" if data["disk_bytes"] else "-"],
        ["in memory", f"{data['memory_bytes'] / 2**20:.1f} MiB"], ["dtype", data["dtype"]], ["device", data["device"]],
    ]
    report.stdout.print(report.table(f"{data['name']}", ["", "value"], rows))


INFO = Command("info", validate=lambda job: None, run=lambda job, ctx: model_info(ctx.loaded), render=render)
