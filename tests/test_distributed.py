"""Several processes under torchrun (gloo on CPU): the work is shared and the result is the
one-process result; one process writes and prints."""

import json
import math
import os
import random
import shutil
import subprocess
import sys
import threading

import pytest
import torch

pytestmark = pytest.mark.skipif(shutil.which("torchrun", path=os.path.dirname(sys.executable)) is None,
                                reason="torchrun not installed beside this python")

TORCHRUN = os.path.join(os.path.dirname(sys.executable), "torchrun")


def llmslim(argv, processes=1, timeout=300):
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = ([TORCHRUN, "--standalone", "--nproc_per_node", str(processes), "-m", "llmslim"] if processes > 1
           else [sys.executable, "-m", "llmslim"]) + [str(a) for a in argv]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)


@pytest.fixture()
def corpus(tmp_path):
    words = random.Random(0).choices([f"w{i}" for i in range(124)], k=3000)
    path = tmp_path / "corpus.txt"
    path.write_text(" ".join(words))
    return path


def test_prune_calibration_on_two_processes_equals_one(tmp_path, tiny_llama_dir, corpus):
    common = ["prune", tiny_llama_dir, "--ratio", "0.5", "--calib", corpus, "--nsamples", "6", "--seqlen", "16",
              "--gmm-refit", "once", "--compare", "wanda-sp", "--reconstruct", "--json"]
    one = llmslim(common + ["--save-scores", tmp_path / "one.pt"])
    assert one.returncode == 0, one.stderr
    two = llmslim(common + ["--save-scores", tmp_path / "two.pt", "--out", tmp_path / "out"], processes=2)
    assert two.returncode == 0, two.stderr[-3000:]

    a, b = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    assert (a["tokens"], a["windows"]) == (b["tokens"], b["windows"]) == (6 * 16, 6)
    assert a["neuron"].keys() == b["neuron"].keys() and a["neuron"]
    for key in a["neuron"]:
        for x, y in zip(a["neuron"][key], b["neuron"][key]):
            assert torch.allclose(x, y, rtol=1e-4, atol=1e-6), key
    assert len(a["act_gram"]) == len(b["act_gram"]) == len(a["act_mean"])  # --reconstruct's Gram matrices, summed too
    for x, y in zip(a["act_mean"] + a["act_sq"] + a["act_gram"], b["act_mean"] + b["act_sq"] + b["act_gram"]):
        assert torch.allclose(x, y, rtol=1e-5, atol=1e-7)

    # one process printed and wrote: one JSON document, one output folder, the same pruned widths
    result_one, result_two = json.loads(one.stdout), json.loads(two.stdout)
    assert result_two["calibration"]["nsamples"] == 6
    assert [r["width"] for r in result_two["rows"]] == [r["width"] for r in result_one["rows"]]
    assert result_two["widths"] == result_one["widths"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.txt", "one.pt", "out", "two.pt"]
    assert json.loads((tmp_path / "out" / "results.json").read_text())["widths"] == result_one["widths"]


def test_recover_trains_with_ddp_and_one_process_writes(tmp_path, tiny_llama_dir, corpus):
    """The Trainer under torchrun: each step takes --batch-size windows in each process."""
    from transformers import AutoModelForCausalLM

    two = llmslim(["recover", tiny_llama_dir, "--teacher", tiny_llama_dir, "--data", corpus, "--seqlen", "16",
                   "--batch-size", "2", "--max-steps", "2", "--full", "--out", tmp_path / "rec", "--json"], processes=2)
    assert two.returncode == 0, two.stderr[-3000:]
    result = json.loads(two.stdout)
    assert (result["processes"], result["steps"], result["tokens"]) == (2, 2, 2 * 2 * 16 * 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.txt", "rec"]
    trained = AutoModelForCausalLM.from_pretrained(tmp_path / "rec")
    dense = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    changed = [n for (n, p), q in zip(trained.named_parameters(), dense.parameters()) if not torch.equal(p, q)]
    assert changed  # the optimizer moved the weights


def test_diffuse_adapt_trains_with_ddp(tmp_path, tiny_llama_dir, corpus):
    """The MDLM loss under the Trainer's DDP (the forward through the wrapper, the mask built
    from the model inside it)."""
    two = llmslim(["diffuse", "adapt", tiny_llama_dir, "--data", corpus, "--seqlen", "16", "--batch-size", "2",
                   "--max-steps", "2", "--out", tmp_path / "mdlm", "--json"], processes=2)
    assert two.returncode == 0, two.stderr[-3000:]
    result = json.loads(two.stdout)
    assert (result["processes"], result["steps"], result["tokens"]) == (2, 2, 2 * 2 * 16 * 2)
    assert all(loss == loss for loss in result["losses"])  # finite, not NaN
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.txt", "mdlm"]


def test_diffuse_distill_trains_with_ddp_and_one_process_writes_the_rounds(tmp_path, tiny_llama_dir, corpus):
    """SDTT rounds under the Trainer's DDP: each round's student is written once (by rank 0), the
    checkpoint folder is emptied into --out, and nothing else appears."""
    adapt = llmslim(["diffuse", "adapt", tiny_llama_dir, "--data", corpus, "--seqlen", "16", "--batch-size", "2",
                     "--max-steps", "1", "--out", tmp_path / "mdlm", "--quiet"])
    assert adapt.returncode == 0, adapt.stderr[-3000:]
    two = llmslim(["diffuse", "distill", tmp_path / "mdlm", "--data", corpus, "--rounds", "2", "--steps-per-round", "2",
                   "--start-sampling-steps", "8", "--batch-size", "2", "--out", tmp_path / "students", "--json"], processes=2)
    assert two.returncode == 0, two.stderr[-3000:]
    result = json.loads(two.stdout)
    assert (result["processes"], result["tokens_per_round"]) == (2, 2 * 2 * 16 * 2)
    assert [(r["round"], r["steps"]) for r in result["rounds"]] == [(0, 2), (1, 2)]
    assert all(r["last_loss"] is not None and math.isfinite(r["last_loss"]) for r in result["rounds"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.txt", "mdlm", "students"]
    assert sorted(p.name for p in (tmp_path / "students").iterdir()) == ["results.json", "round-0", "round-1", "run.json"]


def test_budget_train_shares_each_epoch_between_the_processes(tmp_path, tiny_llama_dir):
    """TRL's SFTTrainer under torchrun: an epoch of 4 examples at --batch-size 1 is 4 steps in one
    process and 2 in two (each step takes one example in each)."""
    rows = [{"id": str(i), "question": f"w{i} w{i + 1}", "kind": "number", "searched": True, "improved": True,
             "answer": f"w{i + 2} [[{i}]]", "vanilla_output": f"w9 w9 w9 w9 w{i + 2} [[{i}]]", "budget": 8} for i in range(4)]
    search = tmp_path / "search.jsonl"
    search.write_text("".join(json.dumps(r) + "\n" for r in rows))
    two = llmslim(["budget", "train", tiny_llama_dir, "--search", search, "--epochs", "1", "--batch-size", "1",
                   "--out", tmp_path / "pt", "--json"], processes=2)
    assert two.returncode == 0, two.stderr[-3000:]
    result = json.loads(two.stdout)
    assert (result["processes"], result["examples"], result["steps"]) == (2, 4, 2)
    assert len(result["losses"]) == 2 and all(loss == loss for loss in result["losses"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pt", "search.jsonl"]
    assert (tmp_path / "pt" / "config.json").is_file()


def test_sparsity_collect_on_two_processes_equals_one(tmp_path, tiny_llama_dir, corpus, data_dir):
    """Each process traces every other example (windows and ARC prompts of other lengths, an odd
    count); rank 0 puts the rows back in example order and alone writes the traces."""
    common = ["sparsity", "collect", tiny_llama_dir, "--data", f"{corpus},arc_easy", "--limit", "5", "--seqlen", "16",
              "--criteria", "plainact,fisher", "--batch-size", "2", "--json"]
    one = llmslim(common + ["--out", tmp_path / "one"])
    assert one.returncode == 0, one.stderr[-3000:]
    two = llmslim(common + ["--out", tmp_path / "two"], processes=2)
    assert two.returncode == 0, two.stderr[-3000:]
    assert json.loads(two.stdout)["examples"] == json.loads(one.stdout)["examples"] == 10
    a, b = torch.load(tmp_path / "one" / "traces.pt"), torch.load(tmp_path / "two" / "traces.pt")
    assert b["meta"]["processes"] == 2 and b["meta"]["n"] == 10
    for key in ("features", "features_pre", "layer_inputs"):
        assert torch.allclose(a[key].float(), b[key].float(), rtol=1e-4, atol=1e-5), key
    for kind in ("heads", "neurons"):
        for c in ("plainact", "fisher"):
            assert torch.allclose(a[kind][c], b[kind][c], rtol=1e-4, atol=1e-6), (kind, c)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.txt", "one", "two"]


def test_a_command_that_runs_in_one_process_refuses_a_launcher(tiny_llama_dir):
    result = llmslim(["info", tiny_llama_dir], processes=2)
    assert result.returncode != 0
    assert "info runs in one process; under torchrun or accelerate launch run one of: prune, recover, shorten rl, shorten sft, budget train, sparsity collect, diffuse adapt, diffuse distill" in result.stderr


def test_the_listed_distributed_commands_are_the_ones_that_share_work():
    import importlib
    import pkgutil

    import llmslim
    from llmslim.core.job import DISTRIBUTED_COMMANDS, Command

    commands = {}
    for info in pkgutil.iter_modules(llmslim.__path__):
        if not info.ispkg:
            continue
        try:
            module = importlib.import_module(f"llmslim.{info.name}.cli")
        except ModuleNotFoundError:
            continue
        for value in vars(module).values():
            for c in value.values() if isinstance(value, dict) else [value]:
                if isinstance(c, Command):
                    commands[c.name] = c
    assert len(commands) > 10
    assert sorted(name for name, c in commands.items() if c.distributed) == sorted(DISTRIBUTED_COMMANDS)


def test_a_killed_process_fails_the_job_and_writes_nothing(tmp_path, tiny_llama_dir, corpus):
    """torchrun ends the other process when one dies; --out is written only after the work, in one
    rename, so nothing of it exists (not even its temp sibling: the job never got that far)."""
    import time

    import psutil

    out = tmp_path / "out"
    cmd = [TORCHRUN, "--standalone", "--nproc_per_node", "2", "-m", "llmslim", "prune", str(tiny_llama_dir),
           "--calib", str(corpus), "--nsamples", "20000", "--seqlen", "16", "--method", "wanda-sp", "--out", str(out)]
    launcher = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                env=os.environ | {"OMP_NUM_THREADS": "1"})
    stderr_lines = []
    reader = threading.Thread(target=lambda: stderr_lines.extend(launcher.stderr), daemon=True)
    reader.start()
    # kill rank 1 mid-calibration: after rank 0 said it started calibrating (so both processes are
    # past the collectives that come before it; a kill inside one ends rank 0 through gloo's error
    # instead, a different path) and after rank 1 has worked a moment more
    victim, cpu_at_start, deadline = None, None, time.time() + 180
    while victim is None and time.time() < deadline and launcher.poll() is None:
        rank1 = _worker(launcher, rank=1)
        if rank1 is not None and any(line.startswith("calibrating") and "started" in line for line in stderr_lines):
            try:
                cpu = rank1.cpu_times().user
                cpu_at_start = cpu if cpu_at_start is None else cpu_at_start
                victim = rank1 if cpu - cpu_at_start > 1 else None
            except psutil.Error:  # it ended meanwhile: the loop's poll() sees it
                pass
        time.sleep(0.2)
    assert victim is not None, f"rank 1 never started calibrating (launcher exit: {launcher.poll()}): {''.join(stderr_lines)[-2000:]}"
    assert launcher.poll() is None, "the job ended before the kill: give it more windows"
    victim.kill()
    launcher.wait(timeout=120)
    reader.join(timeout=10)
    stderr = "".join(stderr_lines)
    assert launcher.returncode != 0
    assert "llmslim" in stderr and "FAILED" in stderr.upper()  # torchrun's report names the failed process
    # the surviving process says what happened in one line of ours (it used to die silently)
    ours = [line for line in stderr.splitlines() if line.startswith("error: stopped (SIGTERM: the launcher stops the other processes")]
    assert len(ours) == 1 and "no --out was written" in ours[0], stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.txt"]


def _worker(launcher: subprocess.Popen, rank: int):
    """The launcher's worker process of `rank` (psutil), or None while it has not started."""
    import psutil

    try:
        children = psutil.Process(launcher.pid).children(recursive=True)
    except psutil.Error:  # the launcher has ended
        return None
    for child in children:
        try:
            if child.environ().get("RANK") == str(rank):
                return child
        except psutil.Error:
            pass
    return None


def test_a_failed_collective_is_reported_as_a_stopped_job_not_a_bug(monkeypatch):
    """Under a launcher, gloo's error when the other process vanished mid-collective is one line
    naming that, not "internal error ... a bug in llmslim"; a plain RuntimeError stays a bug."""
    from llmslim.core.distributed import is_collective_failure

    gone = RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer [127.0.0.1]:4567")
    assert not is_collective_failure(gone)  # one process: no launcher, so not a collective
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert is_collective_failure(gone)
    assert not is_collective_failure(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))


def test_each_process_draws_its_own_noise_and_one_process_is_unchanged(monkeypatch):
    """The Trainer seeds every process alike; ProcessSeed gives process r the seed + r stream
    (diffusion noise, dropout), and leaves a one-process run's stream as the Trainer set it."""
    from types import SimpleNamespace

    from llmslim.core import distributed
    from llmslim.core.training import ProcessSeed

    def draws(rank, world):
        monkeypatch.setattr(distributed, "rank", lambda: rank)
        monkeypatch.setattr(distributed, "world", lambda: world)
        torch.manual_seed(0)  # what the Trainer does in every process
        ProcessSeed().on_train_begin(SimpleNamespace(seed=0), None, None)
        return torch.rand(4)

    torch.manual_seed(0)
    trainers_stream = torch.rand(4)
    assert torch.equal(draws(0, 1), trainers_stream)
    assert not torch.equal(draws(0, 2), draws(1, 2))


def test_the_plan_counts_ddps_gradient_buckets_under_a_launcher(monkeypatch, tiny_llama_dir):
    from llmslim.core import plan as P

    shapes = P.shapes_of(P.model_config(str(tiny_llama_dir)))
    kwargs = dict(full=True, lora_r=0, batch=1, seqlen=16, teacher=None, teacher_bytes=0, device_type="cpu")
    assert "DDP gradient buckets" not in P.training_parts(shapes, **kwargs)
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert P.training_parts(shapes, **kwargs)["DDP gradient buckets"] == shapes.params * 4


def test_a_command_that_succeeds_leaves_the_process_group_and_one_that_fails_does_not_wait(tmp_path, monkeypatch, capsys):
    """Catches a job whose processes exit still in the group (gloo's threads then may abort a
    finished process: CI stop 34), and a failed command that waits in the leaving barrier for
    peers that will never come."""
    from llmslim import cli

    monkeypatch.setenv("WORLD_SIZE", "1")
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        with pytest.raises(SystemExit) as bad:
            cli.main(["info", str(tmp_path / "nope")])
        assert bad.value.code == 1 and torch.distributed.is_initialized()  # no barrier on the way out
        cli.main(["--version"])  # returns: success
        assert not torch.distributed.is_initialized()
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    capsys.readouterr()
