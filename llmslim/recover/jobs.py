"""`llmslim recover PRUNED --teacher DENSE --out DIR`: LoRA (or full) fine-tuning of a pruned
model on text windows with transformers' Trainer and the kd_loss of recover/kd.py, evaluated
before and after; the output folder holds the merged model (and adapter/)."""

from __future__ import annotations

import copy
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from llmslim.core import distributed
from llmslim.core.device import peak_memory_mb
from llmslim.core.errors import BadOptionError
from llmslim.core.job import CommonOptions, Context

DEFAULT_KD = 0.5  # with a teacher; without one the loss is next-token CE only (LLM-Pruner's recovery)
SELF = "self"  # --data: the teacher's own samples (data-free, as LLM-QAT distils), one per training example
# LoRA: LLM-Pruner's recovery used 1e-4 on Llama-7B. Full: on SmolLM2 at 20% FFN, 40 steps
# (docs/recover.md) with 5e-5 closed 67% of the perplexity gap, LoRA at 2e-4 39%.
LR = {"lora": 2e-4, "full": 5e-5}


@dataclass(kw_only=True)
class RecoverJob(CommonOptions):
    model: str  # the pruned model
    teacher: str | None = None
    kd: float | None = None  # None: DEFAULT_KD with a teacher, 0 without
    temperature: float = 1.0
    data: str = "wikitext2"
    seqlen: int = 256
    max_steps: int = 100
    batch_size: int = 4
    lr: float | None = None  # None: LR["full" or "lora"]
    lora_r: int = 8
    full: bool = False
    ppl: bool = False
    ppl_seqlen: int = 1024
    ppl_limit: int | None = None
    tasks: str | None = None
    limit: int | None = None
    save_every: int = 0
    resume: bool = False
    checkpoint_dir: Path | None = None
    dry_run: bool = False  # print the memory plan and stop

    @property
    def kd_weight(self) -> float:
        return self.kd if self.kd is not None else (DEFAULT_KD if self.teacher else 0.0)

    @property
    def needs_teacher(self) -> bool:
        """A KD term to compute, or `self` samples to draw from it."""
        return self.kd_weight > 0 or self.samples_teacher

    @property
    def samples_teacher(self) -> bool:
        """--data names `self`: windows sampled from the teacher."""
        return SELF in self.data.split(",")

    @property
    def work_dir(self) -> Path:
        return self.checkpoint_dir or Path(f"{self.out}-checkpoints")


def memory_plan(job: RecoverJob, shapes=None, teacher_shapes=None):
    """Training's expected peak (core/plan.py) and the option that would make it fit.
    -> (MemoryPlan, advice). `shapes`: the student's, when the caller has them already."""
    from dataclasses import replace

    from llmslim.core import plan as P
    from llmslim.core.device import resolve_device, resolve_dtype

    device = resolve_device(job.device)
    shapes = shapes or P.shapes_of(P.model_config(job.model))
    if job.needs_teacher and teacher_shapes is None:
        teacher_shapes = P.shapes_of(P.model_config(job.teacher))
    available = P.available_bytes(device)

    def parts(j: RecoverJob) -> dict[str, int]:
        return P.training_parts(shapes, full=j.full, lora_r=j.lora_r, batch=j.batch_size, seqlen=j.seqlen,
                                teacher=teacher_shapes if j.needs_teacher else None,
                                teacher_bytes=P.DTYPE_BYTES[resolve_dtype(j.dtype, device, "inference")], device_type=device.type)

    candidates = ([("LoRA (no --full)", parts(replace(job, full=False)))] if job.full else []) + P.smaller_batches(job, parts)
    return P.MemoryPlan(str(device), parts(job), available, "training"), P.first_that_fits(str(device), available, candidates)


def validate(job: RecoverJob, flag_prefix: str = "") -> None:
    """Refuse bad options before any model loads. `flag_prefix`: what the caller's flags for
    --data, --kd, --batch-size, --lr and --seqlen start with (prune --recover-steps and
    benchmarks/prune_table.py: "recover-")."""
    from llmslim.core.data import check_text_source
    from llmslim.core.load import resolve_model

    def flag(name: str) -> str:
        return f"--{flag_prefix}{name}"

    if not 0.0 <= job.kd_weight <= 1.0:
        raise BadOptionError(f"{flag('kd')} must be in [0, 1], got {job.kd}")
    if job.kd_weight > 0 and not job.teacher:
        raise BadOptionError("--kd > 0 needs --teacher (the dense model); --kd 0 is plain recovery")
    if job.batch_size < 1:
        raise BadOptionError(f"{flag('batch-size')} must be >= 1, got {job.batch_size}")
    if job.temperature <= 0 or job.seqlen < 2 or job.max_steps < 1 or job.lora_r < 1:
        raise BadOptionError(f"--temperature must be > 0, {flag('seqlen')} >= 2, --max-steps and --lora-r >= 1")
    if job.lr is not None and job.lr <= 0:
        raise BadOptionError(f"{flag('lr')} must be > 0, got {job.lr}")
    if job.resume and not job.work_dir.is_dir():
        raise BadOptionError(f"--resume: no checkpoint folder {job.work_dir}")
    if job.samples_teacher and not job.teacher:
        raise BadOptionError(f"{flag('data')} self samples the --teacher: name one")
    check_text_source(job.data, option=flag("data"), also=(SELF,))
    if job.tasks:
        from llmslim.eval.harness import check_data, resolve_tasks

        check_data(resolve_tasks(job.tasks))
    if job.ppl:
        from llmslim.core.data import wikitext2_halves

        wikitext2_halves()
    for spec in filter(None, (job.teacher, job.model)):
        resolve_model(spec)


