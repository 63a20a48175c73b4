"""Shared CLI options: one name, one help and one default per meaning, in every command.

A command declares `seed: SeedOpt = SEED`; tests/test_cli_options.py checks every command's
--help against these, and docs/cli.md is generated from the --help texts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from llmslim.core.load import DEFAULT_MODEL

COMMON = "Common options"
EVAL = "Evaluation"

MODEL = DEFAULT_MODEL
SEED = 0
DEVICE = "auto"
DTYPE = "auto"

ModelArg = Annotated[str, typer.Argument(help="Alias (smollm2-135m, gemma3-270m), local HF folder, .gguf file or hub id.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout; progress stays on stderr (--quiet: none).", rich_help_panel=COMMON)]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or log lines.", rich_help_panel=COMMON)]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed: the same seed gives the same run.", rich_help_panel=COMMON)]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto (cuda, then mps, then cpu), cuda, mps or cpu.", rich_help_panel=COMMON)]
DEVICE_MAP = "one"
DeviceMapOpt = Annotated[str, typer.Option("--device-map", help="one: the whole model on --device; auto: its layers spread over the visible GPUs (accelerate), for models larger than one GPU.", rich_help_panel=COMMON)]
MaxMemoryOpt = Annotated[Optional[str], typer.Option("--max-memory", help="With --device-map auto: memory per device, accelerate's max_memory as GPU=SIZE pairs (0=70GiB,1=70GiB).", rich_help_panel=COMMON)]
DtypeOpt = Annotated[str, typer.Option("--dtype", help="auto, float32, bfloat16 or float16.", rich_help_panel=COMMON)]
OutOpt = Annotated[Optional[Path], typer.Option("--out", "-o", help="Output folder (written atomically, with results.json and run.json).", rich_help_panel=COMMON)]
ForceOpt = Annotated[bool, typer.Option("--force", help="Overwrite --out if it exists.", rich_help_panel=COMMON)]

# evaluation on the shared benchmark files (lm-eval's names)
TasksOpt = Annotated[Optional[str], typer.Option("--tasks", "-t", help="Benchmarks, comma list (arc_easy, arc_challenge, piqa, winogrande, boolq, hellaswag, lambada, mmlu...).", rich_help_panel=EVAL)]
LimitOpt = Annotated[Optional[int], typer.Option("--limit", "-l", help="Items per task (the first N); default: all.", rich_help_panel=EVAL)]
PplOpt = Annotated[bool, typer.Option("--ppl/--no-ppl", help="WikiText-2 perplexity (second half of the test file) before and after.", rich_help_panel=EVAL)]
PplSeqlenOpt = Annotated[int, typer.Option("--ppl-seqlen", help="Perplexity window in tokens (capped at the model's context).", rich_help_panel=EVAL)]
PplLimitOpt = Annotated[Optional[int], typer.Option("--ppl-limit", help="Perplexity windows (the first N); default: all.", rich_help_panel=EVAL)]
BatchSizeOpt = Annotated[int, typer.Option("--batch-size", "-b", help="Sequences per forward pass (or per optimizer step when training).")]
MaxNewTokensOpt = Annotated[int, typer.Option("--max-new-tokens", help="Token limit per generated answer.")]
MaxStepsOpt = Annotated[Optional[int], typer.Option("--max-steps", help="Optimizer steps (overrides --epochs where a command has it).")]
LoraROpt = Annotated[int, typer.Option("--lora-r", help="LoRA rank r (alpha = 2r).")]

# training commands (shorten rl/sft, recover): checkpoints
TRAINING = "Training"
SaveEveryOpt = Annotated[int, typer.Option("--save-every", help="Checkpoint every N steps into --checkpoint-dir (0: none).", rich_help_panel=TRAINING)]
CheckpointDirOpt = Annotated[Optional[Path], typer.Option("--checkpoint-dir", help="Checkpoints folder (default: OUT-checkpoints).", rich_help_panel=TRAINING)]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="Continue from the latest checkpoint in --checkpoint-dir.", rich_help_panel=TRAINING)]

# commands with a memory plan (prune, recover)
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="Print the expected peak memory per part (from the config: nothing loads) and whether it fits the device; exit 1 if it does not. Without it, a job that will not fit is refused before loading.")]
