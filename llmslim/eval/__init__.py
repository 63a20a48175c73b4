"""`llmslim eval`: lm-eval benchmarks on local files, perplexity, answer length; for model objects.

    evaluate(model, tokenizer, EvalConfig(...)) -> dict     all of it (run.py)
    run_tasks(model, tokenizer, ["arc_easy"], limit=...)    lm-eval tasks only (harness.py)
    perplexity(model, tokenizer, text, seqlen)              WikiText-2 style perplexity
    generation_stats(model, tokenizer, prompts)             output-token statistics
"""

from llmslim.eval.generation import generation_stats
from llmslim.eval.harness import TASKS, render_tasks, run_tasks
from llmslim.eval.perplexity import perplexity
from llmslim.eval.run import EvalConfig, evaluate, prepare

__all__ = ["EvalConfig", "TASKS", "evaluate", "generation_stats", "perplexity", "prepare", "render_tasks", "run_tasks"]