def _prepare_student(model, job: RecoverJob):
    """LoRA adapters on every linear layer but the head (PEFT's "all-linear"), or every weight."""
    if job.full:
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=job.lora_r, lora_alpha=2 * job.lora_r, lora_dropout=0.0,
                                            target_modules="all-linear", task_type="CAUSAL_LM"))


def training_windows(tokenizer, teacher, job: RecoverJob, advance=None) -> torch.Tensor:
    """job.data as [N, seqlen] token windows: named texts and files cut into consecutive windows
    (core/data.token_windows), and with `self` max_steps x batch_size sequences sampled from the
    teacher at temperature 1 (core/data.self_calibration, LLM-QAT's data-free recipe), so each
    training example is a fresh sample: recovery towards the teacher on the teacher's own
    distribution rather than one corpus's. `advance(n)`: progress of the sampling."""
    from llmslim.core.data import self_calibration, token_windows, training_text

    parts = job.data.split(",")
    texts = [part for part in parts if part != SELF]
    windows = [token_windows(tokenizer, training_text(",".join(texts), tokenizer), job.seqlen)] if texts else []
    if job.samples_teacher:
        windows.append(self_calibration(teacher, tokenizer, self_samples(job), job.seqlen, job.seed,
                                        batch_size=_sampling_batch(teacher, job.seqlen), advance=advance))
    return torch.cat(windows)


def self_samples(job: RecoverJob) -> int:
    """How many windows `self` samples: one per training example. Under torchrun every process
    samples the same seeded set and the Trainer gives each process its own share of it."""
    return job.max_steps * job.batch_size * distributed.world()


