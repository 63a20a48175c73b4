import pytest

from llmslim.budget.parse import (extract_answer, extract_choice, gsm8k_gold, is_correct, numbers_equal, parse_budget,
                                  to_number)
from llmslim.core.errors import DataError


@pytest.mark.parametrize("text,value", [
    ("Budget: [[12]]", 12), ("[[ 40 ]] tokens", 40), ("I think [[1,200]]", 1200), ("[[30 tokens]]", 30),
    ("first [[25]] then [[99]]", 25),  # the reference takes the first match
])
def test_parse_budget(text, value):
    b = parse_budget(text, default=256)
    assert (b.value, b.parsed) == (value, True)


@pytest.mark.parametrize("text", ["Budget: 12", "[[twelve]]", "", "[[0]]", "[[-5]]", "[12]"])
def test_parse_budget_falls_back_to_stated_default(text):
    b = parse_budget(text, default=77)
    assert (b.value, b.parsed) == (77, False)


def test_parse_budget_clamps_and_rejects_bad_default():
    assert parse_budget("[[5000]]", default=10, maximum=512).value == 512
    with pytest.raises(ValueError):
        parse_budget("x", default=-1)


@pytest.mark.parametrize("text,answer", [
    ("so 3 + 4 = 7. Answer: [[7]]", "7"),
    ("[[1]] no wait [[18]]", "18"),
    ("She pays $1,250.50 in total.", "1250.50"),
    ("The answer is 42.", "42"),
    ("first 3 then -8", "-8"),
    ("no digits here", None),
])
def test_extract_answer(text, answer):
    assert extract_answer(text) == answer


def test_numbers_and_tolerance():
    assert to_number("$1,234.50") == 1234.5
    assert to_number("3/4") == 0.75
    assert to_number("15%") == 15
    assert to_number("Answer: 42 apples") == 42
    assert to_number("apples") is None
    assert numbers_equal(to_number("18.0"), to_number("18"))
    assert numbers_equal(0.1 + 0.2, 0.3)
    assert not numbers_equal(18, 18.5)
    assert not numbers_equal(None, 3)


def test_gsm8k_gold():
    assert gsm8k_gold("Janet sells 16 - 3 - 4 = 9 eggs.\nShe makes 9 * 2 = $18.\n#### 18") == "18"
    assert gsm8k_gold("...\n#### 1,000") == "1000"
    with pytest.raises(DataError):
        gsm8k_gold("no marker 18")


def test_is_correct_number_and_choice():
    assert is_correct("3+4=7 so [[7]]", "7") == (True, "7")
    assert is_correct("[[7.0]]", "7")[0]
    assert not is_correct("[[8]]", "7")[0]
    assert not is_correct("I do not know", "7")[0]
    assert extract_choice("Reasoning... Choice: [[b]]") == "B"
    assert extract_choice("long reasoning\nthe correct answer is C") == "C"
    assert extract_choice("[[A]] hmm, actually [[D]]") == "D"
    assert extract_choice("nothing useful here at all") is None
    assert is_correct("so [[C]]", "C", "choice") == (True, "C")
    assert not is_correct("so [[A]]", "C", "choice")[0]
