"""`llmslim diffuse adapt | distill | sample | eval`: configs, validation before loading, and the
runs core/job.run_command calls."""

from __future__ import annotations

import copy
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from llmslim.core import distributed
from llmslim.core.errors import BadOptionError
from llmslim.core.job import CommonOptions, Context

ROUND_DIR = "round-{}"
RAW_WEIGHTS = "student_raw.pt"  # a round's raw (not averaged) student: the next round's teacher and start
ROUND_RECORD = "round.json"  # a round's settings, steps and losses (--resume checks the settings)


def _positive(**values) -> None:
    for name, value in values.items():
        if value is None or value < 1:
            raise BadOptionError(f"--{name.replace('_', '-')} must be >= 1, got {value}")


def _diffusion_config(model):
    from llmslim.diffuse.mdlm import DiffusionConfig

    try:
        return DiffusionConfig.from_model(model)
    except ValueError:
        raise BadOptionError("the model is not a diffusion model (make one with `llmslim diffuse adapt`)") from None


def _check_diffusion_folder(spec: str) -> None:
    """Before loading: a GGUF file or a local folder without the diffusion settings is refused
    (a hub id is checked once loaded)."""
    from llmslim.core.load import resolve_model

    folder, gguf = resolve_model(spec)
    config = Path(folder) / "config.json"
    if gguf or (config.is_file() and "llmslim_diffusion" not in json.loads(config.read_text())):
        raise BadOptionError(f"{spec} is not a diffusion model (make one with `llmslim diffuse adapt`)")


# ---------------------------------------------------------------- adapt


@dataclass(kw_only=True)
class AdaptJob(CommonOptions):
    model: str = "smollm2-135m"
    data: str = "wikitext2,alpaca"
    seqlen: int = 128
    max_steps: int = 1000
    batch_size: int = 8
    # between DiffuLLaMA's 2e-5 (7B, 20k steps) and DiffuGPT's 3e-4 (GPT-2 small, 160k steps):
    # a 135M model adapted in about a thousand steps
    lr: float = 1e-4
    warmup_steps: int = 50
    anneal_steps: int = 0  # 0: full attention from the first step (DiffuLLaMA's 7B run)
    from_scratch: bool = False
    dry_run: bool = False  # print the memory plan and stop
    save_every: int = 0
    resume: bool = False
    checkpoint_dir: Path | None = None

    @property
    def work_dir(self) -> Path:
        return self.checkpoint_dir or Path(f"{self.out}-checkpoints")


def validate_adapt(job: AdaptJob) -> None:
    from llmslim.core.data import check_text_source
    from llmslim.core.load import resolve_model

    _positive(seqlen=job.seqlen - 1, max_steps=job.max_steps, batch_size=job.batch_size)
    if job.lr <= 0 or job.warmup_steps < 0 or job.anneal_steps < 0 or job.save_every < 0:
        raise BadOptionError("--lr must be > 0; --warmup-steps, --anneal-steps and --save-every >= 0")
    if job.resume and not job.work_dir.is_dir():
        raise BadOptionError(f"--resume: no checkpoint folder {job.work_dir}")
    check_text_source(job.data)
    resolve_model(job.model)


def memory_plan_adapt(job: AdaptJob):
    """The adaptation's expected peak (core/plan.py: every weight trained in fp32 with AdamW, no
    teacher; the small config with --from-scratch) and the option that would make it fit."""
    from llmslim.core import plan as P
    from llmslim.core.device import resolve_device
    from llmslim.diffuse.train import small_config

    device = resolve_device(job.device)
    config = P.model_config(job.model)
    shapes = P.shapes_of(small_config(config) if job.from_scratch else config)
    available = P.available_bytes(device)

    def parts(j: AdaptJob) -> dict[str, int]:
        return P.training_parts(shapes, full=True, lora_r=0, batch=j.batch_size, seqlen=j.seqlen, teacher=None, teacher_bytes=0,
                                device_type=device.type)

    return (P.MemoryPlan(str(device), parts(job), available, "training"),
            P.first_that_fits(str(device), available, P.smaller_batches(job, parts)))


