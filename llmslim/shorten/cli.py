"""`llmslim shorten rl|sft|eval`: options -> job -> core/job.run_command -> table or JSON. No logic lives here."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from llmslim.core import report
from llmslim.core.job import Command, run_command
from llmslim.core.options import (DEVICE, DTYPE, MODEL, SEED, CheckpointDirOpt, DeviceOpt, DryRunOpt, DtypeOpt, ForceOpt, JsonOpt, LoraROpt,
                                  MaxStepsOpt, ModelArg, OutOpt, QuietOpt, ResumeOpt, SaveEveryOpt, SeedOpt)
from llmslim.shorten import jobs
from llmslim.shorten.params import DEFAULT_MODULES

app = typer.Typer(help="Fine-tune a chat model to answer shorter at equal quality (RL or token-branching SFT), and evaluate it.",
                  no_args_is_help=True)

DATA = "Data and reference answers"
METHOD = "Method"
TRAIN = "Training"

PromptsOpt = Annotated[Optional[str], typer.Option("--prompts", help="Training prompts (records file); default ../shared/data/alpaca/alpaca_200.json.", rich_help_panel=DATA)]
LimitOpt = Annotated[Optional[int], typer.Option("--limit", help="Train on the first N prompts (plus --val-size held out after them).", rich_help_panel=DATA)]
ValSizeOpt = Annotated[int, typer.Option("--val-size", help="Prompts held out for the validation pass (mean greedy length).", rich_help_panel=DATA)]
MaxNewOpt = Annotated[int, typer.Option("--max-new-tokens", help="Token limit of the reference answers.", rich_help_panel=DATA)]
MaxRefOpt = Annotated[Optional[int], typer.Option("--max-ref-tokens", help="Train only on prompts whose reference answer is at most N tokens.", rich_help_panel=DATA)]
UnfinishedOpt = Annotated[bool, typer.Option("--keep-unfinished/--drop-unfinished", help="Also train on reference answers cut by --max-new-tokens (their true length is unknown).", rich_help_panel=DATA)]
RefCacheOpt = Annotated[Optional[Path], typer.Option("--ref-cache", help="Folder for cached reference answers (default: the llmslim cache).", rich_help_panel=DATA)]
RegenOpt = Annotated[bool, typer.Option("--regenerate", help="Ignore cached reference answers.", rich_help_panel=DATA)]
LrOpt = Annotated[float, typer.Option("--lr", help="Learning rate (AdamW).", rich_help_panel=TRAIN)]
ModulesOpt = Annotated[str, typer.Option("--train-modules", help="Modules trained (the rest frozen); paper: attention input projections.", rich_help_panel=TRAIN)]
LoraOpt = Annotated[bool, typer.Option("--lora", help="Train LoRA adapters on --train-modules instead; the output folder holds the merged model and adapter/.", rich_help_panel=TRAIN)]
EvalEveryOpt = Annotated[int, typer.Option("--eval-every", help="Validation pass every K steps (0: off).", rich_help_panel=TRAIN)]
SimOpt = Annotated[Optional[str], typer.Option("--sim-model", help="sentence-transformers model (folder or hub id); default: packaged all-MiniLM-L6-v2.", rich_help_panel=METHOD)]


def _train(method: str, model, cfg, *, prompts, limit, val_size, max_new_tokens, max_ref_tokens, keep_unfinished,
           sim_model, ref_cache, regenerate, out, force, resume, checkpoint_dir, json, quiet, seed, device, dtype,
           dry_run) -> None:
    job = jobs.TrainJob(method=method, model=model, prompts=prompts, limit=limit, val_size=val_size,
                        max_new_tokens=max_new_tokens, max_ref_tokens=max_ref_tokens, keep_unfinished=keep_unfinished,
                        sim_model=sim_model, ref_cache=ref_cache, regenerate=regenerate,
                        out=out if dry_run else out or jobs.default_out(model, method), force=force, resume=resume,
                        checkpoint_dir=checkpoint_dir, seed=seed, device=device, dtype=dtype, method_config=cfg, dry_run=dry_run)
    run_command(TRAIN_COMMANDS[method], job, json_out=json, quiet=quiet)


@app.command("rl")
def rl(
    model: ModelArg = MODEL,
    lam: Annotated[float, typer.Option("--lam", help="λ: weight of the length term in the reward (paper: 0.1 ... 1.0).", rich_help_panel=METHOD)] = 0.5,
    reward_clip: Annotated[float, typer.Option("--reward-clip", help="Clip the reward to [-c, c] (the length term is unbounded below).", rich_help_panel=METHOD)] = 1.0,
    beta: Annotated[float, typer.Option("--beta", help="KL penalty to the frozen input model.", rich_help_panel=METHOD)] = 0.04,
    num_generations: Annotated[int, typer.Option("--num-generations", help="Sampled answers per prompt (GRPO group).", rich_help_panel=METHOD)] = 4,
    completion_limit: Annotated[Optional[int], typer.Option("--completion-limit", help="Max sampled answer tokens (default: 1.25 x the longest reference + 8; a lower one truncates every answer and nothing is learned).", rich_help_panel=METHOD)] = None,
    temperature: Annotated[float, typer.Option("--temperature", help="Sampling temperature of the policy.", rich_help_panel=METHOD)] = 1.0,
    sim_model: SimOpt = None,
    lr: LrOpt = 1e-5,
    max_steps: MaxStepsOpt = 100,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Prompts per step.", rich_help_panel=TRAIN)] = 2,
    train_modules: ModulesOpt = DEFAULT_MODULES,
    lora: LoraOpt = False,
    lora_r: LoraROpt = 16,
    eval_every: EvalEveryOpt = 0,
    save_every: SaveEveryOpt = 0,
    checkpoint_dir: CheckpointDirOpt = None,
    resume: ResumeOpt = False,
    prompts: PromptsOpt = None,
    limit: LimitOpt = None,
    val_size: ValSizeOpt = 8,
    max_new_tokens: MaxNewOpt = 256,
    max_ref_tokens: MaxRefOpt = None,
    keep_unfinished: UnfinishedOpt = False,
    ref_cache: RefCacheOpt = None,
    regenerate: RegenOpt = False,
    dry_run: DryRunOpt = False,
    out: OutOpt = None,
    force: ForceOpt = False,
    json: JsonOpt = False,
    quiet: QuietOpt = False,
    seed: SeedOpt = SEED,
    device: DeviceOpt = DEVICE,
    dtype: DtypeOpt = DTYPE,
) -> None:
    """On-policy RL (TRL GRPO): reward = (1-λ)·cos(ref, answer) + λ·(L_ref - L)/L_ref, KL to the input model."""
    from llmslim.shorten.rl import RLConfig

    cfg = RLConfig(lam=lam, reward_clip=reward_clip, beta=beta, learning_rate=lr, steps=max_steps, batch_size=batch_size,
                   num_generations=num_generations, completion_limit=completion_limit, temperature=temperature,
                   train_modules=train_modules, lora=lora, lora_r=lora_r, lora_alpha=2 * lora_r,
                   eval_every=eval_every, save_every=save_every, seed=seed)
    _train("rl", model, cfg, prompts=prompts, limit=limit, val_size=val_size, max_new_tokens=max_new_tokens,
           max_ref_tokens=max_ref_tokens, keep_unfinished=keep_unfinished, sim_model=sim_model, ref_cache=ref_cache,
           regenerate=regenerate, out=out, force=force, resume=resume, checkpoint_dir=checkpoint_dir, json=json,
           quiet=quiet, seed=seed, device=device, dtype=dtype, dry_run=dry_run)


@app.command("sft")
def sft(
    model: ModelArg = MODEL,
    lam1: Annotated[float, typer.Option("--lam1", help="Weight of KL(p_ref ‖ p_act) (paper: 0.01).", rich_help_panel=METHOD)] = 0.01,
    lam2: Annotated[float, typer.Option("--lam2", help="Weight of KL(p_act ‖ p_ref) (paper: 0.01).", rich_help_panel=METHOD)] = 0.01,
    head_ratio: Annotated[float, typer.Option("--head-ratio", help="Branch in the first fraction of each answer (paper: 0.5).", rich_help_panel=METHOD)] = 0.5,
    tie_advantage: Annotated[int, typer.Option("--tie-advantage", help="Advantage of a branch as long as the reference's rest: -1 (the reference code: only shorter is rewarded) or 0.", rich_help_panel=METHOD)] = -1,
    top_p: Annotated[float, typer.Option("--top-p", help="Alternatives from this nucleus of p_ref (paper: 0.6, 0.9).", rich_help_panel=METHOD)] = 0.9,
    branches: Annotated[int, typer.Option("--branches", help="Branch positions per answer whose p_ref is cached.", rich_help_panel=METHOD)] = 4,
    lr: LrOpt = 1e-5,
    max_steps: MaxStepsOpt = 100,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Branches per step.", rich_help_panel=TRAIN)] = 4,
    train_modules: ModulesOpt = DEFAULT_MODULES,
    lora: LoraOpt = False,
    lora_r: LoraROpt = 16,
    eval_every: EvalEveryOpt = 0,
    save_every: SaveEveryOpt = 0,
    checkpoint_dir: CheckpointDirOpt = None,
    resume: ResumeOpt = False,
    prompts: PromptsOpt = None,
    limit: LimitOpt = None,
    val_size: ValSizeOpt = 8,
    max_new_tokens: MaxNewOpt = 256,
    max_ref_tokens: MaxRefOpt = None,
    keep_unfinished: UnfinishedOpt = False,
    ref_cache: RefCacheOpt = None,
    regenerate: RegenOpt = False,
    dry_run: DryRunOpt = False,
    out: OutOpt = None,
    force: ForceOpt = False,
    json: JsonOpt = False,
    quiet: QuietOpt = False,
    seed: SeedOpt = SEED,
    device: DeviceOpt = DEVICE,
    dtype: DtypeOpt = DTYPE,
) -> None:
    """Token-branching SFT: reward shorter greedy branches off the reference answers, with two-sided KL."""
    from llmslim.shorten.sft import SFTConfig

    cfg = SFTConfig(lam1=lam1, lam2=lam2, head_ratio=head_ratio, top_p=top_p, branches_per_answer=branches,
                    learning_rate=lr, steps=max_steps, batch_size=batch_size, train_modules=train_modules, lora=lora,
                    lora_r=lora_r, lora_alpha=2 * lora_r, eval_every=eval_every, save_every=save_every, seed=seed,
                    tie_advantage=tie_advantage)
    _train("sft", model, cfg, prompts=prompts, limit=limit, val_size=val_size, max_new_tokens=max_new_tokens,
           max_ref_tokens=max_ref_tokens, keep_unfinished=keep_unfinished, sim_model=None, ref_cache=ref_cache,
           regenerate=regenerate, out=out, force=force, resume=resume, checkpoint_dir=checkpoint_dir, json=json,
           quiet=quiet, seed=seed, device=device, dtype=dtype, dry_run=dry_run)


@app.command("eval")
def eval_cmd(
    model: Annotated[str, typer.Argument(help="The shortened model (folder, alias, .gguf or hub id).")],
    base: Annotated[Optional[str], typer.Option("--base", help="The model it was shortened from; default: the one MODEL's run.json records (another needs --force).")] = None,
    prompts: Annotated[Optional[str], typer.Option("--prompts", help="'mt-bench' (first turns of ../shared/data/mt_bench) or a records file.")] = "mt-bench",
    limit: Annotated[Optional[int], typer.Option("--limit", help="Only the first N prompts.")] = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", help="Answer token limit (both models).")] = 256,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Generation batch size.")] = 8,
    sim_model: SimOpt = None,
    judge_url: Annotated[Optional[str], typer.Option("--judge-url", help="OpenAI-compatible API (…/v1) scoring answers with MT-Bench's single-answer prompt.")] = None,
    judge_model: Annotated[Optional[str], typer.Option("--judge-model", help="Model name sent to the judge (required with --judge-url).")] = None,
    judge_key: Annotated[Optional[str], typer.Option("--judge-key", envvar="OPENAI_API_KEY", show_envvar=True, help="API key for the judge.")] = None,
    ref_cache: RefCacheOpt = None,
    out: OutOpt = None,
    force: ForceOpt = False,
    json: JsonOpt = False,
    quiet: QuietOpt = False,
    seed: SeedOpt = SEED,
    device: DeviceOpt = DEVICE,
    dtype: DtypeOpt = DTYPE,
) -> None:
    """Base vs shortened: mean output tokens, shortening %, proxy quality (embedding similarity), optional judge."""
    job = jobs.EvalJob(model=model, base=base, prompts=prompts, limit=limit, max_new_tokens=max_new_tokens,
                       batch_size=batch_size, sim_model=sim_model, judge_url=judge_url, judge_model=judge_model,
                       judge_key=judge_key, ref_cache=ref_cache, out=out, force=force, seed=seed, device=device, dtype=dtype)
    run_command(EVAL_COMMAND, job, json_out=json, quiet=quiet)


def render_train(result: dict) -> None:
    last = result.get("last", {})
    rows = [[k, v] for k, v in last.items() if k != "step"]
    rows += [["validation mean length", v["val_mean_length"]] for v in result.get("validation", [])[-1:]]
    refs = result["references"]
    report.stdout.print(report.table(
        f"shorten {result['method']} {result['model']}: {refs['n_used']} of {refs['n_all']} prompts, "
        f"reference mean {refs['mean_tokens_used']:.1f} tokens", ["last step", "value"], rows))
    for w in result.get("warnings", []):
        report.stderr.print(f"[yellow]warning:[/] {w}")
    report.stdout.print(f"trained {result['timings']['train_s']:.0f}s, peak memory {result['peak_memory_mb']:.0f} MiB, "
                        f"saved to {result['out']}")


def render_eval(result: dict) -> None:
    rows = [
        ["mean output tokens", result["base_mean_tokens"], result["short_mean_tokens"]],
        ["finished (EOS)", result["base_finished"], result["short_finished"]],
        ["checkable accuracy", result["base_checkable"]["accuracy"], result["short_checkable"]["accuracy"]],
    ]
    if "judge" in result:
        rows.append(["judge score (1-10)", result["judge"]["base_mean"], result["judge"]["short_mean"]])
    report.stdout.print(report.table(f"shorten eval on {result['prompts']} ({result['n']} prompts, ≤{result['max_new_tokens']} tokens)",
                                     ["", "base", "shortened"], rows))
    report.stdout.print(f"shortening {result['shortening_pct']:.1f}%, proxy similarity to base answers "
                        f"{result['proxy_similarity']:.3f} (quality change {result['proxy_quality_change_pct']:+.1f}%)")


TRAIN_COMMANDS = {method: Command(f"shorten {method}", jobs.validate_train, jobs.run_train, render_train, model_purpose="training",
                                  distributed=True, plan=jobs.memory_plan)
                  for method in ("rl", "sft")}
EVAL_COMMAND = Command("shorten eval", jobs.validate_eval, jobs.run_eval, render_eval, model_purpose=None)
