"""`llmslim budget ...`: TALE token-budget-aware reasoning. Thin: options -> Job -> core/job.run_command -> table or JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from llmslim.budget import jobs as PL
from llmslim.budget.parse import DEFAULT_BUDGET
from llmslim.budget.run import ESTIMATE_MAX_TOKENS
from llmslim.core import report
from llmslim.core.errors import BadOptionError
from llmslim.core.job import Command, run_command
from llmslim.core.options import (DEVICE, DTYPE, MODEL, SEED, DeviceOpt, DtypeOpt, ForceOpt, JsonOpt, LoraROpt, MaxNewTokensOpt,
                                  MaxStepsOpt, OutOpt, QuietOpt, SeedOpt)

budget_app = typer.Typer(help="TALE token-budget-aware reasoning (arXiv 2412.18547): estimate, run, search, elasticity, train, serve.",
                         no_args_is_help=True)

BACKEND = "Backend"
DATA = "Data"
GEN = "Generation"

ModelOpt = Annotated[str, typer.Argument(help="Local model (alias smollm2-135m, HF folder, .gguf); with --api-base, the model name the endpoint serves.")]
ApiBaseOpt = Annotated[Optional[str], typer.Option(help="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1 (else the local model is used).", rich_help_panel=BACKEND)]
ApiKeyEnvOpt = Annotated[str, typer.Option(help="Environment variable that holds the API key (sent as a Bearer token if set).", rich_help_panel=BACKEND)]
ApiTokOpt = Annotated[Optional[str], typer.Option(help="Local tokenizer (model spec) to also count API answers in model tokens.", rich_help_panel=BACKEND)]
ConcOpt = Annotated[int, typer.Option(help="HTTP requests in flight at once.", rich_help_panel=BACKEND)]
RetriesOpt = Annotated[int, typer.Option(help="HTTP retries per request (exponential backoff, honours Retry-After).", rich_help_panel=BACKEND)]
TimeoutOpt = Annotated[float, typer.Option(help="HTTP timeout per request, seconds.", rich_help_panel=BACKEND)]
BatchOpt = Annotated[int, typer.Option("--batch-size", "-b", help="Local generation batch size.", rich_help_panel=BACKEND)]
DataOpt = Annotated[Optional[Path], typer.Option(help="Questions file (.jsonl/.json/.csv): GSM8K {question, answer '#### N'}, {question, gold}, ARC or {question, choices, answer}. Default: ../shared/data/gsm8k/test.jsonl.", rich_help_panel=DATA)]
LimitOpt = Annotated[Optional[int], typer.Option("--limit", "-l", help="At most this many questions (the first N after --offset); default: all.", rich_help_panel=DATA)]
OffsetOpt = Annotated[int, typer.Option(help="Skip this many questions first.", rich_help_panel=DATA)]
TemplatesOpt = Annotated[Optional[Path], typer.Option(help="JSON object overriding TALE's templates by name (cot_number, budget_number, direct_number, cot_choice, budget_choice, direct_choice, estimate).", rich_help_panel=DATA)]
EstMaxOpt = Annotated[int, typer.Option(help="Output token limit for the budget estimator (room to reason before writing [[N]]).", rich_help_panel=GEN)]
DefaultBudgetOpt = Annotated[int, typer.Option(help="Budget used when the estimate has no [[N]] (stated in the results).", rich_help_panel=GEN)]
MaxBudgetOpt = Annotated[Optional[int], typer.Option(help="Clamp estimated budgets to at most this.", rich_help_panel=GEN)]


def _job(model, api_base, api_key_env, api_tokenizer, concurrency, retries, timeout, batch_size, device, dtype, seed,
         data, limit, offset, templates, out, force, settings=None, **options) -> PL.Job:
    spec = PL.BackendSpec(model=model, api_base=api_base, api_key_env=api_key_env, api_tokenizer=api_tokenizer,
                          concurrency=concurrency, retries=retries, timeout=timeout, batch_size=batch_size,
                          device=device, dtype=dtype, seed=seed)
    return PL.Job(backend=spec, data=data, limit=limit, offset=offset, templates=templates, settings=settings or {},
                  options=options, out=out, force=force, seed=seed)


def _foot(result: dict) -> None:
    report.stdout.print(f"{result.get('timings', {}).get('total_s', 0):.1f}s; gpt-4 token counts: {result.get('gpt4_counter', '-')}"
                        + (f"; written to {result['out']}" if result.get("out") else ""))


@budget_app.command("estimate")
def estimate(
    model: ModelOpt = MODEL,
    regression: Annotated[Optional[Path], typer.Option(help="Fit budget ~ question length on a `budget search` output instead of asking the model.")] = None,
    data: DataOpt = None, limit: LimitOpt = None, offset: OffsetOpt = 0, templates: TemplatesOpt = None,
    estimate_max_tokens: EstMaxOpt = ESTIMATE_MAX_TOKENS, default_budget: DefaultBudgetOpt = DEFAULT_BUDGET, max_budget: MaxBudgetOpt = None,
    api_base: ApiBaseOpt = None, api_key_env: ApiKeyEnvOpt = "OPENAI_API_KEY", api_tokenizer: ApiTokOpt = None,
    concurrency: ConcOpt = 4, retries: RetriesOpt = 3, timeout: TimeoutOpt = 60.0, batch_size: BatchOpt = 8,
    out: OutOpt = None, force: ForceOpt = False, json: JsonOpt = False, quiet: QuietOpt = False, seed: SeedOpt = SEED,
    device: DeviceOpt = DEVICE, dtype: DtypeOpt = DTYPE,
) -> None:
    """Token budget per question: TALE's zero-shot self-estimation ([[N]], else the default) or a regression."""
    job = _job(model, api_base, api_key_env, api_tokenizer, concurrency, retries, timeout, batch_size, device, dtype, seed,
               data, limit, offset, templates, out, force,
               {"estimate_max_tokens": estimate_max_tokens, "default_budget": default_budget, "max_budget": max_budget},
               regression=regression)
    run_command(ESTIMATE, job, json_out=json, quiet=quiet)


