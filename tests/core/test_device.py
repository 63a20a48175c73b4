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


def test_peak_memory_is_in_mib_on_cpu_and_cuda(monkeypatch):
    # the kernel's figures are faked: a real peak RSS is inherited across fork and exec, so no
    # allocation in a test process can be relied on to raise it
    import resource
    from types import SimpleNamespace

    from llmslim.core.device import peak_memory_mb

    monkeypatch.setattr(resource, "getrusage", lambda who: SimpleNamespace(ru_maxrss=3 * 1024 * 1024))  # Linux: KiB
    assert peak_memory_mb("cpu") == 3072.0
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *a, **k: 5 * 2**30)  # bytes
    assert peak_memory_mb("cuda") == 5120.0


def test_training_weights_are_fp32_on_every_device():
    """An optimizer's small steps round away on bf16 weights: trained weights load in fp32 (the
    Trainer computes in bf16 by autocast on CUDA)."""
    for kind in ("cpu", "cuda", "mps"):
        assert resolve_dtype("auto", torch.device(kind), "training") == torch.float32
    assert resolve_dtype("bfloat16", torch.device("cuda"), "training") == torch.bfloat16  # asked for explicitly


def test_commands_that_train_load_for_training():
    """Each command whose optimizer updates the loaded weights asks for fp32 training weights."""
    from llmslim.diffuse.cli import ADAPT, DISTILL
    from llmslim.recover.cli import RECOVER
    from llmslim.shorten.cli import TRAIN_COMMANDS

    for command in (ADAPT, DISTILL, RECOVER, *TRAIN_COMMANDS.values()):
        assert command.model_purpose == "training", command.name
