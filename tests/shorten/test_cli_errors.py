"""Bad input: one line on stderr, exit 1, before any model is loaded or trained."""

import pytest

from llmslim.cli import main


def run_cli(capsys, *args):
    try:
        main(["shorten", *map(str, args)])
        code = 0
    except SystemExit as done:
        code = done.code
    captured = capsys.readouterr()
    return code, captured.err


def one_line(code, err, needle):
    assert code == 1, err
    lines = [l for l in err.strip().splitlines() if l.strip()]
    assert "Traceback" not in err
    assert any(needle in l for l in lines), err


@pytest.mark.parametrize("args, needle", [
    (["--lam", "1.5"], "--lam must be in [0, 1]"),
    (["--reward-clip", "0"], "--reward-clip must be > 0"),
    (["--num-generations", "1"], "--num-generations must be >= 2"),
    (["--max-steps", "0"], "--max-steps must be >= 1"),
])
def test_rl_bad_options(capsys, tiny_llama_dir, args, needle):
    one_line(*run_cli(capsys, "rl", tiny_llama_dir, *args), needle)


@pytest.mark.parametrize("args, needle", [
    (["--lam1", "0.6", "--lam2", "0.5"], "lam1 + lam2 < 1"),
    (["--top-p", "0"], "--top-p must be in (0, 1]"),
    (["--head-ratio", "1.5"], "--head-ratio"),
])
def test_sft_bad_options(capsys, tiny_llama_dir, args, needle):
    one_line(*run_cli(capsys, "sft", tiny_llama_dir, *args), needle)


def test_existing_output_needs_force(capsys, tiny_llama_dir, tmp_path):
    (tmp_path / "out").mkdir()
    one_line(*run_cli(capsys, "rl", tiny_llama_dir, "--out", tmp_path / "out"), "pass --force")


def test_resume_without_checkpoints(capsys, tiny_llama_dir, tmp_path):
    one_line(*run_cli(capsys, "sft", tiny_llama_dir, "--out", tmp_path / "o", "--resume"), "--resume: no checkpoint")


def test_dry_run_resume_looks_for_the_default_checkpoints(capsys, tiny_llama_dir):
    """--dry-run leaves --out unset, but --resume still names the folder the real run would use."""
    code, err = run_cli(capsys, "sft", tiny_llama_dir, "--dry-run", "--resume")
    one_line(code, err, f"--resume: no checkpoint folder {tiny_llama_dir.stem}-shorten-sft-checkpoints")


def test_missing_prompts_file(capsys, tiny_llama_dir, tmp_path):
    one_line(*run_cli(capsys, "rl", tiny_llama_dir, "--prompts", tmp_path / "nope.jsonl", "--out", tmp_path / "o"),
             "data file not found")


def test_unknown_train_modules(capsys, tiny_llama_dir, prompts_file, tmp_path):
    one_line(*run_cli(capsys, "sft", tiny_llama_dir, "--prompts", prompts_file, "--val-size", 2, "--max-new-tokens", 4,
                      "--keep-unfinished", "--ref-cache", tmp_path / "c", "--train-modules", "nope_proj",
                      "--out", tmp_path / "o", "--quiet"), "matches no module")


def test_no_finished_references(capsys, tiny_llama_dir, prompts_file, tmp_path):
    # no answer is at most 0 tokens long: nothing to train on, said before any training
    one_line(*run_cli(capsys, "rl", tiny_llama_dir, "--prompts", prompts_file, "--val-size", 2, "--max-new-tokens", 4,
                      "--max-ref-tokens", 0, "--ref-cache", tmp_path / "c", "--out", tmp_path / "o", "--quiet"),
             "--keep-unfinished")
    assert not (tmp_path / "o").exists()


def test_eval_bad_inputs(capsys, tiny_llama_dir, prompts_file, tmp_path):
    # explicit prompts: the default (MT-Bench in the shared data) may be absent on this machine
    one_line(*run_cli(capsys, "eval", tmp_path / "missing", "--base", tiny_llama_dir, "--prompts", prompts_file,
                      "--limit", 2), "no model at")
    one_line(*run_cli(capsys, "eval", tiny_llama_dir, "--base", tiny_llama_dir, "--prompts", prompts_file,
                      "--limit", 0), "--limit must be >= 1")


