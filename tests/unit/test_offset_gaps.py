"""GapGuard: a consumer processes a partition's records only up to the first hole in their
offsets, waits a bounded time for the hole to fill, then passes over it and counts it."""

from __future__ import annotations

from feedbackloop.infra.offset_gaps import Admission, GapGuard


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_contiguous_records_are_all_admitted_and_set_the_next_expected_offset() -> None:
    g = GapGuard(max_wait_s=5)
    assert g.admit("p", [0, 1, 2]) == Admission(3)
    assert g.admit("p", [3, 4]) == Admission(2)
    assert (g.waited, g.skipped) == (0, 0)


def test_records_after_a_hole_are_held_back_and_the_hole_is_named_for_a_seek() -> None:
    g = GapGuard(max_wait_s=5)
    g.admit("p", [0, 1])
    # 2..4 not visible yet, 5 and 6 fetched: only nothing of this batch may be processed
    assert g.admit("p", [5, 6]) == Admission(0, missing=2)
    # a hole inside a batch: the records before it are processed
    g2 = GapGuard(max_wait_s=5)
    assert g2.admit("p", [0, 1, 4, 5]) == Admission(2, missing=2)


def test_a_hole_filled_on_a_re_fetch_costs_nothing_and_is_counted_as_waited() -> None:
    clock = Clock()
    g = GapGuard(max_wait_s=5, clock=clock)
    g.admit("p", [0])
    assert g.admit("p", [3]).missing == 1
    clock.t = 0.1
    assert g.admit("p", [1, 2, 3]) == Admission(3)
    assert (g.waited, g.skipped) == (1, 0)
    assert g.waiting("p") is None


def test_a_hole_that_stays_past_the_wait_is_passed_over_and_its_offsets_counted() -> None:
    clock = Clock()
    g = GapGuard(max_wait_s=5, clock=clock)
    g.admit("p", [0])
    assert g.admit("p", [4, 5]).missing == 1
    clock.t = 4.9
    assert g.admit("p", [4, 5]).missing == 1  # still within the wait
    clock.t = 5.0
    assert g.admit("p", [4, 5]) == Admission(2)
    assert (g.waited, g.skipped) == (0, 3)
    assert g.admit("p", [6]) == Admission(1)


def test_the_wait_starts_again_for_a_new_hole() -> None:
    clock = Clock()
    g = GapGuard(max_wait_s=5, clock=clock)
    g.admit("p", [0])
    assert g.admit("p", [2]).missing == 1
    clock.t = 4.0
    assert g.admit("p", [1, 2, 4]) == Admission(2, missing=3)  # 1 arrived; 3 is missing now
    clock.t = 8.0  # 4 s after the new hole was seen: keep waiting
    assert g.admit("p", [4]).missing == 3


def test_partitions_are_independent_and_an_unknown_position_accepts_the_first_record() -> None:
    g = GapGuard(max_wait_s=5)
    assert g.admit("a", [100]) == Admission(1)  # never assigned a position: starts here
    assert g.admit("b", [0]) == Admission(1)
    assert g.admit("a", [102]).missing == 101
    assert g.admit("b", [1]) == Admission(1)


def test_a_seek_sets_the_expected_position_and_a_revocation_forgets_it() -> None:
    g = GapGuard(max_wait_s=5)
    g.expect("p", 10)  # the committed offset faust seeks to
    assert g.admit("p", [12]).missing == 10
    g.forget("p")
    assert g.waiting("p") is None
    assert g.admit("p", [12]) == Admission(1)


def test_records_before_the_expected_offset_are_admitted_without_moving_it_back() -> None:
    g = GapGuard(max_wait_s=5)
    g.admit("p", [0, 1, 2])
    assert g.admit("p", [1, 2, 3]) == Admission(3)  # a re-delivery: at-least-once
    assert g.admit("p", [5]).missing == 4
