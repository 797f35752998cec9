"""The fixed-capacity right-appending buffer (relayd.core.ring.Ring)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relayd.core.ring import SLACK_DIVISOR, SLACK_MIN, Ring, slack


def ints(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int32)


def test_new_ring_is_empty() -> None:
    ring = Ring(4, np.float64)
    assert len(ring) == 0
    assert ring.capacity == 4
    view = ring.view()
    assert view.shape == (0,)
    assert view.dtype == np.float64


@pytest.mark.parametrize("capacity", [0, -1])
def test_capacity_must_be_positive(capacity: int) -> None:
    with pytest.raises(ValueError):
        Ring(capacity, np.float64)


def test_appends_in_order_then_drops_oldest() -> None:
    ring = Ring(4, np.int32)
    ring.extend(ints(1))
    assert ring.view().tolist() == [1]
    ring.extend(ints(2, 3))
    assert ring.view().tolist() == [1, 2, 3]
    ring.extend(ints(4, 5))
    assert ring.view().tolist() == [2, 3, 4, 5]
    assert len(ring) == 4
    for value in range(6, 20):
        ring.extend(ints(value))
        assert ring.view().tolist() == list(range(value - 3, value + 1))


def test_extend_with_exactly_capacity_replaces_everything() -> None:
    ring = Ring(3, np.int32)
    ring.extend(ints(1, 2))
    ring.extend(ints(7, 8, 9))
    assert ring.view().tolist() == [7, 8, 9]


def test_extend_with_more_than_capacity_keeps_the_tail() -> None:
    ring = Ring(3, np.int32)
    ring.extend(ints(1))
    ring.extend(ints(*range(10, 20)))
    assert ring.view().tolist() == [17, 18, 19]
    ring.extend(ints(20))
    assert ring.view().tolist() == [18, 19, 20]


def test_extend_with_nothing_changes_nothing() -> None:
    ring = Ring(3, np.int32)
    ring.extend(ints())
    assert len(ring) == 0
    ring.extend(ints(1, 2))
    ring.extend(ints())
    assert ring.view().tolist() == [1, 2]


def test_capacity_one() -> None:
    ring = Ring(1, np.float64)
    for value in (1.5, 2.5, 3.5):
        ring.extend(np.array([value]))
        assert ring.view().tolist() == [value]
    ring.extend(np.array([4.0, 5.0]))
    assert ring.view().tolist() == [5.0]


def test_clear() -> None:
    ring = Ring(3, np.int32)
    ring.extend(ints(1, 2, 3))
    ring.clear()
    assert len(ring) == 0
    assert ring.view().tolist() == []
    ring.extend(ints(4))
    assert ring.view().tolist() == [4]


def test_dtype_is_kept() -> None:
    ring = Ring(3, np.uint8)
    ring.extend(np.frombuffer(b"abcd", dtype=np.uint8))
    assert ring.view().dtype == np.uint8
    assert ring.view().tobytes() == b"bcd"


def test_view_is_contiguous_after_wrapping() -> None:
    ring = Ring(5, np.float64)
    for value in range(37):
        ring.extend(np.array([float(value), float(value) + 0.5]))
        view = ring.view()
        assert view.flags["C_CONTIGUOUS"]
        assert view.ndim == 1
    assert ring.view().tolist() == [34.5, 35.0, 35.5, 36.0, 36.5]


def test_many_single_appends_to_a_large_ring() -> None:
    capacity = 100_000
    ring = Ring(capacity, np.float64)
    total = 3 * capacity + 17
    for start in range(0, total, 1000):
        ring.extend(np.arange(start, min(start + 1000, total), dtype=np.float64))
    view = ring.view()
    assert len(view) == capacity
    np.testing.assert_array_equal(view, np.arange(total - capacity, total, dtype=np.float64))


@settings(max_examples=300, deadline=None)
@given(
    st.integers(min_value=1, max_value=12).flatmap(
        lambda cap: st.tuples(
            st.just(cap),
            st.lists(
                st.lists(st.integers(-1000, 1000), max_size=3 * cap + 2), max_size=30
            ),
        )
    )
)
def test_property_ring_matches_a_list_model(case: tuple[int, list[list[int]]]) -> None:
    capacity, chunks = case
    ring = Ring(capacity, np.int32)
    model: list[int] = []
    for chunk in chunks:
        ring.extend(np.array(chunk, dtype=np.int32))
        model = (model + chunk)[-capacity:]
        view = ring.view()
        assert view.tolist() == model
        assert len(ring) == len(model)
        assert view.flags["C_CONTIGUOUS"]


@settings(max_examples=300, deadline=None)
@given(
    st.integers(min_value=SLACK_MIN + 1, max_value=4 * SLACK_MIN).flatmap(
        lambda cap: st.tuples(st.just(cap), st.lists(st.integers(0, 3 * cap + 2), max_size=40))
    )
)
def test_property_a_ring_with_less_slack_than_capacity_matches_a_list_model(
        case: tuple[int, list[int]]) -> None:
    """Capacities above SLACK_MIN keep less than twice their capacity, so the live
    elements moved back to the start may overlap where they go."""
    capacity, lengths = case
    ring = Ring(capacity, np.int64)
    assert ring.storage < 2 * capacity
    model: list[int] = []
    counter = 0
    for length in lengths:
        chunk = list(range(counter, counter + length))
        counter += length
        ring.extend(np.array(chunk, dtype=np.int64))
        model = (model + chunk)[-capacity:]
        assert ring.view().tolist() == model
        assert ring.view().flags["C_CONTIGUOUS"]


@pytest.mark.parametrize("capacity, storage", [
    (1, 2), (10, 20), (SLACK_MIN, 2 * SLACK_MIN), (SLACK_MIN + 1, 2 * SLACK_MIN + 1),
    (1000, 1000 + SLACK_MIN), (1_000_000, 1_000_000 + 1_000_000 // SLACK_DIVISOR),
])
def test_memory_is_capacity_plus_a_slack(capacity: int, storage: int) -> None:
    """A large buffer keeps 1/16 more than its capacity, not twice it (issue 14: a full
    _F1000 buffer within 1.2x its payload); a small one twice."""
    assert capacity + slack(capacity) == storage
    ring = Ring(capacity, np.float64)
    assert ring.storage == storage and ring._data.nbytes == storage * 8


def test_moves_are_amortised_over_the_slack() -> None:
    """Appended one element at a time, a buffer moves its live elements back only once
    per slack elements appended: the storage's start is reused that rarely."""
    capacity = 1600
    ring = Ring(capacity, np.float64)
    moves = 0
    for value in range(10 * capacity):
        before = ring._start
        ring.extend(np.array([float(value)]))
        if ring._start < before:
            moves += 1
    assert ring.view().tolist() == [float(v) for v in range(9 * capacity, 10 * capacity)]
    appended_after_full = 9 * capacity
    assert moves <= appended_after_full // slack(capacity) + 1