def _sampling_batch(teacher, seqlen: int) -> int:
    """Sequences sampled at once: 8 on a CPU (compute-bound); on a GPU, where decode is
    launch-bound, as many as a quarter of the free memory holds in KV cache and last-step
    logits (fp32), at most 512 (2,400 x 256 took 48 s on an H100 with 512)."""
    device = next(teacher.parameters()).device
    if device.type != "cuda":
        return 8
    cfg = teacher.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    elem = next(teacher.parameters()).element_size()
    per_sequence = 2 * cfg.num_hidden_layers * kv_heads * head_dim * seqlen * elem + 2 * cfg.vocab_size * 4
    return max(1, min(512, torch.cuda.mem_get_info(device)[0] // 4 // per_sequence))


def train(model, tokenizer, teacher, job: RecoverJob, advance=None, windows: torch.Tensor | None = None) -> tuple[torch.nn.Module, dict]:
    """Recovery training of `model` (in place) on job.data with transformers' Trainer:
    LoRA adapters (or every weight with job.full), kd_loss against `teacher` (None when
    job.kd_weight is 0 and job.data has no `self`). Used by `recover` and by `prune
    --recover-steps`. `windows`: training_windows' result when the caller has it already (a
    benchmark recovering several models from one teacher samples it once).
    -> (the trained model: a PEFT model unless job.full, its training summary)."""
    from transformers.trainer_callback import PrinterCallback

    from llmslim.core.training import Advance, training_args
    from transformers.trainer_utils import get_last_checkpoint

    from llmslim.core.data import WindowDataset
    from llmslim.recover.kd import DistillTrainer

    data = windows if windows is not None else training_windows(tokenizer, teacher, job)
    student = _prepare_student(model, job)
    trainable = sum(p.numel() for p in student.parameters() if p.requires_grad)


    created_work = not job.work_dir.exists()
    trainer = DistillTrainer(
        model=student, args=training_args(
            job.work_dir, batch_size=job.batch_size, lr=job.lr or LR["full" if job.full else "lora"], max_steps=job.max_steps,
            warmup_steps=max(1, job.max_steps // 10), scheduler="cosine", seed=job.seed, device=next(model.parameters()).device,
            dtype=next(model.parameters()).dtype, save_every=job.save_every),
        train_dataset=WindowDataset(data, labels=True),
        teacher=teacher if job.kd_weight > 0 else None, kd=job.kd_weight, temperature=job.temperature, callbacks=[Advance(advance)],
    )
    trainer.remove_callback(PrinterCallback)  # it prints every log dict on stdout (breaks --json)
    t0 = time.perf_counter()
    trainer.train(resume_from_checkpoint=get_last_checkpoint(str(job.work_dir)) if job.resume else None)
    train_s = time.perf_counter() - t0
    if created_work and not job.save_every and job.work_dir.is_dir():
        shutil.rmtree(job.work_dir, ignore_errors=True)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    steps = trainer.state.global_step
    return trainer.model, {
        "kd": job.kd_weight, "temperature": job.temperature, "data": job.data, "full": job.full,
        "lr": job.lr or LR["full" if job.full else "lora"], "steps": steps,
        "processes": distributed.world(), "tokens": steps * job.batch_size * job.seqlen * distributed.world(),
        "train_s": train_s, "trainable_params": trainable, "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None, "losses": losses,
        "loss_parts": {"first": trainer.parts[0], "last": trainer.parts[-1]} if trainer.parts else {}}


def merged(trained, full: bool):
    """Plain weights as they are saved (lm-eval wants a plain model; faster too): a merged copy
    of a LoRA model, or the fully trained model itself."""
    return trained if full else copy.deepcopy(trained).merge_and_unload()


def load_teacher(job: RecoverJob, vocab_size: int):
    """The --teacher in no_grad inference form, or None when neither the loss (a KD term) nor
    the data (`self`) needs it."""
    from llmslim.core.load import load_model

    if not job.needs_teacher:
        return None
    teacher = load_model(job.teacher, device=job.device, dtype=job.dtype, purpose="inference").model
    if teacher.config.vocab_size != vocab_size:
        raise BadOptionError(f"--teacher has {teacher.config.vocab_size} tokens, the model {vocab_size}")
    return teacher


def teacher_and_samples(job: RecoverJob, tokenizer, vocab_size: int, ctx: Context, label: str):
    """load_teacher, and with `self` data its samples (minutes on a CPU: a progress task of their
    own, named `label`). -> (the teacher the loss needs, None without a KD term; the sampled
    windows, None without `self`: train() cuts the text itself)."""
    teacher = load_teacher(job, vocab_size)
    if not job.samples_teacher:
        return teacher, None
    windows = training_windows(tokenizer, teacher, job, ctx.step(label, self_samples(job)))
    return (teacher if job.kd_weight > 0 else None), windows  # with kd 0 it was needed for the samples only


def run(job: RecoverJob, ctx: Context) -> dict:
    from llmslim.core.data import wikitext2_halves
    from llmslim.core.save import save_model
    from llmslim.eval.run import summary_metrics

    model, tokenizer = ctx.model, ctx.tokenizer
    ppl_text = wikitext2_halves()[1] if job.ppl else None

    def metrics(m, when: str):
        m.eval()
        return summary_metrics(m, tokenizer, ppl_text=ppl_text, ppl_seqlen=job.ppl_seqlen, ppl_limit=job.ppl_limit,
                               tasks=job.tasks, limit=job.limit, seed=job.seed, quiet=ctx.quiet, progress=ctx.progress,
                               label=f"({when})", per_item=True)

    evaluate = (job.ppl or job.tasks) and distributed.is_main()  # under torchrun the others wait for it
    before = metrics(model, "before") if evaluate else {}
    teacher, windows = teacher_and_samples(job, tokenizer, model.config.vocab_size, ctx, "sampling the teacher (--data self)")
    advance = ctx.step(f"recover ({'full' if job.full else 'LoRA'}, kd {job.kd_weight:g})", job.max_steps)
    trained, summary = train(model, tokenizer, teacher, job, advance, windows)
    ctx.timings["train_s"] = summary.pop("train_s")
    after = metrics(merged(trained, job.full), "after") if evaluate else {}
    ctx.save(lambda folder: save_model(trained, tokenizer, folder))  # merges a LoRA adapter, keeps it in adapter/
    result = {"model": job.model, "teacher": job.teacher, **summary, "before": before, "after": after,
              "peak_memory_mb": peak_memory_mb(next(model.parameters()).device)}
    items_before, items_after = before.pop("per_item", None), after.pop("per_item", None)
    if items_before is not None and items_after is not None:  # did recovery change accuracy beyond noise?
        from llmslim.eval.paired import headline_difference

        result["after_vs_before"] = headline_difference(items_after, items_before, list(items_after))
    return result
