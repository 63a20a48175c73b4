"""Paired differences of mean accuracy against a hand computation."""

from __future__ import annotations

import math

import pytest

from llmslim.eval.paired import mean_score, paired_difference


def test_one_task_by_hand():
    # differences [0, 1, 0, 0]: mean .25, sample variance (3 * .25^2 + .75^2) / 3 = .25
    out = paired_difference({"t": [1, 1, 0, 0]}, {"t": [1, 0, 0, 0]})
    assert out["diff"] == pytest.approx(0.25)
    assert out["stderr"] == pytest.approx(math.sqrt(0.25 / 4))
    # unpaired: var(a) = 1/3, var(b) = .25
    assert out["unpaired_stderr"] == pytest.approx(math.sqrt((1 / 3 + 0.25) / 4))
    assert out["items"] == 4


def test_two_tasks_average_like_the_table():
    a = {"x": [1, 1, 1, 0], "y": [1, 0]}
    b = {"x": [1, 1, 0, 0], "y": [0, 0]}
    assert mean_score(a) == pytest.approx((0.75 + 0.5) / 2)  # the mean of task means, not of items
    out = paired_difference(a, b)
    assert out["diff"] == pytest.approx(((0.75 - 0.5) + (0.5 - 0.0)) / 2)
    var_x = (3 * 0.25**2 + 0.75**2) / 3  # differences [0, 0, 1, 0]
    var_y = (0.5**2 + 0.5**2) / 1  # differences [1, 0]
    assert out["stderr"] == pytest.approx(math.sqrt(var_x / 4 + var_y / 2) / 2)


def test_models_that_agree_have_a_smaller_paired_error():
    # two models right on the same 60 of 100 items, the second also on 5 more
    a = {"t": [1] * 65 + [0] * 35}
    b = {"t": [1] * 60 + [0] * 40}
    out = paired_difference(a, b)
    assert out["diff"] == pytest.approx(0.05)
    assert out["stderr"] < out["unpaired_stderr"] / 2


def test_needs_the_same_documents():
    with pytest.raises(ValueError, match="same documents"):
        paired_difference({"t": [1, 0]}, {"t": [1, 0, 1]})
    with pytest.raises(ValueError, match="different tasks"):
        paired_difference({"t": [1]}, {"u": [1]})


def test_bits_round_trip_and_refuse_what_is_not_0_or_1():
    from llmslim.eval.paired import items_from_bits, items_to_bits

    items = {"x": [1.0, 0.0, 0.0, 1.0], "y": [0.0]}
    assert items_to_bits(items) == {"x": "1001", "y": "0"}
    assert items_from_bits(items_to_bits(items)) == items
    with pytest.raises(ValueError, match="0/1"):
        items_to_bits({"x": [0.5]})
