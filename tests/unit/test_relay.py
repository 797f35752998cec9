"""The one place a put becomes a change (relayd.core.writes.Relay and Stats)."""

from __future__ import annotations

import numpy as np
import pytest

from relayd.core import menus
from relayd.core.errors import Reason, Refused
from relayd.core.meta import Meta
from relayd.core.names import Grammar, NameLimits
from relayd.core.pvstate import PVState
from relayd.core.registry import Registry
from relayd.core.stats import Stats
from relayd.core.writes import Relay


class Holder:
    def __init__(self, state: PVState):
        self.state = state


def make(max_pvs: int = 100, max_placeholders: int = 10) -> Relay[Holder]:
    grammar = Grammar("P", NameLimits(max_name_length=64, max_elements=100))
    registry = Registry(grammar, Holder, max_pvs=max_pvs, max_placeholders=max_placeholders)
    return Relay(grammar, registry)


def refusal(call, *args) -> Refused:
    with pytest.raises(Refused) as info:
        call(*args)
    return info.value


def snapshot(relay: Relay[Holder]) -> tuple:
    registry = relay.registry
    return (
        dict(registry.pvs),
        dict(registry.placeholders),
        registry.version,
        registry.pvlist(),
        relay.stats.accepted,
        relay.stats.deleted,
    )


# --- put ----------------------------------------------------------------------------------


def test_put_creates_and_defines() -> None:
    relay = make()
    pv, alarm_changed = relay.put("x_f1", 2.5, 1000)
    assert alarm_changed is True
    assert relay.registry.get("P:x_f1") is pv
    assert pv.state.served() == 2.5
    assert pv.state.ts_ns == 1000
    assert (pv.state.severity, pv.state.status) == (menus.NO_ALARM, menus.STAT_NONE)
    again, alarm_changed = relay.put("x_f1", 3.5, 2000)
    assert again is pv
    assert alarm_changed is False
    assert pv.state.served() == 3.5
    assert pv.state.ts_ns == 2000
    assert relay.stats.accepted == 2


def test_put_with_and_without_prefix_reach_the_same_pv() -> None:
    relay = make()
    a, _ = relay.put("P:x_i1", 1, 1)
    b, _ = relay.put("x_i1", 2, 2)
    assert a is b
    assert a.state.served() == 2
    assert relay.registry.pvlist() == "P:x_i1"


def test_put_promotes_a_placeholder() -> None:
    relay = make()
    watched = relay.registry.attach("P:w_F3")
    pv, alarm_changed = relay.put("w_F3", [1.0, 2.0], 5)
    assert pv is watched
    assert alarm_changed is True
    assert relay.registry.placeholders == {}
    assert pv.state.served().tolist() == [1.0, 2.0]


@pytest.mark.parametrize(
    "name, raw, reason",
    [
        ("x", 1.0, Reason.BAD_NAME),
        ("x_f0", 1.0, Reason.BAD_NAME),
        ("x_F1", 1.0, Reason.BAD_NAME),
        ("x.VAL_f1", 1.0, Reason.BAD_NAME),
        (" x_f1", 1.0, Reason.BAD_NAME),
        ("x_f101", [1.0], Reason.COUNT_LIMIT),
        ("a" * 70 + "_f1", 1.0, Reason.NAME_TOO_LONG),
        ("x_f101", "text", Reason.COUNT_LIMIT),   # the name is checked before the value
        ("x", "text", Reason.BAD_NAME),
        ("new_f1", "text", Reason.BAD_VALUE),
        ("new_i1", float("nan"), Reason.BAD_VALUE),
        ("new_f2", [1, 2, 3], Reason.TOO_MANY_ELEMENTS),
        ("new_c2", "abc", Reason.TOO_MANY_ELEMENTS),
        ("new_C4", 7, Reason.BAD_VALUE),
    ],
)
def test_refused_put_creates_nothing(name: str, raw: object, reason: Reason) -> None:
    relay = make()
    relay.put("keep_f1", 1.0, 1)
    before = snapshot(relay)
    assert refusal(relay.put, name, raw, 2).reason is reason
    assert snapshot(relay) == before
    assert relay.registry.get(relay.grammar.qualify(name)) is None


