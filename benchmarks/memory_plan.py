"""The memory plan (core/plan.py) against measured peaks: each case runs in a fresh process and
reports its peak RSS (CPU) or max allocated bytes (CUDA), next to the plan's total.

    .venv/bin/python benchmarks/memory_plan.py                       # every case, CPU
    .venv/bin/python benchmarks/memory_plan.py --cases prune:smollm2-135m:256

Cases: prune:SPEC:SEQLEN (one calibration window, afr:abs: SNIP + ReFer, per window),
recover:SPEC:SEQLEN:BATCH:full|lora (two training steps, the same model as teacher, kd 0.5) and
distill:SPEC:SEQLEN:BATCH (two SDTT steps of SPEC with a MASK token added: student, teacher copy,
EMA, as `diffuse distill` holds them) and shorten:rl|sft:SPEC:MAX_NEW_TOKENS:BATCH (the command
itself on the first 8 Alpaca prompts with unfinished references kept: rl one step of 4 sampled
answers per prompt, sft 8 steps, whose branch points, drawn anywhere in the answers' heads, reach
further into them than one step's do).
Writes benchmarks/results/memory_plan.json (resumable: finished cases are kept).
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

DEFAULT = ("prune:smollm2-135m:256,prune:smollm2-135m:1024,prune:random:smollm2-135m:512,"
           "prune:random:llama-1b:256,recover:smollm2-135m:256:4:full,recover:smollm2-135m:256:4:lora,"
           "distill:smollm2-135m:128:8,distill:smollm2-135m:256:4,shorten:rl:smollm2-135m:256:2,"
           "shorten:rl:smollm2-135m:128:1,shorten:sft:smollm2-135m:256:4,shorten:sft:smollm2-135m:128:8")

ap = argparse.ArgumentParser()
ap.add_argument("--cases", default=DEFAULT)
ap.add_argument("--device", default="cpu")
ap.add_argument("--out", default="benchmarks/results/memory_plan.json")
ap.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case in this process
args = ap.parse_args()


def split(case: str) -> list[str]:
    kind, rest = case.split(":", 1)
    if kind == "shorten":  # shorten:rl:SPEC:... -> the method joins the kind
        method, rest = rest.split(":", 1)
        kind = f"shorten-{method}"
    if rest.startswith("random:"):
        name, *tail = rest[len("random:"):].split(":")
        return [kind, "random:" + name, *tail]
    return [kind, *rest.split(":")]


def run_case(case: str) -> dict:
    import torch

    from llmslim.core import plan as P
    from llmslim.core.device import peak_memory_mb, resolve_device, resolve_dtype

    kind, spec, seqlen, *rest = split(case)
    seqlen = int(seqlen)
    device = resolve_device(args.device)
    shapes = P.shapes_of(P.model_config(spec))

    def load(purpose):
        if spec.startswith("random:"):
            from llmslim.bench.synthetic import random_model

            return random_model(spec, resolve_dtype("auto", device, purpose), 0, device)
        from llmslim.core.load import load_model

        return load_model(spec, device=args.device, purpose=purpose).model

    gen = torch.Generator().manual_seed(0)
    if kind == "prune":
        from llmslim.prune.run import collect_for

        model = load("gradients")
        dtype = next(model.parameters()).dtype
        windows = torch.randint(0, shapes.vocab, (1, seqlen), generator=gen)
        collect_for(model, windows, ["afr:abs"])  # no GMM (minutes on a CPU): prune_big.py measures its part
        parts = P.prune_parts(shapes, weight_bytes=P.DTYPE_BYTES[dtype], seqlen=seqlen, batch=1, refer=True, snip=True,
                              signed_kinds=0, device_type=device.type)
    elif kind.startswith("shorten-"):
        import tempfile

        from llmslim.cli import main
        from llmslim.core.job import run_command
        from llmslim.shorten import cli as shorten_cli

        method, max_new, batch = kind.split("-", 1)[1], seqlen, int(rest[0])
        jobs_seen = []

        def keep_job(command, job, **kw):  # the job the command line made, for its plan below
            jobs_seen.append(job)
            return run_command(command, job, **kw)

        shorten_cli.run_command = keep_job
        with tempfile.TemporaryDirectory() as work:
            argv = ["shorten", method, spec, "--limit", "8", "--val-size", "0", "--max-new-tokens", str(max_new), "--keep-unfinished",
                    "--max-steps", "1" if method == "rl" else "8", "--batch-size", str(batch), "--ref-cache", f"{work}/cache", "--out", f"{work}/out",
                    "--device", args.device, "--quiet"]
            try:
                main(argv)
            except SystemExit as done:
                if done.code:
                    raise
        from llmslim.shorten.jobs import memory_plan

        parts = memory_plan(jobs_seen[0])[0].parts
    elif kind == "distill":
        import copy

        from transformers.trainer_callback import PrinterCallback

        from llmslim.core.data import WindowDataset
        from llmslim.core.load import _convert_gguf, load_tokenizer, resolve_model
        from llmslim.core.training import training_args
        from llmslim.diffuse.jobs import SDTT_LOGIT_COPIES
        from llmslim.diffuse.train import EMA, EMAUpdate, SDTTTrainer, add_mask_token

        batch = int(rest[0])
        student = load("training")
        folder, gguf = resolve_model(spec)
        mask_id = add_mask_token(student, load_tokenizer(str(_convert_gguf(folder, gguf)) if gguf else folder))
        shapes = P.shapes_of(student.config)  # the vocabulary with MASK, as the diffusion folder's config
        teacher = copy.deepcopy(student).eval().requires_grad_(False)
        ema = EMA(student, 0.9999)
        windows = torch.randint(0, shapes.vocab - 1, (4 * batch, seqlen), generator=gen)
        import tempfile

        with tempfile.TemporaryDirectory() as work:
            trainer = SDTTTrainer(model=student, args=training_args(work, batch_size=batch, lr=1e-4, max_steps=2, warmup_steps=0,
                                                                     scheduler="constant", seed=0, device=device, dtype=student.dtype),
                                  train_dataset=WindowDataset(windows), teacher=teacher, dt=1 / 64, mask_id=mask_id,
                                  divergence="kl", teacher_steps=2, callbacks=[EMAUpdate(ema, student)])
            trainer.remove_callback(PrinterCallback)
            trainer.train()
        parts = {**P.training_parts(shapes, full=True, lora_r=0, batch=batch, seqlen=seqlen,
                                    teacher=shapes, teacher_bytes=P.DTYPE_BYTES[student.dtype], device_type=device.type,
                                    logit_copies=SDTT_LOGIT_COPIES),
                 "EMA weights": shapes.params * 4}
    else:
        from llmslim.recover.jobs import RecoverJob, train

        batch, mode = int(rest[0]), rest[1]
        model = load("training")
        teacher = load("inference")
        from llmslim.core.load import _convert_gguf, load_tokenizer, resolve_model

        folder, gguf = resolve_model(spec)
        tokenizer = load_tokenizer(str(_convert_gguf(folder, gguf)) if gguf else folder)
        job = RecoverJob(model=spec, teacher=spec, seqlen=seqlen, batch_size=batch, max_steps=2, full=mode == "full",
                         data="wikitext2")
        train(model, tokenizer, teacher, job, None)
        parts = P.training_parts(shapes, full=mode == "full", lora_r=job.lora_r, batch=batch, seqlen=seqlen,
                                 teacher=shapes, teacher_bytes=P.DTYPE_BYTES[next(teacher.parameters()).dtype],
                                 device_type=device.type)
    # CPU: the process's peak RSS; CUDA: max allocated plus the context the plan counts as runtime
    measured = peak_memory_mb(device) * 2**20 + (P.RUNTIME_BYTES["cuda"] if device.type == "cuda" else 0)
    return {"case": case, "device": device.type, "planned_gib": sum(parts.values()) / P.GiB,
            "measured_gib": measured / P.GiB, "parts_gib": {k: v / P.GiB for k, v in parts.items()}}


if args.case:
    print(json.dumps(run_case(args.case)))
    sys.exit(0)

out = Path(args.out)
done = {r["case"]: r for r in json.loads(out.read_text())} if out.is_file() else {}
for case in args.cases.split(","):
    if case in done:
        continue
    proc = subprocess.run([sys.executable, __file__, "--case", case, "--device", args.device], capture_output=True, text=True)
    if proc.returncode:
        print(f"{case}: failed\n{proc.stderr[-2000:]}")
        continue
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    row["ratio"] = row["planned_gib"] / row["measured_gib"]
    done[case] = row
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(list(done.values()), indent=2) + "\n")
    print(f"{case}: planned {row['planned_gib']:.2f} GiB, measured {row['measured_gib']:.2f} GiB "
          f"(plan / measured {row['ratio']:.2f})", flush=True)
