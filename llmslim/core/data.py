"""Data: records from local files (or hub dataset ids online), the benchmark files in
../shared/data, and calibration windows for pruning (from a corpus or sampled from the model)."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import torch

from llmslim.core.errors import DataError

FORMATS = (".jsonl", ".json", ".csv", ".parquet", ".txt", ".raw")


def data_dir() -> Path:
    """The shared benchmark data: $LLMSLIM_DATA, else ../shared/data (as the README lays it out)."""
    env = os.environ.get("LLMSLIM_DATA")
    if env:
        return Path(env)
    for base in (Path.cwd(), Path(__file__).resolve().parents[2]):
        candidate = base.parent / "shared" / "data"
        if candidate.is_dir():
            return candidate
    return Path("../shared/data")


def _need(path: Path) -> Path:
    if not path.exists():
        raise DataError(f"data file not found: {path}")
    if path.is_dir():
        raise DataError(f"{path} is a folder; give a data file ({', '.join(FORMATS)})")
    return path


def read_records(source: str | Path, split: str = "train") -> list[dict]:
    """Rows of a .jsonl/.json/.csv/.parquet file (.txt: one {'text': line} per line), or of a
    hub dataset id when online."""
    path = Path(source).expanduser()
    if not path.exists() and "/" in str(source) and path.suffix not in FORMATS:
        return _hub_records(str(source), split)
    _need(path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".jsonl":
            rows = []
            with path.open(encoding="utf-8") as f:
                for n, line in enumerate(f, 1):
                    if line.strip():
                        try:
                            rows.append(json.loads(line))
                        except json.JSONDecodeError as err:
                            raise DataError(f"{path}:{n}: not valid JSON ({err.msg})") from None
            return rows
        if suffix == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(data, dict):  # {"data": [...]} and similar wrappers
                lists = [v for v in data.values() if isinstance(v, list)]
                data = lists[0] if len(lists) == 1 else [data]
            return list(data)
        if suffix == ".csv":
            with path.open(encoding="utf-8", newline="") as f:
                return list(csv.DictReader(f))
        if suffix == ".parquet":
            import pandas as pd

            return pd.read_parquet(path).to_dict("records")
        if suffix in (".txt", ".raw"):
            return [{"text": line} for line in read_text(path).split("\n") if line.strip()]
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text") from None
    raise DataError(f"{path}: unknown data format {suffix!r}; use one of {', '.join(FORMATS)}")


def _hub_records(dataset_id: str, split: str) -> list[dict]:
    try:
        import datasets

        return list(datasets.load_dataset(dataset_id, split=split))
    except Exception as err:  # datasets raises many types for offline / unknown ids
        raise DataError(f"cannot load dataset {dataset_id!r} from the hub: {str(err).splitlines()[0]}") from None


def read_torch_file(path: Path, *, missing: str, unreadable: str, mmap: bool = False):
    """torch.load (CPU, weights only) of a file llmslim wrote; a missing or foreign file is one
    DataError line: `missing`, or `unreadable` plus the exception's kind. `mmap`: tensors are
    read from the file when used, not at load."""
    if not Path(path).is_file():
        raise DataError(missing)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:  # noqa: BLE001 - a corrupt or foreign file is the same user error
        raise DataError(f"{unreadable} ({type(err).__name__})") from None


def read_text(source: str | Path) -> str:
    """A text corpus: a .txt/.raw file (CRLF normalised), or the 'text' field of a records file."""
    path = _need(Path(source).expanduser())
    if path.suffix.lower() in (".txt", ".raw", ""):
        try:
            return path.read_text(encoding="utf-8").replace("\r\n", "\n")
        except UnicodeDecodeError:
            raise DataError(f"{path}: not UTF-8 text") from None
    rows = read_records(path)
    texts = [r.get("text") for r in rows if isinstance(r, dict)]
    if not texts or any(t is None for t in texts):
        raise DataError(f"{path}: every record needs a 'text' field to be read as a corpus")
    return "\n\n".join(texts)


PROMPT_FIELDS = ("prompt", "instruction", "question", "turns", "text")


def read_prompts(source: str | Path, field: str | None = None) -> list[str]:
    """Prompts from a records file: `field`, else the first of prompt/instruction(+input)/
    question/turns[0]/text. MT-Bench gives its first turns, Alpaca instruction + input."""
    rows = read_records(source)
    prompts = []
    for n, row in enumerate(rows, 1):
        if isinstance(row, str):
            prompts.append(row)
            continue
        key = field or next((k for k in PROMPT_FIELDS if k in row), None)
        if key is None or key not in row:
            raise DataError(f"{source}: record {n} has no prompt field ({field or ', '.join(PROMPT_FIELDS)})")
        value = row[key]
        if isinstance(value, list):
            value = value[0]
        if key == "instruction" and row.get("input"):
            value = f"{value}\n\n{row['input']}"
        prompts.append(str(value))
    if not prompts:
        raise DataError(f"{source}: no prompts found")
    return prompts


# ---------------------------------------------------------------- shared benchmark files
def wikitext2_test(root: Path | None = None) -> str:
    return read_text((root or data_dir()) / "wikitext2" / "wiki.test.raw")


def wikitext2_halves(root: Path | None = None) -> tuple[str, str]:
    """WikiText-2 raw test split at the line nearest its middle: (calibration, evaluation).
    Every command that calibrates or traces reads the first half and measures perplexity on
    the second, so no text is both."""
    text = wikitext2_test(root)
    mid = text.find("\n", len(text) // 2)
    return text[:mid], text[mid + 1 :]


def mt_bench_first_turns(root: Path | None = None) -> list[str]:
    return read_prompts((root or data_dir()) / "mt_bench" / "question.jsonl", field="turns")


def alpaca_prompts(root: Path | None = None) -> list[str]:
    return read_prompts((root or data_dir()) / "alpaca" / "alpaca_200.json")


# ---------------------------------------------------------------- calibration
def calibration_windows(tokenizer, text: str, nsamples: int, seqlen: int, seed: int) -> torch.Tensor:
    """`nsamples` windows of `seqlen` tokens at seeded random offsets of the tokenized corpus,
    as Wanda/SparseGPT/FLAP sample WikiText and C4 for calibration."""
    if nsamples < 1 or seqlen < 2:
        raise DataError("calibration needs nsamples >= 1 and seqlen >= 2")
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids[0]
    if ids.numel() <= seqlen:
        raise DataError(f"the calibration corpus has {ids.numel()} tokens, fewer than one window of {seqlen}")
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, ids.numel() - seqlen, (nsamples,), generator=gen)
    return torch.stack([ids[s : s + seqlen] for s in starts.tolist()])


@torch.no_grad()
def self_calibration(model, tokenizer, nsamples: int, seqlen: int, seed: int, batch_size: int = 8, advance=None) -> torch.Tensor:
    """Calibration with no data: sequences sampled from the model itself (temperature 1), each
    started from BOS and a seeded random vocabulary token, as in data-free LLM-QAT.
    `advance(n)` is called after each batch of n sequences (progress)."""
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    out = []
    for start in range(0, nsamples, batch_size):
        n = min(batch_size, nsamples - start)
        first = torch.randint(0, len(tokenizer), (n, 1), generator=gen)
        prefix = torch.cat([torch.full((n, 1), bos), first], dim=1).to(device)
        torch.manual_seed(seed + start)
        seqs = model.generate(
            prefix, attention_mask=torch.ones_like(prefix), do_sample=True, top_k=0, top_p=1.0, temperature=1.0,
            max_new_tokens=seqlen - 2, min_new_tokens=seqlen - 2, pad_token_id=tokenizer.pad_token_id,
        )
        out.append(seqs[:, :seqlen].cpu())
        if advance:
            advance(n)
    return torch.cat(out)


TEXT_SOURCES = ("wikitext2", "alpaca")  # named training texts; anything else is a file


def check_text_source(source: str, option: str = "--data", also: tuple[str, ...] = ()) -> None:
    """Refuse a --data that names no text (a comma list of TEXT_SOURCES and text files) before
    any model loads. `also`: the caller's own named sources (checked by it), skipped here and
    listed in the message; `option`: the flag the user typed."""
    for part in source.split(","):
        if part in also:
            continue
        if part not in TEXT_SOURCES and not Path(part).is_file():
            raise DataError(f"{option}: use {', '.join(TEXT_SOURCES + also)} or a text file, or a comma list of them "
                            f"(no such file: {part})")
        if part == "wikitext2":
            wikitext2_halves()
        elif part == "alpaca":
            read_records(data_dir() / "alpaca" / "alpaca_200.json")
        elif not read_text(Path(part)).strip():
            raise DataError(f"{option} {part}: no text to train on")


def training_text(source: str, tokenizer) -> str:
    """Training text, a comma list joined by newlines: `wikitext2` is the first half of the
    shared WikiText-2 test file (the second stays unseen for --ppl), `alpaca` the shared
    instruction records rendered with the chat template and answered, anything else a file."""
    from llmslim.core.generate import render_prompt

    texts = []
    for part in source.split(","):
        if part == "wikitext2":
            texts.append(wikitext2_halves()[0])
        elif part == "alpaca":
            eos = tokenizer.eos_token or ""
            records = read_records(data_dir() / "alpaca" / "alpaca_200.json")
            prompt = lambda r: r["instruction"] + (f"\n\n{r['input']}" if r.get("input") else "")  # noqa: E731
            texts.append("\n".join(render_prompt(tokenizer, prompt(r)) + r["output"] + eos for r in records))
        else:
            texts.append(read_text(Path(part)))
    return "\n".join(texts)


def token_windows(tokenizer, text: str, seqlen: int, first_token: int | None = None) -> torch.Tensor:
    """The text tokenized once and cut into consecutive windows of seqlen tokens ([N, seqlen]);
    with first_token, each window is that token and seqlen - 1 tokens of text."""
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids[0]
    width = seqlen - (first_token is not None)
    n = ids.numel() // width if width else 0
    if n < 1:
        raise DataError(f"the training text has {ids.numel()} tokens, fewer than one window of {seqlen}")
    windows = ids[: n * width].view(n, width)
    if first_token is not None:
        windows = torch.cat([torch.full((n, 1), first_token, dtype=windows.dtype), windows], dim=1)
    return windows


class WindowDataset(torch.utils.data.Dataset):
    """Token windows as the Trainer reads them ({"input_ids": row}, plus "labels": row for a
    loss that wants them), without the datasets library."""

    def __init__(self, windows: torch.Tensor, labels: bool = False):
        self.windows, self.labels = windows, labels

    def __len__(self) -> int:
        return self.windows.shape[0]

    def __getitem__(self, i: int) -> dict:
        row = self.windows[i]
        return {"input_ids": row, "labels": row} if self.labels else {"input_ids": row}
