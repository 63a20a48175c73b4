"""`llmslim sparsity collect | train | eval`: options -> job -> core/job.run_command -> table or JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from llmslim.core import report
from llmslim.core.job import Command, run_command
from llmslim.core.options import (DEVICE, DTYPE, MODEL, SEED, DeviceOpt, DtypeOpt, ForceOpt, JsonOpt, LimitOpt, ModelArg, OutOpt,
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
    fallback_margin: Annotated[float, typer.Option(help="Dense fallback (shadow, dejavu): dropped units whose normalised predicted score is within this margin of the keep boundary run after all; 0: off.", rich_help_panel=SPARSE)] = 0.0,
    fallback_threshold: Annotated[float, typer.Option(help="Dense fallback: a layer whose confidence (share of its dropped units outside the margin) is below this runs dense; 0: off.", rich_help_panel=SPARSE)] = 0.0,
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
    dtype: DtypeOpt = DTYPE,
) -> None:
    """Perplexity and zero-shot accuracy vs sparsity for each method, with gathered (really smaller) execution."""
    job = jobs.EvalJob(model=model, predictors=list(predictors), methods=methods, ffn_sparsity=ffn_sparsity,
                       head_sparsity=head_sparsity, allocation=allocation, min_keep=min_keep, decide=decide, fallback_margin=fallback_margin,
                       fallback_threshold=fallback_threshold, tasks=tasks, limit=limit,
                       ppl_limit=ppl_limit, ppl_prompt_len=ppl_prompt_len, plot=plot, out=out, force=force, seed=seed,
                       device=device, dtype=dtype)
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


COLLECT = Command("sparsity collect", jobs.validate_collect, jobs.run_collect, render_collect, model_purpose="gradients",
                  needs_out=True)
TRAIN_COMMAND = Command("sparsity train", jobs.validate_train, jobs.run_train, render_train, model_purpose=None)
EVAL_COMMAND = Command("sparsity eval", jobs.validate_eval, jobs.run_eval, render_eval)
