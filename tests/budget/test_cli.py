"""`llmslim budget run|search|estimate|elasticity` end to end on a tiny random model."""

import json

import pytest
from typer.testing import CliRunner

from llmslim.cli import app
from llmslim.budget.questions import load_questions
from llmslim.core.errors import DataError


@pytest.fixture
def gsm(tmp_path):
    f = tmp_path / "q.jsonl"
    rows = [{"question": f"w{i} w{i + 1} w{i + 2} ?", "answer": f"w1 w2\n#### {i}"} for i in range(3)]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return f


def invoke(*args):
    res = CliRunner().invoke(app, ["budget", *map(str, args)])
    return res


def common(tiny, gsm):
    return [tiny, "--data", gsm, "--device", "cpu", "--dtype", "float32", "--batch-size", "2", "--quiet"]


def test_run_modes_log_and_atomic_output(tiny_llama_dir, gsm, tmp_path):
    out = tmp_path / "run"
    res = invoke("run", *common(tiny_llama_dir, gsm), "--modes", "vanilla,direct,tale-ep,budget:5", "--max-new-tokens", "6",
                 "--estimate-max-tokens", "3", "--default-budget", "40", "--out", out, "--json", "--price-out", "1.0")
    assert res.exit_code == 0, res.output
    result = json.loads(res.stdout)
    modes = {m["mode"]: m for m in result["modes"]}
    assert list(modes) == ["vanilla", "direct", "tale-ep", "budget:5"]
    assert all(m["n"] == 3 and 0 < m["mean_out_tokens"] <= 6 for m in modes.values())
    assert modes["tale-ep"]["budget_default"] == 40 and modes["tale-ep"]["mean_budget"] == 40  # random model: no [[N]]
    # so the tale-ep row is the default budget in disguise: said in the row and in one warning
    assert modes["tale-ep"]["budget_parse_rate"] == 0 and "default budget 40" in modes["tale-ep"]["warning"]
    assert result["warnings"] == [modes["tale-ep"]["warning"]] and "warning" not in modes["vanilla"]
    tale = [r for r in (json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()) if r["mode"] == "tale-ep"]
    assert all(r["estimate_out_tokens"] >= 1 for r in tale)  # estimator tokens counted, once each
    assert modes["tale-ep"]["out_tokens_total"] == sum(r["out_tokens"] + r["estimate_out_tokens"] for r in tale)
    assert modes["budget:5"]["cost_usd"] == pytest.approx(modes["budget:5"]["out_tokens_total"] / 1e6)
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert len(log) == 12 and {r["mode"] for r in log} == set(modes)
    b5 = [r for r in log if r["mode"] == "budget:5"][0]
    assert "use less than 5 tokens:\n" in b5["prompt"] and b5["gold"] == "0"
    assert (out / "run.json").is_file() and json.loads((out / "run.json").read_text())["command"] == "budget run"
    # refuses to overwrite without --force, before loading anything
    res = invoke("run", *common(tiny_llama_dir, gsm), "--modes", "vanilla", "--out", out)
    assert res.exit_code != 0 and "already exists" in str(res.exception)
    res = invoke("run", *common(tiny_llama_dir, gsm), "--modes", "vanilla", "--max-new-tokens", "2", "--out", out, "--force")
    assert res.exit_code == 0, res.output
    assert len((out / "log.jsonl").read_text().splitlines()) == 3


def test_search_estimate_elasticity(tiny_llama_dir, gsm, tmp_path):
    res = invoke("search", *common(tiny_llama_dir, gsm), "--max-new-tokens", "4", "--method", "binary", "--out", tmp_path / "s", "--json")
    assert res.exit_code == 0, res.output
    result = json.loads(res.stdout)
    assert result["n"] == 3 and result["method"] == "binary"
    assert result["device"].startswith("cpu (") and result["dtype"] == "float32"  # the local backend says where it ran
    rows = [json.loads(x) for x in (tmp_path / "s" / "search.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all("budget_list" in r and "token_list" in r for r in rows)
    assert [r["id"] for r in result["per_question"]] == ["0", "1", "2"]

    res = invoke("estimate", *common(tiny_llama_dir, gsm), "--estimate-max-tokens", "3", "--default-budget", "21", "--json")
    assert res.exit_code == 0, res.output
    est = json.loads(res.stdout)
    assert [r["budget"] for r in est["budgets"]] == [21, 21, 21] and est["parse_rate"] == 0.0

    res = invoke("elasticity", *common(tiny_llama_dir, gsm), "--budgets", "2,8", "--max-new-tokens", "4", "--out", tmp_path / "e")
    assert res.exit_code == 0, res.output
    assert "token elasticity" in res.stdout
    png = (tmp_path / "e" / "elasticity.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_regression_estimator_from_a_search_file(tiny_llama_dir, gsm, tmp_path):
    search = tmp_path / "search.jsonl"
    search.write_text("".join(json.dumps({"id": str(i), "question": " ".join(["w1"] * n), "budget": 10 * n}) + "\n"
                              for i, n in enumerate([2, 4, 6])))
    res = invoke("estimate", *common(tiny_llama_dir, gsm), "--regression", search, "--json")
    assert res.exit_code == 0, res.output
    est = json.loads(res.stdout)
    assert est["estimator"] == "regression" and est["slope"] == pytest.approx(10.0)
    assert [r["budget"] for r in est["budgets"]] == [40, 40, 40]  # each test question is 4 tokens: "w0 w1 w2 ?"


def test_bad_input_is_one_line_errors(tiny_llama_dir, gsm, tmp_path, capsys):
    from llmslim.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["budget", "run", str(tiny_llama_dir), "--data", str(gsm), "--modes", "budget:0"])
    assert exit_.value.code == 1 and "budget must be >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["budget", "run", str(tiny_llama_dir), "--data", str(tmp_path / "missing.jsonl")])
    assert "data file not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["budget", "run", str(tiny_llama_dir), "--data", str(gsm), "--modes", "searched"])
    assert "--searched" in capsys.readouterr().err


def test_question_formats(tmp_path):
    arc = tmp_path / "arc.jsonl"
    arc.write_text(json.dumps({"id": "x", "question": {"stem": "Which?", "choices": [{"text": "a", "label": "1"}, {"text": "b", "label": "2"}]},
                               "answerKey": "2"}) + "\n")
    q = load_questions(arc)[0]
    assert (q.kind, q.gold, q.question) == ("choice", "B", "Which?\nA. a\nB. b")
    mc = tmp_path / "mc.json"
    mc.write_text(json.dumps([{"question": "Q?", "choices": ["x", "y", "z"], "answer": 2}, {"question": "2+2?", "gold": "4"}]))
    qs = load_questions(mc)
    assert (qs[0].kind, qs[0].gold) == ("choice", "C") and (qs[1].kind, qs[1].gold) == ("number", "4")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "no answer"}) + "\n")
    with pytest.raises(DataError):
        load_questions(bad)


