"""End to end on a tiny random llama: both methods train a few steps, save a folder transformers
reloads, train only the attention input projections, and resume from checkpoints."""

import json
import resource

import pytest
import torch
from transformers import AutoModelForCausalLM

from llmslim.cli import main
from llmslim.shorten.reward import Embedder


def run_cli(capsys, *args):
    code = 0
    try:
        main(["shorten", *map(str, args)])
    except SystemExit as done:
        code = done.code
    out = capsys.readouterr()
    return code, out.out, out.err


def _common(model_dir, prompts_file, tmp_path):
    return [model_dir, "--prompts", prompts_file, "--val-size", 2, "--max-new-tokens", 16,
            "--ref-cache", tmp_path / "cache", "--keep-unfinished", "--json", "--seed", 1]


def _changed(before_dir, after_dir):
    a = AutoModelForCausalLM.from_pretrained(before_dir).state_dict()
    b = AutoModelForCausalLM.from_pretrained(after_dir).state_dict()
    return {k for k in a if not torch.equal(a[k], b[k])}


def test_rl_end_to_end(capsys, eos_llama_dir, prompts_file, tmp_path):
    out = tmp_path / "rl"
    code, stdout, err = run_cli(capsys, "rl", *_common(eos_llama_dir, prompts_file, tmp_path), "--max-steps", 2,
                                "--batch-size", 2, "--num-generations", 3, "--lr", 1e-2, "--lam", 0.8,
                                "--eval-every", 2, "--out", out)
    assert code == 0, err
    result = json.loads(stdout)
    assert result["references"]["n_used"] == 6
    assert result["completion_limit"] > result["references"]["max_tokens_used"]  # above the references: the trap
    # a GRPO signal: rewards vary within the groups, and not every completion hit the limit
    assert result["last"]["step"] == 2 and result["last"]["reward_std"] > 0 and 0 <= result["last"]["clipped_ratio"] < 1
    assert result["validation"] and result["validation"][-1]["step"] == 2
    changed = _changed(eos_llama_dir, out)
    assert changed and all(k.split(".")[-2] in ("q_proj", "k_proj", "v_proj") for k in changed), changed
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["command"] == "shorten rl" and manifest["args"]["method_config"]["lam"] == 0.8
    assert (out / "history.jsonl").is_file()
    assert list((tmp_path / "cache").glob("refs-*/refs.jsonl"))  # reused by later runs: test_sft_end_to_end_and_resume


def test_sft_end_to_end_and_resume(capsys, monkeypatch, eos_llama_dir, prompts_file, tmp_path):
    rss_before_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out, ckpt = tmp_path / "sft", tmp_path / "ckpt"
    args = [*_common(eos_llama_dir, prompts_file, tmp_path), "--batch-size", 4, "--lr", 1e-2, "--top-p", 0.95,
            "--lam1", 0.05, "--lam2", 0.05, "--save-every", 2, "--checkpoint-dir", ckpt, "--out", out]
    code, stdout, err = run_cli(capsys, "sft", *args, "--max-steps", 2)
    assert code == 0, err
    result = json.loads(stdout)
    hist = [json.loads(l) for l in (out / "history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in hist] == [1, 2]
    assert hist[0]["kl_ref_act"] == pytest.approx(0.0, abs=1e-3)  # step 1: the model is still the reference
    # step 2: the weights moved (lr 1e-2), so both KLs to the cached reference distribution are alive
    assert hist[1]["kl_ref_act"] > 1e-6 and hist[1]["kl_act_ref"] > 1e-6
    assert any(h["shorter_frac"] + h["longer_frac"] > 0 for h in hist)  # some branches decided
    changed = _changed(eos_llama_dir, out)
    assert changed and all(k.split(".")[-2] in ("q_proj", "k_proj", "v_proj") for k in changed)
    assert (ckpt / "checkpoint-2" / "state.pt").is_file()
    # the process's peak RSS in MiB: at least the peak before training, and not in KiB
    assert rss_before_mb <= result["peak_memory_mb"] < rss_before_mb + 4096

    def no_generation(*a, **k):
        raise AssertionError("the cached references were generated again")

    # the second run reads the references (and their branch caches) from --ref-cache
    monkeypatch.setattr("llmslim.shorten.reference.generate_references", no_generation)
    code, stdout, err = run_cli(capsys, "sft", *args, "--max-steps", 3, "--resume", "--force")
    assert code == 0, err
    assert len(list((tmp_path / "cache").glob("refs-*"))) == 1
    resumed = json.loads(stdout)
    assert resumed["resumed_from"].endswith("checkpoint-2") and resumed["last"]["step"] == 3
    hist = [json.loads(l) for l in (out / "history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in hist] == [1, 2, 3]


def test_rl_lora_saves_merged_model(capsys, eos_llama_dir, prompts_file, tmp_path):
    out = tmp_path / "lora"
    # 2 steps of 2 prompts x 3 samples, as test_rl_end_to_end: one prompt x 2 samples gave equal
    # rewards, no gradient, and an adapter of zeros that this test could not tell from a lost one
    code, stdout, err = run_cli(capsys, "rl", *_common(eos_llama_dir, prompts_file, tmp_path), "--max-steps", 2,
                                "--batch-size", 2, "--num-generations", 3, "--lora", "--lora-r", 4, "--lr", 1e-2, "--out", out)
    assert code == 0, err
    assert json.loads(stdout)["last"]["reward_std"] > 0
    assert (out / "adapter" / "adapter_config.json").is_file()
    model = AutoModelForCausalLM.from_pretrained(out)
    assert not any("lora" in k for k in model.state_dict())
    changed = _changed(eos_llama_dir, out)  # the adapter was merged in: the trained modules moved, only they
    assert changed and all(k.split(".")[-2] in ("q_proj", "k_proj", "v_proj") for k in changed), changed


def test_eval_end_to_end(capsys, eos_llama_dir, tiny_llama_dir, prompts_file, tmp_path):
    code, stdout, err = run_cli(capsys, "eval", eos_llama_dir, "--base", tiny_llama_dir, "--prompts", prompts_file,
                                "--max-new-tokens", 12, "--ref-cache", tmp_path / "cache", "--json", "--out", tmp_path / "ev")
    assert code == 0, err
    r = json.loads(stdout)
    assert r["n"] == 8
    base = sum(q["base_tokens"] for q in r["per_question"]) / 8
    short = sum(q["short_tokens"] for q in r["per_question"]) / 8
    assert r["shortening_pct"] == pytest.approx(100 * (1 - short / base))
    assert short < base  # the louder-EOS model does stop sooner
    # the proxy is the embedder's cosine between each base and short answer, averaged
    answers = [json.loads(line) for line in (tmp_path / "ev" / "answers.jsonl").read_text().splitlines()]
    cos = Embedder(r["sim_model"]).cosine([a["base"] for a in answers], [a["short"] for a in answers])
    assert [q["similarity"] for q in r["per_question"]] == pytest.approx(cos.tolist(), abs=1e-5)
    assert r["proxy_similarity"] == pytest.approx(cos.mean().item(), abs=1e-6)
    assert r["proxy_similarity"] < 1.0  # the answers did change
