"""shorten rl and sft under torchrun (2 processes, gloo): one process writes; token-branching SFT
on 2 processes at --batch-size 2 trains the weights 1 process trains at --batch-size 4."""

import json

import torch
from transformers import AutoModelForCausalLM

from tests import test_distributed
from tests.test_distributed import llmslim

pytestmark = test_distributed.pytestmark  # skipped where torchrun is missing


def _args(model_dir, prompts_file, tmp_path):
    return [model_dir, "--prompts", prompts_file, "--val-size", 2, "--max-new-tokens", 16, "--ref-cache", tmp_path / "cache",
            "--keep-unfinished", "--json", "--seed", 1]


def test_sft_on_two_processes_trains_what_one_process_trains_on_their_branches(eos_llama_dir, prompts_file, tmp_path):
    common = ["shorten", "sft", *_args(eos_llama_dir, prompts_file, tmp_path), "--max-steps", 2, "--lr", 1e-2,
              "--top-p", 0.95, "--lam1", 0.05, "--lam2", 0.05]
    # two processes first: rank 0 builds the references and branch distributions while the other
    # waits, then reads them; the one-process run reuses that cache
    two = llmslim([*common, "--batch-size", 2, "--out", tmp_path / "two"], processes=2)
    assert two.returncode == 0, two.stderr[-3000:]
    one = llmslim([*common, "--batch-size", 4, "--out", tmp_path / "one"])
    assert one.returncode == 0, one.stderr[-3000:]
    r1, r2 = json.loads(one.stdout), json.loads(two.stdout)
    assert (r1["processes"], r2["processes"]) == (1, 2)
    for key in ("loss", "shorter_frac", "longer_frac", "branch_len", "grad_norm"):  # the step's statistics over all branches
        assert abs(r1["last"][key] - r2["last"][key]) <= 1e-4 * max(1.0, abs(r1["last"][key])), key
    a = AutoModelForCausalLM.from_pretrained(tmp_path / "one").state_dict()
    b = AutoModelForCausalLM.from_pretrained(tmp_path / "two").state_dict()
    base = AutoModelForCausalLM.from_pretrained(eos_llama_dir).state_dict()
    assert any(not torch.equal(a[k], base[k]) for k in a)  # it trained
    # to summation order: an Adam step at --lr 1e-2 moves a weight by up to 1e-2, and without the
    # gradient sync the two processes' weights part by that much
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-4), k
    assert sorted(p.name for p in tmp_path.iterdir() if p.name not in ("prompts.json", "cache")) == ["one", "two"]


def test_rl_trains_with_grpo_ddp_and_one_process_writes(eos_llama_dir, prompts_file, tmp_path):
    two = llmslim(["shorten", "rl", *_args(eos_llama_dir, prompts_file, tmp_path), "--max-steps", 1, "--batch-size", 1,
                   "--num-generations", 2, "--lr", 1e-2, "--eval-every", 1, "--out", tmp_path / "rl"], processes=2)
    assert two.returncode == 0, two.stderr[-3000:]
    result = json.loads(two.stdout)
    assert result["processes"] == 2 and result["last"]["step"] == 1
    assert result["validation"] and result["validation"][-1]["step"] == 1
    assert (tmp_path / "rl" / "history.jsonl").is_file() and (tmp_path / "rl" / "config.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "prompts.json", "rl"]