def run_adapt(job: AdaptJob, ctx: Context) -> dict:
    from transformers import AutoModelForCausalLM
    from transformers.trainer_callback import PrinterCallback
    from transformers.trainer_utils import get_last_checkpoint

    from llmslim.core.data import WindowDataset, token_windows, training_text
    from llmslim.core.save import save_model
    from llmslim.diffuse.mdlm import DiffusionConfig
    from llmslim.core.training import Advance, ProcessSeed, training_args
    from llmslim.diffuse.train import MaskedDiffusionTrainer, add_mask_token, small_config

    model, tokenizer = ctx.model, ctx.tokenizer
    if job.from_scratch:
        model = AutoModelForCausalLM.from_config(small_config(model.config)).to(model.device, model.dtype)
    mask_id = add_mask_token(model, tokenizer)
    first = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    windows = token_windows(tokenizer, training_text(job.data, tokenizer), job.seqlen, first_token=first)
    model.config.llmslim_diffusion = DiffusionConfig(mask_token_id=mask_id, seqlen=job.seqlen).to_dict()
    model.train()
    for p in model.parameters():
        p.requires_grad_(True)
    created_work = not job.work_dir.exists()
    trainer = MaskedDiffusionTrainer(
        model=model, args=training_args(job.work_dir, batch_size=job.batch_size, lr=job.lr, max_steps=job.max_steps,
                                        warmup_steps=job.warmup_steps, scheduler="constant_with_warmup", seed=job.seed, device=model.device,
                                        dtype=model.dtype, save_every=job.save_every),
        train_dataset=WindowDataset(windows), mask_id=mask_id, anneal_steps=job.anneal_steps,
        callbacks=[Advance(ctx.step("adapting to masked diffusion (MDLM loss)", job.max_steps)), ProcessSeed()],
    )
    trainer.remove_callback(PrinterCallback)  # it prints every log dict on stdout (breaks --json)
    t0 = time.perf_counter()
    trainer.train(resume_from_checkpoint=get_last_checkpoint(str(job.work_dir)) if job.resume else None)
    ctx.timings["train_s"] = time.perf_counter() - t0
    if created_work and not job.save_every and job.work_dir.is_dir():
        shutil.rmtree(job.work_dir, ignore_errors=True)
    model.eval()
    ctx.save(lambda folder: save_model(model, tokenizer, folder))
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"model": job.model, "from_scratch": job.from_scratch, "mask_token_id": mask_id, "data": job.data,
            "windows": windows.shape[0], "seqlen": job.seqlen, "steps": trainer.state.global_step,
            "processes": distributed.world(), "tokens": trainer.state.global_step * job.batch_size * job.seqlen * distributed.world(),
            "params": sum(p.numel() for p in model.parameters()),
            "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None, "losses": losses}


# ---------------------------------------------------------------- distill (SDTT)


@dataclass(kw_only=True)
class DistillJob(CommonOptions):
    model: str  # the teacher: a diffusion folder from `diffuse adapt`
    rounds: int = 3
    steps_per_round: int = 200
    start_steps: int = 128  # round 0's teacher samples in this many steps; each round halves it
    divergence: str = "kl"
    teacher_steps: int = 2  # k
    data: str = "wikitext2,alpaca"
    batch_size: int = 8
    lr: float = 1e-4
    warmup_steps: int = 20
    ema: float = 0.9999  # the reference's decay (with its (1 + n) / (10 + n) warm-up)
    resume: bool = False
    checkpoint_dir: Path | None = None
    dry_run: bool = False  # print the memory plan and stop

    @property
    def work_dir(self) -> Path:
        return self.checkpoint_dir or Path(f"{self.out}-checkpoints")