@pytest.mark.parametrize(
    "name, good, bad",
    [
        ("x_f1", 1.5, "2.5"),
        ("x_i1", 7, 2**31),
        ("x_f3", [1.0, 2.0], [1.0, 2.0, 3.0, 4.0]),
        ("x_c4", "ab", "abcde"),
        ("x_F3", [1.0, 2.0], [[1.0]]),
        ("x_I3", [1, 2], [float("inf")]),
        ("x_C4", "ab", "abcde"),
    ],
)
def test_refused_put_changes_nothing_already_there(name: str, good: object, bad: object) -> None:
    relay = make()
    pv, _ = relay.put(name, good, 10)
    served = pv.state.served()
    served = served.copy() if isinstance(served, np.ndarray) else served
    before = snapshot(relay)
    assert refusal(relay.put, name, bad, 20).reason in (
        Reason.BAD_VALUE, Reason.TOO_MANY_ELEMENTS
    )
    assert snapshot(relay) == before
    now = pv.state.served()
    if isinstance(served, np.ndarray):
        assert now.tolist() == served.tolist()
    else:
        assert now == served
    assert pv.state.ts_ns == 10
    assert (pv.state.severity, pv.state.status) == (menus.NO_ALARM, menus.STAT_NONE)


def test_refused_put_leaves_a_placeholder_undefined() -> None:
    relay = make()
    watched = relay.registry.attach("P:w_i1")
    assert refusal(relay.put, "w_i1", "one", 1).reason is Reason.BAD_VALUE
    assert relay.registry.placeholders == {"P:w_i1": watched}
    assert relay.registry.pvs == {}
    assert watched.state.defined is False
    assert (watched.state.severity, watched.state.status) == (menus.INVALID, menus.STAT_UDF)


def test_pv_limit_refuses_new_names_only() -> None:
    relay = make(max_pvs=1)
    pv, _ = relay.put("a_f1", 1.0, 1)
    before = snapshot(relay)
    assert refusal(relay.put, "b_f1", 2.0, 2).reason is Reason.PV_LIMIT
    assert snapshot(relay) == before
    again, _ = relay.put("a_f1", 3.0, 3)
    assert again is pv
    assert pv.state.served() == 3.0
    assert relay.stats.accepted == 2


def test_put_spec_and_apply() -> None:
    relay = make()
    spec = relay.grammar.spec_for("s_i2")
    pv, changed = relay.put_spec(spec, [1.9, -1.9], 7)
    assert changed is True
    assert pv.state.served().tolist() == [1, -1]
    changed = relay.apply(pv, np.array([5, 6], dtype=np.int32), 8)
    assert changed is False
    assert pv.state.served().tolist() == [5, 6]
    assert relay.stats.accepted == 2


def test_ensure_makes_the_pv_of_a_full_name_once() -> None:
    relay = make(max_pvs=1)
    pv = relay.ensure("P:s_f1")
    assert relay.ensure("P:s_f1") is pv
    assert relay.registry.pvs == {"P:s_f1": pv}
    assert pv.state.defined is False  # the value comes with `apply`
    assert relay.stats.accepted == 0
    for name, reason in [("P:t_f1", Reason.PV_LIMIT), ("s_f1", Reason.BAD_NAME),
                         ("Q:s_f1", Reason.BAD_NAME), ("P:s_q1", Reason.BAD_NAME)]:
        assert refusal(relay.ensure, name).reason is reason
    assert list(relay.registry.pvs) == ["P:s_f1"]


# --- attributes ---------------------------------------------------------------------------


def test_apply_sets_attributes_before_judging_the_value() -> None:
    relay = make()
    pv = relay.ensure("P:x_f1")
    alarm_changed = relay.apply(pv, 25.0, 10, 0.0, {"hihi": 20.0, "egu": "mm"})
    assert alarm_changed is True
    assert (pv.state.status, pv.state.severity) == (menus.STAT_HIHI, menus.MAJOR)
    assert pv.state.meta == Meta(hihi=20.0, egu="mm")
    alarm_changed = relay.apply(pv, 26.0, 11, 0.0, {})
    assert alarm_changed is False
    assert pv.state.meta == Meta(hihi=20.0, egu="mm")   # an empty map changes nothing
    assert relay.stats.accepted == 2


def test_apply_with_attributes_starts_from_the_relays_defaults() -> None:
    grammar = Grammar("P", NameLimits(max_name_length=64, max_elements=100))
    relay = Relay(grammar, Registry(grammar, Holder, default_meta=Meta(tmo=5.0)))
    pv = relay.ensure("P:x_f1")
    relay.apply(pv, 1.0, 1, 0.0, {"egu": "V"})
    assert pv.state.meta == Meta(tmo=5.0, egu="V")


def test_set_meta_of_an_existing_pv() -> None:
    relay = make()
    relay.put("x_f1", 15.0, 1)
    pv, alarm_changed = relay.set_meta("P:x_f1", {"high": 10.0})
    assert alarm_changed is True
    assert (pv.state.status, pv.state.severity) == (menus.STAT_HIGH, menus.MINOR)
    pv, alarm_changed = relay.set_meta("P:x_f1", {"desc": "the x"})
    assert alarm_changed is False
    assert pv.state.meta == Meta(high=10.0, desc="the x")
    assert pv.state.served() == 15.0 and pv.state.ts_ns == 1
    assert relay.stats.accepted == 3


