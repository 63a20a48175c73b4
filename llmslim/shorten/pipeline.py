"""One `llmslim shorten rl|sft|eval` run: load, build (or reuse) the reference answers, train,
save a model folder transformers loads, and evaluate. The CLI builds a job and renders the dict."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from llmslim.core.data import data_dir, read_prompts
from llmslim.core.device import peak_memory_mb, seed_everything
from llmslim.core.errors import BadOptionError, DataError
from llmslim.core.load import cache_dir, load_model
from llmslim.core.outputs import atomic_dir, check_writable, write_manifest
from llmslim.shorten import evaluate as ev
from llmslim.shorten.reference import ReferenceSet, get_references
from llmslim.shorten.reward import Embedder


@dataclass
class TrainJob:
    method: str  # "rl" or "sft"
    model: str = "smollm2-135m"
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
    out: Path | None = None
    force: bool = False
    resume: bool = False
    checkpoint_dir: Path | None = None
    seed: int = 0
    device: str = "auto"
    dtype: str = "auto"
    method_config: object = None  # RLConfig or SFTConfig


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


def save_model(model, tokenizer, folder: Path, lora: bool) -> dict:
    """A plain HF folder; with LoRA also the adapter in adapter/ (the folder holds the merged model)."""
    info = {}
    if lora:
        model.save_pretrained(folder / "adapter")
        model = model.merge_and_unload()
        info["adapter"] = "adapter/"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return info


def run_train(job: TrainJob, bar=None) -> dict:
    from llmslim.shorten.rl import RLConfig, train_rl
    from llmslim.shorten.sft import SFTConfig, train_sft

    cfg = job.method_config
    if job.method == "rl":
        cfg = cfg or RLConfig(seed=job.seed)
    elif job.method == "sft":
        cfg = cfg or SFTConfig(seed=job.seed)
    else:
        raise BadOptionError(f"unknown method {job.method!r}")
    cfg.validate()
    if job.max_new_tokens < 1:
        raise BadOptionError("--max-new-tokens must be >= 1")
    out = job.out or default_out(job.model, job.method)
    check_writable(out, job.force)
    work = job.checkpoint_dir or Path(f"{out}-checkpoints")
    if job.resume and not work.is_dir():
        raise BadOptionError(f"--resume: no checkpoint folder {work}")
    created_work = not work.exists()  # only a scratch folder this run made is removed afterwards
    train_prompts, val_prompts = _prompts(job)
    seed_everything(job.seed)
    timings = {}

    t0 = time.perf_counter()
    loaded = load_model(job.model, device=job.device, dtype=job.dtype, purpose="gradients")
    model, tok = loaded.model, loaded.tokenizer
    embedder = Embedder(job.sim_model, device=str(loaded.device)) if job.method == "rl" else None
    timings["load_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    task = bar.add_task("reference answers (once, cached)", total=len(train_prompts)) if bar else None
    refs = get_references(
        model, tok, train_prompts, model_id=loaded.path, cache_root=job.ref_cache or cache_dir() / "shorten",
        max_new_tokens=job.max_new_tokens, batch_size=job.batch_size_gen,
        branch=cfg.branch_settings() if job.method == "sft" else None, regenerate=job.regenerate,
        progress=(lambda n: bar.advance(task, n)) if bar else None,
    )
    timings["reference_s"] = time.perf_counter() - t0
    used = select_refs(refs, job.max_ref_tokens, job.keep_unfinished)
    if not used.refs:
        raise DataError(f"none of the {len(refs.refs)} reference answers is finished and within --max-ref-tokens "
                        f"{job.max_ref_tokens}: raise --max-new-tokens or pass --keep-unfinished")
    ref_info = {"cache": str(refs.folder), "n_all": len(refs.refs), "n_used": len(used.refs),
                "finished_frac": refs.finished_frac, "mean_tokens_used": used.mean_tokens, "max_tokens_used": used.max_tokens}

    task = bar.add_task(f"shorten {job.method}", total=cfg.steps) if bar else None

    def step_progress(row: dict) -> None:
        if bar is None or "step" not in row or "loss" not in row:
            return
        parts = [f"loss {row['loss']:.3f}"]
        for key, label in (("reward", "reward"), ("reward_std", "spread"), ("mean_length", "len"), ("kl", "kl"),
                           ("clipped_ratio", "clipped"), ("branch_len", "branch len"), ("shorter_frac", "shorter"),
                           ("kl_ref_act", "kl")):
            if key in row:
                parts.append(f"{label} {row[key]:.3g}")
        bar.update(task, completed=row["step"], description=f"shorten {job.method}: " + ", ".join(parts))

    t0 = time.perf_counter()
    if job.method == "rl":
        result = train_rl(model, tok, used, embedder, cfg, work_dir=work, resume=job.resume,
                          val_prompts=val_prompts, progress=step_progress)
    else:
        result = train_sft(model, tok, used, cfg, work_dir=work, resume=job.resume, val_prompts=val_prompts,
                           val_limit=job.max_new_tokens, progress=step_progress)
    timings["train_s"] = time.perf_counter() - t0

    trained = result.pop("model")
    t0 = time.perf_counter()
    args = {k: v for k, v in asdict(job).items() if k != "method_config"}
    with atomic_dir(out, force=job.force) as tmp:
        saved = save_model(trained, tok, tmp, cfg.lora)
        with (tmp / "history.jsonl").open("w") as f:
            for row in result["history"]:
                f.write(json.dumps(row) + "\n")
        summary = {"method": job.method, "model": job.model, "references": ref_info, **saved,
                   **{k: v for k, v in result.items() if k != "history"}}
        write_manifest(tmp, command=f"shorten {job.method}", args={**args, job.method: asdict(cfg)}, seed=job.seed,
                       timings=timings, results=summary)
    timings["save_s"] = time.perf_counter() - t0
    if created_work and not cfg.save_every and work.is_dir():
        shutil.rmtree(work, ignore_errors=True)  # TRL/our per-run scratch; kept when checkpoints were asked for
    last = [h for h in result["history"] if "loss" in h]
    val = [h for h in result["history"] if "val_mean_length" in h]
    return {**summary, "out": str(out), "timings": timings, "last": last[-1] if last else {},
            "validation": val, "peak_memory_mb": peak_memory_mb(loaded.device), "history": result["history"]}


@dataclass
class EvalJob:
    model: str  # the shortened model
    base: str = "smollm2-135m"
    prompts: str | None = None  # None: MT-Bench first turns
    limit: int | None = None
    max_new_tokens: int = 256
    batch_size: int = 8
    sim_model: str | None = None
    judge_url: str | None = None
    judge_model: str = "gpt-4"
    judge_key: str | None = None
    ref_cache: Path | None = None
    out: Path | None = None
    force: bool = False
    seed: int = 0
    device: str = "auto"
    dtype: str = "auto"


def base_answers(base_model, tok, base_path: str, questions: list, job: EvalJob, bar=None) -> list:
    """The base model's answers, cached like reference answers (they are the same thing)."""
    from llmslim.core.generate import Generation

    task = bar.add_task("base answers (cached)", total=len(questions)) if bar else None
    refs = get_references(base_model, tok, [q.prompt for q in questions], model_id=base_path,
                          cache_root=job.ref_cache or cache_dir() / "shorten", max_new_tokens=job.max_new_tokens,
                          batch_size=job.batch_size, progress=(lambda n: bar.advance(task, n)) if bar else None)
    return [Generation(r.prompt, r.text, r.n_tokens, r.finished) for r in refs.refs]