def render_estimate(r: dict) -> None:
    rows = [[x["id"], x["budget"], "yes" if x["budget_parsed"] else f"no (default {r.get('default_budget')})",
             (x.get("question") or "")[:60]] for x in r["budgets"][:20]]
    report.stdout.print(report.table(f"budget estimate ({r['estimator']}) on {r['n_questions']} questions", ["id", "budget", "parsed", "question"], rows))
    extra = f", parsed {100 * r['parse_rate']:.0f}%" if "parse_rate" in r else ""
    report.stdout.print(f"mean budget {r['mean_budget']:.1f} (min {r['min_budget']}, max {r['max_budget']}){extra}")
    _foot(r)


def _render_modes(result: dict) -> None:
    cols = ["mode", "n", "accuracy", "mean out tokens", "mean gpt-4 tokens", "mean budget", "budget parsed", "truncated",
            "out tokens total"]
    has_cost = any("cost_usd" in m for m in result["modes"])
    rows = [[m["mode"] + (" (!)" if "warning" in m else ""), m["n"], m["accuracy"], m["mean_out_tokens"], m["mean_gpt4_tokens"],
             m["mean_budget"], f"{100 * m['budget_parse_rate']:.0f}%" if "budget_parse_rate" in m else "-", m["truncated"],
             m["out_tokens_total"]] + ([m.get("cost_usd")] if has_cost else []) for m in result["modes"]]
    report.stdout.print(report.table(f"budget run ({result['backend']}, {result['n_questions']} questions)", cols + (["cost $"] if has_cost else []), rows))
    for warning in result.get("warnings", []):
        report.stderr.print(f"warning: {warning}")
    _foot(result)


