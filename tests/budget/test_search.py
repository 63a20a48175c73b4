"""Halving (reference code) and binary search (paper) on a deterministic scripted model."""

import pytest

from llmslim.budget.search import Attempt, search


def scripted(threshold, overhead=5, floor_cost=None):
    """A model that answers correctly iff budget >= threshold[i] and then spends
    min(budget, ...) + overhead tokens; under-budgeted answers are wrong and long (elasticity)."""
    calls = []

    def ask(pending):
        calls.append(list(pending))
        out = []
        for i, b in pending:
            if b >= threshold[i]:
                out.append(Attempt(True, b // 2 + overhead, f"q{i} ok at {b}"))
            else:
                out.append(Attempt(False, floor_cost or 300, f"q{i} wrong at {b}"))
        return out

    return ask, calls


def test_halving_follows_the_reference_loop():
    vanilla = [Attempt(True, 200, "v0"), Attempt(False, 180, "v1"), Attempt(True, 100, "v2")]
    ask, calls = scripted([30, 1, 60])
    rows = search(vanilla, ask, "halving", max_steps=10)
    # q0: 200 -> 100 (55 tok) -> 50 (30) -> 25 fails (< 30): budget 50
    assert rows[0]["budget"] == 50 and rows[0]["tokens"] == 30
    assert rows[0]["budget_list"] == [200, 100, 50]
    assert rows[0]["tried"] == [100, 50, 25]
    assert rows[0]["token_list"] == [55, 30, 300]
    assert rows[0]["answer"] == "q0 ok at 50"
    # q1 vanilla wrong: skipped, as the reference
    assert rows[1]["searched"] is False and rows[1]["budget"] is None and rows[1]["tried"] == []
    # q2: 100 -> 50 fails at once: no shorter answer, the vanilla one is kept
    assert rows[2]["budget"] is None and rows[2]["improved"] is False and rows[2]["answer"] == "v2"
    assert rows[2]["token_list"] == [300]
    # lock step: round 1 asks q0 and q2 together, then only q0
    assert calls[0] == [(0, 100), (2, 50)] and calls[1] == [(0, 50)]


def test_halving_stops_when_tokens_do_not_drop():
    vanilla = [Attempt(True, 64, "v")]

    def ask(pending):  # always correct, but the cost stops shrinking below 40 tokens
        return [Attempt(True, max(40, b), "a") for _, b in pending]

    rows = search(vanilla, ask, "halving")
    assert rows[0]["tried"] == [32, 16] and rows[0]["budget"] == 32 and rows[0]["tokens"] == 40


def test_binary_search_finds_the_smallest_feasible_budget():
    vanilla = [Attempt(True, 200, "v0"), Attempt(True, 100, "v1")]
    ask, _ = scripted([37, 60], overhead=0)
    rows = search(vanilla, ask, "binary", max_steps=20)
    assert rows[0]["budget"] == 37  # halving would stop at 50
    assert rows[1]["budget"] == 60
    for r in rows:
        assert r["tried"][0] == (1 + r["vanilla_tokens"] - 1) // 2
        assert len(r["tried"]) == len(r["token_list"])
        assert r["budget_list"][0] == r["vanilla_tokens"]
        assert r["budget_list"] == sorted(r["budget_list"], reverse=True)  # accepted budgets only go down
    halving = search(vanilla, scripted([37, 60], overhead=0)[0], "halving")
    assert halving[0]["budget"] == 50 and halving[1]["budget"] is None


def test_binary_feasibility_requires_fewer_tokens():
    vanilla = [Attempt(True, 100, "v")]

    def ask(pending):  # correct everywhere but never cheaper than 100 tokens: nothing is feasible
        return [Attempt(True, 120, "long") for _ in pending]

    rows = search(vanilla, ask, "binary", max_steps=50)
    assert rows[0]["budget"] is None and rows[0]["answer"] == "v"
    assert rows[0]["tried"][-1] == 99  # every probe infeasible: lo climbs to the top


def test_max_steps_and_bad_method():
    vanilla = [Attempt(True, 1000, "v")]
    ask, _ = scripted([1], overhead=0)
    assert len(search(vanilla, ask, "binary", max_steps=3)[0]["tried"]) == 3
    with pytest.raises(ValueError):
        search(vanilla, ask, "ternary")


def test_search_budgets_wires_the_backend_to_the_search():
    """run.search_budgets end to end on a scripted backend: vanilla CoT answers first, then budgeted
    prompts only for the questions answered correctly, each question's own budgets and answers
    kept (a bug that mixed up questions, or searched a wrong one, changes these rows)."""
    import re

    from llmslim.budget.backends import Completion
    from llmslim.budget.counting import Counter
    from llmslim.budget.questions import Question
    from llmslim.budget.run import Settings, search_budgets

    threshold = {"7": 20, "8": 1}  # "9" is answered wrong even without a budget: never searched

    class Scripted:
        name = "scripted"

        def __init__(self):
            self.budgets = []  # (question, budget) of every budgeted prompt

        def complete(self, prompts, max_new_tokens, progress=None):
            out = []
            for p in prompts:
                q = re.search(r"what is (\d+)\?", p).group(1)
                m = re.search(r"use less than (\d+) tokens", p)
                budget = int(m.group(1)) if m else None
                if budget is not None:
                    self.budgets.append((q, budget))
                ok = q in threshold and (budget is None or budget >= threshold[q])
                out.append(Completion(f"The answer is {q if ok else 0}.", 64 if budget is None else budget // 2 + 3, True))
            return out

    backend = Scripted()
    questions = [Question(i, f"what is {i}?", i, "number") for i in ("7", "8", "9")]
    summary, rows = search_budgets(backend, Counter(None, gpt4=False), questions, Settings(), method="halving", max_steps=3)
    # q7: 64 -> 32 (19 tokens) -> 16 fails (< 20): budget 32
    assert (rows[0]["budget"], rows[0]["tokens"], rows[0]["budget_list"], rows[0]["tried"]) == (32, 19, [64, 32], [32, 16])
    assert rows[0]["answer"] == "The answer is 7."
    # q8: every probe succeeds until max_steps: 32, 16, 8
    assert (rows[1]["budget"], rows[1]["tokens"], rows[1]["tried"]) == (8, 7, [32, 16, 8])
    assert rows[2]["searched"] is False and rows[2]["vanilla_correct"] is False
    assert sorted(backend.budgets) == [("7", 16), ("7", 32), ("8", 8), ("8", 16), ("8", 32)]
    assert summary["vanilla_accuracy"] == pytest.approx(2 / 3) and summary["searched"] == 2 and summary["probes"] == 5