def validate_distill(job: DistillJob) -> None:
    from llmslim.core.data import check_text_source
    from llmslim.core.load import resolve_model
    from llmslim.diffuse.sdtt import DIVERGENCES

    _positive(rounds=job.rounds, steps_per_round=job.steps_per_round, start_sampling_steps=job.start_steps,
              teacher_steps=job.teacher_steps, batch_size=job.batch_size)
    if job.divergence not in DIVERGENCES:
        raise BadOptionError(f"unknown --divergence {job.divergence!r}; use {', '.join(DIVERGENCES)}")
    if job.start_steps // job.teacher_steps ** job.rounds < 1:
        raise BadOptionError(f"--start-sampling-steps {job.start_steps} cannot be divided by {job.teacher_steps} {job.rounds} times "
                             f"(round {job.rounds - 1}'s student would take fewer than 1 step)")
    if job.lr <= 0 or job.warmup_steps < 0 or not 0 <= job.ema < 1:
        raise BadOptionError("--lr must be > 0, --warmup-steps >= 0 and --ema in [0, 1)")
    if job.resume and not job.work_dir.is_dir():
        raise BadOptionError(f"--resume: no checkpoint folder {job.work_dir}")
    check_text_source(job.data)
    resolve_model(job.model)
    _check_diffusion_folder(job.model)


# fp32 [tokens, vocab] tensors alive at SDTT's loss (sdtt.py): the teacher's targets (its steps'
# other tensors are freed before the student runs), the student's logits, shifted copy and
# log-probabilities, the divergence's sliced rows of both with their exp. Fitted to peak RSS on
# SmolLM2 (benchmarks/memory_plan.py; docs/distributed.md has the table)
SDTT_LOGIT_COPIES = 11


def memory_plan_distill(job: DistillJob):
    """A round's expected peak: the student trained in fp32 with AdamW, the teacher (a copy of
    it), the EMA's fp32 weights, activations at the diffusion window (config.json's seqlen) and
    SDTT's loss; the option that would make it fit."""
    from llmslim.core import plan as P
    from llmslim.core.device import resolve_device, resolve_dtype

    device = resolve_device(job.device)
    config = P.model_config(job.model)
    settings = getattr(config, "llmslim_diffusion", None) or {}
    seqlen = settings.get("seqlen", 128)
    shapes = P.shapes_of(config)
    weight_bytes = P.DTYPE_BYTES[resolve_dtype(job.dtype, device, "training")]
    available = P.available_bytes(device)

    def parts(j: DistillJob) -> dict[str, int]:
        return {**P.training_parts(shapes, full=True, lora_r=0, batch=j.batch_size, seqlen=seqlen, teacher=shapes,
                                   teacher_bytes=weight_bytes, device_type=device.type, logit_copies=SDTT_LOGIT_COPIES),
                "EMA weights": shapes.params * 4}

    return (P.MemoryPlan(str(device), parts(job), available, "a distillation round"),
            P.first_that_fits(str(device), available, P.smaller_batches(job, parts)))


def _round_done(out: Path, r: int) -> bool:
    return (out / ROUND_DIR.format(r) / ROUND_RECORD).is_file()


