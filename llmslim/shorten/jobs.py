"""`llmslim shorten rl|sft|eval`, the halves core/job.run_command calls: `validate_*` before
anything loads, `run_*` the work - build (or reuse) the reference answers, train, save a model
folder transformers loads; or answer with both models and compare."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from llmslim.core import distributed
from llmslim.core.data import data_dir, read_prompts
from llmslim.core.device import peak_memory_mb
from llmslim.core.errors import BadOptionError, DataError, LlmslimError
from llmslim.core.job import CommonOptions, Context
from llmslim.core.load import cache_dir, resolve_model
from llmslim.core.options import MODEL
from llmslim.core.save import save_model
from llmslim.shorten import evaluate as ev
from llmslim.shorten.reference import ReferenceSet, get_references
from llmslim.shorten.reward import Embedder


@dataclass(kw_only=True)
class TrainJob(CommonOptions):
    method: str  # "rl" or "sft"
    model: str = MODEL
    prompts: str | None = None  # records file; None: ../shared/data/alpaca/alpaca_200.json
    limit: int | None = None  # use the first N prompts
    val_size: int = 8  # the last N prompts are held out for the validation pass
    max_new_tokens: int = 256  # reference answers' limit
    max_ref_tokens: int | None = None  # train only on prompts whose reference is at most this long
    keep_unfinished: bool = False  # also train on references that hit max_new_tokens (their length is unknown)
    sim_model: str | None = None
    ref_cache: Path | None = None
    regenerate: bool = False
    batch_size_gen: int = 8
    resume: bool = False
    checkpoint_dir: Path | None = None
    method_config: object = None  # RLConfig or SFTConfig
    dry_run: bool = False  # print the memory plan and stop

    @property
    def work_dir(self) -> Path:
        return self.checkpoint_dir or Path(f"{self.out or default_out(self.model, self.method)}-checkpoints")


def default_out(model: str, method: str) -> Path:
    return Path(f"{Path(model).stem}-shorten-{method}")


def _prompts(job: TrainJob) -> tuple[list[str], list[str]]:
    source = job.prompts or data_dir() / "alpaca" / "alpaca_200.json"
    prompts = read_prompts(source)
    if job.limit is not None:
        if job.limit < 1:
            raise BadOptionError(f"--limit must be >= 1, got {job.limit}")
        prompts = prompts[: job.limit + job.val_size]
    if job.val_size < 0 or job.val_size >= len(prompts):
        raise BadOptionError(f"--val-size {job.val_size} leaves no training prompts out of {len(prompts)}")
    if job.val_size:
        return prompts[: -job.val_size], prompts[-job.val_size :]
    return prompts, []


def select_refs(refs: ReferenceSet, max_ref_tokens: int | None, keep_unfinished: bool) -> ReferenceSet:
    """The references trained on: finished ones (unless asked), at most `max_ref_tokens` long."""
    keep = [i for i, r in enumerate(refs.refs)
            if (keep_unfinished or r.finished) and (max_ref_tokens is None or r.n_tokens <= max_ref_tokens)]
    dists = None
    if refs.dists is not None:
        from llmslim.shorten.reference import BranchDists

        dists = BranchDists([refs.dists.positions[i] for i in keep], [refs.dists.logprobs[i] for i in keep])
    return ReferenceSet([refs.refs[i] for i in keep], dists, refs.folder)


def _method_config(job: TrainJob):
    from llmslim.shorten.rl import RLConfig
    from llmslim.shorten.sft import SFTConfig

    if job.method not in ("rl", "sft"):
        raise BadOptionError(f"unknown method {job.method!r}")
    return job.method_config or (RLConfig(seed=job.seed) if job.method == "rl" else SFTConfig(seed=job.seed))


def validate_train(job: TrainJob) -> None:
    from llmslim.shorten.reward import resolve_sim_model

    _method_config(job).validate()
    if job.method == "rl":
        resolve_sim_model(job.sim_model)  # a typo here must not cost the reference answers first
    if job.max_new_tokens < 1:
        raise BadOptionError("--max-new-tokens must be >= 1")
    if job.resume and not job.work_dir.is_dir():
        raise BadOptionError(f"--resume: no checkpoint folder {job.work_dir}")
    _prompts(job)  # a missing or short prompts file fails here


# Prompt length before the tokenizer is read: at most one token per 3 UTF-8 bytes (English BPE
# averages about 4), plus the chat template's wrapping
PROMPT_BYTES_PER_TOKEN = 3
CHAT_TEMPLATE_TOKENS = 32
# fp32 [sequences x tokens, vocab] tensors alive at the loss; fitted to peak RSS on SmolLM2
# (benchmarks/memory_plan.py; docs/distributed.md has the table)
RL_LOGIT_COPIES = 6  # GRPO: the policy's logits, tempered copy, log-softmax, entropy terms; the reference's (4 left 0.87)
SFT_LOGIT_COPIES = 2  # the contexts' logits (every position) and their fp32 copy


def memory_plan(job: TrainJob):
    """The training step's expected peak from the config (core/plan.py): the model in fp32, the
    trained q/k/v (or LoRA adapters) with AdamW, activations for the step's sequences, the loss's
    logits, GRPO's reference model (beta > 0 without LoRA: TRL loads a second copy) and the
    similarity model; the option that would make it fit."""
    import math
    from dataclasses import replace

    from llmslim.core import plan as P
    from llmslim.core.device import resolve_device, resolve_dtype
    from llmslim.shorten.params import parse_modules

    cfg = _method_config(job)
    device = resolve_device(job.device)
    shapes = P.shapes_of(P.model_config(job.model))
    weight_bytes = P.DTYPE_BYTES[resolve_dtype(job.dtype, device, "training")]
    prompt_tokens = max(len(p.encode("utf-8")) for p in _prompts(job)[0]) // PROMPT_BYTES_PER_TOKEN + CHAT_TEMPLATE_TOKENS
    available = P.available_bytes(device)

    def parts(c) -> dict[str, int]:
        if job.method == "rl":  # batch x generations sequences of prompt + completion
            completion = c.completion_limit or math.ceil(job.max_new_tokens * 1.25) + 8  # the auto limit's bound
            batch, seqlen, copies = c.batch_size * c.num_generations, prompt_tokens + completion, RL_LOGIT_COPIES
            reference = shapes if c.beta > 0 and not c.lora else None
        else:  # batch contexts: prompt + the answer's head
            batch, seqlen, copies = c.batch_size, prompt_tokens + math.ceil(job.max_new_tokens * c.head_ratio), SFT_LOGIT_COPIES
            reference = None
        out = P.training_parts(shapes, full=not c.lora, lora_r=c.lora_r, batch=batch, seqlen=seqlen,
                               teacher=reference, teacher_bytes=weight_bytes, device_type=device.type, logit_copies=copies,
                               modules=parse_modules(c.train_modules))
        if "teacher" in out:
            out["reference model"] = out.pop("teacher")
        if job.method == "rl":
            out["similarity model"] = _sim_model_bytes(job.sim_model)
        return out

    candidates = P.smaller_batches(cfg, parts) + ([("--lora", parts(replace(cfg, lora=True)))] if not cfg.lora else [])
    return P.MemoryPlan(str(device), parts(cfg), available, f"one {job.method} training step"), P.first_that_fits(str(device), available, candidates)


def _sim_model_bytes(spec: str | None) -> int:
    """The sentence embedder's weights as stored (fp32 on the CPU, as the reward runs it)."""
    from llmslim.shorten.reward import resolve_sim_model

    folder = Path(resolve_sim_model(spec))
    if not folder.is_dir():  # a hub id: its size is unknown until it downloads
        return 0
    return sum(f.stat().st_size for f in folder.rglob("*") if f.suffix in (".safetensors", ".bin"))


