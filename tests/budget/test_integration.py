"""SmolLM2-135M-Instruct on two real GSM8K questions (TALE-EP), counted in both tokenizers."""

import json

import pytest
from typer.testing import CliRunner

from llmslim.cli import app


@pytest.mark.integration
def test_tale_ep_on_smollm2_gsm8k(smollm2, data_dir, tmp_path):
    from llmslim.budget.counting import gpt4_encoding

    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["budget", "run", "smollm2-135m", "--data", str(data_dir / "gsm8k" / "test.jsonl"),
                                   "--limit", "2", "--modes", "tale-ep", "--max-new-tokens", "24", "--estimate-max-tokens", "24",
                                   "--device", "cpu", "--dtype", "float32", "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)["modes"][0]
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [r["gold"] for r in log] == ["18", "3"]  # parsed from '#### N'
    for r in log:
        assert r["budget"] >= 1 and f"use less than {r['budget']} tokens:\n" in r["prompt"]
        assert r["prompt"].startswith("Q: Janet") or r["prompt"].startswith("Q: A robe")
        assert 1 <= r["out_tokens"] <= 24 and r["estimate_out_tokens"] >= 1
        if gpt4_encoding()[0] is not None:
            assert r["gpt4_tokens"] >= 1
        else:
            assert r["gpt4_tokens"] is None
    assert summary["n"] == 2 and summary["in_tokens_total"] > 100
