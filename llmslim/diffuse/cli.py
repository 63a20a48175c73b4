"""`llmslim diffuse adapt|distill|sample|eval`: options -> job -> core/job.run_command. No logic lives here."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from llmslim.core import report
from llmslim.core.job import Command, run_command
from llmslim.core.options import (DEVICE, DTYPE, MODEL, SEED, TRAINING, BatchSizeOpt, CheckpointDirOpt, DeviceOpt, DryRunOpt, DtypeOpt,
                                  ForceOpt, JsonOpt, MaxStepsOpt, ModelArg, OutOpt, QuietOpt, ResumeOpt, SaveEveryOpt, SeedOpt)
from llmslim.diffuse import jobs

app = typer.Typer(help="Turn an AR model into a masked diffusion LM (MDLM, DiffuLLaMA's adaptation) and distil it to "
                       "few sampling steps (SDTT).", no_args_is_help=True)

SAMPLING = "Sampling"
DataOpt = Annotated[str, typer.Option("--data", help="Training text: wikitext2 (first half of the shared test file), alpaca (chat-rendered records), text files; a comma list.", rich_help_panel=TRAINING)]
LrOpt = Annotated[float, typer.Option("--lr", help="AdamW learning rate (constant after --warmup-steps).", rich_help_panel=TRAINING)]
WarmupOpt = Annotated[int, typer.Option("--warmup-steps", help="Linear warm-up steps.", rich_help_panel=TRAINING)]
StepsOpt = Annotated[int, typer.Option("--sampling-steps", help="Denoising steps (forward passes: at most this plus one).", rich_help_panel=SAMPLING)]
LengthOpt = Annotated[int, typer.Option("--length", help="Tokens per sample, the start token (and prompt) included.", rich_help_panel=SAMPLING)]
NumSamplesOpt = Annotated[int, typer.Option("--num-samples", "-n", help="Samples to draw.", rich_help_panel=SAMPLING)]


@app.command("adapt")
def adapt(
    model: ModelArg = MODEL,
    data: DataOpt = "wikitext2,alpaca",
    seqlen: Annotated[int, typer.Option("--seqlen", help="Tokens per training window (a start token, then text).", rich_help_panel=TRAINING)] = 128,
    max_steps: MaxStepsOpt = 1000,
    batch_size: BatchSizeOpt = 8,
    lr: LrOpt = 1e-4,
    warmup_steps: WarmupOpt = 50,
    anneal_steps: Annotated[int, typer.Option("--anneal-steps", help="Open the causal mask gradually over N steps (DiffuLLaMA's DiffuGPT recipe); 0: full attention from the start.", rich_help_panel=TRAINING)] = 0,
    from_scratch: Annotated[bool, typer.Option("--from-scratch", help="Train a small random model of MODEL's family (same tokenizer) instead of adapting MODEL.", rich_help_panel=TRAINING)] = False,
    save_every: SaveEveryOpt = 0,
    checkpoint_dir: CheckpointDirOpt = None,
    resume: ResumeOpt = False,
    dry_run: DryRunOpt = False,
    out: OutOpt = None,
    force: ForceOpt = False,
    json: JsonOpt = False,
    quiet: QuietOpt = False,
    seed: SeedOpt = SEED,
    device: DeviceOpt = DEVICE,
    dtype: DtypeOpt = DTYPE,
) -> None:
    """Adapt an AR model into a masked diffusion LM (the SDTT teacher): MDLM loss, full attention, shift kept."""
    job = jobs.AdaptJob(model=model, data=data, seqlen=seqlen, max_steps=max_steps, batch_size=batch_size, lr=lr,
                        warmup_steps=warmup_steps, anneal_steps=anneal_steps, from_scratch=from_scratch, save_every=save_every,
                        checkpoint_dir=checkpoint_dir, resume=resume, out=out, force=force, seed=seed, device=device, dtype=dtype,
                        dry_run=dry_run)
    run_command(ADAPT, job, json_out=json, quiet=quiet)


@app.command("distill")
def distill(
    model: Annotated[str, typer.Argument(help="The teacher: a folder made by `llmslim diffuse adapt`.", show_default=False)],
    rounds: Annotated[int, typer.Option("--rounds", help="Distillation rounds; each halves the sampling steps.", rich_help_panel=TRAINING)] = 3,
    steps_per_round: Annotated[int, typer.Option("--steps-per-round", help="Optimizer steps per round.", rich_help_panel=TRAINING)] = 200,
    start_sampling_steps: Annotated[int, typer.Option("--start-sampling-steps", help="Round 0's teacher sampling steps N (dt = 1/N); the last round's student takes N / k^rounds.", rich_help_panel=TRAINING)] = 128,
    divergence: Annotated[str, typer.Option("--divergence", help="kl (reverse KL student||teacher, the reference's default), kl-fwd, mse (log-probs), tvd (true total variation).", rich_help_panel=TRAINING)] = "kl",
    teacher_steps: Annotated[int, typer.Option("--teacher-steps", help="k: teacher steps the student learns to take in one.", rich_help_panel=TRAINING)] = 2,
    data: DataOpt = "wikitext2,alpaca",
    batch_size: BatchSizeOpt = 8,
    lr: LrOpt = 1e-4,
    warmup_steps: WarmupOpt = 20,
    ema: Annotated[float, typer.Option("--ema", help="Decay of the student's weight average (what is saved and sampled); 0: none.", rich_help_panel=TRAINING)] = 0.9999,
    checkpoint_dir: CheckpointDirOpt = None,
    resume: Annotated[bool, typer.Option("--resume", help="Skip the rounds already saved in --checkpoint-dir.", rich_help_panel=TRAINING)] = False,
    dry_run: DryRunOpt = False,
    out: OutOpt = None,
    force: ForceOpt = False,
    json: JsonOpt = False,
    quiet: QuietOpt = False,
    seed: SeedOpt = SEED,
    device: DeviceOpt = DEVICE,
    dtype: DtypeOpt = DTYPE,
) -> None:
    """Distil a diffusion model to fewer sampling steps (SDTT): OUT/round-K/ is each round's student."""
    job = jobs.DistillJob(model=model, rounds=rounds, steps_per_round=steps_per_round, start_steps=start_sampling_steps,
                          divergence=divergence, teacher_steps=teacher_steps, data=data, batch_size=batch_size, lr=lr,
                          warmup_steps=warmup_steps, ema=ema, checkpoint_dir=checkpoint_dir, resume=resume, out=out,
                          force=force, seed=seed, device=device, dtype=dtype, dry_run=dry_run)
    run_command(DISTILL, job, json_out=json, quiet=quiet)