def step_progress(progress, method: str, steps: int):
    """A progress callback for the trainers' history rows: the step and the last values, on
    `progress` (a command's bar, core/job's Context.progress, or core/report.progress())."""
    task = progress.add_task(f"shorten {method}", total=steps)
    labels = (("reward", "reward"), ("reward_std", "spread"), ("mean_length", "len"), ("kl", "kl"), ("clipped_ratio", "clipped"),
              ("branch_len", "branch len"), ("shorter_frac", "shorter"), ("kl_ref_act", "kl"))

    def update(row: dict) -> None:
        if "step" in row and "loss" in row:
            parts = [f"loss {row['loss']:.3f}"] + [f"{label} {row[key]:.3g}" for key, label in labels if key in row]
            progress.update(task, completed=row["step"], description=f"shorten {method}: " + ", ".join(parts))

    return update


def _references(job: TrainJob, ctx: Context, cfg, prompts: list[str]):
    """The model's own answers to the training prompts (cached), and those trained on."""
    # under torchrun the first process builds the cache while the others wait, then they read it
    with distributed.main_first():
        refs = get_references(
            ctx.model, ctx.tokenizer, prompts, model_id=ctx.loaded.path, cache_root=job.ref_cache or cache_dir() / "shorten",
            max_new_tokens=job.max_new_tokens, batch_size=job.batch_size_gen,
            branch=cfg.branch_settings() if job.method == "sft" else None, regenerate=job.regenerate and distributed.is_main(),
            progress=ctx.step("reference answers (once, cached)", len(prompts)),
        )
    used = select_refs(refs, job.max_ref_tokens, job.keep_unfinished)
    if not used.refs:
        raise DataError(f"none of the {len(refs.refs)} reference answers is finished and within --max-ref-tokens "
                        f"{job.max_ref_tokens}: raise --max-new-tokens or pass --keep-unfinished")
    info = {"cache": str(refs.folder), "n_all": len(refs.refs), "n_used": len(used.refs), "finished_frac": refs.finished_frac,
            "mean_tokens_used": used.mean_tokens, "max_tokens_used": used.max_tokens}
    return used, info


