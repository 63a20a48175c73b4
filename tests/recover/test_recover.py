"""recover: the KD loss against a hand computation; a tiny pruned model recovers end to end."""

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from llmslim.cli import app
from llmslim.recover.kd import kd_loss


def test_kd_loss_by_hand():
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(1, 4, 5, generator=g), torch.randn(1, 4, 5, generator=g)
    labels = torch.tensor([[3, 1, -100, 2]])  # position 1 predicts token 1... the -100 one is not scored
    T, kd = 2.0, 0.3
    ce_terms, kl_terms = [], []
    for pos, target in ((0, 1), (2, 2)):  # logits at t predict labels[t + 1]; labels[2] is -100
        s, t = student[0, pos], teacher[0, pos]
        ce_terms.append(-(s[target].item() - math.log(sum(math.exp(v) for v in s.tolist()))))
        ps = [math.exp(v / T) for v in s.tolist()]
        pt = [math.exp(v / T) for v in t.tolist()]
        ps, pt = [v / sum(ps) for v in ps], [v / sum(pt) for v in pt]
        kl_terms.append(sum(b * math.log(b / a) for a, b in zip(ps, pt)))
    ce, kl = sum(ce_terms) / 2, sum(kl_terms) / 2 * T * T
    loss, parts = kd_loss(student, teacher, labels, kd, T)
    assert parts["ce"].item() == pytest.approx(ce, rel=1e-5) and parts["kl"].item() == pytest.approx(kl, rel=1e-5)
    assert loss.item() == pytest.approx(kd * kl + (1 - kd) * ce, rel=1e-5)
    same, _ = kd_loss(student, student, labels, 1.0, T)
    assert same.item() == pytest.approx(0.0, abs=1e-6)  # no gap to the teacher, no loss
    plain, parts = kd_loss(student, None, labels, 0.0)
    assert plain.item() == pytest.approx(ce, rel=1e-5) and "kl" not in parts


@pytest.fixture
def pruned_dir(tmp_path, tiny_llama_dir):
    """The tiny llama with half of every FFN removed, saved with its tokenizer."""
    from llmslim.core.load import load_model
    from llmslim.core.save import save_model
    from llmslim.prune.run import PruneConfig, collect_for, prune_model

    loaded = load_model(str(tiny_llama_dir), device="cpu", dtype="float32")
    windows = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(0))
    prune_model(loaded.model, collect_for(loaded.model, windows, ["magnitude"]), PruneConfig(ratio=0.5, method="magnitude"))
    save_model(loaded.model, loaded.tokenizer, tmp_path / "pruned")
    return tmp_path / "pruned"


