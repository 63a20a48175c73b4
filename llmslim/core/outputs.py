"""Writing results: atomically (temp dir, then rename), never over an existing folder without
force, and always with a `run.json` manifest beside the outputs."""

from __future__ import annotations

import errno
import json
import platform
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

from llmslim.core.errors import LlmslimError, OutputExistsError


def check_writable(target: Path | str, force: bool) -> Path:
    """Fail before any work is done if the output exists and --force was not given."""
    target = Path(target)
    if target.exists() and not force:
        raise OutputExistsError(f"{target} already exists; pass --force to overwrite it")
    return target


def check_creatable(target: Path | str) -> Path:
    """Fail before any work is done if `target` could not be created: probe the nearest
    existing folder above it with a temporary folder, removed at once."""
    target = Path(target).absolute()
    parent = target.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise LlmslimError(f"cannot write {target}: {parent} is not a folder")
    try:
        Path(tempfile.mkdtemp(prefix=".llmslim-probe-", dir=parent)).rmdir()
    except OSError as e:
        raise LlmslimError(f"cannot write {target}: {parent} is not writable ({e.strerror})") from None
    return target


@contextmanager
def atomic_dir(target: Path | str, force: bool = False):
    """Yield a temp folder beside `target`; on success it replaces `target` in one rename.

    A run killed midway leaves only a `.tmp-` sibling, never a half-written `target`.
    """
    target = check_writable(target, force)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        if target.exists():
            old = target.with_name(f".{target.name}.old-{tmp.name[-8:]}")
            target.rename(old)
            tmp.rename(target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(target)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if err.errno == errno.ENOSPC:
            raise LlmslimError(f"no space left on the device while writing {target}") from None
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_text(path: Path | str, text: str) -> None:
    atomic_write_bytes(path, lambda f: f.write(text.encode("utf-8")))


def versions() -> dict:
    import torch
    import transformers

    import llmslim

    return {
        "llmslim": llmslim.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


def to_jsonable(obj):
    """JSON for results that may hold tensors, numpy scalars, paths or dtypes."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if hasattr(obj, "item") and getattr(obj, "ndim", 1) == 0:
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


def manifest(command: str, args: dict, seed: int | None, timings: dict, results: dict) -> dict:
    return to_jsonable({
        "command": command,
        "argv": sys.argv,
        "args": args,
        "seed": seed,
        "versions": versions(),
        "timings": timings,
        "results": results,
    })


def write_manifest(folder: Path | str, **fields) -> Path:
    path = Path(folder) / "run.json"
    path.write_text(json.dumps(manifest(**fields), indent=2) + "\n")
    return path


def atomic_write_bytes(path: Path | str, write) -> None:
    """`write(file)` fills a temp file that then replaces `path` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with tmp.open("wb") as f:
            write(f)
        tmp.replace(path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        if err.errno == errno.ENOSPC:
            raise LlmslimError(f"no space left on the device while writing {path}") from None
        raise