def test_searched_budgets_follow_the_question_text_not_its_position(tiny_llama_dir, gsm, tmp_path):
    """A search file lists questions by text; its ids (positions) may belong to another split or
    --offset. Budgets go to the question with the same text, and a run whose questions the file
    does not hold is refused before the model loads."""
    questions = [json.loads(line)["question"] for line in gsm.read_text().splitlines()]
    search = tmp_path / "search.jsonl"
    rows = [{"id": "0", "question": questions[2], "budget": 7}, {"id": "1", "question": questions[0], "budget": 11},
            {"id": "2", "question": questions[1], "budget": None}]  # other positions; question 1: no budget found
    search.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    res = invoke("run", *common(tiny_llama_dir, gsm), "--modes", "searched", "--searched", search, "--max-new-tokens", "2",
                 "--out", out, "--json")
    assert res.exit_code == 0, res.output
    log = {r["question"]: r["budget"] for r in map(json.loads, (out / "log.jsonl").read_text().splitlines())}
    assert log == {questions[0]: 11, questions[1]: None, questions[2]: 7}
    search.write_text("".join(json.dumps(r) + "\n" for r in rows[:2]))  # question 1 not searched at all
    res = invoke("run", *common(tiny_llama_dir, gsm), "--modes", "searched", "--searched", search, "--device", "tpu")
    assert res.exit_code != 0 and "1 of the 3 questions are not in" in str(res.exception)


def test_a_stopped_run_resumes_without_asking_again(tiny_llama_dir, gsm, tmp_path, monkeypatch):
    """budget run appends each answered question to OUT-checkpoints/log.jsonl as it goes; after a
    failure, --resume asks only the questions that have no row there."""
    from llmslim.budget import run as R

    monkeypatch.setattr(R, "CHUNK", 1)
    real_ask, asked = R.ask, []

    def ask(backend, counter, prompts, max_new_tokens, progress=None):
        if fail["after"] is not None and len(asked) >= fail["after"]:
            raise RuntimeError("the endpoint went away")
        asked.extend(prompts)
        return real_ask(backend, counter, prompts, max_new_tokens, progress)

    fail = {"after": 2}
    monkeypatch.setattr(R, "ask", ask)
    out = tmp_path / "run"
    args = ["run", *common(tiny_llama_dir, gsm), "--modes", "vanilla,direct", "--max-new-tokens", "2", "--out", out]
    res = invoke(*args)
    assert res.exit_code != 0 and not out.exists()
    journal = tmp_path / "run-checkpoints" / "log.jsonl"
    assert len(journal.read_text().splitlines()) == 1 + 2  # a header, then vanilla's questions 0 and 1
    with journal.open("a") as f:
        f.write('{"key": "cut sh')  # a kill in the middle of a write
    fail["after"], asked[:] = None, []
    res = invoke(*args)  # forgetting --resume would throw the answers away: refused
    assert res.exit_code != 0 and "--resume continues it" in str(res.exception)
    res = invoke(*[a if a != "2" else "3" for a in args], "--resume")  # other settings: refused
    assert res.exit_code != 0 and "other settings" in str(res.exception) and not asked
    res = invoke(*args, "--resume", "--json")
    assert res.exit_code == 0, res.output
    result = json.loads(res.stdout)
    assert result["resumed_rows"] == 2 and len(asked) == 4  # vanilla's third question and direct's three
    assert len((out / "log.jsonl").read_text().splitlines()) == 6 and not journal.parent.exists()
    res = invoke("run", *common(tiny_llama_dir, gsm), "--modes", "vanilla", "--resume", "--out", tmp_path / "fresh")
    assert res.exit_code != 0 and "no journal of a stopped run" in str(res.exception)
