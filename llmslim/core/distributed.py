"""Several processes of one job (`torchrun --nproc_per_node N -m llmslim ...` or
`accelerate launch -m llmslim ...`): which one this is, its share of the work, and sums across
all of them. The process group is accelerate's (PartialState over torch.distributed: gloo on CPU,
nccl on GPUs), the one transformers' Trainer and TRL join, so a command's own reductions and a
Trainer inside it share it.

Outside a launcher every function is the single-process identity (rank 0 of 1), so commands call
them unconditionally.
"""

from __future__ import annotations

import os
import signal
from contextlib import contextmanager
from datetime import timedelta

import torch

COLLECTIVE_TIMEOUT_HOURS = 6


def launched() -> bool:
    """True under a launcher that started more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def start(device: torch.device) -> None:
    """Join the process group (once per process; a no-op without a launcher). CPU processes use
    gloo: accelerate only picks MULTI_CPU when told the job is on CPU."""
    if launched():
        from accelerate import PartialState

        if device.type == "cuda":
            torch.cuda.set_device(device)
        # one process evaluates (lm-eval, perplexity) while the others wait at their next
        # collective: an evaluation may take an hour on CPU, far past torch's 10-30 min default
        PartialState(cpu=device.type == "cpu", timeout=timedelta(hours=COLLECTIVE_TIMEOUT_HOURS))
        # when one process dies the launcher sends the others SIGTERM: end with our one line
        # (and unwind, so no temp output is left) rather than die silently
        signal.signal(signal.SIGTERM, _stopped_by_launcher)


def finish() -> None:
    """Leave the process group after a command succeeded: all processes meet, then each tears its
    group down. Left to interpreter exit, gloo's threads may outlive the peer that closed first
    and abort the process ("terminate called without an active exception") after the work is done."""
    if _active():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def _stopped_by_launcher(signum, frame):
    from llmslim.core.errors import JobStoppedError

    raise JobStoppedError()


def is_collective_failure(err: BaseException) -> bool:
    """A collective that failed because another process is gone (gloo: the connection closed;
    nccl: the communicator aborted), as opposed to a bug: only under a launcher."""
    if not launched():
        return False
    if isinstance(err, getattr(torch.distributed, "DistError", ())):
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and any(word in text for word in ("gloo", "Gloo", "NCCL", "Connection closed by peer"))


def rank() -> int:
    return torch.distributed.get_rank() if _active() else 0


def world() -> int:
    return torch.distributed.get_world_size() if _active() else 1


def is_main() -> bool:
    return rank() == 0


@contextmanager
def main_first():
    """Rank 0 runs the block first (say, building a cache) while the others wait; then they
    run it (and find the cache). accelerate's main_process_first; a plain block without a launcher."""
    if not _active():
        yield
        return
    from accelerate import PartialState

    with PartialState().main_process_first():
        yield


def shard(items: torch.Tensor) -> torch.Tensor:
    """This process's rows of `items` (every world-th, from its rank): the same rows on every
    run with the same world size, and together exactly all rows."""
    return items[rank() :: world()]


def sum_(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` over the processes, in place (gloo: CPU tensors; nccl: CUDA tensors)."""
    if _active():
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM)
    return tensor


def from_main(obj):
    """Rank 0's `obj` (any picklable) in every process."""
    if not _active():
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def gather_to_main(obj):
    """Every process's `obj` (any picklable), in rank order, on rank 0; None on the others."""
    if not _active():
        return [obj]
    gathered = [None] * world() if is_main() else None
    torch.distributed.gather_object(obj, gathered, dst=0)
    return gathered


def sum_int(value: int) -> int:
    return int(sum_(torch.tensor([value], dtype=torch.long, device=reduce_device())).item())


def _active() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def reduce_device() -> torch.device:
    """Where small reduction tensors live: nccl reduces CUDA tensors only."""
    if _active() and torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