def run_distill(job: DistillJob, ctx: Context) -> dict:
    """Rounds: round r's teacher takes k steps of dt = k^r / start_steps, its student learns one;
    at the boundary the student's raw weights become the teacher (the reference's default) and
    the student goes on from them with its EMA. Each round's EMA student is saved as round-r/
    (an HF folder) with its raw weights beside it, first in the checkpoint folder as the round
    finishes (--resume skips the rounds found there), then moved into --out."""
    from transformers.trainer_callback import PrinterCallback

    from llmslim.core.data import WindowDataset, token_windows, training_text
    from llmslim.core.outputs import atomic_dir
    from llmslim.core.save import save_model
    from llmslim.core.training import Advance, ProcessSeed, training_args
    from llmslim.diffuse.train import EMA, EMAUpdate, SDTTTrainer

    student, tokenizer = ctx.model, ctx.tokenizer
    cfg = _diffusion_config(student)
    first = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    windows = token_windows(tokenizer, training_text(job.data, tokenizer), cfg.seqlen, first_token=first)
    out = job.work_dir
    if distributed.is_main():
        out.mkdir(parents=True, exist_ok=True)
    settings = {"start_sampling_steps": job.start_steps, "teacher_steps": job.teacher_steps, "divergence": job.divergence,
                "steps_per_round": job.steps_per_round, "ema": job.ema, "data": job.data, "batch_size": job.batch_size,
                "lr": job.lr, "warmup_steps": job.warmup_steps, "seed": job.seed}
    ema, rounds, start_round = None, [], 0
    if job.resume:
        while _round_done(out, start_round):
            record = json.loads((out / ROUND_DIR.format(start_round) / ROUND_RECORD).read_text())
            if record["settings"] != settings:
                raise BadOptionError(f"--resume: {out / ROUND_DIR.format(start_round)} was made with {record['settings']}, "
                                     f"not {settings}")
            rounds.append(record)
            start_round += 1
        if start_round:
            saved = torch.load(out / ROUND_DIR.format(start_round - 1) / RAW_WEIGHTS, weights_only=True)
            student.load_state_dict(saved["student"])
            ema = EMA(student, job.ema, saved["ema_updates"], saved["ema"])
    ema = ema or EMA(student, job.ema)
    advance = ctx.step(f"SDTT ({job.rounds} rounds x {job.steps_per_round} steps, {job.divergence})",
                       (job.rounds - start_round) * job.steps_per_round)
    for r in range(start_round, job.rounds):
        teacher_sampling_steps = job.start_steps // job.teacher_steps ** r
        dt = 1.0 / teacher_sampling_steps
        teacher = copy.deepcopy(student).eval().requires_grad_(False)
        student.train().requires_grad_(True)
        work = out / f".round-{r}-work"
        trainer = SDTTTrainer(
            model=student, args=training_args(work, batch_size=job.batch_size, lr=job.lr, max_steps=job.steps_per_round,
                                              warmup_steps=job.warmup_steps if r == 0 else 0, scheduler="constant_with_warmup", seed=job.seed + r,
                                              device=student.device, dtype=student.dtype),
            train_dataset=WindowDataset(windows), teacher=teacher, dt=dt, mask_id=cfg.mask_token_id, divergence=job.divergence,
            teacher_steps=job.teacher_steps, callbacks=[EMAUpdate(ema, student), Advance(advance), ProcessSeed()],
        )
        trainer.remove_callback(PrinterCallback)
        t0 = time.perf_counter()
        trainer.train()
        shutil.rmtree(work, ignore_errors=True)
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        rounds.append({"round": r, "teacher_sampling_steps": teacher_sampling_steps,
                       "student_sampling_steps": teacher_sampling_steps // job.teacher_steps, "dt": dt,
                       "steps": trainer.state.global_step, "train_s": time.perf_counter() - t0,
                       "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None,
                       "settings": settings})
        if distributed.is_main():  # under torchrun every process holds the same weights; one writes them
            averaged = ema.copy_to(student).eval()
            with atomic_dir(out / ROUND_DIR.format(r), force=True) as folder:  # weights, raw state and record together
                save_model(averaged, tokenizer, folder)
                (folder / ROUND_RECORD).write_text(json.dumps(rounds[-1], indent=2) + "\n")
                torch.save({"student": student.state_dict(), "ema": ema.shadow, "ema_updates": ema.updates}, folder / RAW_WEIGHTS)
            del averaged
        del teacher
    student.eval()
    ctx.save(lambda folder: _publish_rounds(out, folder, job.rounds))  # the emptied checkpoint folder goes after
    return {"model": job.model, "divergence": job.divergence, "teacher_steps": job.teacher_steps, "ema": job.ema,
            "rounds": rounds, "final_sampling_steps": job.start_steps // job.teacher_steps ** job.rounds,
            "processes": distributed.world(),
            "tokens_per_round": job.steps_per_round * job.batch_size * cfg.seqlen * distributed.world()}