@budget_app.command("run")
def run(
    model: ModelOpt = MODEL,
    modes: Annotated[str, typer.Option("--modes", help="Comma list: vanilla, direct, tale-ep, budget:N, searched, regression.")] = "vanilla,direct,tale-ep",
    searched: Annotated[Optional[Path], typer.Option(help="`budget search` output (folder or search.jsonl) for modes searched/regression.")] = None,
    data: DataOpt = None, limit: LimitOpt = None, offset: OffsetOpt = 0, templates: TemplatesOpt = None,
    max_new_tokens: MaxNewTokensOpt = 512, estimate_max_tokens: EstMaxOpt = ESTIMATE_MAX_TOKENS, default_budget: DefaultBudgetOpt = DEFAULT_BUDGET,
    max_budget: MaxBudgetOpt = None,
    price_in: Annotated[Optional[float], typer.Option(help="$ per 1M input tokens, for a cost column.", rich_help_panel=GEN)] = None,
    price_out: Annotated[Optional[float], typer.Option(help="$ per 1M output tokens, for a cost column.", rich_help_panel=GEN)] = None,
    api_base: ApiBaseOpt = None, api_key_env: ApiKeyEnvOpt = "OPENAI_API_KEY", api_tokenizer: ApiTokOpt = None,
    concurrency: ConcOpt = 4, retries: RetriesOpt = 3, timeout: TimeoutOpt = 60.0, batch_size: BatchOpt = 8,
    resume: Annotated[bool, typer.Option("--resume", help="Continue a stopped run with the same --out: questions already answered (same mode and prompt) are not asked again.")] = False,
    out: OutOpt = None, force: ForceOpt = False, json: JsonOpt = False, quiet: QuietOpt = False, seed: SeedOpt = SEED,
    device: DeviceOpt = DEVICE, dtype: DtypeOpt = DTYPE,
) -> None:
    """Answer a question set per mode: accuracy, mean output tokens, cost; per-question log.jsonl with --out (written as it goes: --resume)."""
    job = _job(model, api_base, api_key_env, api_tokenizer, concurrency, retries, timeout, batch_size, device, dtype, seed,
               data, limit, offset, templates, out, force,
               {"max_new_tokens": max_new_tokens, "estimate_max_tokens": estimate_max_tokens, "default_budget": default_budget,
                "max_budget": max_budget, "price_in": price_in, "price_out": price_out},
               modes=[m.strip() for m in modes.split(",") if m.strip()], searched=searched, resume=resume)
    run_command(RUN, job, json_out=json, quiet=quiet)
    PL.drop_journal(job)  # only once --out is published


@budget_app.command("search")
def search(
    model: ModelOpt = MODEL,
    method: Annotated[str, typer.Option(help="'halving' (reference code: budget // 2 while correct and cheaper) or 'binary' (paper: binary search, feasible = correct and fewer tokens).")] = "halving",
    max_probes: Annotated[int, typer.Option("--max-probes", help="At most this many budget probes per question.")] = 8,
    data: DataOpt = None, limit: LimitOpt = None, offset: OffsetOpt = 0, templates: TemplatesOpt = None,
    max_new_tokens: MaxNewTokensOpt = 512,
    api_base: ApiBaseOpt = None, api_key_env: ApiKeyEnvOpt = "OPENAI_API_KEY", api_tokenizer: ApiTokOpt = None,
    concurrency: ConcOpt = 4, retries: RetriesOpt = 3, timeout: TimeoutOpt = 60.0, batch_size: BatchOpt = 8,
    out: OutOpt = None, force: ForceOpt = False, json: JsonOpt = False, quiet: QuietOpt = False, seed: SeedOpt = SEED,
    device: DeviceOpt = DEVICE, dtype: DtypeOpt = DTYPE,
) -> None:
    """Minimal budget that keeps each question correct; search.jsonl (budget, budget_list, token_list, answer) with --out."""
    job = _job(model, api_base, api_key_env, api_tokenizer, concurrency, retries, timeout, batch_size, device, dtype, seed,
               data, limit, offset, templates, out, force, {"max_new_tokens": max_new_tokens}, method=method, max_probes=max_probes)
    run_command(SEARCH, job, json_out=json, quiet=quiet)


