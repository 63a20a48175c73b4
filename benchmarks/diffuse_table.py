"""Issue 14's proof: adapt SmolLM2 to masked diffusion, distil it with SDTT, and measure every
model's gen-PPL and entropy at several step counts next to the AR model's own samples, plus
LAMBADA and latency (measured once, on the last student). Resumable: each stage is skipped when its
output exists, and WORK refuses other settings than those it was made with (step counts aside:
each is its own eval folder).

    .venv/bin/python benchmarks/diffuse_table.py                         # the full run (hours on a CPU)
    .venv/bin/python benchmarks/diffuse_table.py --adapt-steps 20 --steps-per-round 5 --samples 8 \
        --sampling-steps 8,16 --lambada 50 --work runs/diffuse-small --out benchmarks/results/diffuse_small.json

Stages: WORK/teacher (`diffuse adapt`), WORK/sdtt/round-K (`diffuse distill`), then `diffuse
eval` of the teacher and of each round, one job per step count (WORK/eval-NAME/steps-S; the
students at --student-steps where given), then the AR model's greedy
and nucleus (p = 0.95) samples scored by the same evaluator. Writes OUT (JSON), a markdown
table, and OUT with .png: gen-PPL against sampling steps, teacher and students.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from llmslim.core.device import device_label, resolve_device
from llmslim.core.job import run_command
from llmslim.diffuse import cli, jobs

parser = argparse.ArgumentParser()
parser.add_argument("--model", default="smollm2-135m")
parser.add_argument("--data", default="wikitext2,alpaca")
parser.add_argument("--seqlen", type=int, default=128)
parser.add_argument("--adapt-steps", type=int, default=1000)
parser.add_argument("--batch-size", type=int, default=8)
parser.add_argument("--lr", type=float, default=1e-4)
parser.add_argument("--rounds", type=int, default=3)
parser.add_argument("--steps-per-round", type=int, default=200)
parser.add_argument("--start-sampling-steps", type=int, default=128)
parser.add_argument("--sampling-steps", default="8,16,32,64,128")
parser.add_argument("--student-steps", default=None,
                    help="the students' step counts (default: --sampling-steps); a CPU-sized run leaves out the largest, "
                         "which cost the most and which no student was distilled for")
parser.add_argument("--samples", type=int, default=64)
parser.add_argument("--lambada", type=int, default=500)
parser.add_argument("--device", default="auto")
parser.add_argument("--dtype", default="auto")
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--save-every", type=int, default=25,
                    help="adapt checkpoint interval in steps: 25 lets a CPU session that loses its machine resume; "
                         "a GPU run finishes the 1,000 steps in minutes and needs few")
parser.add_argument("--collect", action="store_true",
                    help="build the table from WORK's finished eval folders only: no adapting, distilling or evaluating "
                         "(a GPU run's folder brought back as its archive, without weights); counts not measured "
                         "show as '-'; the AR samples, if missing, are drawn here on --device")
parser.add_argument("--work", default="runs/diffuse")
parser.add_argument("--out", default="benchmarks/results/diffuse_table.json")
args = parser.parse_args()


def step_counts(option: str, text: str) -> list[int]:
    """Checked before hours of adapting and distilling, not after them."""
    try:
        counts = [int(s) for s in text.split(",")]
    except ValueError:
        raise SystemExit(f"{option} must be a comma list of integers, got {text!r}") from None
    if min(counts) < 1:
        raise SystemExit(f"{option} must be >= 1, got {text!r}")
    return counts


steps = step_counts("--sampling-steps", args.sampling_steps)
student_steps = step_counts("--student-steps", args.student_steps) if args.student_steps else steps


work = Path(args.work)
common = dict(seed=args.seed, device=args.device, dtype=args.dtype)
t_start = time.perf_counter()
# every stage is resumed from WORK by its folder: refuse a WORK made with other settings rather
# than mix its teacher, students or evals with these. The step counts are not among them: each
# (model, count) is its own eval folder, so another list only adds or leaves out counts
VARIABLE = ("out", "work", "device", "sampling_steps", "student_steps", "save_every", "collect")
settings = {k: v for k, v in vars(args).items() if k not in VARIABLE}
settings_file = work / "settings.json"
if settings_file.is_file() and {k: v for k, v in json.loads(settings_file.read_text()).items() if k not in VARIABLE} != settings:
    raise SystemExit(f"{work} was made with {settings_file.read_text().strip()}; use another --work, or delete it")
if args.collect and not settings_file.is_file():
    raise SystemExit(f"--collect: {work} has no settings.json (not a diffuse_table.py work folder)")
if not settings_file.is_file() and work.is_dir() and any(work.iterdir()):
    raise SystemExit(f"{work} is from before the settings were recorded; use another --work, or delete it")
work.mkdir(parents=True, exist_ok=True)
settings_file.write_text(json.dumps(settings, indent=2) + "\n")

teacher = work / "teacher"
if not teacher.is_dir() and not args.collect:
    run_command(cli.ADAPT, jobs.AdaptJob(model=args.model, data=args.data, seqlen=args.seqlen, max_steps=args.adapt_steps,
                                         batch_size=args.batch_size, lr=args.lr, save_every=args.save_every, out=teacher,
                                         checkpoint_dir=work / "teacher-checkpoints",
                                         resume=(work / "teacher-checkpoints").is_dir(), **common), quiet=True)
students = work / "sdtt"
if not students.is_dir() and not args.collect:
    run_command(cli.DISTILL, jobs.DistillJob(model=str(teacher), rounds=args.rounds, steps_per_round=args.steps_per_round,
                                             start_steps=args.start_sampling_steps, data=args.data, batch_size=args.batch_size,
                                             out=students, checkpoint_dir=work / "sdtt-checkpoints",
                                             resume=(work / "sdtt-checkpoints").is_dir(), **common), quiet=True)

models = {"teacher": teacher} | {f"round {r}": students / f"round-{r}" for r in range(args.rounds)}
last = list(models)[-1]
evals = {}
for name, folder in models.items():
    # one eval job per step count, so a session cut short keeps every finished count (a model's
    # 64 samples at 128 steps are hours on one CPU thread); the samples are the same as one job
    # over all counts would draw (each batch's seed depends on its index only). LAMBADA rides
    # with the first count; latency is measured on the last student only (every model has the
    # same shape, and the reveal draws do not depend on the weights, so each runs the same
    # forward passes), in each count's own process against its own AR KV-cache decode
    parts = []
    for n, s in enumerate(steps if name == "teacher" else student_steps):
        out = work / f"eval-{name.replace(' ', '-')}" / f"steps-{s}"
        if not (out / "results.json").is_file():
            if args.collect:
                continue
            run_command(cli.EVAL, jobs.EvalJob(model=str(folder), steps=str(s), num_samples=args.samples, length=args.seqlen,
                                               evaluator=args.model, lambada=args.lambada if n == 0 else 0, out=out,
                                               latency=name == last, force=True, **common), quiet=True)
        parts.append(json.loads((out / "results.json").read_text()))
    if not parts:
        continue
    evals[name] = {"rows": [row for part in parts for row in part["rows"]], "lambada": parts[0].get("lambada", {})}
    if name == last and all("latency" in part for part in parts):
        evals[name]["latency"] = {**{k: v for k, v in parts[0]["latency"].items() if k != "diffusion"},
                                  "ar_kv_cache_s": [part["latency"]["ar_kv_cache_s"] for part in parts],
                                  "diffusion": [row for part in parts for row in part["latency"]["diffusion"]]}

ar_file = work / "ar_samples.json"
if not ar_file.is_file():
    from llmslim.core.load import load_model
    from llmslim.diffuse.evaluate import ar_decode, generative_perplexity, unigram_entropy

    loaded = load_model(args.model, device=args.device, dtype=args.dtype)
    first = loaded.tokenizer.bos_token_id if loaded.tokenizer.bos_token_id is not None else loaded.tokenizer.eos_token_id
    prefix = torch.tensor([first])
    ar = {}
    for name, sampled in (("greedy", False), ("nucleus 0.95", True)):
        tokens = ar_decode(loaded.model, prefix, args.seqlen - 1, args.samples, do_sample=sampled, top_p=0.95,
                           generator_seed=args.seed).cpu()
        ar[name] = {"gen_ppl": generative_perplexity(loaded.model, tokens, 1, loaded.tokenizer.eos_token_id), "entropy": unigram_entropy(tokens[:, 1:]),
                    "example": loaded.tokenizer.decode(tokens[0, 1:]), "device": device_label(next(loaded.model.parameters()).device)}
    ar_file.write_text(json.dumps(ar, indent=2) + "\n")
ar = json.loads(ar_file.read_text())

lines = ["| model | " + " | ".join(f"{s} steps: gen-PPL / entropy" for s in steps) + " | LAMBADA |",
         "|---|" + "---|" * (len(steps) + 1)]
for name, ev in evals.items():
    by = {r["steps"]: r for r in ev["rows"]}
    cells = [f"{by[s]['gen_ppl']:.1f} / {by[s]['entropy']:.2f}" if s in by else "-" for s in steps]
    lines.append(f"| {name} | " + " | ".join(cells) + f" | {ev.get('lambada', {}).get('diffusion_acc', float('nan')):.3f} |")
ar_lambada = next(iter(evals.values())).get("lambada", {}).get("evaluator_ar_acc", float("nan"))
speed = evals.get(last, {}).get("latency")
# the models' evals ran where the latency was measured; a collected table's AR samples may have run elsewhere
eval_device = speed["device"] if speed else device_label(resolve_device(args.device))
ar_devices = {row.get("device", eval_device) for row in ar.values()} - {eval_device}
ar_where = f", drawn and scored on {', '.join(sorted(ar_devices))}" if ar_devices else ""
lines += ["", f"The AR model's own samples ({args.seqlen - 1} tokens one at a time with its KV cache; the same evaluator{ar_where}; "
              "greedy repeats one sample, so its entropy is one sample's):", "",
          "| AR decoding | gen-PPL | entropy | LAMBADA |", "|---|---|---|---|"]
lines += [f"| {name} | {row['gen_ppl']:.1f} | {row['entropy']:.2f} | {ar_lambada:.3f} |" for name, row in ar.items()]
if speed:  # generating the same length at the same batch: the diffusion model at each step count vs AR with its KV cache
    by = {r["steps"]: r for r in speed["diffusion"]}
    timed = [s for s in steps if s in by]
    ar_s = speed["ar_kv_cache_s"]
    lines += ["", f"Latency, {speed['new_tokens']} new tokens at batch {speed['batch']} ({speed['device']}; AR with KV cache "
                  f"{min(ar_s):.2f}-{max(ar_s):.2f} s, measured in each step count's process):", "",
              "| steps | " + " | ".join(str(s) for s in timed) + " |", "|---|" + "---|" * len(timed),
              "| seconds | " + " | ".join(f"{by[s]['seconds']:.2f}" for s in timed) + " |",
              "| speed-up vs AR | " + " | ".join(f"{by[s]['speedup_vs_ar']:.2f}x" for s in timed) + " |"]
table = "\n".join(lines)
print(table)
Path(args.out).parent.mkdir(parents=True, exist_ok=True)
# what each stage cost (its own results.json): a collected table's timings are the GPU run's
costs = {stage: {k: v for k, v in json.loads((work / stage / "results.json").read_text()).items() if k != "losses"}
         for stage in ("teacher", "sdtt") if (work / stage / "results.json").is_file()}
Path(args.out).write_text(json.dumps({"args": vars(args), "date": time.strftime("%Y-%m-%d"), "device": eval_device, "evals": evals, "ar": ar,
                                      "stages": costs, "table": table, "wall_s": time.perf_counter() - t_start}, indent=2) + "\n")

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

fig, ax = plt.subplots(figsize=(6.5, 4))
for name, ev in evals.items():
    rows = sorted(ev["rows"], key=lambda r: r["steps"])
    ax.plot([r["steps"] for r in rows], [r["gen_ppl"] for r in rows], marker="o", label=name)
for i, (name, row) in enumerate(ar.items()):
    ax.axhline(row["gen_ppl"], ls="--", color=f"C{len(evals) + i}", label=f"AR {name}")
ax.set_xscale("log", base=2)
ax.set_yscale("log")
ax.set_xlabel("sampling steps")
ax.set_ylabel(f"gen-PPL ({args.model} evaluator)")
ax.set_title(f"SDTT on {args.model}: {args.samples} samples x {args.seqlen} tokens")
ax.legend(fontsize=7)
ax.grid(alpha=0.3)
fig.tight_layout()
fig.savefig(Path(args.out).with_suffix(".png"), dpi=120)
print("wrote", args.out, Path(args.out).with_suffix(".png"))