def test_eval_base_comes_from_the_trained_folder(capsys, tiny_llama_dir, prompts_file, tmp_path):
    """shorten eval compares against the model the folder was trained from (its run.json), not a
    default; another --base needs --force; a judge endpoint needs a model name."""
    import json
    import shutil

    trained = tmp_path / "trained"
    shutil.copytree(tiny_llama_dir, trained)
    one_line(*run_cli(capsys, "eval", trained, "--prompts", prompts_file, "--limit", 1), "--base needed")
    (trained / "run.json").write_text(json.dumps({"command": "shorten rl", "args": {"model": str(tmp_path / "elsewhere")}}))
    one_line(*run_cli(capsys, "eval", trained, "--base", tiny_llama_dir, "--prompts", prompts_file, "--limit", 1),
             "is not the model")
    one_line(*run_cli(capsys, "eval", trained, "--prompts", prompts_file, "--limit", 1), "no model at")  # the recorded base
    (trained / "run.json").write_text(json.dumps({"command": "shorten rl", "args": {"model": f"{tiny_llama_dir}/."}}))
    one_line(*run_cli(capsys, "eval", trained, "--base", tiny_llama_dir, "--prompts", tmp_path / "none.jsonl"),
             "not found")  # the same folder spelled otherwise is accepted: it fails later, on the prompts file
    one_line(*run_cli(capsys, "eval", trained, "--base", tiny_llama_dir, "--force", "--prompts", prompts_file, "--limit", 1,
                      "--judge-url", "http://localhost:1/v1"), "--judge-url needs --judge-model")


def test_reference_ids_are_the_generated_ids(tiny_llama_dir):
    """Branching SFT branches on the tokens the model produced: decoding and re-encoding loses
    special tokens (<unk>, <pad> here) and may merge differently."""
    import torch

    from llmslim.core.load import load_model
    from llmslim.shorten.reference import generate_references

    loaded = load_model(str(tiny_llama_dir), device="cpu", dtype="float32")
    prompts = [f"w{i} w{i + 3} w{i + 7}" for i in range(12)]
    refs = generate_references(loaded.model, loaded.tokenizer, prompts, max_new_tokens=10, batch_size=1, chat=False)
    special = set(loaded.tokenizer.all_special_ids) - {loaded.tokenizer.eos_token_id}
    assert any(t in special for r in refs for t in r.answer_ids)  # this set exercises the lossy round trip
    from llmslim.core.generate import _stop_ids

    stop = _stop_ids(loaded.model, loaded.tokenizer)
    for p, r in zip(prompts, refs):
        ids = loaded.tokenizer(p, return_tensors="pt").input_ids
        out = loaded.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=10, do_sample=False,
                                    eos_token_id=sorted(stop), pad_token_id=loaded.tokenizer.pad_token_id)
        new = out[0, ids.shape[1]:].tolist()
        end = next((i + 1 for i, t in enumerate(new) if t in stop), len(new))
        assert r.answer_ids == new[:end] and r.n_tokens == len(r.answer_ids)


@pytest.mark.parametrize("tie", [-1, 0])
def test_branch_advantages_shorter_longer_and_ties(tie):
    """+1 for a branch that ends before the reference's rest, -1 for one that ends after, and
    --tie-advantage (-1: the reference code) for one of the same length."""
    import torch

    from llmslim.shorten.sft import Branch, score_branches

    EOS, PAD = 9, 0
    continuations = [[5, EOS, PAD, PAD], [5, 5, EOS, PAD], [5, 5, 5, 5]]  # branch lengths 3, 4 and >= 5 (alt included)

    class Scripted(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def generate(self, input_ids, **kwargs):
            return torch.cat([input_ids, torch.tensor(continuations)[:, : kwargs["max_new_tokens"]]], dim=1)

    class Tok:
        pad_token_id = PAD

    branches = [Branch(ref=0, pos=1, alt=3, context=[1, 2], logp_ref=torch.zeros(10), ref_remaining=4, ref_finished=True)
                for _ in continuations]
    score_branches(Scripted(), Tok(), branches, {EOS}, tie_advantage=tie)
    assert [b.branch_len for b in branches] == [3, 4, 5]
    assert [b.advantage for b in branches] == [1, tie, -1] and [b.tied for b in branches] == [False, True, False]


def test_a_branch_label_does_not_depend_on_the_other_branches_in_its_batch():
    """The batch generates as far as its longest reference rest; a branch whose (unfinished)
    reference stopped after 2 more tokens and that ends only 3 tokens later is a tie alone and
    must stay one next to a branch with a longer rest (it once became "shorter" there)."""
    import torch

    from llmslim.shorten.sft import Branch, score_branches

    EOS, PAD = 9, 0

    class Scripted(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def generate(self, input_ids, **kwargs):
            rows = torch.tensor([[5, 5, EOS, PAD, PAD, PAD]] * input_ids.shape[0])
            return torch.cat([input_ids, rows[:, : kwargs["max_new_tokens"]]], dim=1)

    class Tok:
        pad_token_id = PAD

    def branch(rest, finished):
        return Branch(ref=0, pos=1, alt=3, context=[1, 2], logp_ref=torch.zeros(10), ref_remaining=rest, ref_finished=finished)

    alone = [branch(2, False)]
    score_branches(Scripted(), Tok(), alone, {EOS})
    together = [branch(2, False), branch(6, True)]
    score_branches(Scripted(), Tok(), together, {EOS})
    assert (alone[0].advantage, alone[0].tied, alone[0].branch_len) == (-1, True, 3)
    assert (together[0].advantage, together[0].tied, together[0].branch_len) == (-1, True, 3)
    assert (together[1].advantage, together[1].branch_len) == (1, 4)  # ends 4 tokens in, before its rest of 6
