from llmslim.core.errors import LlmslimError


def bench() -> None:
    """Benchmark a model (in progress)."""
    raise LlmslimError("bench: in progress")
