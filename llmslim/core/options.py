"""Shared CLI options: same option, same name, same help, in every subcommand."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

COMMON = "Common options"

ModelArg = Annotated[str, typer.Argument(help="Alias (smollm2-135m, gemma3-270m), local HF folder, .gguf file or hub id.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout (logs go to stderr).", rich_help_panel=COMMON)]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or log lines.", rich_help_panel=COMMON)]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed: the same seed gives the same run.", rich_help_panel=COMMON)]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cuda, mps or cpu.", rich_help_panel=COMMON)]
DtypeOpt = Annotated[str, typer.Option("--dtype", help="auto, float32, bfloat16 or float16.", rich_help_panel=COMMON)]
OutOpt = Annotated[Optional[Path], typer.Option("--out", "-o", help="Output folder (written atomically, with run.json).", rich_help_panel=COMMON)]
ForceOpt = Annotated[bool, typer.Option("--force", help="Overwrite --out if it exists.", rich_help_panel=COMMON)]
