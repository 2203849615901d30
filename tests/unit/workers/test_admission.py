"""The admission policy of the generation engine: rows kept for newcomers, fewest running first."""

from __future__ import annotations

from collections import Counter
from itertools import islice

from workers.engines.admission import fair_order, usable_rows


def test_one_row_is_kept_free_per_slot_without_a_job() -> None:
    assert usable_rows(16, slots=4, live=1) == 13
    assert usable_rows(16, slots=4, live=3) == 15
    assert usable_rows(16, slots=4, live=4) == 16
    assert usable_rows(16, slots=4, live=9) == 16  # more jobs than slots (not from rq): no reserve
    assert usable_rows(4, slots=1, live=1) == 4  # one slot: nobody else can come


def test_a_newcomer_goes_before_a_job_that_runs_many() -> None:
    order = fair_order([("huge", 200), ("small", 1)], {"huge": 13})
    assert list(islice(order, 3)) == ["small", "huge", "huge"]


def test_freed_rows_even_out_the_jobs_that_want_them() -> None:
    # A ran 13 rows alone and they all finished; B had the one row A left free; C just came.
    taken = Counter(islice(fair_order([("A", 50), ("B", 50), ("C", 50)], {"B": 1}), 14))
    assert taken == {"A": 5, "B": 4, "C": 5}  # 5 running each, B's earlier row included


def test_ties_go_in_arrival_order_and_a_job_with_nothing_left_drops_out() -> None:
    assert list(fair_order([("A", 2), ("B", 0), ("C", 1)], {})) == ["A", "C", "A"]
    assert list(fair_order([], {"A": 3})) == []
