"""PVs and placeholders of one relay (relayd.core.registry.Registry)."""

from __future__ import annotations

import pytest

from relayd.core import menus
from relayd.core.errors import Reason, Refused
from relayd.core.names import Grammar, NameLimits, PVSpec
from relayd.core.pvstate import BufferState, PVState
from relayd.core.registry import Registry

G = Grammar("P")


class Holder:
    """Stands in for the CA layer's wrapper: anything with a `state`."""

    def __init__(self, state: PVState):
        self.state = state


def make(max_pvs: int = 100, max_placeholders: int = 5, grammar: Grammar = G) -> Registry[Holder]:
    return Registry(grammar, Holder, max_pvs=max_pvs, max_placeholders=max_placeholders)


def spec(name: str) -> PVSpec:
    result = G.parse(name)
    assert result is not None
    return result


def refusal(call, *args) -> Reason:
    with pytest.raises(Refused) as info:
        call(*args)
    return info.value.reason


def test_defaults() -> None:
    registry = Registry(G, Holder)
    assert registry.max_pvs == 100_000
    assert registry.max_placeholders == 10_000
    assert len(registry) == 0
    assert registry.pvlist() == ""
    assert registry.version == 0
    assert list(registry) == []


# --- search and attach --------------------------------------------------------------------


def test_search_answers_names_of_the_grammar_only() -> None:
    registry = make()
    assert registry.search("P:x_f1") is True
    assert registry.search("P:x_F5") is True
    assert registry.search("P:x") is False
    assert registry.search("Q:x_f1") is False
    assert registry.search("P:x_f1.EGU") is False
    assert registry.search("P:x_F1") is False
    # A search creates nothing.
    assert registry.placeholders == {}
    assert registry.pvs == {}


def test_search_refuses_names_beyond_a_limit() -> None:
    registry = make()
    assert refusal(registry.search, "P:x_f2000000") is Reason.COUNT_LIMIT
    assert refusal(registry.search, "P:" + "a" * 200 + "_f1") is Reason.NAME_TOO_LONG


def test_attach_creates_an_undefined_placeholder() -> None:
    registry = make()
    pv = registry.attach("P:x_F3")
    assert isinstance(pv, Holder)
    assert isinstance(pv.state, BufferState)
    assert pv.state.spec == PVSpec("P:x_F3", spec("P:x_F3").kind, 3, True)
    assert pv.state.defined is False
    assert (pv.state.severity, pv.state.status) == (menus.INVALID, menus.STAT_UDF)
    assert registry.placeholders == {"P:x_F3": pv}
    assert registry.pvs == {}
    assert len(registry) == 0
    assert registry.pvlist() == ""
    assert registry.version == 0
    assert registry.get("P:x_F3") is None
    assert registry.lookup("P:x_F3") is pv


def test_attach_twice_returns_the_same_placeholder() -> None:
    registry = make()
    first = registry.attach("P:x_f1")
    assert registry.attach("P:x_f1") is first
    assert len(registry.placeholders) == 1


def test_attach_not_ours_is_none() -> None:
    registry = make()
    assert registry.attach("P:x") is None
    assert registry.attach("Q:x_f1") is None
    assert registry.attach("P:x.VAL_f1") is None
    assert registry.placeholders == {}


def test_attach_refuses_names_beyond_a_limit() -> None:
    registry = make()
    assert refusal(registry.attach, "P:x_i9999999") is Reason.COUNT_LIMIT
    assert registry.placeholders == {}


def test_attach_to_an_existing_pv_returns_it() -> None:
    registry = make()
    pv = registry.ensure(spec("P:x_f1"))
    assert registry.attach("P:x_f1") is pv
    assert registry.placeholders == {}


