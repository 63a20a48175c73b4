"""`llmslim sparsity collect | train | eval`: bad input is one stderr line and exit 1; a tiny
model goes through all three steps and writes its files atomically."""

import json

import pytest
import torch

from llmslim.cli import main


def run(capsys, *argv):
    code = 0
    try:
        main(["sparsity", *argv])
    except SystemExit as done:
        code = done.code
    out = capsys.readouterr()
    return code, out.out, out.err


def one_line_error(result, needle):
    code, _, err = result
    assert code == 1
    assert "Traceback" not in err
    lines = [l for l in err.strip().splitlines() if l.strip()]
    assert any(needle in l for l in lines), err


@pytest.mark.parametrize("argv,needle", [
    (["collect", "smollm2-135m", "--criteria", "plainac", "--out", "x"], "did you mean plainact"),
    (["collect", "smollm2-135m"], "collect needs --out"),
    (["train", "no/such/traces"], "no traces at"),
    (["eval", "smollm2-135m", "--ffn-sparsity", "0.5,1.5", "-p", "x"], "must be in [0, 1)"),
    (["eval", "smollm2-135m"], "eval needs --predictors"),
    (["eval", "smollm2-135m", "--methods", "shadoww", "-p", "x"], "unknown method 'shadoww'"),
    (["eval", "smollm2-135m", "--tasks", "mmlu", "-p", "x"], "unknown task 'mmlu'"),
    (["train", "no/such/traces", "--head", "lowrank:0"], "unknown output head"),
])
def test_bad_input_is_one_line(capsys, argv, needle):
    one_line_error(run(capsys, *argv), needle)


def test_collect_train_eval_on_a_tiny_model(capsys, monkeypatch, tmp_path, tiny_llama_dir, data_dir):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(" ".join(f"w{(i * 7) % 120}" for i in range(3000)))
    traces = tmp_path / "traces"
    code, out, err = run(capsys, "collect", str(tiny_llama_dir), "--data", f"{corpus},arc_easy", "--limit", "12", "--seqlen", "16",
                         "--criteria", "plainact,l2norm,fisher", "--out", str(traces), "--json")
    assert code == 0, err
    got = json.loads(out)
    assert got["examples"] == 24 and (traces / "traces.pt").is_file() and (traces / "run.json").is_file()
    assert got["importance"] == "continuation"  # the default: the loss on the answer / the second half
    from llmslim.sparsity.collect import Traces

    # recorded with the traces, read from the examples (the oracle at eval scores the same loss)
    assert Traces.load(traces / "traces.pt").meta["importance"] == "continuation"
    # no overwrite without --force
    one_line_error(run(capsys, "collect", str(tiny_llama_dir), "--data", str(corpus), "--out", str(traces)), "already exists")
    one_line_error(run(capsys, "train", str(traces), "--criterion", "snip"), "no 'snip' scores")

    pred = tmp_path / "pred"
    code, out, err = run(capsys, "train", str(traces), "--epochs", "3", "--feature", "pre", "--out", str(pred), "--json")
    assert code == 0, err
    metrics = json.loads(out)["metrics"]
    assert set(metrics) == {"neurons", "heads"} and set(metrics["neurons"]) == {"static", "shadow", "dejavu"}
    shadow = metrics["neurons"]["shadow"]
    assert shadow["spearman"] == pytest.approx(sum(shadow["spearman_per_layer"]) / len(shadow["spearman_per_layer"]))
    assert json.loads((pred / "results.json").read_text())["metrics"] == metrics  # what was printed is what was written

    res = tmp_path / "eval"
    code, out, err = run(capsys, "eval", str(tiny_llama_dir), "-p", str(pred), "--ffn-sparsity", "0.5", "--head-sparsity", "0.5",
                         "--tasks", "arc_easy", "--limit", "2", "--ppl-limit", "1", "--ppl-prompt-len", "8", "--decide", "prompt,token",
                         "--out", str(res), "--json")
    assert code == 0, err
    rows = json.loads(out)["rows"]
    assert [(r["method"], r["decide"]) for r in rows] == [("dense", "prompt"), ("static", "prompt"), ("shadow", "prompt"),
                                                          ("shadow", "token"), ("dejavu", "prompt"), ("dejavu", "token"),
                                                          ("oracle", "prompt")]
    assert all(r["ppl"] > 1 for r in rows)
    # the masks were applied in the perplexity windows: no sparse row scores like dense
    assert all(r["ppl"] != pytest.approx(rows[0]["ppl"], rel=1e-4) for r in rows[1:]), [r["ppl"] for r in rows]
    assert (res / "sparsity.png").stat().st_size > 0 and (res / "results.json").is_file()
    # what was skipped, per input: 1 perplexity window + 2 items for each of the 4 sparse rows
    skips = [json.loads(line) for line in (res / "skips.jsonl").read_text().splitlines()]
    assert len([r for r in skips if r["decide"] == "prompt"]) == 4 * 3 and all(len(r["neurons_ran"]) == 2 for r in skips)
    token = [r for r in skips if r["decide"] == "token" and r["method"] == "shadow"]
    assert len(token) > 3  # with token decisions every later token of an input is a decision too
    static = [r for r in skips if r["method"] == "static"]
    assert all(r["neurons_ran"] == [48, 48] for r in static) and rows[1]["neurons_skipped"] == pytest.approx(0.5)
    assert static[0]["tokens"] == 15  # the perplexity window: 2 x 8 tokens, less the last (it predicts nothing scored)

    # the sparse model used: a greedy answer, and dense vs sparse timed in one run
    code, out, err = run(capsys, "generate", str(tiny_llama_dir), "-p", str(pred), "--prompt", "w1 w2 w3", "--max-new-tokens", "4",
                         "--decide", "token", "--json")
    assert code == 0, err
    gen = json.loads(out)
    assert isinstance(gen["text"], str) and gen["new_tokens"] <= 4 and gen["neurons_skipped"] == pytest.approx(0.5)
    code, out, err = run(capsys, "bench", str(tiny_llama_dir), "-p", str(pred), "--prompt-len", "8", "--new-tokens", "3",
                         "--repeats", "1", "--json")
    assert code == 0, err
    bench = json.loads(out)
    variants = bench["variants"]
    from llmslim.core.data import data_dir

    assert bench["prompt"] == ("WikiText-2" if (data_dir() / "wikitext2" / "wiki.test.raw").is_file() else "random tokens")
    assert list(variants) == ["dense", "shadow (prompt)", "shadow (token)"]
    assert variants["dense"]["decode_speedup"] == 1.0 and variants["shadow (token)"]["gather_s"] > 0
    assert set(variants["shadow (prompt)"]["decode_split_ms"]) == {"attention", "ffn", "lm_head", "other"}

    # the same shape with other weights: its units rank differently, so the predictors are refused
    import shutil

    from transformers import AutoModelForCausalLM

    other = tmp_path / "other"
    shutil.copytree(tiny_llama_dir, other)
    changed = AutoModelForCausalLM.from_pretrained(other)
    with torch.no_grad():
        changed.model.layers[0].mlp.down_proj.weight.mul_(1.5)
    changed.save_pretrained(other)
    one_line_error(run(capsys, "eval", str(other), "-p", str(pred), "--ffn-sparsity", "0.5", "--tasks", "", "--ppl-limit", "1",
                       "--ppl-prompt-len", "8"), "trained on another model's traces")
    one_line_error(run(capsys, "generate", str(other), "-p", str(pred), "--prompt", "w1"), "trained on another model's traces")

    # a head sparsity that skips no kv group is refused from the predictors' record, before any model loads
    import llmslim.core.load as loading

    def no_load(*a, **k):
        raise AssertionError("the model was loaded before the options were checked")

    monkeypatch.setattr(loading, "load_model", no_load)
    one_line_error(run(capsys, "eval", str(tiny_llama_dir), "-p", str(pred), "--head-sparsity", "0.1", "--tasks", "", "--ppl-limit", "1"),
                   "skips none of this model's")
    one_line_error(run(capsys, "generate", str(tiny_llama_dir), "-p", str(pred), "--head-sparsity", "0.1", "--prompt", "w1"),
                   "skips none of this model's")


