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


@contextmanager
def progress(enabled: bool = True):
    """A rich progress bar on stderr; `task = bar.add_task(desc, total=n)`, `bar.advance(task)`."""
    bar = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TimeRemainingColumn(), console=stderr, disable=not enabled, transient=False,
    )
    with bar:
        yield bar
