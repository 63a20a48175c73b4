"""Rendering results: rich tables for people, JSON for pipelines, progress bars on stderr."""

from __future__ import annotations

import json
import logging
import sys
from contextlib import contextmanager

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from llmslim.core.outputs import to_jsonable

stdout = Console()
stderr = Console(stderr=True)


def setup_logging(quiet: bool) -> None:
    level = logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(message)s", handlers=[RichHandler(console=stderr, show_path=False)], force=True)
    for noisy in ("httpx", "urllib3", "datasets", "filelock", "lm_eval", "transformers", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.WARNING if not quiet else logging.ERROR)
    if quiet:  # transformers' own "Loading weights" bars bypass logging
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


def print_json(obj) -> None:
    sys.stdout.write(json.dumps(to_jsonable(obj), indent=2) + "\n")
    sys.stdout.flush()


def table(title: str, columns: list[str], rows: list[list]) -> Table:
    t = Table(title=title, title_justify="left")
    for c in columns:
        t.add_column(c, justify="left" if c == columns[0] else "right")
    for row in rows:
        t.add_row(*[fmt(v) for v in row])
    return t


def fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
            return f"{value:.3g}"
        return f"{value:.4f}" if abs(value) < 10 else f"{value:.2f}"
    if isinstance(value, int) and abs(value) >= 10000:
        return f"{value:,}"
    return str(value)


class PlainProgress:
    """rich.Progress's add_task/advance/update for a log file: one plain line when a phase
    starts, then at most one every `every_s` seconds (done/total, elapsed, ETA), and one
    when it completes. Used where stderr is not a terminal."""

    def __init__(self, stream=None, every_s: float = 30.0, clock=None):
        import time

        self.stream = stream or sys.stderr
        self.every_s = every_s
        self.clock = clock or time.monotonic
        self.tasks: dict[int, dict] = {}

    def add_task(self, description: str, total: float | None = None, **_) -> int:
        task_id = len(self.tasks)
        now = self.clock()
        self.tasks[task_id] = dict(description=description, total=total, completed=0, start=now, last=now)
        self._line(f"{description}: started" + (f" (0/{total:g})" if total else ""))
        return task_id

    def advance(self, task_id: int, advance: float = 1) -> None:
        self.update(task_id, advance=advance)

    def update(self, task_id: int, *, advance: float = 0, completed: float | None = None, total: float | None = None,
               description: str | None = None, **_) -> None:
        t = self.tasks[task_id]
        if total is not None:
            t["total"] = total
        if description is not None:
            t["description"] = description
        t["completed"] = completed if completed is not None else t["completed"] + advance
        now = self.clock()
        done = t["total"] is not None and t["completed"] >= t["total"]
        if done or now - t["last"] >= self.every_s:
            t["last"] = now
            self._line(self._status(t, now, done))

    def _status(self, t: dict, now: float, done: bool) -> str:
        elapsed = now - t["start"]
        head = f"{t['description']}: {t['completed']:g}" + (f"/{t['total']:g}" if t["total"] else "")
        if done:
            return f"{head} done in {elapsed:.0f} s"
        eta = ""
        if t["total"] and t["completed"] > 0:
            eta = f", ETA {elapsed * (t['total'] - t['completed']) / t['completed']:.0f} s"
        return f"{head}, {elapsed:.0f} s elapsed{eta}"

    def _line(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@contextmanager
def progress(enabled: bool = True):
    """Progress on stderr: a rich bar on a terminal, plain periodic lines in a log file.
    `task = bar.add_task(desc, total=n)`, `bar.advance(task)`."""
    if enabled and not stderr.is_terminal:
        yield PlainProgress()
        return
    bar = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TimeRemainingColumn(), console=stderr, disable=not enabled, transient=False,
    )
    with bar:
        yield bar