@pytest.mark.integration
def test_smollm2_shadow_gathered_equals_masked(smollm2, data_dir):
    """On the real model: traces, a predictor, and one prompt run gathered vs masked."""
    import torch

    from llmslim.sparsity import predictor as P
    from llmslim.sparsity.collect import collect
    from llmslim.sparsity.execute import SparseRunner, SparsityConfig, masked
    from llmslim.sparsity.jobs import collect_examples

    model, tok = smollm2.model, smollm2.tokenizer
    examples = collect_examples(tok, ["wikitext2"], 6, 24, seed=0, root=data_dir)
    traces = collect(model, examples, ["l2norm"], batch_size=6)
    assert traces.neurons["l2norm"].shape == (6, 30, 1536) and traces.heads["l2norm"].shape == (6, 30, 9)
    trained = P.train(traces, "l2norm", P.TrainConfig(epochs=2, holdout=0.34))
    runner = SparseRunner(model, SparsityConfig("shadow", ffn_sparsity=0.5, head_sparsity=0.34), shadow=trained["shadow"])
    ids = tok("The capital of France is a city that", return_tensors="pt").input_ids
    with torch.no_grad():
        with runner.input(decide_at=-1):
            got = model(ids).logits
        keep = runner.last_keep
        assert keep["neurons"][5].numel() == 768 and keep["groups"][0] is None and keep["groups"][5].numel() == 2
        with masked(model, keep["neurons"], keep["groups"]):
            ref = model(ids).logits
    assert torch.allclose(got, ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("task", ["piqa", "hellaswag", "arc_easy"])
def test_trace_and_eval_items_never_overlap(data_dir, task):
    from llmslim.sparsity.tasks import load_items

    evaluated = {(i.context, tuple(i.choices)) for i in load_items(task, data_dir, "eval")}  # --limit default: all
    traced = {(i.context, tuple(i.choices)) for i in load_items(task, data_dir, "train")}
    assert evaluated and traced and not evaluated & traced


def test_hellaswag_items_are_the_text_lm_eval_scores(data_dir):
    """Traces and sparse scoring must see the query and endings the eval YAML builds
    (its process_docs cleans WikiHow artefacts in 14 of the shared file's rows)."""
    from datasets import Dataset

    from llmslim.core.data import read_records
    from llmslim.eval.tasks.hellaswag_utils import process_docs
    from llmslim.sparsity.tasks import load_items

    rows = read_records(data_dir / "hellaswag" / "hellaswag_val_full_preprocessed.jsonl")
    docs = process_docs(Dataset.from_list(rows[: len(rows) // 2]))
    items = load_items("hellaswag", data_dir, "eval")
    assert [(i.context, [c[1:] for c in i.choices]) for i in items] == [(d["query"], d["choices"]) for d in docs]
