"""TALE-PT: a tiny model trains a few LoRA steps on searched answers; the saved model reloads."""

import json

import torch

from llmslim.budget.train import TrainConfig, examples_from_search, train
from llmslim.core.save import save_model as save
from llmslim.core.load import load_model


def _search_rows():
    return [
        {"id": "0", "question": "w1 w2 w3", "kind": "number", "searched": True, "improved": True,
         "answer": "w5 w6 [[7]]", "vanilla_output": "w9 w9 w9 w9 w9 w9 w5 w6 [[7]]", "budget": 8},
        {"id": "1", "question": "w4 w5", "kind": "number", "searched": True, "improved": False,
         "answer": "w7 w8 w9", "vanilla_output": "w7 w8 w9", "budget": None},
        {"id": "2", "question": "w6", "kind": "number", "searched": False, "answer": None, "budget": None},
    ]


def test_examples_from_search_use_the_vanilla_prompt_and_searched_answers():
    ex = examples_from_search(_search_rows(), only_improved=False)
    assert len(ex) == 2  # the unsearched (vanilla-wrong) question is dropped
    assert ex[0]["prompt"].startswith("Q: w1 w2 w3\n") and "use less than" not in ex[0]["prompt"]
    assert ex[0]["chosen"] == "w5 w6 [[7]]" and ex[0]["rejected"].startswith("w9")
    assert [e["chosen"] for e in examples_from_search(_search_rows())] == ["w5 w6 [[7]]"]  # TALE-PT: the shorter ones only


def test_tale_pt_refuses_to_self_distil_when_search_found_nothing_shorter():
    import pytest

    from llmslim.core.errors import DataError

    rows = [r | {"improved": False} for r in _search_rows()]
    with pytest.raises(DataError, match="found no answer shorter than vanilla"):
        examples_from_search(rows)
    assert len(examples_from_search(rows, only_improved=False)) == 2


def test_lora_sft_trains_and_reloads(tiny_llama_dir, tmp_path):
    loaded = load_model(str(tiny_llama_dir), device="cpu", dtype="float32")
    before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    ex = examples_from_search(_search_rows(), only_improved=False) * 4
    cfg = TrainConfig(max_steps=6, batch_size=4, lr=5e-3, seed=0)
    peft_model, info = train(loaded.model, loaded.tokenizer, ex, cfg, tmp_path)
    assert info["steps"] == 6 and all(torch.isfinite(torch.tensor(info["losses"])))
    assert info["losses"][-1] < info["losses"][0]  # memorising 2 answers: the loss must fall
    save(peft_model, loaded.tokenizer, tmp_path / "pt")
    assert (tmp_path / "pt" / "adapter" / "adapter_config.json").is_file()
    again = load_model(str(tmp_path / "pt"), device="cpu", dtype="float32")
    after = again.model.state_dict()
    assert set(after) == set(before)  # merged: plain weights, no lora_ keys
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed and all("proj" in k for k in changed)


def test_cli_train_end_to_end(tiny_llama_dir, tmp_path):
    from typer.testing import CliRunner

    from llmslim.cli import app

    search = tmp_path / "search.jsonl"
    search.write_text("".join(json.dumps(r) + "\n" for r in _search_rows()))
    out = tmp_path / "model"
    res = CliRunner().invoke(app, ["budget", "train", str(tiny_llama_dir), "--search", str(search), "--max-steps", "2",
                                   "--batch-size", "2", "--out", str(out), "--json", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    result = json.loads(res.stdout)
    assert result["steps"] == 2 and result["examples"] == 1  # the improved question only (TALE-PT's default)
    assert (out / "run.json").is_file() and (out / "config.json").is_file()
    res = CliRunner().invoke(app, ["budget", "train", str(tiny_llama_dir), "--search", str(search), "--max-steps", "1", "--out", str(out)])
    assert res.exit_code != 0 and "already exists" in str(res.exception)


def test_dpo_through_trl(tiny_llama_dir, tmp_path):
    loaded = load_model(str(tiny_llama_dir), device="cpu", dtype="float32")
    ex = examples_from_search(_search_rows()) * 2
    cfg = TrainConfig(algo="dpo", max_steps=2, batch_size=2, lr=1e-3, seed=0, max_length=64)
    model, info = train(loaded.model, loaded.tokenizer, ex, cfg, tmp_path / "work")
    assert info["pairs"] == 2  # only the improved question has a different (rejected) vanilla answer
    assert info["steps"] == 2 and info["losses"] and all(l == l for l in info["losses"])
    save(model, loaded.tokenizer, tmp_path / "dpo")
    # the saved folder is the trained model, merged: same logits as in memory, not the base's
    saved = load_model(str(tmp_path / "dpo"), device="cpu", dtype="float32").model
    base = load_model(str(tiny_llama_dir), device="cpu", dtype="float32").model
    ids = loaded.tokenizer("Answer: [[18]]", return_tensors="pt").input_ids
    with torch.no_grad():
        trained_logits = (model.merge_and_unload() if hasattr(model, "merge_and_unload") else model)(ids).logits
        assert torch.allclose(saved(ids).logits, trained_logits, atol=1e-4)
        assert not torch.allclose(saved(ids).logits, base(ids).logits, atol=1e-4)


def test_gold_targets_are_tale_format():
    from llmslim.budget.parse import is_correct
    from llmslim.budget.train import examples_from_gold, gold_target

    sol = "Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.\nShe makes 9 * 2 = $<<9*2=18>>18 every day.\n#### 18"
    assert gold_target(sol) == "Janet sells 16 - 3 - 4 = 9 duck eggs a day.\nShe makes 9 * 2 = $18 every day.\nAnswer: [[18]]"
    ex = examples_from_gold([{"question": " Q? ", "answer": sol}, {"question": "no gold", "answer": "7"}])
    assert len(ex) == 1 and ex[0]["prompt"].startswith("Q: Q?\nPlease Give") and is_correct(ex[0]["chosen"], "18")[0]