@app.command("sample")
def sample(
    model: Annotated[str, typer.Argument(help="A diffusion model folder (adapt's output, or a distill round).", show_default=False)],
    sampling_steps: StepsOpt = 64,
    length: LengthOpt = 128,
    num_samples: NumSamplesOpt = 4,
    prompt: Annotated[Optional[str], typer.Option("--prompt", help="Text every sample starts with (kept fixed).", rich_help_panel=SAMPLING)] = None,
    cache: Annotated[bool, typer.Option("--cache/--no-cache", help="Skip the forward pass after a step that unmasked nothing (same samples).", rich_help_panel=SAMPLING)] = True,
    json: JsonOpt = False,
    quiet: QuietOpt = False,
    seed: SeedOpt = SEED,
    device: DeviceOpt = DEVICE,
    dtype: DtypeOpt = DTYPE,
) -> None:
    """Draw samples with MDLM's ancestral sampler in --steps steps."""
    job = jobs.SampleJob(model=model, steps=sampling_steps, length=length, num_samples=num_samples, prompt=prompt, cache=cache,
                         seed=seed, device=device, dtype=dtype)
    run_command(SAMPLE, job, json_out=json, quiet=quiet)


@app.command("eval")
def evaluate(
    model: Annotated[str, typer.Argument(help="A diffusion model folder.", show_default=False)],
    sampling_steps: Annotated[str, typer.Option("--sampling-steps", help="Sampling step counts, a comma list.", rich_help_panel=SAMPLING)] = "8,16,32,64,128",
    num_samples: NumSamplesOpt = 64,
    length: LengthOpt = 128,
    batch_size: BatchSizeOpt = 16,
    evaluator: Annotated[str, typer.Option("--evaluator", help="AR model that scores the samples (gen-PPL) and is the latency baseline; same tokenizer.", rich_help_panel=SAMPLING)] = MODEL,
    lambada: Annotated[int, typer.Option("--lambada", help="LAMBADA passages for last-word accuracy (0: skip).", rich_help_panel=SAMPLING)] = 500,
    latency: Annotated[bool, typer.Option("--latency/--no-latency", help="Time each step count against the evaluator's KV-cache decoding of the same length.", rich_help_panel=SAMPLING)] = True,
    latency_batch: Annotated[int, typer.Option("--latency-batch", help="Sequences per timed generation.", rich_help_panel=SAMPLING)] = 8,
    out: OutOpt = None,
    force: ForceOpt = False,
    json: JsonOpt = False,
    quiet: QuietOpt = False,
    seed: SeedOpt = SEED,
    device: DeviceOpt = DEVICE,
    dtype: DtypeOpt = DTYPE,
) -> None:
    """Gen-PPL and entropy per step count, LAMBADA accuracy, latency against AR decoding."""
    job = jobs.EvalJob(model=model, steps=sampling_steps, num_samples=num_samples, length=length, batch_size=batch_size,
                       evaluator=evaluator, lambada=lambada, latency=latency, latency_batch=latency_batch, out=out,
                       force=force, seed=seed, device=device, dtype=dtype)
    run_command(EVAL, job, json_out=json, quiet=quiet)


