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


def test_peak_memory_on_cpu_is_the_peak_rss_in_mib():
    # in a fresh process, so that no earlier test's peak hides the allocation
    import subprocess
    import sys

    code = (
        "import torch; from llmslim.core.device import peak_memory_mb as p; a = p('cpu'); "
        "x = torch.ones(2**30, dtype=torch.uint8); x += 1; b = p('cpu'); del x; print(a, b, p('cpu'))"
    )
    before, after, later = map(float, subprocess.check_output([sys.executable, "-c", code], text=True).split())
    # 1 GiB more in MiB (not KiB or bytes), less whatever the import's transient peak held
    assert 850 <= after - before <= 1100
    assert later == after  # a peak does not fall when memory is freed
