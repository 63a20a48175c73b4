"""bench tests run on one thread: on a shared 2-core machine two OpenMP threads can wait on each
other for milliseconds per matmul, which makes even tiny models slow (not wrong)."""

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# the smallest run that still has a prefill and decode steps
FAST = dict(batch_size=1, prompt_len=8, new_tokens=3, repeats=2, warmup=0)
