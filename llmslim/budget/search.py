"""Optimal-budget search (TALE §3): the smallest budget at which the model still answers a question
correctly, starting from the token cost of its vanilla-CoT answer.

- `halving` is the reference code (GeniusHTX/TALE `search_budget.py`): try budget // 2 while the
  answer stays correct *and* costs fewer tokens than the last accepted one; stop at the first miss.
- `binary` is the paper's search: binary search over [1, vanilla cost] with the feasibility test
  "correct and fewer output tokens than the best answer so far" (feasible -> search lower half,
  else upper half), at most `max_steps` probes.

Searches are per-question state machines driven in lock step, so every round is one batch of
prompts for the backend; `ask([(question_index, budget), ...])` returns one `Attempt` each.
Both record `budget_list` (budgets accepted, starting with the upper bound, as the reference) or
`tried` (every budget probed) and `token_list` (the cost of every probe).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

METHODS = ("halving", "binary")


@dataclass
class Attempt:
    correct: bool
    tokens: int
    text: str = ""


@dataclass
class _State:
    upper: int  # the vanilla answer's token cost: the first budget and the cost to beat
    max_steps: int
    budget: int = 0  # best (smallest feasible) budget so far; `upper` until one is found
    best_tokens: int = 0
    best_text: str | None = None
    budget_list: list[int] = field(default_factory=list)
    tried: list[int] = field(default_factory=list)
    token_list: list[int] = field(default_factory=list)
    done: bool = False

    def __post_init__(self):
        self.budget, self.best_tokens = self.upper, self.upper
        self.budget_list.append(self.upper)


class Halving(_State):
    def next(self) -> int | None:
        if self.done or len(self.tried) >= self.max_steps or self.budget // 2 < 1:
            return None
        return self.budget // 2

    def update(self, budget: int, a: Attempt) -> None:
        self.tried.append(budget)
        self.token_list.append(a.tokens)
        if a.correct and a.tokens < self.best_tokens:
            self.budget, self.best_tokens, self.best_text = budget, a.tokens, a.text
            self.budget_list.append(budget)
        else:
            self.done = True


class Binary(_State):
    def __post_init__(self):
        super().__post_init__()
        self.lo, self.hi = 1, self.upper - 1  # the upper bound itself is the vanilla answer

    def next(self) -> int | None:
        if self.done or self.lo > self.hi or len(self.tried) >= self.max_steps:
            return None
        return (self.lo + self.hi) // 2

    def update(self, budget: int, a: Attempt) -> None:
        self.tried.append(budget)
        self.token_list.append(a.tokens)
        if a.correct and a.tokens < self.best_tokens:  # feasible: look lower
            self.budget, self.best_tokens, self.best_text = budget, a.tokens, a.text
            self.budget_list.append(budget)
            self.hi = budget - 1
        else:
            self.lo = budget + 1


def search(
    vanilla: list[Attempt],
    ask: Callable[[list[tuple[int, int]]], list[Attempt]],
    method: str = "halving",
    max_steps: int = 8,
    on_round: Callable[[int, int], None] | None = None,
) -> list[dict]:
    """One record per question. Questions whose vanilla answer is wrong are not searched (as the
    reference): `budget` None. `on_round(round, n_prompts)` reports progress."""
    if method not in METHODS:
        raise ValueError(f"unknown search method {method!r}; use {' or '.join(METHODS)}")
    cls = Halving if method == "halving" else Binary
    states: dict[int, _State] = {i: cls(max(1, v.tokens), max_steps) for i, v in enumerate(vanilla) if v.correct}
    rnd = 0
    while True:
        pending = [(i, b) for i, s in states.items() if (b := s.next()) is not None]
        if not pending:
            break
        rnd += 1
        if on_round:
            on_round(rnd, len(pending))
        for (i, b), attempt in zip(pending, ask(pending)):
            states[i].update(b, attempt)
    out = []
    for i, v in enumerate(vanilla):
        s = states.get(i)
        if s is None:
            out.append({"searched": False, "reason": "vanilla answer incorrect", "vanilla_tokens": v.tokens,
                        "budget": None, "tokens": None, "answer": None, "budget_list": [], "tried": [], "token_list": []})
            continue
        out.append({
            "searched": True, "vanilla_tokens": v.tokens, "budget": s.budget if s.best_text is not None else None,
            "tokens": s.best_tokens, "improved": s.best_text is not None,
            "answer": s.best_text if s.best_text is not None else v.text,
            "budget_list": s.budget_list, "tried": s.tried, "token_list": s.token_list,
        })
    return out