def test_placeholder_cap() -> None:
    registry = make(max_placeholders=3)
    held = [registry.attach(f"P:w{i}_f1") for i in range(3)]
    assert all(pv is not None for pv in held)
    assert refusal(registry.attach, "P:w3_f1") is Reason.PLACEHOLDER_LIMIT
    assert refusal(registry.search, "P:w3_f1") is Reason.PLACEHOLDER_LIMIT
    assert len(registry.placeholders) == 3
    # Names already watched, and PVs, are still answered at the cap.
    assert registry.search("P:w0_f1") is True
    assert registry.attach("P:w0_f1") is held[0]
    # Names that are not ours are still not ours, not refused.
    assert registry.search("P:nope") is False
    assert registry.attach("P:nope") is None
    # Releasing one makes room again.
    assert registry.release(held[0]) is True
    assert registry.search("P:w3_f1") is True
    assert registry.attach("P:w3_f1") is not None


def test_placeholder_cap_does_not_stop_puts() -> None:
    registry = make(max_placeholders=1)
    registry.attach("P:a_f1")
    pv = registry.ensure(spec("P:b_f1"))
    assert registry.get("P:b_f1") is pv
    assert registry.attach("P:b_f1") is pv


# --- ensure -------------------------------------------------------------------------------


def test_ensure_creates_once() -> None:
    registry = make()
    pv = registry.ensure(spec("P:x_f1"))
    assert isinstance(pv, Holder)
    assert type(pv.state) is PVState
    assert registry.ensure(spec("P:x_f1")) is pv
    assert registry.get("P:x_f1") is pv
    assert len(registry) == 1
    assert list(registry) == [pv]
    assert registry.version == 1


def test_ensure_promotes_the_placeholder_as_the_same_object() -> None:
    registry = make()
    placeholder = registry.attach("P:x_i2")
    state = placeholder.state
    pv = registry.ensure(spec("P:x_i2"))
    assert pv is placeholder
    assert pv.state is state
    assert registry.placeholders == {}
    assert registry.pvs == {"P:x_i2": placeholder}
    assert registry.pvlist() == "P:x_i2"
    assert registry.version == 1
    # After promotion it is a PV: release no longer forgets it.
    assert registry.release(pv) is False
    assert registry.get("P:x_i2") is pv


def test_pv_limit() -> None:
    registry = make(max_pvs=2)
    a = registry.ensure(spec("P:a_f1"))
    registry.ensure(spec("P:b_f1"))
    assert refusal(registry.ensure, spec("P:c_f1")) is Reason.PV_LIMIT
    assert registry.get("P:c_f1") is None
    assert len(registry) == 2
    assert registry.pvlist() == "P:a_f1,P:b_f1"
    assert registry.version == 2
    # Existing PVs are still returned at the limit.
    assert registry.ensure(spec("P:a_f1")) is a


def test_pv_limit_leaves_a_placeholder_in_place() -> None:
    registry = make(max_pvs=1)
    registry.ensure(spec("P:a_f1"))
    placeholder = registry.attach("P:b_f1")
    assert refusal(registry.ensure, spec("P:b_f1")) is Reason.PV_LIMIT
    assert registry.placeholders == {"P:b_f1": placeholder}
    assert registry.get("P:b_f1") is None
    # Once room is made, the put promotes that same placeholder.
    registry.delete("P:a_f1")
    assert registry.ensure(spec("P:b_f1")) is placeholder


# --- release and delete -------------------------------------------------------------------


def test_release_only_forgets_placeholders() -> None:
    registry = make()
    placeholder = registry.attach("P:p_f1")
    pv = registry.ensure(spec("P:q_f1"))
    assert registry.release(pv) is False
    assert registry.get("P:q_f1") is pv
    assert registry.release(placeholder) is True
    assert registry.lookup("P:p_f1") is None
    assert registry.release(placeholder) is False
    assert registry.version == 1


def test_release_of_a_stale_object_keeps_the_current_placeholder() -> None:
    registry = make()
    old = registry.attach("P:p_f1")
    registry.release(old)
    new = registry.attach("P:p_f1")
    assert new is not old
    assert registry.release(old) is False
    assert registry.lookup("P:p_f1") is new


def test_delete() -> None:
    registry = make()
    pv = registry.ensure(spec("P:x_f1"))
    assert registry.delete("P:x_f1") is pv
    assert registry.get("P:x_f1") is None
    assert len(registry) == 0
    assert registry.pvlist() == ""
    assert registry.version == 2


