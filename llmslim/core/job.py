"""One way every command runs.

A command supplies a `Command`: its name, `validate(cfg)` (runs before anything is loaded, so
a typo costs a second, not a calibration), `run(cfg, ctx) -> result` (the work) and
`render(result)` (the human view). `run_command` owns the sequence they share:

    validate -> check --out -> seed -> load the model -> progress + run
             -> write --out (the command's files, results.json, run.json) -> print or --json

The command's config is a dataclass with the common fields `model` (where it loads one),
`out`, `force`, `seed`, `device` and `dtype`; `--json` and `--quiet` only change the printing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from llmslim.core import distributed, report
from llmslim.core.device import check_device_map, resolve_device, resolve_dtype, seed_everything, where_it_ran
from llmslim.core.errors import BadOptionError
from llmslim.core.options import DEVICE, DEVICE_MAP, DTYPE, SEED
from llmslim.core.outputs import atomic_dir, atomic_write_text, check_creatable, check_writable, to_jsonable, write_manifest

RESULTS_FILE = "results.json"
# the commands that share their work across processes (Command.distributed)
DISTRIBUTED_COMMANDS = ("prune", "recover", "shorten rl", "shorten sft", "budget train", "sparsity collect", "diffuse adapt", "diffuse distill")


@dataclass(kw_only=True)
class CommonOptions:
    """The options every command's config carries; a config subclasses this with
    @dataclass(kw_only=True) and adds its own (defaults from core/options.py)."""

    out: Path | None = None
    force: bool = False
    seed: int = SEED
    device: str = DEVICE
    dtype: str = DTYPE
    device_map: str = DEVICE_MAP  # exposed by the commands that can run a model spread over GPUs
    max_memory: str | None = None


@dataclass
class Context:
    """What `run` gets besides its config: the loaded model (None where the command loads
    none), the progress bar (`task = ctx.progress.add_task(desc, total=n)`,
    `ctx.progress.advance(task)`), timings to fill, and `save(writer)` to add files to --out."""

    loaded: Any
    progress: Any
    timings: dict[str, float] = field(default_factory=dict)
    quiet: bool = False  # --quiet or --json: libraries' own progress output off too
    writers: list[Callable[[Path], None]] = field(default_factory=list)

    @property
    def model(self):
        return self.loaded.model

    @property
    def tokenizer(self):
        return self.loaded.tokenizer

    def save(self, writer: Callable[[Path], None]) -> None:
        """Run `writer(folder)` inside the output folder before it is published (if --out)."""
        self.writers.append(writer)

    def step(self, desc: str, total: int | None):
        """A progress task and a function advancing it: `advance = ctx.step(desc, n); advance(1)`."""
        task = self.progress.add_task(desc, total=total)
        return lambda n=1: self.progress.advance(task, n)


@dataclass(frozen=True)
class Command:
    name: str  # as typed: "prune", "sparsity eval"
    validate: Callable[[Any], None]
    run: Callable[[Any, Context], dict]
    render: Callable[[dict], None]
    model_purpose: str | None = "inference"  # load cfg.model for this purpose; None: load nothing
    needs_out: bool = False  # a command whose product is its folder (traces, a trained model)
    distributed: bool = False  # shares its work across the processes of torchrun / accelerate launch
    # cfg -> (core.plan.MemoryPlan, advice): the job's expected peak memory, checked before the
    # model loads (a job that cannot fit is refused) and printed by --dry-run (cfg.dry_run)
    plan: Callable[[Any], tuple] | None = None


def run_command(command: Command, cfg, *, json_out: bool = False, quiet: bool = False) -> dict:
    """The shared sequence (module doc). Returns the result dict that was printed."""
    report.setup_logging(quiet or json_out)
    out: Path | None = getattr(cfg, "out", None)
    if distributed.launched() and not command.distributed:
        raise BadOptionError(f"{command.name} runs in one process; under torchrun or accelerate launch run one of: "
                             f"{', '.join(DISTRIBUTED_COMMANDS)}")
    if command.needs_out and out is None and not getattr(cfg, "dry_run", False):
        raise BadOptionError(f"{command.name} needs --out DIR")
    command.validate(cfg)
    max_memory = None
    if hasattr(cfg, "device"):  # a typo in --device, --dtype or --max-memory fails here too, not inside the loader
        resolve_dtype(cfg.dtype, resolve_device(cfg.device), command.model_purpose or "inference")
        max_memory = check_device_map(getattr(cfg, "device_map", DEVICE_MAP), getattr(cfg, "max_memory", None),
                                      resolve_device(cfg.device))
    if out is not None:
        check_writable(out, cfg.force)
        check_creatable(out)
    distributed.start(resolve_device(_device_option(cfg)))
    if not distributed.is_main():  # one process reports and writes; the others only work
        quiet, json_out, out = True, False, None
        report.setup_logging(True)
    if command.plan is not None:
        memory, advice = _plan(command, cfg)
        if getattr(cfg, "dry_run", False):
            return _print_plan(command, cfg, memory, advice, json_out)
        # every process judges by rank 0's reading of free memory: one read later, after rank 0
        # began loading, could refuse alone and end the job for a reason the others never saw
        available = distributed.from_main(memory.available if memory is not None else None)
        if memory is not None:
            memory.available = available
            from llmslim.core.plan import check

            check(memory, f"{advice} (--dry-run prints the plan)")
    seed_everything(cfg.seed)  # the same seed in every process: they draw the same windows, then share them

    t0 = time.perf_counter()
    loaded = None
    if command.model_purpose is not None:
        from llmslim.core.load import load_model  # transformers: imported once there is work

        with distributed.main_first():  # a GGUF is converted once, into a cache the others then read
            loaded = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype, purpose=command.model_purpose,
                                device_map=getattr(cfg, "device_map", DEVICE_MAP), max_memory=max_memory)
    ctx = Context(loaded, None, {"load_s": time.perf_counter() - t0} if loaded is not None else {}, quiet or json_out)
    # --json keeps stdout for the result only; its progress still goes to stderr (plain lines in a
    # batch job's log), so an hour-long job is not silent. --quiet turns it off.
    with report.progress(enabled=not quiet) as bar:
        ctx.progress = bar
        result = command.run(cfg, ctx)
    if loaded is not None:  # every result says where it ran and in what precision (budget's backends say it themselves)
        for key, value in where_it_ran(loaded.device, loaded.dtype).items():
            result.setdefault(key, value)
    result["timings"] = {**ctx.timings, **result.get("timings", {}), "total_s": time.perf_counter() - t0}

    if out is not None:
        with atomic_dir(out, cfg.force) as tmp:
            for writer in ctx.writers:
                writer(tmp)
            atomic_write_text(tmp / RESULTS_FILE, json.dumps(to_jsonable(result), indent=2) + "\n")
            write_manifest(tmp, command=command.name, args=asdict(cfg), seed=cfg.seed, timings=result["timings"],
                           results=result.get("summary", _scalars(result)))
        result["out"] = str(out)
    if json_out:
        report.print_json(result)
    elif distributed.is_main():
        command.render(result)
    return result


def _device_option(cfg) -> str:
    """--device as typed: a config's own field, or its model backend's (budget's jobs)."""
    backend = getattr(cfg, "backend", None)
    return getattr(cfg, "device", None) or getattr(backend, "device", None) or "auto"


def _plan(command: Command, cfg):
    """(MemoryPlan, advice), or (None, None) where the estimate itself failed: a bad model spec is
    the user's error (one line, as load_model would say it), anything else must not block a job
    the plan cannot describe (--dry-run shows that error)."""
    import logging

    from llmslim.core.errors import LlmslimError

    try:
        return command.plan(cfg)
    except LlmslimError:
        raise
    except Exception as err:  # noqa: BLE001 (a missing estimate is not a reason to refuse)
        if getattr(cfg, "dry_run", False):
            raise
        logging.getLogger("llmslim").warning("memory plan unavailable (%s: %s); starting without it", type(err).__name__, err)
        return None, None


def _print_plan(command: Command, cfg, memory, advice: str, json_out: bool) -> dict:
    """--dry-run: the plan (printed by one process), and exit code 1 where the job would not fit."""
    result = {"command": command.name, "model": cfg.model, "dry_run": True, "memory": memory.to_dict(),
              "advice": None if memory.fits else advice}
    if json_out:  # off in every process but rank 0
        report.print_json(result)
    elif distributed.is_main():
        rows = [[name, f"{value / 2**30:.2f}"] for name, value in memory.parts.items()]
        rows.append(["total", f"{memory.total / 2**30:.2f}"])
        report.stdout.print(report.table(f"{command.name}: peak memory in {memory.phase} ({memory.device})",
                                         ["part", "GiB"], rows))
        free = "unknown" if memory.available is None else f"{memory.available / 2**30:.1f} GiB"
        report.stdout.print(f"free now: {free}; " + ("fits" if memory.fits else f"does not fit: {advice}"))
    if not memory.fits:
        raise BadOptionError(f"{command.name} will not fit ({memory.total / 2**30:.1f} GiB expected on {memory.device}); {advice}")
    return result


def _scalars(result: dict) -> dict:
    """The headline of a result for run.json: its top-level numbers and strings."""
    return {k: v for k, v in result.items() if isinstance(v, (int, float, str, bool)) or v is None}
