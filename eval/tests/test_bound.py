"""The least overhead of a size-hiding defense (bento_eval.bound)."""

import pytest

from bento_eval import bound


def test_sites_of_equal_size_cost_nothing_and_one_class_costs_the_largest_for_all():
    b = bound.least_overhead([1, 1, 2, 2], accuracy=0.5)
    assert (b.classes, b.overhead, b.largest) == (2, 0.0, [1, 2])
    b = bound.least_overhead([1, 1, 2, 2], accuracy=0.25)
    assert (b.classes, b.largest) == (1, [2])
    assert b.overhead == pytest.approx(8 / 6 - 1)


def test_the_split_is_the_cheapest_not_the_evenest():
    # Two classes: {1, 1, 1} and {10} costs 13; the even split {1, 1} and
    # {1, 10} costs 22.
    b = bound.least_overhead([10, 1, 1, 1], accuracy=0.5)
    assert b.largest == [1, 10]
    assert b.overhead == pytest.approx(13 / 13 - 1)


def test_an_impossible_accuracy_is_refused():
    with pytest.raises(ValueError):
        bound.least_overhead([1, 2], accuracy=0)
    with pytest.raises(ValueError):
        bound.least_overhead([], accuracy=0.5)


def test_the_command_prints_one_row_per_world_size(capsys):
    assert bound.main(["--sites", "10", "20"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 10 |") or line.startswith("| 20 |")]
    assert len(rows) == 2
    # 15 % of 10 sites is one class: every page padded to the largest.
    assert "| 10 |" in rows[0] and "| 1 |" in rows[0]