@pytest.mark.parametrize("extra", [["--teacher", "DENSE", "--kd", "0.5", "--temperature", "2"], ["--kd", "0", "--full"]])
def test_recover_lowers_the_loss_and_saves_a_model_transformers_loads(tmp_path, tiny_llama_dir, pruned_dir, extra, data_dir):
    from transformers import AutoModelForCausalLM

    corpus = tmp_path / "corpus.txt"
    corpus.write_text(" ".join(f"w{(i * 7) % 40}" for i in range(2000)))
    before = {k: v.clone() for k, v in AutoModelForCausalLM.from_pretrained(pruned_dir).state_dict().items()}
    out = tmp_path / "recovered"
    args = ["recover", str(pruned_dir), *[str(tiny_llama_dir) if a == "DENSE" else a for a in extra], "--data", str(corpus),
            "--seqlen", "32", "--max-steps", "12", "--batch-size", "4", "--lr", "1e-2", "--device", "cpu", "--out", str(out), "--json",
            "--ppl", "--ppl-seqlen", "64", "--ppl-limit", "2", "--tasks", "arc_easy", "--limit", "4"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    result = json.loads(res.stdout)
    assert result["steps"] == 12 and result["tokens"] == 12 * 4 * 32
    losses = result["losses"]
    assert len(losses) == 12 and sum(losses[-3:]) < 0.95 * sum(losses[:3])  # a 40-word cycle: the loss must fall
    if "--teacher" in extra:
        # the teacher is the dense model, not the student: the KL term is alive from the first step
        assert result["kd"] == 0.5 and result["loss_parts"]["first"]["kl"] > 1e-6
    for when in ("before", "after"):  # evaluated on the pruned and on the recovered model
        assert set(result[when]) == {"wikitext2_ppl", "arc_easy/acc"} and result[when]["wikitext2_ppl"] > 1
        # under --json the evaluations' progress still reaches the log (stderr), named by phase
        assert f"perplexity ({when}): started" in res.stderr and f"perplexity ({when}): 2/2 done" in res.stderr
    assert result["after"]["wikitext2_ppl"] != result["before"]["wikitext2_ppl"]
    # accuracy after against before on the same documents, with a paired standard error
    paired = result["after_vs_before"]
    assert paired["of"] == ["arc_easy/acc"] and paired["items"] == 4
    assert paired["diff"] == pytest.approx(result["after"]["arc_easy/acc"] - result["before"]["arc_easy/acc"])
    assert paired["stderr"] >= 0
    recovered = AutoModelForCausalLM.from_pretrained(out)  # plain transformers, merged weights
    assert set(recovered.state_dict()) == set(before)
    assert any(not torch.equal(before[k], v) for k, v in recovered.state_dict().items())
    assert {k: v for k, v in AutoModelForCausalLM.from_pretrained(pruned_dir).state_dict().items()}.keys() == before.keys()
    assert all(torch.equal(before[k], v) for k, v in AutoModelForCausalLM.from_pretrained(pruned_dir).state_dict().items())  # input untouched
    assert (out / "results.json").is_file() and (out / "run.json").is_file()
    assert ((out / "adapter").is_dir()) == ("--full" not in extra)


def test_bad_recover_input_is_refused_before_loading(monkeypatch, pruned_dir, tmp_path):
    from llmslim.core import load

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the options were validated")

    monkeypatch.setattr(load, "load_model", refuse)
    res = CliRunner().invoke(app, ["recover", str(pruned_dir), "--kd", "0.5", "--out", str(tmp_path / "x")])
    assert res.exit_code != 0 and "--kd > 0 needs --teacher" in str(res.exception)
    (tmp_path / "empty.txt").write_text("\n")
    res = CliRunner().invoke(app, ["recover", str(pruned_dir), "--data", str(tmp_path / "empty.txt"), "--out", str(tmp_path / "x")])
    assert res.exit_code != 0 and "no text to train on" in str(res.exception)


@pytest.mark.parametrize("prefix", ["", "recover-"])
def test_a_bad_learning_rate_or_window_names_the_callers_flag(pruned_dir, prefix):
    """benchmarks/prune_table.py passes --recover-lr and --recover-seqlen through as lr and seqlen
    (beside its own calibration --seqlen): the errors must name those flags."""
    from llmslim.core.errors import BadOptionError
    from llmslim.recover.jobs import RecoverJob, validate

    with pytest.raises(BadOptionError, match=f"^--{prefix}lr must be > 0, got -1.0$"):
        validate(RecoverJob(model=str(pruned_dir), kd=0.0, lr=-1.0), flag_prefix=prefix)
    with pytest.raises(BadOptionError, match=f", --{prefix}seqlen >= 2,"):
        validate(RecoverJob(model=str(pruned_dir), kd=0.0, seqlen=1), flag_prefix=prefix)


@pytest.mark.parametrize("full", [False, True])
def test_prune_recover_steps_trains_the_pruned_model_against_the_dense_one(tmp_path, tiny_llama_dir, data_dir, full):
    """`prune --recover-steps`: the saved model is the recovered one (same shape as the pruned
    model, other weights), and its teacher is the dense model: the first KL is not zero (a
    teacher taken from the in-place pruned model would match the student exactly)."""
    from transformers import AutoModelForCausalLM

    common = ["prune", str(tiny_llama_dir), "--method", "magnitude", "--ratio", "0.5", "--calib", "self", "--nsamples", "2",
              "--seqlen", "8", "--device", "cpu", "--json", "--ppl", "--ppl-seqlen", "64", "--ppl-limit", "2",
              "--tasks", "arc_easy,piqa", "--limit", "4"]
    plain = CliRunner().invoke(app, [*common, "--out", str(tmp_path / "pruned")])
    res = CliRunner().invoke(app, [*common, "--recover-steps", "3", *(["--recover-full"] if full else []),
                                   "--out", str(tmp_path / "recovered")])
    assert plain.exit_code == 0 and res.exit_code == 0, plain.output + res.output
    result = json.loads(res.stdout)
    assert result["recover"]["steps"] == 3 and result["recover"]["kd"] == 0.5
    assert result["recover"]["loss_parts"]["first"]["kl"] > 1e-6  # a random tiny model: 4e-5; a self-teacher: 0
    assert [r["method"] for r in result["rows"]] == ["dense", "magnitude", "magnitude + recover"]
    for row in result["rows"]:  # each row's perplexity shows its progress in the log, under --json too
        assert f"perplexity ({row['method']}): 2/2 done" in res.stderr
    assert result["rows"][2]["eval"]["wikitext2_ppl"] != result["rows"][1]["eval"]["wikitext2_ppl"]
    # each pruned row's mean accuracy against the dense row's, the recovered one's also against
    # the unrecovered one's, on the same documents
    dense, pruned_row, recovered_row = result["rows"]
    mean = {r["method"]: (r["eval"]["arc_easy/acc"] + r["eval"]["piqa/acc"]) / 2 for r in result["rows"]}
    assert "vs_dense" not in dense and "per_item" not in pruned_row["eval"]
    assert pruned_row["vs_dense"]["diff"] == pytest.approx(mean["magnitude"] - mean["dense"])
    assert recovered_row["vs_dense"]["diff"] == pytest.approx(mean["magnitude + recover"] - mean["dense"])
    assert recovered_row["vs_unrecovered"]["diff"] == pytest.approx(mean["magnitude + recover"] - mean["magnitude"])
    assert recovered_row["vs_unrecovered"]["items"] == 8
    pruned = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned").state_dict()
    recovered = AutoModelForCausalLM.from_pretrained(tmp_path / "recovered").state_dict()
    assert {k: v.shape for k, v in pruned.items()} == {k: v.shape for k, v in recovered.items()}
    assert any(not torch.equal(pruned[k], recovered[k]) for k in pruned)
    assert (tmp_path / "recovered" / "adapter").is_dir() == (not full) and result["recover"]["full"] == full


def test_recover_on_the_teachers_own_samples(tmp_path, tiny_llama_dir, pruned_dir, data_dir):
    """--data self: max_steps x batch_size windows sampled from the teacher (data-free, as LLM-QAT),
    each a fresh example, seeded; mixed with a text source they come after its windows."""
    from llmslim.core.data import self_calibration, token_windows
    from llmslim.core.load import load_model
    from llmslim.recover.jobs import RecoverJob, training_windows

    teacher = load_model(str(tiny_llama_dir), device="cpu", dtype="float32")
    job = RecoverJob(model=str(pruned_dir), teacher=str(tiny_llama_dir), data="self", max_steps=3, batch_size=2, seqlen=16)
    windows = training_windows(teacher.tokenizer, teacher.model, job)
    assert windows.shape == (6, 16)
    assert torch.equal(windows, self_calibration(teacher.model, teacher.tokenizer, 6, 16, job.seed))
    assert not torch.equal(windows, training_windows(teacher.tokenizer, teacher.model, RecoverJob(**{**vars(job), "seed": 1})))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(" ".join(f"w{(i * 7) % 40}" for i in range(400)))
    mixed = training_windows(teacher.tokenizer, teacher.model, RecoverJob(**{**vars(job), "data": f"{corpus},self"}))
    text = token_windows(teacher.tokenizer, corpus.read_text(), 16)
    assert torch.equal(mixed, torch.cat([text, windows]))

    res = CliRunner().invoke(app, ["recover", str(pruned_dir), "--teacher", str(tiny_llama_dir), "--kd", "1", "--data", "self",
                                   "--seqlen", "16", "--max-steps", "3", "--batch-size", "2", "--device", "cpu", "--json",
                                   "--out", str(tmp_path / "recovered")])
    assert res.exit_code == 0, res.output
    result = json.loads(res.stdout)
    assert result["data"] == "self" and result["tokens"] == 3 * 2 * 16 and result["loss_parts"]["first"]["kl"] > 1e-6
    assert "sampling the teacher (--data self): 6/6 done" in res.stderr


def test_recover_self_data_needs_a_teacher(monkeypatch, pruned_dir, tmp_path):
    from llmslim.core import load

    monkeypatch.setattr(load, "load_model", lambda *a, **k: (_ for _ in ()).throw(AssertionError("loaded before validation")))
    res = CliRunner().invoke(app, ["recover", str(pruned_dir), "--kd", "0", "--data", "self", "--out", str(tmp_path / "x")])
    assert res.exit_code != 0 and "--data self samples the --teacher" in str(res.exception)


def test_prune_recovers_on_the_dense_models_samples(tmp_path, tiny_llama_dir, data_dir):
    """prune's --recover-data/--recover-kd/--recover-batch-size reach the recovery (the flap-recover
    preset's recipe)."""
    common = ["prune", str(tiny_llama_dir), "--method", "magnitude", "--ratio", "0.5", "--calib", "self", "--nsamples", "2",
              "--seqlen", "8", "--device", "cpu", "--json"]
    res = CliRunner().invoke(app, [*common, "--recover-steps", "2", "--recover-full", "--recover-data", "self", "--recover-kd", "1",
                                   "--recover-batch-size", "3", "--out", str(tmp_path / "recovered")])
    assert res.exit_code == 0, res.output
    recovery = json.loads(res.stdout)["recover"]
    assert (recovery["data"], recovery["kd"], recovery["tokens"]) == ("self", 1.0, 2 * 3 * 256)
    assert "sampling the dense model (--recover-data self): 6/6 done" in res.stderr


def test_prune_recover_options_need_recover_steps(monkeypatch, tiny_llama_dir, tmp_path):
    from llmslim.core import load

    monkeypatch.setattr(load, "load_model", lambda *a, **k: (_ for _ in ()).throw(AssertionError("loaded before validation")))
    for option in (["--recover-data", "self"], ["--recover-kd", "1"], ["--recover-batch-size", "8"], ["--recover-full"]):
        res = CliRunner().invoke(app, ["prune", str(tiny_llama_dir), *option, "--device", "cpu", "--out", str(tmp_path / "x")])
        assert res.exit_code != 0 and f"{option[0]} needs --recover-steps" in str(res.exception), res.output


def test_recover_on_self_samples_without_distillation(tmp_path, tiny_llama_dir, pruned_dir, data_dir):
    """--kd 0 --data self: the teacher only supplies the samples (next-token loss on them, no KL
    term), and the memory plan still counts it (it is loaded while sampling)."""
    from llmslim.recover.jobs import RecoverJob, memory_plan

    res = CliRunner().invoke(app, ["recover", str(pruned_dir), "--teacher", str(tiny_llama_dir), "--kd", "0", "--data", "self",
                                   "--seqlen", "16", "--max-steps", "2", "--batch-size", "2", "--device", "cpu", "--json",
                                   "--out", str(tmp_path / "recovered")])
    assert res.exit_code == 0, res.output
    result = json.loads(res.stdout)
    assert result["kd"] == 0 and "kl" not in result["loss_parts"]["first"] and result["tokens"] == 2 * 2 * 16
    job = RecoverJob(model=str(pruned_dir), teacher=str(tiny_llama_dir), kd=0, data="self", device="cpu")
    assert "teacher" in memory_plan(job)[0].parts
    assert "teacher" not in memory_plan(RecoverJob(**{**vars(job), "data": "wikitext2"}))[0].parts
