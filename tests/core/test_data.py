import json

import pytest
import torch

from llmslim.core import data
from llmslim.core.errors import DataError


def test_readers_all_formats(tmp_path):
    rows = [{"prompt": "a", "n": 1}, {"prompt": "b", "n": 2}]
    (tmp_path / "x.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (tmp_path / "x.json").write_text(json.dumps(rows))
    (tmp_path / "x.csv").write_text("prompt,n\na,1\nb,2\n")
    (tmp_path / "x.txt").write_text("a\r\nb\r\n")
    import pandas as pd

    pd.DataFrame(rows).to_parquet(tmp_path / "x.parquet")
    for name in ("x.jsonl", "x.json", "x.csv", "x.parquet", "x.txt"):
        assert data.read_prompts(tmp_path / name, field=None if name != "x.txt" else "text") == ["a", "b"]


def test_malformed_jsonl_names_the_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a"}\n{"prompt": \n')
    with pytest.raises(DataError, match="bad.jsonl:2: not valid JSON"):
        data.read_records(bad)


def test_missing_and_unknown_format(tmp_path):
    with pytest.raises(DataError, match="not found"):
        data.read_records(tmp_path / "nope.jsonl")
    (tmp_path / "x.xml").write_text("<a/>")
    with pytest.raises(DataError, match="unknown data format"):
        data.read_records(tmp_path / "x.xml")


def test_prompt_fields_alpaca_and_mt_bench(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps([{"instruction": "Do", "input": "this", "output": "x"}]))
    (tmp_path / "m.jsonl").write_text(json.dumps({"question_id": 1, "turns": ["first", "second"]}) + "\n")
    assert data.read_prompts(tmp_path / "a.json") == ["Do\n\nthis"]
    assert data.read_prompts(tmp_path / "m.jsonl") == ["first"]


class CharTokenizer:
    def __call__(self, text, return_tensors=None, add_special_tokens=False):
        class Out:
            input_ids = torch.tensor([[ord(c) % 256 for c in text]])

        return Out()


def test_calibration_windows_seeded_and_shaped():
    text = "".join(chr(97 + i % 26) for i in range(5000))
    a = data.calibration_windows(CharTokenizer(), text, 8, 64, seed=3)
    b = data.calibration_windows(CharTokenizer(), text, 8, 64, seed=3)
    c = data.calibration_windows(CharTokenizer(), text, 8, 64, seed=4)
    assert a.shape == (8, 64) and torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(DataError, match="fewer than one window"):
        data.calibration_windows(CharTokenizer(), text[:50], 1, 64, seed=0)


def test_shared_benchmark_readers(data_dir):
    text = data.wikitext2_test(data_dir)
    assert "\r\n" not in text and len(text) > 1_000_000
    assert len(data.mt_bench_first_turns(data_dir)) == 80
    assert len(data.alpaca_prompts(data_dir)) == 200


def test_read_torch_file_gives_one_line_errors(tmp_path):
    import torch

    from llmslim.core.data import read_torch_file

    with pytest.raises(DataError, match="^nothing here$"):
        read_torch_file(tmp_path / "missing.pt", missing="nothing here", unreadable="bad")
    (tmp_path / "junk.pt").write_text("not a torch file")
    with pytest.raises(DataError, match=r"^junk is not ours \(\w+\)$"):
        read_torch_file(tmp_path / "junk.pt", missing="nothing here", unreadable="junk is not ours")
    torch.save({"a": torch.ones(2)}, tmp_path / "ok.pt")
    assert torch.equal(read_torch_file(tmp_path / "ok.pt", missing="", unreadable="")["a"], torch.ones(2))
