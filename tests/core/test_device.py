import pytest
import torch

from llmslim.core.device import resolve_dtype, where_it_ran
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
    # every GPU this process holds memory on counts (a model spread by --device-map auto): 5 GiB
    # on GPU 0, 6 GiB on GPU 1; GPU 2 is unused (not asked: that would open a context on it)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 2**20 if device in (0, 1) else 0)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: (5 + (device or 0)) * 2**30)  # bytes
    assert peak_memory_mb("cuda") == 11 * 1024.0
    monkeypatch.setenv("WORLD_SIZE", "2")  # under a launcher: this process's GPU only
    assert peak_memory_mb("cuda") == 5120.0
    assert peak_memory_mb(torch.device("cuda", 1)) == 6144.0


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


def test_max_memory_reads_accelerates_pairs_and_refuses_the_rest():
    from llmslim.core.device import parse_max_memory

    assert parse_max_memory(None) is None
    assert parse_max_memory("0=70GiB, 1=20000MB,cpu=200GiB") == {0: "70GiB", 1: "20000MB", "cpu": "200GiB"}
    assert parse_max_memory("0=1000000") == {0: 1000000}  # bytes, as accelerate takes an int
    for bad in ("70GiB", "a=1GiB", "0=", "0=-3GiB", "0=lots", "-1=1GiB", "0=inf", "0=infGiB", "0=nanGiB"):
        with pytest.raises(BadOptionError, match="--max-memory: cannot read"):
            parse_max_memory(bad)
    with pytest.raises(BadOptionError, match="names 0 twice"):
        parse_max_memory("0=1GiB,0=2GiB")
    with pytest.raises(BadOptionError, match="names no GPU"):
        parse_max_memory("cpu=100GiB")


def test_device_map_options_are_checked_before_loading(monkeypatch):
    from llmslim.core.device import check_device_map

    cpu = torch.device("cpu")
    assert check_device_map("one", None, cpu) is None
    assert check_device_map("auto", None, cpu) is None  # one device: the model goes there whole
    with pytest.raises(BadOptionError, match="unknown --device-map 'balanced'"):
        check_device_map("balanced", None, cpu)
    with pytest.raises(BadOptionError, match="add --device-map auto"):
        check_device_map("one", "0=1GiB", cpu)
    with pytest.raises(BadOptionError, match="needs CUDA GPUs"):
        check_device_map("auto", "0=1GiB", cpu)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert check_device_map("auto", "0=1GiB,1=2GiB", torch.device("cuda")) == {0: "1GiB", 1: "2GiB"}
    with pytest.raises(BadOptionError, match="names GPU 2, but torch sees 2"):
        check_device_map("auto", "0=1GiB,2=1GiB", torch.device("cuda"))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(BadOptionError, match="each process a GPU of its own"):
        check_device_map("auto", None, cpu)


def test_where_it_ran_names_the_device_and_dtype():
    cpu = where_it_ran(torch.device("cpu"), torch.bfloat16)
    assert cpu == {"device": f"cpu ({torch.get_num_threads()} threads)", "dtype": "bfloat16"}
    # neither CUDA nor the CPU (mps on a Mac): the device itself, not "cpu"
    assert where_it_ran(torch.device("meta"), torch.float32)["device"] == "meta"
