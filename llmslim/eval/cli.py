from llmslim.core.errors import LlmslimError


def eval_command() -> None:
    """Evaluate a model (in progress)."""
    raise LlmslimError("eval: in progress")