def render_search(r: dict) -> None:
    rows = [[x["id"], "yes" if x["vanilla_correct"] else "no", x["vanilla_tokens"], x["budget"], x["tokens"],
             " ".join(map(str, x["budget_list"])), " ".join(map(str, x["token_list"]))] for x in r["per_question"][:30]]
    report.stdout.print(report.table(f"budget search ({r['method']}) on {r['n']} questions",
                                     ["id", "vanilla ok", "vanilla tokens", "budget", "tokens", "budget list", "token list"], rows))
    report.stdout.print(f"vanilla accuracy {r['vanilla_accuracy']:.3f}; searched {r['searched']}, shorter answer found for "
                        f"{r['improved']}; mean tokens on searched {r['mean_vanilla_tokens_searched']} -> {r['mean_optimal_tokens_searched']}; "
                        f"{r['probes']} probes")
    _foot(r)


@budget_app.command("elasticity")
def elasticity(
    model: ModelOpt = MODEL,
    budgets: Annotated[str, typer.Option(help="Comma list of budgets to put in the prompt.")] = "4,8,16,32,64,128,256",
    data: DataOpt = None, limit: LimitOpt = None, offset: OffsetOpt = 0, templates: TemplatesOpt = None,
    max_new_tokens: MaxNewTokensOpt = 512,
    api_base: ApiBaseOpt = None, api_key_env: ApiKeyEnvOpt = "OPENAI_API_KEY", api_tokenizer: ApiTokOpt = None,
    concurrency: ConcOpt = 4, retries: RetriesOpt = 3, timeout: TimeoutOpt = 60.0, batch_size: BatchOpt = 8,
    out: OutOpt = None, force: ForceOpt = False, json: JsonOpt = False, quiet: QuietOpt = False, seed: SeedOpt = SEED,
    device: DeviceOpt = DEVICE, dtype: DtypeOpt = DTYPE,
) -> None:
    """Output tokens vs the budget in the prompt (table; elasticity.png with --out)."""
    try:
        blist = [int(b) for b in budgets.split(",") if b.strip()]
    except ValueError:
        raise BadOptionError(f"--budgets must be integers, got {budgets!r}") from None
    job = _job(model, api_base, api_key_env, api_tokenizer, concurrency, retries, timeout, batch_size, device, dtype, seed,
               data, limit, offset, templates, out, force, {"max_new_tokens": max_new_tokens}, budgets=blist)
    run_command(ELASTICITY, job, json_out=json, quiet=quiet)


def render_elasticity(r: dict) -> None:
    rows = [["vanilla" if x["budget"] is None else x["budget"], x["mean_out_tokens"], x["mean_gpt4_tokens"], x["accuracy"], x["truncated"]] for x in r["table"]]
    report.stdout.print(report.table(f"token elasticity ({r['backend']}, {r['n_questions']} questions)",
                                     ["budget", "mean out tokens", "mean gpt-4 tokens", "accuracy", "truncated"], rows))
    if r.get("out"):
        report.stdout.print(f"plot: {r['out']}/elasticity.png")
    _foot(r)