def _publish_rounds(work: Path, folder: Path, n: int) -> None:
    """The finished rounds move from the checkpoint folder into the output folder (published
    atomically by run_command); the checkpoint folder is then removed."""
    for r in range(n):
        shutil.move(str(work / ROUND_DIR.format(r)), str(folder / ROUND_DIR.format(r)))
    shutil.rmtree(work, ignore_errors=True)


# ---------------------------------------------------------------- sample


@dataclass(kw_only=True)
class SampleJob(CommonOptions):
    model: str
    steps: int = 64
    length: int = 128
    num_samples: int = 4
    prompt: str | None = None
    cache: bool = True


def validate_sample(job: SampleJob) -> None:
    from llmslim.core.load import resolve_model

    _positive(sampling_steps=job.steps, length=job.length, num_samples=job.num_samples)
    resolve_model(job.model)
    _check_diffusion_folder(job.model)


def _prefix(tokenizer, prompt: str | None) -> torch.Tensor:
    """The fixed start of every sample: the token training windows start with, then the prompt."""
    first = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    ids = [first] + (tokenizer(prompt, add_special_tokens=False).input_ids if prompt else [])
    return torch.tensor(ids)


def run_sample(job: SampleJob, ctx: Context) -> dict:
    from llmslim.diffuse.sample import sample

    cfg = _diffusion_config(ctx.model)
    prefix = _prefix(ctx.tokenizer, job.prompt)
    if prefix.numel() >= job.length:
        raise BadOptionError(f"the prompt is {prefix.numel()} tokens; --length {job.length} leaves nothing to generate")
    t0 = time.perf_counter()
    out = sample(ctx.model, cfg.mask_token_id, steps=job.steps, length=job.length, batch=job.num_samples, prefix=prefix,
                 seed=job.seed, cache=job.cache, eps=cfg.eps, progress=ctx.step(f"sampling ({job.steps} steps)", job.steps))
    ctx.timings["sample_s"] = time.perf_counter() - t0
    texts = ctx.tokenizer.batch_decode(out.tokens[:, prefix.numel():], skip_special_tokens=False)
    return {"model": job.model, "steps": job.steps, "length": job.length, "prompt": job.prompt,
            "forward_passes": out.forward_passes, "samples": texts}


# ---------------------------------------------------------------- eval


@dataclass(kw_only=True)
class EvalJob(CommonOptions):
    model: str
    steps: str = "8,16,32,64,128"
    num_samples: int = 64
    length: int = 128
    batch_size: int = 16
    evaluator: str = "smollm2-135m"
    lambada: int = 500  # LAMBADA passages (0: skip)
    latency: bool = True
    latency_batch: int = 8


def _steps(job: EvalJob) -> list[int]:
    try:
        steps = [int(s) for s in job.steps.split(",") if s.strip()]
    except ValueError:
        raise BadOptionError(f"--sampling-steps must be a comma list of integers, got {job.steps!r}") from None
    if not steps or min(steps) < 1:
        raise BadOptionError(f"--sampling-steps must be a comma list of integers >= 1, got {job.steps!r}")
    return steps


def validate_eval(job: EvalJob) -> None:
    from llmslim.core.data import data_dir
    from llmslim.core.load import resolve_model

    _steps(job)
    _positive(num_samples=job.num_samples, length=job.length - 1, batch_size=job.batch_size, latency_batch=job.latency_batch)
    if job.lambada < 0:
        raise BadOptionError(f"--lambada must be >= 0, got {job.lambada}")
    if job.lambada and not (data_dir() / "lambada" / "lambada_test.jsonl").is_file():
        raise BadOptionError(f"--lambada needs {data_dir() / 'lambada' / 'lambada_test.jsonl'} (set LLMSLIM_DATA, or --lambada 0)")
    resolve_model(job.model)
    resolve_model(job.evaluator)
    _check_diffusion_folder(job.model)