def run_eval(job: EvalJob, bar=None) -> dict:
    if job.limit is not None and job.limit < 1:
        raise BadOptionError(f"--limit must be >= 1, got {job.limit}")
    if job.max_new_tokens < 1 or job.batch_size < 1:
        raise BadOptionError("--max-new-tokens and --batch-size must be >= 1")
    if job.out is not None:
        check_writable(job.out, job.force)
    questions = ev.questions_from(job.prompts, job.limit)
    judge = None
    if job.judge_url:
        judge = ev.Judge(job.judge_url, job.judge_model, job.judge_key, prompts=ev.judge_prompts())
    seed_everything(job.seed)
    timings = {}
    t0 = time.perf_counter()
    base = load_model(job.base, device=job.device, dtype=job.dtype, purpose="inference")
    base_gens = base_answers(base.model, base.tokenizer, base.path, questions, job, bar)
    del base
    timings["base_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    short = load_model(job.model, device=job.device, dtype=job.dtype, purpose="inference")
    task = bar.add_task("shortened model answers", total=len(questions)) if bar else None
    short_gens = ev.answer(short.model, short.tokenizer, questions, max_new_tokens=job.max_new_tokens,
                           batch_size=job.batch_size, progress=(lambda n: bar.advance(task, n)) if bar else None)
    timings["short_s"] = time.perf_counter() - t0
    embedder = Embedder(job.sim_model)
    result = {"model": job.model, "base": job.base, "prompts": job.prompts or "mt-bench", "max_new_tokens": job.max_new_tokens,
              "sim_model": embedder.name, **ev.compare(questions, base_gens, short_gens, embedder)}
    if judge is not None:
        t0 = time.perf_counter()
        task = bar.add_task("judging", total=2 * len(questions)) if bar else None
        adv = (lambda n: bar.advance(task, n)) if bar else None
        jb, js = ev.judge_answers(judge, questions, base_gens, adv), ev.judge_answers(judge, questions, short_gens, adv)
        result["judge"] = {"model": judge.model, "base_mean": jb["mean"], "short_mean": js["mean"],
                           "base_scores": jb["scores"], "short_scores": js["scores"],
                           "score_change_pct": 100.0 * (js["mean"] / jb["mean"] - 1.0) if jb["mean"] and js["mean"] is not None else None}
        timings["judge_s"] = time.perf_counter() - t0
    result["timings"] = timings
    if job.out is not None:
        with atomic_dir(job.out, force=job.force) as tmp:
            with (tmp / "answers.jsonl").open("w") as f:
                for q, b, s in zip(questions, base_gens, short_gens):
                    f.write(json.dumps({"id": q.qid, "prompt": q.prompt, "base": b.text, "short": s.text}) + "\n")
            write_manifest(tmp, command="shorten eval", args=asdict(job), seed=job.seed, timings=timings, results=result)
        result["out"] = str(job.out)
    return result
