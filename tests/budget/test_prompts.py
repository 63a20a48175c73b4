"""TALE's templates, byte for byte as the issue and the reference code spell them."""

import json

import pytest

from llmslim.budget import prompts as P
from llmslim.core.errors import BadOptionError, DataError

Q = "Janet has 3 apples. She buys 2 more. How many apples does she have?"


def test_vanilla_cot_number_matches_tale():
    assert P.cot(Q) == (
        "Q: Janet has 3 apples. She buys 2 more. How many apples does she have?\n"
        "Please Give the response by strictly following this format: [[answer]], for example: Answer: [[50]]."
        "Let's think step by step:\n"
    )


def test_budget_prompt_is_cot_with_budget_clause():
    got = P.budgeted(Q, 50)
    assert got == P.cot(Q).replace("Let's think step by step:\n", "Let's think step by step and use less than 50 tokens:\n")
    assert got.endswith("[[50]].Let's think step by step and use less than 50 tokens:\n")
    assert got.encode("utf-8") == (
        b"Q: " + Q.encode() + b"\nPlease Give the response by strictly following this format: [[answer]], "
        b"for example: Answer: [[50]].Let's think step by step and use less than 50 tokens:\n"
    )


def test_estimator_prompt_matches_tale_ep():
    assert P.estimate(Q) == (
        "Task: Analyze the given question and estimate the minimum number of tokens required to generate a complete "
        "and accurate response. Please Give the response by strictly following this format: [[budget]],for example: "
        "Budget: [[12]].\n\nBelow is the question:\n\nQuestion: \"" + Q + "\"\n"
    )


def test_direct_and_choice_variants():
    assert P.direct(Q) == (
        "Please answer the following question and give the answer directly without any reasoning process. "
        "Please Give the response by strictly following this format: [[answer]], for example: Answer: [[50]].\nQ: " + Q
    )
    mc = "Which is a mammal?\nA. shark\nB. whale"
    assert P.cot(mc, "choice") == mc + (
        "\nPlease Give the response by strictly following this format: [[choice]],for example: Choice: [[A]].\n"
        "Let's think step by step:\n"
    )
    assert P.budgeted(mc, 7, "choice").endswith("Choice: [[A]].\nLet's think step by step and use less than 7 tokens:\n")
    assert P.direct(mc, "choice") == (
        "Please answer the following question directly and give the answer directly without any reasoning process. "
        "Please strictly follow the format: [[choice]],for example: Choice: [[A]].\n" + mc + "\n"
    )


def test_braces_in_question_are_kept_and_budget_is_not_substituted_inside_it():
    q = "What is {x} in {budget}?"
    assert P.budgeted(q, 9).startswith("Q: What is {x} in {budget}?\n")
    assert "use less than 9 tokens" in P.budgeted(q, 9)


def test_budget_must_be_positive():
    with pytest.raises(BadOptionError):
        P.budgeted(Q, 0)
    with pytest.raises(BadOptionError):
        P.cot(Q, "essay")


def test_templates_override_from_file(tmp_path):
    f = tmp_path / "t.json"
    f.write_text(json.dumps({"cot_number": "Solve: {question}\n"}))
    t = P.load_templates(f)
    assert P.cot(Q, t=t) == f"Solve: {Q}\n"
    assert P.estimate(Q, t) == P.estimate(Q)  # the others keep TALE's defaults
    f.write_text(json.dumps({"cot_nmber": "x {question}"}))
    with pytest.raises(DataError, match="unknown template"):
        P.load_templates(f)
    f.write_text(json.dumps({"budget_number": "{question} without a budget"}))
    with pytest.raises(DataError, match="budget"):
        P.load_templates(f)


def test_the_estimator_sees_the_question_as_the_reference_shows_it(monkeypatch):
    """TALE-EP.py fills the estimator's {question} with the answering prompt (for a number
    question, the whole CoT prompt; extract_question only strips choice instructions)."""
    from llmslim.budget import run as R
    from llmslim.budget.questions import Question

    seen = []
    monkeypatch.setattr(R, "ask", lambda backend, counter, prompts, n, progress=None: seen.extend(prompts) or
                        [{"output": "Budget: [[9]]", "in_tokens": 1, "out_tokens": 1}] * len(prompts))
    qs = [Question("0", "How many?", "3", "number"), Question("1", "Which?\nA. x\nB. y", "A", "choice")]
    rows = R.estimate_budgets(None, None, qs, R.Settings())
    assert seen[0] == P.estimate(P.cot("How many?", "number")) and seen[1] == P.estimate("Which?\nA. x\nB. y")
    assert [r["budget"] for r in rows] == [9, 9]
