"""`llmslim sparsity collect | train | eval`: options -> job -> core/job.run_command -> table or JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from llmslim.core import report
from llmslim.core.job import Command, run_command
from llmslim.core.options import (DEVICE, DEVICE_MAP, DeviceMapOpt, MaxMemoryOpt, DTYPE, MODEL, SEED, DeviceOpt, DtypeOpt, ForceOpt, JsonOpt, LimitOpt, MaxNewTokensOpt, ModelArg, OutOpt,
                                  QuietOpt, SeedOpt)
from llmslim.eval.run import ACC_NORM_TASKS
from llmslim.sparsity import jobs

app = typer.Typer(help="ShadowLLM predictor-based contextual sparsity: collect traces, train predictors, evaluate.",
                  no_args_is_help=True)

DATA = "Data"
TRAIN = "Predictor"
SPARSE = "Sparsity"
EVAL = "Evaluation"


@app.command()
def collect(
    model: ModelArg = MODEL,
    data: Annotated[str, typer.Option(help="Comma list of sources: wikitext2 (first half of the test file, windows), arc_easy, piqa, hellaswag (contexts of items the eval never uses), or a text file.", rich_help_panel=DATA)] = "wikitext2,arc_easy,piqa,hellaswag",
    limit: Annotated[int, typer.Option("--limit", "-l", help="Examples per source.", rich_help_panel=DATA)] = 64,
    seqlen: Annotated[int, typer.Option(help="Tokens per text window (decided at the end of its first half; with --importance prompt at its last token).", rich_help_panel=DATA)] = 64,
    importance: Annotated[str, typer.Option(help="The loss a unit's importance measures: 'continuation' (a task's gold answer, a window's second half; ShadowLLM's code) or 'prompt' (the prompt's own tokens).", rich_help_panel=DATA)] = "continuation",
    criteria: Annotated[str, typer.Option(help="Comma list of plainact, l2norm, fisher, snip, gradnorm, or 'all'.", rich_help_panel=DATA)] = "plainact,l2norm",
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", help="Equal-length examples per forward+backward.", rich_help_panel=DATA)] = 8,
    out: OutOpt = None,
    force: ForceOpt = False,
    json: JsonOpt = False,
    quiet: QuietOpt = False,
    seed: SeedOpt = SEED,
    device: DeviceOpt = DEVICE,
    dtype: DtypeOpt = DTYPE,
) -> None:
    """Trace a dataset: layer-0 attention output (the predictor's input), each layer's input, and every head's and FFN neuron's importance per example."""
    job = jobs.CollectJob(model=model, data=data, limit=limit, seqlen=seqlen, criteria=criteria, batch_size=batch_size, importance=importance,
                          out=out, force=force, seed=seed, device=device, dtype=dtype)
    run_command(COLLECT, job, json_out=json, quiet=quiet)


def render_collect(result: dict) -> None:
    s = result["shape"]
    report.stdout.print(report.table(
        f"sparsity collect {result['model']}: {result['examples']} examples from {', '.join(result['sources'])}",
        ["", "value"],
        [["criteria", ", ".join(result["criteria"])], ["layers x heads (kv)", f"{s['layers']} x {s['heads']} ({s['kv_heads']})"],
         ["layers x FFN neurons", f"{s['layers']} x {s['ffn']}"], ["collect seconds", result["timings"]["collect_s"]],
         ["written to", result["out"]]],
    ))


@app.command()
def train(
    traces: Annotated[Path, typer.Argument(help="A folder written by `llmslim sparsity collect --out`.")],
    criterion: Annotated[str, typer.Option(help="Which collected criterion the predictors learn.", rich_help_panel=TRAIN)] = "plainact",
    kinds: Annotated[str, typer.Option(help="neurons, heads or both (comma list).", rich_help_panel=TRAIN)] = "neurons,heads",
    which: Annotated[str, typer.Option(help="shadow (one MLP at layer 0), dejavu (one low-rank predictor per layer), or both.", rich_help_panel=TRAIN)] = "shadow,dejavu",
    hidden: Annotated[int, typer.Option(help="ShadowLLM MLP hidden width.", rich_help_panel=TRAIN)] = 256,
    head: Annotated[str, typer.Option(help="ShadowLLM output head: full (hidden -> layers*units, the paper's) or lowrank:R (hidden -> R -> layers*units).", rich_help_panel=TRAIN)] = "lowrank:16",
    feature: Annotated[str, typer.Option(help="ShadowLLM's input: layer 0's attention output 'post' o_proj, or its context 'pre' o_proj (the reference code's).", rich_help_panel=TRAIN)] = "post",
    dejavu_rank: Annotated[int, typer.Option(help="DejaVu per-layer predictor rank.", rich_help_panel=TRAIN)] = 16,
    epochs: Annotated[int, typer.Option(help="Training epochs (AdamW, cosine schedule).", rich_help_panel=TRAIN)] = 30,
    lr: Annotated[float, typer.Option(help="Peak learning rate.", rich_help_panel=TRAIN)] = 1e-3,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", help="Examples per step.", rich_help_panel=TRAIN)] = 32,
    holdout: Annotated[float, typer.Option(help="Share of examples held out for Spearman's rho.", rich_help_panel=TRAIN)] = 0.2,
    out: OutOpt = None,
    force: ForceOpt = False,
    json: JsonOpt = False,
    quiet: QuietOpt = False,
    seed: SeedOpt = SEED,
) -> None:
    """Train ShadowLLM and DejaVu-style predictors on traces; report Spearman's rho on a held-out split."""
    from llmslim.sparsity.predictor import TrainConfig

    cfg = TrainConfig(hidden=hidden, head=head, feature=feature, dejavu_rank=dejavu_rank, epochs=epochs, batch_size=batch_size, lr=lr,
                      holdout=holdout, seed=seed)
    job = jobs.TrainJob(traces=traces, criterion=criterion, kinds=kinds, which=which, out=out, force=force, seed=seed, cfg=cfg)
    run_command(TRAIN_COMMAND, job, json_out=json, quiet=quiet)


def render_train(result: dict) -> None:
    rows = []
    for kind, per in result["metrics"].items():
        for name, m in per.items():
            rows.append([kind, name, m["spearman"], m["mse"], m.get("params")])
    report.stdout.print(report.table(
        f"sparsity train ({result['criterion']}): Spearman rho on {result['held_out']} held-out of {result['examples']} examples",
        ["units", "predictor", "spearman rho", "mse (normalised)", "params"], rows))
    if result.get("out"):
        report.stdout.print(f"saved to {result['out']}")


MarginOpt = Annotated[float, typer.Option("--fallback-margin", help="Dense fallback (shadow, dejavu): dropped units whose normalised predicted score is within this margin of the keep boundary run after all; 0: off. Scores crowd the boundary: on SmolLM2 0.002 adds back about 4% of FFN units, 0.05 nearly all (docs/sparsity.md).", rich_help_panel=SPARSE)]
ThresholdOpt = Annotated[float, typer.Option("--fallback-threshold", help="Dense fallback: a layer whose confidence (share of its dropped units outside the margin) is below this runs dense; 0: off.", rich_help_panel=SPARSE)]


@app.command("eval")
def eval_command(
    model: ModelArg = MODEL,
    predictors: Annotated[list[Path], typer.Option("--predictors", "-p", help="A folder from `llmslim sparsity train --out` (repeat for more criteria).", rich_help_panel=SPARSE)] = [],  # noqa: B006
    methods: Annotated[str, typer.Option(help="Comma list of static, shadow, dejavu, oracle.", rich_help_panel=SPARSE)] = "static,shadow,dejavu,oracle",
    ffn_sparsity: Annotated[str, typer.Option(help="FFN sparsities to evaluate (dropped share), comma list.", rich_help_panel=SPARSE)] = "0.3,0.5,0.7",
    head_sparsity: Annotated[float, typer.Option(help="Head sparsity (whole kv groups under GQA).", rich_help_panel=SPARSE)] = 0.0,
    allocation: Annotated[str, typer.Option(help="perlayer, global or hybrid (dejavu is always perlayer).", rich_help_panel=SPARSE)] = "perlayer",
    min_keep: Annotated[float, typer.Option(help="hybrid: each layer keeps at least this share of its perlayer count.", rich_help_panel=SPARSE)] = 0.5,
    decide: Annotated[str, typer.Option(help="shadow, dejavu: one FFN mask per input ('prompt', chosen at its last prompt token) or a new one for every later 'token' (heads keep the prompt's); 'prompt,token' evaluates both.", rich_help_panel=SPARSE)] = "prompt",
    fallback_margin: MarginOpt = 0.0,
    fallback_threshold: ThresholdOpt = 0.0,
    tasks: Annotated[str, typer.Option("--tasks", "-t", help="Multiple-choice tasks scored with a mask per item context ('' for none).", rich_help_panel=EVAL)] = "arc_easy,piqa,hellaswag",
    limit: LimitOpt = None,
    ppl_limit: Annotated[int, typer.Option("--ppl-limit", help="WikiText-2 windows (second half) for perplexity (0: none).", rich_help_panel=EVAL)] = 8,
    ppl_prompt_len: Annotated[int, typer.Option(help="Window = prompt (decides the mask) + as many scored tokens.", rich_help_panel=EVAL)] = 64,
    plot: Annotated[Optional[Path], typer.Option(help="Also write the plot here (PNG).", rich_help_panel=EVAL)] = None,
    out: OutOpt = None,
    force: ForceOpt = False,
    json: JsonOpt = False,
    quiet: QuietOpt = False,
    seed: SeedOpt = SEED,
    device: DeviceOpt = DEVICE,
    device_map: DeviceMapOpt = DEVICE_MAP,
    max_memory: MaxMemoryOpt = None,
    dtype: DtypeOpt = DTYPE,
) -> None:
    """Perplexity and zero-shot accuracy vs sparsity for each method, with gathered (really smaller) execution."""
    job = jobs.EvalJob(model=model, predictors=list(predictors), methods=methods, ffn_sparsity=ffn_sparsity,
                       head_sparsity=head_sparsity, allocation=allocation, min_keep=min_keep, decide=decide, fallback_margin=fallback_margin,
                       fallback_threshold=fallback_threshold, tasks=tasks, limit=limit,
                       ppl_limit=ppl_limit, ppl_prompt_len=ppl_prompt_len, plot=plot, out=out, force=force, seed=seed,
                       device=device, device_map=device_map, max_memory=max_memory, dtype=dtype)
    run_command(EVAL_COMMAND, job, json_out=json, quiet=quiet)


def render_eval(result: dict) -> None:
    metrics = [m for m in ["ppl"] + result["tasks"] + ["mean_acc"] if m in result["rows"][0]]
    rows = [[r["method"] + (" (token)" if r.get("decide") == "token" else ""), r["criterion"], r["ffn_sparsity"]] + [r[m] for m in metrics]
            + [r.get("neurons_skipped", 0.0), r.get("neurons_fallback_dense_layers", 0.0), r["seconds"]] for r in result["rows"]]
    t = report.table(f"sparsity eval {result['model']} ({result['allocation']} masks, one per input)",
                     ["method", "criterion", "ffn sparsity"] + metrics + ["FFN skipped", "dense fallback", "seconds"], rows)
    t.caption = (f"ppl: {result['ppl']['windows']} WikiText-2 windows, mask from the first {result['ppl']['prompt_len']} tokens, "
                 f"scored on the next {result['ppl']['prompt_len']}; tasks: first {result['limit'] or 'all'} items, mask from the context "
                 f"({', '.join(ACC_NORM_TASKS)}: acc_norm, others: acc); FFN skipped: share of neurons not run (skips.jsonl "
                 f"per input and layer); dense fallback: share of (input, layer) run dense")
    report.stdout.print(t)


PredOpt = Annotated[Optional[Path], typer.Option("--predictors", "-p", help="A folder made by `llmslim sparsity train`.", rich_help_panel=SPARSE)]
UseMethodOpt = Annotated[str, typer.Option("--method", help="shadow (one predictor at layer 0), dejavu (one per layer) or static (one mask).", rich_help_panel=SPARSE)]
OneSparsityOpt = Annotated[float, typer.Option("--ffn-sparsity", help="Share of FFN neurons skipped per input.", rich_help_panel=SPARSE)]
HeadSparsityOpt = Annotated[float, typer.Option("--head-sparsity", help="Share of kv groups skipped per input.", rich_help_panel=SPARSE)]


@app.command()
def generate(
    model: ModelArg = MODEL,
    predictors: PredOpt = None,
    prompt: Annotated[Optional[str], typer.Option("--prompt", help="The prompt (the chat template is applied when the tokenizer has one).", rich_help_panel=SPARSE)] = None,
    max_new_tokens: MaxNewTokensOpt = 64,
    method: UseMethodOpt = "shadow",
    ffn_sparsity: OneSparsityOpt = 0.5,
    head_sparsity: HeadSparsityOpt = 0.0,
    decide: Annotated[str, typer.Option("--decide", help="One FFN mask from the 'prompt', or a new one every 'token'.", rich_help_panel=SPARSE)] = "prompt",
    fallback_margin: MarginOpt = 0.0,
    fallback_threshold: ThresholdOpt = 0.0,
    json: JsonOpt = False,
    quiet: QuietOpt = False,
    seed: SeedOpt = SEED,
    device: DeviceOpt = DEVICE,
    device_map: DeviceMapOpt = DEVICE_MAP,
    max_memory: MaxMemoryOpt = None,
    dtype: DtypeOpt = DTYPE,
) -> None:
    """Generate with the sparse model (greedy): the answer, tokens/s and the share of FFN work skipped."""
    job = jobs.UseJob(model=model, predictors=predictors, prompt=prompt, max_new_tokens=max_new_tokens, method=method,
                      ffn_sparsity=ffn_sparsity, head_sparsity=head_sparsity, decide=decide, fallback_margin=fallback_margin,
                      fallback_threshold=fallback_threshold, seed=seed, device=device, device_map=device_map, max_memory=max_memory, dtype=dtype)
    run_command(GENERATE_COMMAND, job, json_out=json, quiet=quiet)


@app.command()
def bench(
    model: ModelArg = MODEL,
    predictors: PredOpt = None,
    method: UseMethodOpt = "shadow",
    ffn_sparsity: OneSparsityOpt = 0.5,
    head_sparsity: HeadSparsityOpt = 0.0,
    decide: Annotated[str, typer.Option("--decide", help="prompt, token, or 'prompt,token': each a variant timed against dense.", rich_help_panel=SPARSE)] = "prompt,token",
    fallback_margin: MarginOpt = 0.0,
    fallback_threshold: ThresholdOpt = 0.0,
    prompt_len: Annotated[int, typer.Option("--prompt-len", help="Prompt tokens: a WikiText-2 window (second half) where the shared data is, else random tokens (token decisions change the mask less on real text).", rich_help_panel=SPARSE)] = 64,
    new_tokens: Annotated[int, typer.Option("--new-tokens", help="Generated tokens: 1 from the prefill, the rest timed decode steps.", rich_help_panel=SPARSE)] = 17,
    repeats: Annotated[int, typer.Option("--repeats", help="Interleaved timed runs per variant (medians).", rich_help_panel=SPARSE)] = 3,
    threads: Annotated[Optional[int], typer.Option("--threads", help="torch CPU threads.", rich_help_panel=SPARSE)] = None,
    out: OutOpt = None,
    force: ForceOpt = False,
    json: JsonOpt = False,
    quiet: QuietOpt = False,
    seed: SeedOpt = SEED,
    device: DeviceOpt = DEVICE,
    device_map: DeviceMapOpt = DEVICE_MAP,
    max_memory: MaxMemoryOpt = None,
    dtype: DtypeOpt = DTYPE,
) -> None:
    """Dense vs sparse prefill and decode in one run: ratios, the predictor's and the gather's share, the per-module split."""
    job = jobs.UseJob(model=model, predictors=predictors, method=method, ffn_sparsity=ffn_sparsity, head_sparsity=head_sparsity,
                      decide=decide, fallback_margin=fallback_margin, fallback_threshold=fallback_threshold, prompt_len=prompt_len,
                      new_tokens=new_tokens, repeats=repeats, threads=threads, out=out, force=force, seed=seed, device=device, device_map=device_map, max_memory=max_memory,
                      dtype=dtype)
    run_command(BENCH_COMMAND, job, json_out=json, quiet=quiet)


def render_generate(result: dict) -> None:
    report.stdout.print(result["text"])
    report.stderr.print(f"{result['new_tokens']} tokens, decode {result['decode_tok_s'] or 0:.1f} tok/s; "
                        f"{100 * result.get('neurons_skipped', 0):.0f}% of FFN neurons skipped ({result['method']}, {result['decide']})")


def render_bench(result: dict) -> None:
    rows = []
    for name, v in result["variants"].items():
        split = v["decode_split_ms"]
        rows.append([name, v["prefill_tok_s"], v.get("prefill_speedup"), v["decode_tok_s"], v.get("decode_speedup"),
                     f"{100 * v['predict_share']:.1f}%", f"{100 * v['gather_share']:.1f}%",
                     " / ".join(f"{split[p]:.1f}" for p in ("attention", "ffn", "lm_head", "other"))])
    report.stdout.print(report.table(
        f"sparsity bench {result['model']} on {result['device']}: {int(100 * result['ffn_sparsity'])}% FFN, prompt "
        f"{result['prompt_len']} tokens ({result['prompt']}), {result['decode_steps']} decode steps, median of {result['repeats']}",
        ["variant", "prefill tok/s", "x dense", "decode tok/s", "x dense", "predictor", "gather",
         "decode ms: attn / ffn / head / other"], rows))


GENERATE_COMMAND = Command("sparsity generate", lambda job: jobs.validate_use(job, bench=False), jobs.run_generate, render_generate)
BENCH_COMMAND = Command("sparsity bench", lambda job: jobs.validate_use(job, bench=True), jobs.run_bench, render_bench)
COLLECT = Command("sparsity collect", jobs.validate_collect, jobs.run_collect, render_collect, model_purpose="gradients",
                  needs_out=True, distributed=True)
TRAIN_COMMAND = Command("sparsity train", jobs.validate_train, jobs.run_train, render_train, model_purpose=None)
EVAL_COMMAND = Command("sparsity eval", jobs.validate_eval, jobs.run_eval, render_eval)
