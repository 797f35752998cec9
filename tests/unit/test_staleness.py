"""Which PVs went stale (relayd.core.staleness.StaleWatch); times are passed in."""

from __future__ import annotations

import random
import sys

import numpy as np
from dataclasses import replace

from relayd.core import menus
from relayd.core.meta import Meta
from relayd.core.names import Grammar
from relayd.core.pvstate import PVState, new_state
from relayd.core.staleness import COMPACT_AT, StaleWatch

G = Grammar("P")


def state(tmo: float, suffix: str = "f1", name: str = "x", at: float | None = 0.0) -> PVState:
    """A PV with TMO `tmo`, given a value at monotonic time `at` (None: never)."""
    spec = G.parse(f"P:{name}_{suffix}")
    assert spec is not None
    pv = new_state(spec, Meta(tmo=tmo))
    if at is not None:
        put(pv, at)
    return pv


def put(pv: PVState, now: float, value: object = 1.0) -> None:
    pv.put(value, 1, now)


def set_tmo(pv: PVState, tmo: float) -> None:
    pv.set_meta(replace(pv.meta, tmo=tmo))


def is_stale(pv: PVState) -> bool:
    return pv.stale and (pv.status, pv.severity) == (menus.STAT_TIMEOUT, menus.INVALID)


def test_nothing_watched() -> None:
    watch = StaleWatch()
    assert len(watch) == 0
    assert watch.next_deadline() is None
    assert watch.expired(1e9) == []


def test_a_pv_without_tmo_is_not_watched() -> None:
    watch = StaleWatch()
    pv = state(0.0)
    watch.watch(pv, 0.0)
    assert len(watch) == 0
    assert watch.next_deadline() is None
    assert watch.expired(1e9) == []
    assert not pv.stale


def test_the_deadline_is_tmo_after_the_last_value() -> None:
    watch = StaleWatch()
    pv = state(2.0, at=10.0)
    watch.watch(pv, 10.0)
    assert len(watch) == 1
    assert watch.next_deadline() == 12.0
    assert watch.expired(11.99) == []
    assert not pv.stale and pv.severity == menus.NO_ALARM
    assert watch.expired(12.0) == [pv]
    assert is_stale(pv)


def test_watching_later_counts_from_then() -> None:
    """A PV given its TMO long after its last value goes stale TMO after that moment."""
    watch = StaleWatch()
    pv = state(1.0, at=0.0)
    watch.watch(pv, 50.0)
    assert watch.next_deadline() == 51.0
    assert watch.expired(50.9) == []
    assert watch.expired(51.0) == [pv]


def test_updates_postpone_the_deadline() -> None:
    watch = StaleWatch()
    pv = state(1.0, at=0.0)
    watch.watch(pv, 0.0)
    for now in (0.5, 1.2, 1.9, 2.6):  # never a full second without a value
        put(pv, now)
        watch.watch(pv, now)
        assert watch.expired(now + 0.3) == []
    assert not pv.stale
    assert watch.expired(3.5) == []
    assert watch.expired(3.6) == [pv]


def test_attribute_changes_are_not_values() -> None:
    watch = StaleWatch()
    pv = state(1.0, at=0.0)
    watch.watch(pv, 0.0)
    pv.set_meta(replace(pv.meta, egu="mm", desc="still no value"))
    watch.watch(pv, 0.9)   # what the CA server does after every attribute change
    assert pv.updated == 0.0
    assert watch.expired(1.0) == [pv]


def test_expired_once_per_staleness() -> None:
    watch = StaleWatch()
    pv = state(1.0, at=0.0)
    watch.watch(pv, 0.0)
    assert watch.expired(1.0) == [pv]
    for now in (1.5, 2.0, 5.0, 100.0):  # still stale: not reported again
        assert watch.expired(now) == []
    assert is_stale(pv)
    put(pv, 100.5)                      # the next value clears it...
    assert not pv.stale and (pv.status, pv.severity) == (menus.STAT_NONE, menus.NO_ALARM)
    watch.watch(pv, 100.5)
    assert watch.expired(101.4) == []
    assert watch.expired(101.5) == [pv]  # ...and it can go stale again
    assert is_stale(pv)


def test_several_pvs_in_deadline_order() -> None:
    watch = StaleWatch()
    pvs = [state(tmo, name=f"p{i}") for i, tmo in enumerate((3.0, 1.0, 2.0))]
    for pv in pvs:
        watch.watch(pv, 0.0)
    assert len(watch) == 3
    assert watch.next_deadline() == 1.0
    assert watch.expired(1.0) == [pvs[1]]
    assert watch.expired(2.5) == [pvs[2]]
    assert watch.expired(10.0) == [pvs[0]]


def test_watch_is_idempotent() -> None:
    watch = StaleWatch()
    pv = state(1.0)
    for _ in range(5):
        watch.watch(pv, 0.0)
    assert len(watch) == 1
    assert watch.expired(1.0) == [pv]
    assert watch.expired(2.0) == []