def run_eval(job: EvalJob, ctx: Context) -> dict:
    from llmslim.core.data import data_dir, read_records
    from llmslim.core.load import load_model
    from llmslim.diffuse import evaluate
    from llmslim.diffuse.sample import sample

    model, tokenizer = ctx.model, ctx.tokenizer
    cfg = _diffusion_config(model)
    device = next(model.parameters()).device
    evaluator = load_model(job.evaluator, device=job.device, dtype=job.dtype).model
    same_vocab = evaluator.config.vocab_size > max(i for i in tokenizer.get_vocab().values() if i != cfg.mask_token_id)
    if not same_vocab:
        raise BadOptionError(f"--evaluator {job.evaluator} has a smaller vocabulary than the model; use one with its tokenizer")
    prefix = _prefix(tokenizer, None)
    rows = []
    for steps in _steps(job):
        chunks, passes = [], 0
        advance = ctx.step(f"{steps} steps: {job.num_samples} samples", job.num_samples)
        t0 = time.perf_counter()
        for i in range(0, job.num_samples, job.batch_size):
            n = min(job.batch_size, job.num_samples - i)
            out = sample(model, cfg.mask_token_id, steps=steps, length=job.length, batch=n, prefix=prefix,
                         seed=job.seed * 100_003 + i, eps=cfg.eps)  # each batch its own draws, the same at every step count
            chunks.append(out.tokens.cpu())
            passes += out.forward_passes
            advance(n)
        tokens = torch.cat(chunks)
        rows.append({"steps": steps, "gen_ppl": evaluate.generative_perplexity(evaluator, tokens, prefix.numel(), tokenizer.eos_token_id),
                     "entropy": evaluate.unigram_entropy(tokens[:, prefix.numel():]), "forward_passes": passes,
                     "sample_s": time.perf_counter() - t0,
                     "example": tokenizer.decode(tokens[0, prefix.numel():])})
    result = {"model": job.model, "evaluator": job.evaluator, "length": job.length, "num_samples": job.num_samples,
              "rows": rows, "sampling_precision": "float64 Gumbel draws"}
    if job.lambada:
        texts = [r["text"] for r in read_records(data_dir() / "lambada" / "lambada_test.jsonl")][: job.lambada]
        items = evaluate.lambada_items(tokenizer, texts)
        result["lambada"] = {"items": len(items), "diffusion_acc": evaluate.lambada_diffusion(model, items, cfg.mask_token_id, int(prefix[0])),
                             "evaluator_ar_acc": evaluate.lambada_ar(evaluator, items)}
    if job.latency:
        result["latency"] = _latency(job, model, evaluator, cfg, prefix, device)
    return result


def _latency(job: EvalJob, model, ar_model, cfg, prefix: torch.Tensor, device) -> dict:
    """Seconds to produce job.length - len(prefix) tokens for a batch: the diffusion model at each
    step count, and the AR evaluator with its KV cache, in the same process (a ratio)."""
    from llmslim.core.device import device_label
    from llmslim.diffuse.evaluate import ar_decode, latency
    from llmslim.diffuse.sample import sample

    new = job.length - prefix.numel()
    ar_s = latency(lambda: ar_decode(ar_model, prefix, new, job.latency_batch), device)
    rows = []
    for steps in _steps(job):
        s = latency(lambda: sample(model, cfg.mask_token_id, steps=steps, length=job.length, batch=job.latency_batch,
                                   prefix=prefix, seed=job.seed, eps=cfg.eps), device)
        rows.append({"steps": steps, "seconds": s, "speedup_vs_ar": ar_s / s})
    return {"device": device_label(device), "batch": job.latency_batch, "new_tokens": new, "ar_kv_cache_s": ar_s, "diffusion": rows}
