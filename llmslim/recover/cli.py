"""`llmslim recover PRUNED [--teacher DENSE] --out DIR`: options -> RecoverJob -> core/job.run_command."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from llmslim.core import report
from llmslim.core.job import Command, run_command
from llmslim.core.options import (DEVICE, DTYPE, SEED, TRAINING, BatchSizeOpt, CheckpointDirOpt, DeviceOpt, DryRunOpt, DtypeOpt,
                                  ForceOpt, JsonOpt, LimitOpt, LoraROpt, MaxStepsOpt, ModelArg, OutOpt, PplLimitOpt, PplOpt, PplSeqlenOpt,
                                  QuietOpt, ResumeOpt, SaveEveryOpt, SeedOpt, TasksOpt)
from llmslim.recover.jobs import RecoverJob, memory_plan, run, validate

TRAIN = TRAINING


def recover(
    model: ModelArg,
    teacher: Annotated[Optional[str], typer.Option("--teacher", help="The dense model to distil from (with --kd > 0).", rich_help_panel=TRAIN)] = None,
    kd: Annotated[Optional[float], typer.Option("--kd", help="Weight of KL(teacher || student) against next-token CE; default 0.5 with --teacher, 0 without (LLM-Pruner's plain recovery).", rich_help_panel=TRAIN)] = None,
    temperature: Annotated[float, typer.Option("--temperature", help="Softens both distributions in the KL (T^2-scaled).", rich_help_panel=TRAIN)] = 1.0,
    data: Annotated[str, typer.Option("--data", help="wikitext2 (first half of the shared test file), alpaca (instruction records, chat template), self (max-steps x batch-size samples from --teacher, data-free), a text file, or a comma list of them.", rich_help_panel=TRAIN)] = "wikitext2",
    seqlen: Annotated[int, typer.Option("--seqlen", help="Tokens per training window.", rich_help_panel=TRAIN)] = 256,
    max_steps: MaxStepsOpt = 100,
    batch_size: BatchSizeOpt = 4,
    lr: Annotated[Optional[float], typer.Option("--lr", help="Learning rate; default 2e-4 for LoRA, 5e-5 with --full.", rich_help_panel=TRAIN)] = None,
    lora_r: LoraROpt = 8,
    full: Annotated[bool, typer.Option("--full", help="Train every weight instead of LoRA adapters.", rich_help_panel=TRAIN)] = False,
    save_every: SaveEveryOpt = 0,
    checkpoint_dir: CheckpointDirOpt = None,
    resume: ResumeOpt = False,
    ppl: PplOpt = False,
    ppl_seqlen: PplSeqlenOpt = 1024,
    ppl_limit: PplLimitOpt = None,
    tasks: TasksOpt = None,
    limit: LimitOpt = None,
    dry_run: DryRunOpt = False,
    out: OutOpt = None,
    force: ForceOpt = False,
    json: JsonOpt = False,
    quiet: QuietOpt = False,
    seed: SeedOpt = SEED,
    device: DeviceOpt = DEVICE,
    dtype: DtypeOpt = DTYPE,
) -> None:
    """Fine-tune a pruned model back towards quality: LoRA (or --full) with distillation from --teacher and next-token loss."""
    job = RecoverJob(model=model, teacher=teacher, kd=kd, temperature=temperature, data=data, seqlen=seqlen,
                     max_steps=max_steps, batch_size=batch_size, lr=lr, lora_r=lora_r, full=full, save_every=save_every,
                     checkpoint_dir=checkpoint_dir, resume=resume, ppl=ppl, ppl_seqlen=ppl_seqlen, ppl_limit=ppl_limit,
                     tasks=tasks, limit=limit, out=out, force=force, seed=seed, device=device, dtype=dtype, dry_run=dry_run)
    run_command(RECOVER, job, json_out=json, quiet=quiet)


def render(result: dict) -> None:
    metrics = sorted(set(result["before"]) | set(result["after"]))
    rows = [[name] + [result[when].get(m) for m in metrics] for name, when in (("pruned", "before"), ("recovered", "after"))]
    if metrics:
        report.stdout.print(report.table(f"recover {result['model']} (kd {result['kd']:g}, {result['steps']} steps)", [""] + metrics, rows))
    if "after_vs_before" in result:
        d = result["after_vs_before"]
        report.stdout.print(f"mean accuracy ({', '.join(d['of'])}): {d['b']:.4f} -> {d['a']:.4f}, "
                            f"{d['diff']:+.4f} ± {d['stderr']:.4f} (paired standard error, {d['items']} documents)")
    report.stdout.print(f"{result['steps']} steps, {result['tokens']:,} tokens, {result['trainable_params']:,} trainable parameters; "
                        f"loss {result['first_loss']:.3f} -> {result['last_loss']:.3f}; train {result['timings']['train_s']:.0f}s"
                        + (f"; saved to {result['out']}" if result.get("out") else ""))


RECOVER = Command("recover", validate, run, render, model_purpose="training", needs_out=True, distributed=True,
                  plan=lambda job: memory_plan(job))
