import pytest
import torch

from llmslim.core.device import resolve_dtype
from llmslim.core.errors import BadOptionError


@pytest.mark.parametrize("purpose", ["gradients", "inference", "generation"])
def test_cpu_auto_is_float32_for_every_purpose(purpose):
    assert resolve_dtype("auto", torch.device("cpu"), purpose) == torch.float32


def test_explicit_dtype_wins_and_unknown_is_one_error():
    assert resolve_dtype("bfloat16", torch.device("cpu"), "generation") == torch.bfloat16
    with pytest.raises(BadOptionError, match="unknown dtype"):
        resolve_dtype("fp8", torch.device("cpu"))