def test_delete_of_nothing_is_no_such_pv() -> None:
    registry = make()
    assert refusal(registry.delete, "P:x_f1") is Reason.NO_SUCH_PV
    registry.attach("P:w_f1")
    assert refusal(registry.delete, "P:w_f1") is Reason.NO_SUCH_PV  # a placeholder is no PV
    assert "P:w_f1" in registry.placeholders
    registry.ensure(spec("P:x_f1"))
    registry.delete("P:x_f1")
    assert refusal(registry.delete, "P:x_f1") is Reason.NO_SUCH_PV
    assert registry.version == 2


def test_recreate_after_delete_is_a_new_object() -> None:
    registry = make()
    first = registry.ensure(spec("P:x_f1"))
    registry.delete("P:x_f1")
    second = registry.ensure(spec("P:x_f1"))
    assert second is not first
    assert second.state.defined is False


# --- pvlist and version -------------------------------------------------------------------


def test_pvlist_in_creation_order() -> None:
    registry = make()
    for name in ("P:c_f1", "P:a_i3", "P:b_C8"):
        registry.ensure(spec(name))
    assert registry.pvlist() == "P:c_f1,P:a_i3,P:b_C8"
    registry.delete("P:a_i3")
    assert registry.pvlist() == "P:c_f1,P:b_C8"
    registry.ensure(spec("P:a_i3"))
    assert registry.pvlist() == "P:c_f1,P:b_C8,P:a_i3"
    assert [pv.state.spec.name for pv in registry] == ["P:c_f1", "P:b_C8", "P:a_i3"]


def test_pvlist_is_cached_while_unchanged() -> None:
    registry = make()
    registry.ensure(spec("P:a_f1"))
    registry.ensure(spec("P:b_f1"))
    first = registry.pvlist()
    assert first == "P:a_f1,P:b_f1"
    assert registry.pvlist() is first
    # Things that are not creates or deletes leave the cache alone.
    registry.ensure(spec("P:a_f1"))
    holder = registry.attach("P:w_f1")
    registry.release(holder)
    assert registry.pvlist() is first
    registry.ensure(spec("P:c_f1"))
    second = registry.pvlist()
    assert second == "P:a_f1,P:b_f1,P:c_f1"
    assert registry.pvlist() is second


def test_version_bumps_on_every_create_and_delete_only() -> None:
    registry = make()
    versions = [registry.version]
    registry.attach("P:w_f1")
    versions.append(registry.version)
    registry.ensure(spec("P:a_f1"))
    versions.append(registry.version)
    registry.ensure(spec("P:a_f1"))
    versions.append(registry.version)
    registry.ensure(spec("P:w_f1"))  # promotion is a create
    versions.append(registry.version)
    registry.delete("P:a_f1")
    versions.append(registry.version)
    with pytest.raises(Refused):
        registry.delete("P:a_f1")
    versions.append(registry.version)
    assert versions == [0, 0, 1, 1, 2, 3, 3]


def test_a_hundred_thousand_creations() -> None:
    grammar = Grammar("P", NameLimits())
    registry = Registry(grammar, Holder)
    names = [f"P:n{i}_f1" for i in range(100_000)]
    for i, name in enumerate(names):
        registry.ensure(grammar.parse(name))
        if i in (0, 1, 999, 54_321):
            assert registry.pvlist() == ",".join(names[: i + 1])
    assert len(registry) == 100_000
    assert registry.version == 100_000
    text = registry.pvlist()
    assert text == ",".join(names)
    assert text.split(",") == names
    assert refusal(registry.ensure, grammar.parse("P:extra_f1")) is Reason.PV_LIMIT
    registry.delete("P:n500_f1")
    expected = names[:500] + names[501:]
    assert registry.pvlist().split(",") == expected
    registry.ensure(grammar.parse("P:extra_f1"))
    assert registry.pvlist().split(",") == expected + ["P:extra_f1"]