def test_set_meta_never_creates_a_pv() -> None:
    relay = make()
    relay.registry.attach("P:watched_f1")  # a placeholder: watched, not created
    before = snapshot(relay)
    for name in ("P:nothing_f1", "P:watched_f1"):
        refused = refusal(relay.set_meta, name, {"egu": "mm"})
        assert refused.reason is Reason.NO_SUCH_PV
        assert refused.detail == f"{name}: attributes for a PV that does not exist"
    assert snapshot(relay) == before
    assert relay.registry.placeholders["P:watched_f1"].state.meta == Meta()


def test_set_meta_after_delete_is_refused() -> None:
    relay = make()
    relay.put("x_f1", 1.0, 1)
    relay.delete("x_f1")
    assert refusal(relay.set_meta, "P:x_f1", {"egu": "mm"}).reason is Reason.NO_SUCH_PV


# --- delete -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["x_f1", "P:x_f1", "  x_f1  ", "P:x_f1\n"])
def test_delete_with_and_without_prefix(name: str) -> None:
    relay = make()
    pv, _ = relay.put("x_f1", 1.0, 1)
    assert relay.delete(name) is pv
    assert relay.registry.get("P:x_f1") is None
    assert relay.registry.pvlist() == ""
    assert relay.stats.deleted == 1


@pytest.mark.parametrize("name", ["", "x", "P:pvlist", "P:delpv", "x_f1.VAL", "x_F1"])
def test_delete_refuses_bad_names(name: str) -> None:
    relay = make()
    relay.put("x_f1", 1.0, 1)
    before = snapshot(relay)
    error = refusal(relay.delete, name)
    assert error.reason is Reason.BAD_NAME
    assert repr(name) in error.detail
    assert snapshot(relay) == before


def test_delete_of_a_missing_pv() -> None:
    relay = make()
    relay.registry.attach("P:w_f1")
    assert refusal(relay.delete, "y_f1").reason is Reason.NO_SUCH_PV
    assert refusal(relay.delete, "w_f1").reason is Reason.NO_SUCH_PV
    assert relay.stats.deleted == 0
    assert "P:w_f1" in relay.registry.placeholders


def test_delete_then_put_creates_anew() -> None:
    relay = make()
    first, _ = relay.put("x_F3", [1.0, 2.0], 1)
    relay.delete("x_F3")
    second, changed = relay.put("x_F3", [3.0], 2)
    assert second is not first
    assert changed is True
    assert second.state.served().tolist() == [3.0]
    assert relay.registry.version == 3


# --- stats --------------------------------------------------------------------------------


def test_stats_start_at_zero() -> None:
    stats = Stats()
    assert (stats.accepted, stats.refused, stats.deleted) == (0, 0, 0)
    assert stats.last_refusal == ""
    assert stats.by_reason[Reason.BAD_NAME] == 0


def test_stats_count_refusals() -> None:
    stats = Stats()
    first = Refused(Reason.BAD_VALUE, "P:x_f1: nope")
    text = stats.count_refusal(first, "ca 127.0.0.1:5064")
    assert text == "ca 127.0.0.1:5064: badValue: P:x_f1: nope"
    assert stats.last_refusal == text
    stats.count_refusal(Refused(Reason.BAD_VALUE, "again"), "zmq")
    stats.count_refusal(Refused(Reason.NO_SUCH_PV, "P:y_f1: no such PV"), "delpv")
    assert stats.refused == 3
    assert stats.by_reason[Reason.BAD_VALUE] == 2
    assert stats.by_reason[Reason.NO_SUCH_PV] == 1
    assert stats.by_reason[Reason.PV_LIMIT] == 0
    assert stats.last_refusal == "delpv: noSuchPV: P:y_f1: no such PV"


def test_relay_counts_accepted_and_deleted_not_refusals() -> None:
    relay = make()
    relay.put("a_f1", 1.0, 1)
    relay.put("a_f1", 2.0, 2)
    relay.put("b_c8", "hi", 3)
    with pytest.raises(Refused):
        relay.put("a_f1", "bad", 4)
    relay.delete("b_c8")
    with pytest.raises(Refused):
        relay.delete("b_c8")
    assert relay.stats.accepted == 3
    assert relay.stats.deleted == 1
    # Counting a refusal is the caller's job, once, with its source.
    assert relay.stats.refused == 0
    assert sum(relay.stats.by_reason.values()) == 0