def run_train(job: TrainJob, ctx: Context) -> dict:
    from llmslim.shorten.rl import train_rl
    from llmslim.shorten.sft import train_sft

    cfg = _method_config(job)
    work = job.work_dir
    created_work = not work.exists()  # only a scratch folder this run made is removed afterwards
    train_prompts, val_prompts = _prompts(job)
    t0 = time.perf_counter()
    used, ref_info = _references(job, ctx, cfg, train_prompts)
    ctx.timings["reference_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    progress = step_progress(ctx.progress, job.method, cfg.steps)
    if job.method == "rl":
        embedder = Embedder(job.sim_model, device=str(ctx.loaded.device))
        result = train_rl(ctx.model, ctx.tokenizer, used, embedder, cfg, work_dir=work, resume=job.resume,
                          val_prompts=val_prompts, progress=progress)
    else:
        result = train_sft(ctx.model, ctx.tokenizer, used, cfg, work_dir=work, resume=job.resume, val_prompts=val_prompts,
                           val_limit=job.max_new_tokens, progress=progress)
    ctx.timings["train_s"] = time.perf_counter() - t0
    if created_work and not cfg.save_every and work.is_dir() and distributed.is_main():
        shutil.rmtree(work, ignore_errors=True)  # TRL/our per-run scratch; kept when checkpoints were asked for

    trained, history = result.pop("model"), result["history"]

    def write(folder: Path) -> None:
        save_model(trained, ctx.tokenizer, folder)
        (folder / "history.jsonl").write_text("".join(json.dumps(row) + "\n" for row in history))

    ctx.save(write)
    last = [h for h in history if "loss" in h]
    return {"method": job.method, "model": job.model, "processes": distributed.world(), "references": ref_info, "config": asdict(cfg),
            **({"adapter": "adapter/"} if cfg.lora else {}), **{k: v for k, v in result.items() if k != "history"},
            "last": last[-1] if last else {}, "validation": [h for h in history if "val_mean_length" in h],
            "peak_memory_mb": peak_memory_mb(ctx.loaded.device)}  # every step's row: history.jsonl


@dataclass(kw_only=True)
class EvalJob(CommonOptions):
    model: str  # the shortened model
    base: str | None = None  # None: the model recorded in the shortened folder's run.json
    prompts: str | None = None  # None: MT-Bench first turns
    limit: int | None = None
    max_new_tokens: int = 256
    batch_size: int = 8
    sim_model: str | None = None
    judge_url: str | None = None
    judge_model: str | None = None  # required with judge_url: no silent default
    judge_key: str | None = None
    ref_cache: Path | None = None


def base_answers(base_model, tok, base_path: str, questions: list, job: EvalJob, progress=None) -> list:
    """The base model's answers, cached like reference answers (they are the same thing)."""
    from llmslim.core.generate import Generation

    refs = get_references(base_model, tok, [q.prompt for q in questions], model_id=base_path,
                          cache_root=job.ref_cache or cache_dir() / "shorten", max_new_tokens=job.max_new_tokens,
                          batch_size=job.batch_size, progress=progress)
    return [Generation(r.prompt, r.text, r.n_tokens, r.finished) for r in refs.refs]


def _same_model(a: str, b: str) -> bool:
    """Two model specs that name the same files (an alias and its path, ./m and m)."""
    def where(spec):
        try:
            folder, gguf = resolve_model(spec)
        except LlmslimError:
            return spec
        return (str(Path(folder).resolve()) if Path(folder).exists() else folder, gguf)

    return where(a) == where(b)


def recorded_base(model: str) -> str | None:
    """The model a trained folder started from, as its run.json records it (None: no record)."""
    manifest = Path(model) / "run.json"
    if not manifest.is_file():
        return None
    return json.loads(manifest.read_text()).get("args", {}).get("model")


def validate_eval(job: EvalJob) -> None:
    if job.limit is not None and job.limit < 1:
        raise BadOptionError(f"--limit must be >= 1, got {job.limit}")
    if job.max_new_tokens < 1 or job.batch_size < 1:
        raise BadOptionError("--max-new-tokens and --batch-size must be >= 1")
    from llmslim.shorten.reward import resolve_sim_model

    if job.judge_url and not job.judge_model:
        raise BadOptionError("--judge-url needs --judge-model NAME (the model the endpoint should judge with)")
    resolve_model(job.model)  # both models and the embedder exist before the first answer is generated
    recorded = recorded_base(job.model)
    if job.base is None:
        if recorded is None:
            raise BadOptionError(f"--base needed: {job.model} has no run.json naming the model it was trained from")
        job.base = recorded
    elif recorded is not None and not _same_model(job.base, recorded) and not job.force:
        raise BadOptionError(f"--base {job.base} is not the model {job.model} was trained from ({recorded}, its run.json); "
                             "--force compares them anyway")
    resolve_model(job.base)
    resolve_sim_model(job.sim_model)
    ev.questions_from(job.prompts, job.limit)


def run_eval(job: EvalJob, ctx: Context) -> dict:
    """Loads its two models itself, one after the other (the base's answers are cached)."""
    from llmslim.core.load import load_model

    questions = ev.questions_from(job.prompts, job.limit)
    judge = ev.Judge(job.judge_url, job.judge_model, job.judge_key, prompts=ev.judge_prompts()) if job.judge_url else None
    t0 = time.perf_counter()
    base = load_model(job.base, device=job.device, dtype=job.dtype, purpose="inference")
    base_gens = base_answers(base.model, base.tokenizer, base.path, questions, job, ctx.step("base answers (cached)", len(questions)))
    del base
    ctx.timings["base_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    short = load_model(job.model, device=job.device, dtype=job.dtype, purpose="inference")
    short_gens = ev.answer(short.model, short.tokenizer, questions, max_new_tokens=job.max_new_tokens,
                           batch_size=job.batch_size, progress=ctx.step("shortened model answers", len(questions)))
    ctx.timings["short_s"] = time.perf_counter() - t0
    embedder = Embedder(job.sim_model)
    result = {"model": job.model, "base": job.base, "prompts": job.prompts or "mt-bench", "max_new_tokens": job.max_new_tokens,
              "sim_model": embedder.name, **ev.compare(questions, base_gens, short_gens, embedder)}
    if judge is not None:
        t0 = time.perf_counter()
        advance = ctx.step("judging", 2 * len(questions))
        journal = (job.ref_cache or cache_dir() / "shorten") / "judgments.jsonl"  # a failed run's judgments are kept
        jb = ev.judge_answers(judge, questions, base_gens, advance, journal=journal)
        js = ev.judge_answers(judge, questions, short_gens, advance, journal=journal)
        result["judge"] = {"model": judge.model, "base_mean": jb["mean"], "short_mean": js["mean"],
                           "base_scores": jb["scores"], "short_scores": js["scores"],
                           "score_change_pct": 100.0 * (js["mean"] / jb["mean"] - 1.0) if jb["mean"] and js["mean"] is not None else None}
        ctx.timings["judge_s"] = time.perf_counter() - t0
    rows = [{"id": q.qid, "prompt": q.prompt, "base": b.text, "short": s.text} for q, b, s in zip(questions, base_gens, short_gens)]
    ctx.save(lambda folder: (folder / "answers.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows)))
    return result