@budget_app.command("train")
def train(
    model: ModelOpt = MODEL,
    search: Annotated[Path, typer.Option("--search", help="`budget search --out` folder (or its search.jsonl) on a training split; with --targets gold, a GSM8K-format file.")] = Path("search"),
    targets: Annotated[str, typer.Option(help="'search': the searched answers (TALE-PT); 'gold': GSM8K reference solutions reformatted to end in [[N]] (a stand-in where the model solves too few questions itself).")] = "search",
    algo: Annotated[str, typer.Option(help="'sft' (LoRA on the searched answers) or 'dpo' (TRL; chosen = searched, rejected = vanilla).")] = "sft",
    epochs: Annotated[int, typer.Option(help="Passes over the examples.")] = 2,
    max_steps: MaxStepsOpt = None,
    lr: Annotated[float, typer.Option(help="Learning rate.")] = 2e-4,
    lora_r: LoraROpt = 8,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", help="Examples per step.")] = 4,
    max_length: Annotated[int, typer.Option(help="Truncate prompt+answer to this many tokens.")] = 768,
    only_improved: Annotated[bool, typer.Option("--only-improved/--all-searched", help="Train only on questions where search found a shorter answer (TALE-PT), or on every searched one (the rest are vanilla answers: self-distillation).")] = True,
    limit: LimitOpt = None, templates: TemplatesOpt = None,
    out: OutOpt = None, force: ForceOpt = False, json: JsonOpt = False, quiet: QuietOpt = False, seed: SeedOpt = SEED,
    device: DeviceOpt = DEVICE, dtype: DtypeOpt = DTYPE,
) -> None:
    """TALE-PT: fine-tune on searched answers so the model is concise without a budget; evaluate with `budget run MODEL_DIR`."""
    from llmslim.budget.train import TrainConfig

    cfg = TrainConfig(algo=algo, epochs=epochs, max_steps=max_steps, lr=lr, rank=lora_r, alpha=2 * lora_r,
                      batch_size=batch_size, max_length=max_length, seed=seed, only_improved=only_improved)
    job = PL.Job(backend=PL.BackendSpec(model=model, device=device, dtype=dtype, seed=seed), limit=limit, templates=templates,
                 options={"search_file": search, "targets": targets, "config": cfg}, out=out, force=force, seed=seed)
    run_command(TRAIN_COMMAND, job, json_out=json, quiet=quiet)


def render_train(r: dict) -> None:
    report.stdout.print(report.table(f"TALE-PT ({r['algo']}, LoRA r={r['config']['rank']}) on {r['base_model']}",
                                     ["examples", "shorter-answer examples", "steps", "first loss", "last loss"],
                                     [[r["examples"], r["improved_examples"], r["steps"], r["first_loss"], r["last_loss"]]]))
    report.stdout.print(f"train {r['timings']['train_s']:.1f}s; model written to {r['out']} "
                        f"(evaluate: llmslim budget run {r['out']} --modes vanilla)")


@budget_app.command("serve")
def serve(
    model: ModelOpt = MODEL,
    host: Annotated[str, typer.Option(help="Address to bind (loopback by default).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (0: any free port; the bound one is printed).")] = 8000,
    name: Annotated[Optional[str], typer.Option(help="Model name reported by /v1/models (default: MODEL).")] = None,
    api_key_env: Annotated[Optional[str], typer.Option(help="Require this env var's value as the Bearer key (unset: no key).")] = None,
    quiet: QuietOpt = False, seed: SeedOpt = SEED, device: DeviceOpt = DEVICE, dtype: DtypeOpt = DTYPE,
) -> None:
    """A small OpenAI-compatible /v1/chat/completions server on a local model (for the HTTP backend)."""
    import os
    import sys

    from llmslim.budget.serve import make_server
    from llmslim.core.device import seed_everything
    from llmslim.core.load import load_model

    report.setup_logging(quiet)
    key = os.environ.get(api_key_env) if api_key_env else None
    if api_key_env and not key:
        raise BadOptionError(f"--api-key-env {api_key_env}: that environment variable is not set")
    seed_everything(seed)
    loaded = load_model(model, device=device, dtype=dtype, purpose="inference")
    server = make_server(loaded.model, loaded.tokenizer, name or model, host, port, key)
    bound = server.server_address
    # one line on stdout that scripts (and the tests) wait for
    sys.stdout.write(f"serving {name or model} on http://{bound[0]}:{bound[1]}/v1\n")
    sys.stdout.flush()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


ESTIMATE = Command("budget estimate", PL.validate_estimate, PL.run_estimate, render_estimate, model_purpose=None)
RUN = Command("budget run", PL.validate_run, PL.run_modes, _render_modes, model_purpose=None)
SEARCH = Command("budget search", PL.validate_search, PL.run_search, render_search, model_purpose=None)
ELASTICITY = Command("budget elasticity", PL.validate_elasticity, PL.run_elasticity, render_elasticity, model_purpose=None)
TRAIN_COMMAND = Command("budget train", PL.validate_train, PL.run_train, render_train, model_purpose=None, needs_out=True,
                        distributed=True)
