"""Eval fixtures: a tiny random llama with a byte-level BPE tokenizer (so real text gets distinct
tokens, unlike the word-level fixture in tests/conftest.py) and a small data dir laid out like
../shared/data, in the same local schemas, for hermetic tests of every shipped task."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

WORDS = (
    "the cat sat on a mat and a dog ran to the park while birds sang in tall green trees "
    "water boils when heated energy comes from the sun plants make food people use tools "
    "question answer yes no true false which of the following is best why how what"
).split()


def _sentence(i: int, n: int = 8) -> str:
    return " ".join(WORDS[(i * 7 + k * 3) % len(WORDS)] for k in range(n))


def write_fake_data(root: Path, n: int = 6) -> Path:
    """A few documents per task, in the schemas of ../shared/data (see its README)."""
    def jsonl(rel: str, rows: list[dict]) -> None:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))

    for part in ("Easy", "Challenge"):
        for split in ("Test", "Dev"):
            jsonl(f"arc/ARC-{part}-{split}.jsonl", [
                {"id": f"q{i}", "question": {"stem": _sentence(i) + "?", "choices": [
                    {"text": _sentence(i + k, 3), "label": lab} for k, lab in enumerate("ABCD"[: 3 + i % 2])]},
                 "answerKey": "ABCD"[i % 3]} for i in range(n)])
    jsonl("piqa/valid.jsonl", [{"goal": _sentence(i), "sol1": _sentence(i + 1, 5), "sol2": _sentence(i + 2, 5)} for i in range(n)])
    (root / "piqa" / "valid-labels.lst").write_text("".join(f"{i % 2}\n" for i in range(n)))
    jsonl("winogrande/dev_reconstructed.jsonl", [
        {"sentence": f"{_sentence(i, 4)} _ {_sentence(i + 3, 4)}.", "option1": WORDS[i], "option2": WORDS[i + 5],
         "answer": "12"[i % 2]} for i in range(n)])
    jsonl("hellaswag/hellaswag_val_full_preprocessed.jsonl", [
        {"ctx": f"Topic {i}: {_sentence(i)}.", "label": i % 4, "endings": [_sentence(i + k, 4) + "." for k in range(4)]}
        for i in range(n)])
    jsonl("boolq/val.jsonl", [
        {"question": _sentence(i, 5), "passage": _sentence(i + 1, 20), "idx": i, "label": ["true", "false"][i % 2]}
        for i in range(n)])
    jsonl("lambada/lambada_test.jsonl", [{"text": _sentence(i, 12)} for i in range(n)])
    header = "question,choice0,choice1,choice2,choice3,answer\n"
    from llmslim.eval.local_data import MMLU_SUBJECTS

    for split in ("test", "dev"):
        folder = root / "mmlu" / split
        folder.mkdir(parents=True, exist_ok=True)
        for s, subject in enumerate(MMLU_SUBJECTS):
            rows = [f'"{_sentence(s + i)}, really?",None,{WORDS[i]},"{WORDS[i + 1]}, {WORDS[i + 2]}",1.50,{(s + i) % 4}\n'
                    for i in range(2)]
            (folder / f"{subject}_{split}.csv").write_text(header + "".join(rows))
    (root / "wikitext2").mkdir(exist_ok=True)
    (root / "wikitext2" / "wiki.test.raw").write_bytes(
        "".join(f" = {_sentence(i, 3)} = \r\n {_sentence(i, 30)} \r\n" for i in range(40)).encode())
    jsonl("mt_bench/question.jsonl", [
        {"question_id": i, "category": "writing", "turns": [_sentence(i, 6), _sentence(i + 1, 6)]} for i in range(4)])
    return root


@pytest.fixture(scope="session")
def fake_data(tmp_path_factory) -> Path:
    return write_fake_data(tmp_path_factory.mktemp("data"))


@pytest.fixture
def eval_cache(tmp_path, monkeypatch) -> Path:
    """Renders and conversions go to a fresh cache dir, not the user's."""
    monkeypatch.setenv("LLMSLIM_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="session")
def bpe_llama_dir(tmp_path_factory, fake_data) -> Path:
    """A tiny random llama saved with a byte-level BPE tokenizer trained on the fake data."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    texts = [p.read_text(errors="ignore") for p in sorted(fake_data.rglob("*")) if p.is_file()]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    eos = fast.eos_token_id
    config = LlamaConfig(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=len(fast), max_position_embeddings=128,
                         bos_token_id=eos, eos_token_id=eos, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    folder = tmp_path_factory.mktemp("bpe-llama")
    model.save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def bpe_llama(bpe_llama_dir):
    """The saved tiny llama loaded in memory the way llmslim loads any folder."""
    from llmslim.core.load import load_model

    return load_model(str(bpe_llama_dir), device="cpu", dtype="float32")


@pytest.fixture(autouse=True)
def one_thread_for_tiny_models(request):
    """Tiny models run ~100x faster on one thread than on two busy, shared cores (OpenMP waits
    dominate); integration tests on the real model keep torch's default."""
    if request.node.get_closest_marker("integration"):
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