def render_adapt(result: dict) -> None:
    report.stdout.print(f"adapted {result['model']} to masked diffusion: {result['steps']} steps, {result['tokens']:,} tokens, "
                        f"loss {result['first_loss']:.3f} -> {result['last_loss']:.3f}, MASK id {result['mask_token_id']}"
                        + (f"; saved to {result['out']}" if result.get("out") else ""))


def render_distill(result: dict) -> None:
    rows = [[r["round"], r["teacher_sampling_steps"], r["student_sampling_steps"], r["steps"], r["first_loss"], r["last_loss"],
             r["train_s"]] for r in result["rounds"]]
    report.stdout.print(report.table(f"SDTT {result['model']} ({result['divergence']})",
                                     ["round", "teacher steps", "student steps", "steps", "first loss", "last loss", "seconds"], rows))
    if result.get("out"):
        report.stdout.print(f"saved to {result['out']}/round-K/")


def render_sample(result: dict) -> None:
    for i, text in enumerate(result["samples"]):
        report.stdout.print(f"--- sample {i} ({result['steps']} steps)\n{(result['prompt'] or '')}{text}")


def render_eval(result: dict) -> None:
    lat = {r["steps"]: r for r in result.get("latency", {}).get("diffusion", [])}
    rows = [[r["steps"], r["gen_ppl"], r["entropy"], r["forward_passes"],
             lat.get(r["steps"], {}).get("speedup_vs_ar")] for r in result["rows"]]
    report.stdout.print(report.table(f"diffuse eval {result['model']} ({result['num_samples']} x {result['length']} tokens)",
                                     ["steps", "gen-PPL", "entropy", "forward passes", "speed vs AR"], rows))
    if "lambada" in result:
        lam = result["lambada"]
        report.stdout.print(f"LAMBADA ({lam['items']} passages): diffusion {lam['diffusion_acc']:.3f}, AR evaluator {lam['evaluator_ar_acc']:.3f}")


ADAPT = Command("diffuse adapt", jobs.validate_adapt, jobs.run_adapt, render_adapt, model_purpose="training", needs_out=True,
                distributed=True, plan=jobs.memory_plan_adapt)
DISTILL = Command("diffuse distill", jobs.validate_distill, jobs.run_distill, render_distill, model_purpose="training", needs_out=True,
                  distributed=True, plan=jobs.memory_plan_distill)
SAMPLE = Command("diffuse sample", jobs.validate_sample, jobs.run_sample, render_sample)
EVAL = Command("diffuse eval", jobs.validate_eval, jobs.run_eval, render_eval)