def test_forget() -> None:
    watch = StaleWatch()
    gone, kept = state(1.0, name="gone"), state(1.0, name="kept")
    watch.watch(gone, 0.0)
    watch.watch(kept, 0.0)
    watch.forget(gone)
    assert len(watch) == 1
    assert watch.expired(5.0) == [kept]
    assert not gone.stale
    watch.forget(gone)  # forgetting twice, or something never watched, is harmless
    watch.forget(state(1.0, name="never"))
    assert len(watch) == 1


def test_a_forgotten_pv_is_let_go_of_at_once_whatever_its_tmo() -> None:
    """Issue 11: a deleted PV stayed in the heap, with its value, until its deadline."""
    watch = StaleWatch()
    for tmo in (1.0, 1e9):
        gone = state(tmo, suffix="f1000", name="big", at=None)
        put(gone, 0.0, np.zeros(1000))
        references = sys.getrefcount(gone)
        watch.watch(gone, 0.0)
        assert sys.getrefcount(gone) > references
        watch.forget(gone)
        assert sys.getrefcount(gone) == references
        assert watch.next_deadline() is None  # nothing left to wait for


def test_a_superseded_entry_lets_go_of_its_pv_too() -> None:
    watch = StaleWatch()
    pv = state(100.0)
    watch.watch(pv, 0.0)
    set_tmo(pv, 1.0)  # lowered: a new, earlier entry
    watch.watch(pv, 0.0)
    assert watch.heap_size() == 2
    watch.forget(pv)
    references = sys.getrefcount(pv)
    del watch
    assert sys.getrefcount(pv) == references


def test_the_heap_stays_bounded_when_pvs_come_and_go_with_a_large_tmo() -> None:
    watch = StaleWatch()
    kept = [state(1e9, name=f"kept{i}") for i in range(10)]
    for pv in kept:
        watch.watch(pv, 0.0)
    for i in range(10_000):
        gone = state(1e9, name=f"gone{i}")
        watch.watch(gone, float(i))
        watch.forget(gone)
        assert watch.heap_size() <= 2 * len(kept) + COMPACT_AT + 1
    assert len(watch) == len(kept)
    assert watch.expired(2e9) == kept  # the live entries survived every compaction


def test_a_pv_never_given_a_value_is_never_stale() -> None:
    watch = StaleWatch()
    pv = state(1.0, at=None)
    watch.watch(pv, 0.0)
    assert watch.expired(10.0) == []
    assert not pv.stale
    assert (pv.status, pv.severity) == (menus.STAT_UDF, menus.INVALID)  # still undefined


def test_tmo_turned_off_stops_watching() -> None:
    watch = StaleWatch()
    pv = state(1.0)
    watch.watch(pv, 0.0)
    set_tmo(pv, 0.0)
    assert watch.expired(5.0) == []
    assert not pv.stale
    assert len(watch) == 0
    assert watch.next_deadline() is None


def test_tmo_turned_off_while_stale_ends_the_staleness() -> None:
    watch = StaleWatch()
    pv = state(1.0)
    watch.watch(pv, 0.0)
    assert watch.expired(1.0) == [pv]
    set_tmo(pv, 0.0)
    assert not pv.stale
    assert (pv.status, pv.severity) == (menus.STAT_NONE, menus.NO_ALARM)
    assert watch.expired(100.0) == []


def test_tmo_raised_postpones() -> None:
    watch = StaleWatch()
    pv = state(1.0)
    watch.watch(pv, 0.0)
    set_tmo(pv, 10.0)
    watch.watch(pv, 0.5)
    assert watch.expired(1.0) == []
    assert watch.expired(9.9) == []
    assert watch.expired(10.0) == [pv]


def test_tmo_lowered_takes_effect_at_once() -> None:
    """A shorter TMO counts from the last value, not from the old, later deadline."""
    watch = StaleWatch()
    pv = state(100.0)
    watch.watch(pv, 0.0)
    set_tmo(pv, 0.5)
    watch.watch(pv, 0.2)   # what the CA server does after every attribute change
    assert watch.expired(1.0) == [pv]


def test_tmo_turned_off_then_on_again() -> None:
    watch = StaleWatch()
    pv = state(100.0)
    watch.watch(pv, 0.0)
    set_tmo(pv, 0.0)
    set_tmo(pv, 1.0)
    watch.watch(pv, 0.5)
    assert watch.expired(2.0) == [pv]


def test_the_heap_holds_one_entry_per_watched_pv_however_fast_they_update() -> None:
    watch = StaleWatch()
    rng = random.Random(4)
    pvs = [state(rng.choice((0.5, 1.0, 2.0)), name=f"p{i}") for i in range(50)]
    now = 0.0
    for pv in pvs:
        watch.watch(pv, now)
    stale_seen = 0
    for _ in range(20_000):
        now += 0.001
        pv = rng.choice(pvs[:40])  # the last ten never get another value
        put(pv, now)
        watch.watch(pv, now)
        stale_seen += len(watch.expired(now))
        assert watch.heap_size() <= len(pvs)
    assert len(watch) == len(pvs)
    assert all(pv.stale for pv in pvs[40:])
    assert stale_seen >= 10
