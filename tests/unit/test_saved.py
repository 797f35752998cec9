"""What autosave keeps of a PV and how it turns back into one (relayd.saved).

Two round trips for every kind of PV: live state -> `SavedPV` -> `restore` -> a new
state serving the same thing, and `SavedPV` -> JSON text -> `from_json` -> the same
`SavedPV` (the form ``relayd autosave export/import`` uses).
"""

from __future__ import annotations

import base64
import json
import math

import numpy as np
import pytest

from relayd.core import menus
from relayd.core.errors import Reason, Refused
from relayd.core.meta import DEFAULT_META, Meta, apply_changes
from relayd.core.names import Grammar, Kind, NameLimits, PVSpec
from relayd.core.pvstate import PVState, new_state
from relayd.store.rows import SavedPV, from_json, from_state, make, restore, to_json
from relayd.core.values import convert

G = Grammar("P")
TS = 1_700_000_000_123_456_789  # a source time stamp with every nanosecond digit used


def spec(suffix: str) -> PVSpec:
    result = G.parse(f"P:s_{suffix}")
    assert result is not None
    return result


def live(suffix: str, *puts: object, meta: Meta = DEFAULT_META, ts_ns: int = TS) -> PVState:
    """A state of `suffix` after `puts`, each converted as a put would be."""
    state = new_state(spec(suffix), meta)
    for raw in puts:
        state.put(convert(state.spec, raw), ts_ns)
    return state


def rebuilt(saved: SavedPV) -> PVState:
    """A new state from `saved`, as `Relay.restore` builds it."""
    pv_spec, stored, ts_ns, meta = restore(saved)
    state = new_state(pv_spec, meta)
    state.put(stored, ts_ns)
    return state


def through_json(saved: SavedPV) -> SavedPV:
    """Strict JSON on the way (no NaN literals): an export must be standard JSON."""
    return from_json(json.loads(json.dumps(to_json(saved), allow_nan=False)))


def same_served(one: PVState, other: PVState) -> bool:
    a, b = one.served(), other.served()
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (type(a) is type(b) and a.dtype == b.dtype
                and np.array_equal(a, b, equal_nan=a.dtype.kind == "f"))
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return type(a) is type(b) and a == b


def same_saved(one: SavedPV, other: SavedPV) -> bool:
    """Equality, with NaN equal to NaN for a scalar value."""
    if isinstance(one.value, float) and math.isnan(one.value):
        return (isinstance(other.value, float) and math.isnan(other.value)
                and one == SavedPV(**{**other.__dict__, "value": one.value}))
    return one == other


# (suffix, puts, what the PV serves afterwards)
CASES = [
    ("f1", [21.2], 21.2),
    ("f1", [5e-324], 5e-324),
    ("f1", [-0.0], -0.0),
    ("f1", [math.inf], math.inf),
    ("f1", [-math.inf], -math.inf),
    ("f1", [math.nan], math.nan),
    ("i1", [-(2**31)], -(2**31)),
    ("i1", [2**31 - 1], 2**31 - 1),
    ("c1", ["x"], b"x"),
    ("c40", ["The sun is shining"], b"The sun is shining\0"),
    ("c5", ["exact"], b"exact"),                       # no room for the NUL
    ("c8", [""], b"\0"),                               # empty text is a value too
    ("c10", [b"\xff\xfe\x80ok"], b"\xff\xfe\x80ok\0"),  # not UTF-8
    ("c16", ["Grüße 😀"], "Grüße 😀".encode() + b"\0"),
    ("f4", [[23.0, 0.1, 3231.123, 1e-4]], np.array([23.0, 0.1, 3231.123, 1e-4])),
    ("f10", [[1.0, 2.0, 3.0]], np.array([1.0, 2.0, 3.0])),   # fewer than the count
    ("f3", [[math.nan, math.inf, -math.inf]], np.array([math.nan, math.inf, -math.inf])),
    ("i3", [[2**31 - 1, -(2**31), 0]], np.array([2**31 - 1, -(2**31), 0], dtype=np.int32)),
    ("F5", [[1.0], [2.0, 3.0]], np.array([1.0, 2.0, 3.0])),
    ("F5", [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0, 7.0]], np.array([3.0, 4.0, 5.0, 6.0, 7.0])),
    ("F3", [[math.nan], [1.0]], np.array([math.nan, 1.0])),
    ("I3", [[1], [2], [3], [4]], np.array([2, 3, 4], dtype=np.int32)),
    ("C16", ["first\n", "second\n", "third\n"], b"first\nsecond\nthird\n"[-16:]),
    ("C8", ["abc"], b"abc\0"),
    ("C6", [b"\xff\xfe", b"\x80\x81\x82\x83\x84"], b"\xfe\x80\x81\x82\x83\x84"),
]
IDS = [f"{suffix}-{i}" for i, (suffix, _, _) in enumerate(CASES)]


@pytest.mark.parametrize("suffix, puts, served", CASES, ids=IDS)
def test_state_round_trip(suffix: str, puts: list, served: object) -> None:
    original = live(suffix, *puts)
    copy = rebuilt(from_state(original))
    assert copy.spec == original.spec
    assert same_served(copy, original)
    if isinstance(served, np.ndarray):
        assert np.array_equal(copy.served(), served, equal_nan=True)
    elif isinstance(served, float) and math.isnan(served):
        assert math.isnan(copy.served())
    else:
        assert copy.served() == served
        if isinstance(served, float):
            assert math.copysign(1, copy.served()) == math.copysign(1, served)  # -0.0 kept
    assert copy.ts_ns == TS
    assert (copy.severity, copy.status) == (menus.NO_ALARM, menus.STAT_NONE)


@pytest.mark.parametrize("suffix, puts, served", CASES, ids=IDS)
def test_json_round_trip(suffix: str, puts: list, served: object) -> None:
    saved = from_state(live(suffix, *puts))
    again = through_json(saved)
    assert same_saved(again, saved), (again, saved)
    assert same_served(rebuilt(again), live(suffix, *puts))


def test_a_buffer_is_saved_oldest_first() -> None:
    state = live("I4", [1, 2, 3], [4, 5], [6])
    saved = from_state(state)
    assert saved.buffer is True and saved.count == 4 and saved.kind == "i"
    assert np.frombuffer(saved.value, dtype="<i4").tolist() == [3, 4, 5, 6]
    assert to_json(saved)["value"] == [3, 4, 5, 6]
    # Restored, it goes on appending from there.
    copy = rebuilt(saved)
    copy.put(convert(copy.spec, [7]), TS + 1)
    assert copy.served().tolist() == [4, 5, 6, 7]


def test_stored_forms() -> None:
    """Scalars as numbers, arrays as little-endian bytes, text as bytes (see the store)."""
    assert from_state(live("f1", 2.5)).value == 2.5
    assert type(from_state(live("i1", 7)).value) is int
    assert from_state(live("c10", "hi")).value == b"hi"
    assert from_state(live("f2", [1.0, 2.0])).value == np.array([1.0, 2.0], "<f8").tobytes()
    assert from_state(live("i2", [1, -1])).value == np.array([1, -1], "<i4").tobytes()
    assert from_state(live("C4", "ab")).value == b"ab"
    assert from_state(live("F4")).value == b""  # an empty buffer: no elements


def test_make_takes_a_buffer_content_of_any_dtype_as_its_kind() -> None:
    saved = make(spec("F3"), np.array([1, 2], dtype=np.int64), TS, DEFAULT_META)
    assert np.frombuffer(saved.value, "<f8").tolist() == [1.0, 2.0]


def test_json_forms() -> None:
    """What an export looks like: readable text, numbers and lists."""
    assert to_json(from_state(live("c20", "hello")))["value"] == {"text": "hello"}
    raw = b"\xff\x00\x01"
    encoded = to_json(from_state(live("c10", raw)))["value"]
    assert encoded == {"base64": base64.b64encode(b"\xff").decode()}  # text ends at NUL
    binary = to_json(from_state(live("c10", b"\xff\xfe")))["value"]
    assert base64.b64decode(binary["base64"]) == b"\xff\xfe"
    assert to_json(from_state(live("f3", [math.nan, math.inf, -math.inf])))["value"] == [
        "nan", "inf", "-inf"]
    assert to_json(from_state(live("f1", -math.inf)))["value"] == "-inf"
    assert to_json(from_state(live("i2", [5, -5])))["value"] == [5, -5]
    item = to_json(from_state(live("F4", [1.0], meta=Meta(egu="K"))))
    assert item == {"name": "P:s_F4", "kind": "f", "count": 4, "buffer": True,
                    "value": [1.0], "ts_ns": TS, "attrs": {"egu": "K"}}


ATTRS = {"egu": "mbar", "prec": 3, "desc": "chamber pressure", "hopr": 1e3, "lopr": -1.0,
         "drvh": 900.0, "drvl": 1e-9, "hihi": 100.0, "high": 50.0, "low": 1e-6,
         "lolo": 1e-8, "hhsv": menus.INVALID, "hsv": menus.MAJOR, "lsv": menus.NO_ALARM,
         "llsv": menus.MINOR, "hyst": 0.5, "tmo": 2.5}


def test_attributes_round_trip() -> None:
    meta = apply_changes(DEFAULT_META, ATTRS)
    original = live("f1", 75.0, meta=meta)
    assert (original.severity, original.status) == (menus.MAJOR, menus.STAT_HIGH)
    saved = from_state(original)
    assert saved.attrs == ATTRS
    for copy in (rebuilt(saved), rebuilt(through_json(saved))):
        assert copy.meta == meta
        # The alarm follows from the restored value and limits.
        assert (copy.severity, copy.status) == (menus.MAJOR, menus.STAT_HIGH)


def test_only_attributes_that_differ_from_the_defaults_are_kept() -> None:
    assert from_state(live("f1", 1.0)).attrs == {}
    meta = apply_changes(DEFAULT_META, {"egu": "K", "hihi": None, "tmo": 0})
    assert from_state(live("f1", 1.0, meta=meta)).attrs == {"egu": "K"}


def test_an_unset_limit_stays_unset() -> None:
    meta = apply_changes(apply_changes(DEFAULT_META, {"high": 5.0}), {"high": None})
    copy = rebuilt(through_json(from_state(live("f1", 10.0, meta=meta))))
    assert copy.meta.high is None and copy.severity == menus.NO_ALARM


@pytest.mark.parametrize("suffix, value, attrs, severity, status", [
    ("f1", 200.0, {"hihi": 100.0}, menus.MAJOR, menus.STAT_HIHI),
    ("i1", -5, {"low": 0.0, "lsv": "MINOR"}, menus.MINOR, menus.STAT_LOW),
    ("f3", [1.0, 2.0, -50.0], {"lolo": -10.0}, menus.MAJOR, menus.STAT_LOLO),
    ("F3", [200.0, 1.0], {"hihi": 100.0}, menus.NO_ALARM, menus.STAT_NONE),  # newest counts
])
def test_alarm_state_is_restored(suffix, value, attrs, severity, status) -> None:
    original = live(suffix, value, meta=apply_changes(DEFAULT_META, attrs))
    assert (original.severity, original.status) == (severity, status)
    copy = rebuilt(through_json(from_state(original)))
    assert (copy.severity, copy.status) == (severity, status)


# The last nanosecond of the last second a CA time stamp carries (protocol.TS_MAX).
LAST_NS = (2**32 - 1) * 10**9 + 999_999_999


@pytest.mark.parametrize("ts_ns", [0, 631_152_000 * 10**9, TS, LAST_NS])
def test_time_stamps_are_kept_to_the_nanosecond(ts_ns: int) -> None:
    saved = from_state(live("f1", 1.0, ts_ns=ts_ns))
    assert saved.ts_ns == ts_ns
    assert through_json(saved).ts_ns == ts_ns
    assert rebuilt(saved).ts_ns == ts_ns


def test_restore_gives_the_stored_forms_a_put_gives() -> None:
    for suffix, raw in (("f1", 1.5), ("i1", 3), ("c4", "ab"), ("f2", [1.0, 2.0]),
                        ("i2", [1, 2]), ("F3", [1.0])):
        pv_spec, stored, _, _ = restore(from_state(live(suffix, raw)))
        expected = convert(pv_spec, raw)
        assert type(stored) is type(expected), suffix
        if isinstance(expected, np.ndarray):
            assert stored.dtype == expected.dtype and stored.dtype.isnative
            assert np.array_equal(stored, expected)
        else:
            assert stored == expected


# --- bad rows are refused ----------------------------------------------------------------


def row(name: str = "", kind: str = "f", count: int = 3, buffer: bool = False,
        value: object = b"", ts_ns: int = TS, attrs: dict | None = None) -> SavedPV:
    name = name or f"P:s_{kind.upper() if buffer else kind}{count}"
    return SavedPV(name, kind, count, buffer, value, ts_ns, attrs or {})


@pytest.mark.parametrize("saved, reason", [
    (row(value=None), Reason.BAD_VALUE),                                   # no value
    (row(kind="f", count=1, value=None), Reason.BAD_VALUE),
    (row(value=b"\0" * 7), Reason.BAD_VALUE),                              # not whole doubles
    (row(value=b"\0" * 32), Reason.TOO_MANY_ELEMENTS),                     # 4 doubles, count 3
    (row(kind="i", value=b"\0" * 6), Reason.BAD_VALUE),                    # not whole int32s
    (row(kind="i", count=2, buffer=True, value=b"\0" * 12), Reason.TOO_MANY_ELEMENTS),
    (row(kind="c", count=4, value=b"hello"), Reason.TOO_MANY_ELEMENTS),    # text too long
    (row(kind="c", count=4, buffer=True, value=b"hello"), Reason.TOO_MANY_ELEMENTS),
    (row(count=3, value=b"", attrs={"prec": 99}), Reason.BAD_VALUE),       # bad attribute
    (row(count=3, value=b"", attrs={"bogus": 1}), Reason.BAD_VALUE),       # unknown one
    (row(count=3, value=b"", attrs={"hihi": "high"}), Reason.BAD_VALUE),
])
def test_restore_refuses_a_bad_row(saved: SavedPV, reason: Reason) -> None:
    with pytest.raises(Refused) as info:
        restore(saved)
    assert info.value.reason is reason


@pytest.mark.parametrize("saved", [
    row(name="P:s_i1", kind="i", count=1, value=2**40),
    row(name="P:s_i1", kind="i", count=1, value=2.5),
])
def test_restore_refuses_a_scalar_its_type_cannot_hold(saved: SavedPV) -> None:
    with pytest.raises(Refused):
        restore(saved)




def test_from_json_accepts_a_record_without_attributes() -> None:
    saved = from_json({"name": "P:x_f1", "kind": "f", "count": 1, "buffer": False,
                       "value": 2.0, "ts_ns": 5})
    assert saved == SavedPV("P:x_f1", "f", 1, False, 2.0, 5, {})
    assert saved.spec == PVSpec("P:x_f1", Kind.FLOAT, 1, False)


# --- every column of a row is checked (a store is a file: anything can be in it) ---------

GOOD = {"name": "P:s_f3", "kind": "f", "count": 3, "buffer": False,
        "value": np.array([1.0, 2.0, 3.0], "<f8").tobytes(), "ts_ns": TS, "attrs": {"egu": "K"}}


def good(**changes: object) -> SavedPV:
    return SavedPV(**{**GOOD, **changes})  # type: ignore[arg-type]


def test_the_good_row_is_good() -> None:
    pv_spec, stored, ts_ns, meta = restore(good())
    assert pv_spec == spec("f3") and stored.tolist() == [1.0, 2.0, 3.0]
    assert ts_ns == TS and meta.egu == "K"


B, V = Reason.BAD_NAME, Reason.BAD_VALUE
BAD_COLUMNS = [
    # name: text, of the grammar, saying what the other columns say
    ("name", None, B), ("name", b"P:s_f3", B), ("name", 7, B), ("name", "", B),
    ("name", "P:s f3", B), ("name", "s_f3", B), ("name", "P:s_f3.EGU", B),
    ("name", "P:s_x3", B), ("name", "P:s_F1", B), ("name", "P:s_f03", B),
    ("name", "P:s_i3", V), ("name", "P:s_f4", V), ("name", "P:s_F3", V),
    # kind, count, buffer: exactly what the name says, of the right type
    ("kind", "i", V), ("kind", "F", V), ("kind", None, V), ("kind", b"f", V),
    ("count", 4, V), ("count", "3", V), ("count", 3.0, V), ("count", None, V),
    ("buffer", True, V), ("buffer", 0, V), ("buffer", "no", V), ("buffer", None, V),
    # value: the stored form of the kind
    ("value", None, V), ("value", "1.0,2.0", V), ("value", 24, V), ("value", 1.5, V),
    ("value", b"\0" * 7, V), ("value", b"\0" * 32, Reason.TOO_MANY_ELEMENTS),
    ("value", [1.0, 2.0], V),
    # ts_ns: POSIX nanoseconds a CA time stamp can carry
    ("ts_ns", "1700000000000000000", V), ("ts_ns", "soon", V), ("ts_ns", 1.7e18, V),
    ("ts_ns", None, V), ("ts_ns", True, V), ("ts_ns", -1, V), ("ts_ns", LAST_NS + 1, V),
    ("ts_ns", 2**63 - 1, V), ("ts_ns", b"\0" * 8, V),
    # attrs: a JSON object that meta.check_changes accepts
    ("attrs", "{not json", V), ("attrs", '{"egu": "K"}', V), ("attrs", ["egu"], V),
    ("attrs", None, V), ("attrs", 3, V), ("attrs", {"prec": 99}, V), ("attrs", {"bogus": 1}, V),
    ("attrs", {"hihi": "high"}, V), ("attrs", {"egu": 5}, V), ("attrs", {"hihi": math.inf}, V),
    ("attrs", {1: 2}, V), ("attrs", {"hopr": 10**400}, V),
]


@pytest.mark.parametrize("column, value, reason", BAD_COLUMNS,
                         ids=[f"{c}={v!r}"[:40] for c, v, _ in BAD_COLUMNS])
def test_restore_refuses_every_bad_column(column: str, value: object, reason: Reason) -> None:
    """`Refused` with its reason and one line, never another exception, never a pass."""
    with pytest.raises(Refused) as info:
        restore(good(**{column: value}))
    assert info.value.reason is reason, info.value
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("suffix, value", [
    ("f1", "1.5"), ("f1", b"\0" * 8), ("f1", None), ("f1", 2**1100), ("f1", [1.0]),
    ("i1", True), ("i1", 2.0), ("i1", "3"), ("i1", 2**31), ("i1", b"\1\0\0\0"),
    ("c4", "text"), ("c4", 3), ("c4", 1.0), ("c4", b"hello"),
    ("C4", "ab"), ("C4", 2), ("I3", 12), ("I3", b"\0" * 16), ("F3", 1.0),
])
def test_restore_refuses_a_value_of_the_wrong_form(suffix: str, value: object) -> None:
    pv_spec = spec(suffix)
    saved = SavedPV(pv_spec.name, pv_spec.kind.value, pv_spec.count, pv_spec.buffer, value,
                    TS, {})
    with pytest.raises(Refused):
        restore(saved)


def test_a_float_pv_takes_an_integer_saved_value() -> None:
    """SQLite keeps 2.0 as REAL, but a file written by another tool may say 2."""
    saved = SavedPV("P:s_f1", "f", 1, False, 2, TS, {})
    assert restore(saved)[1] == 2.0 and type(restore(saved)[1]) is float


def test_restore_checks_the_name_against_the_relay_grammar_and_limits() -> None:
    saved = SavedPV("Q:s_f1", "f", 1, False, 1.0, TS, {})
    restore(saved)  # a name of some relay: fine without a grammar (import, export)
    with pytest.raises(Refused) as info:
        restore(saved, G)
    assert info.value.reason is Reason.BAD_NAME
    wide = SavedPV("P:s_f20", "f", 20, False, b"", TS, {})
    restore(wide, G)
    with pytest.raises(Refused) as info:
        restore(wide, Grammar("P", NameLimits(max_elements=10)))
    assert info.value.reason is Reason.COUNT_LIMIT


@pytest.mark.parametrize("name", ["P:a:b_f1", "lab:bl1:x_f1", "a-b:c_d_f1"])
def test_a_name_under_any_prefix_is_a_name_of_some_relay(name: str) -> None:
    restore(SavedPV(name, "f", 1, False, 1.0, TS, {}))


def test_a_refusal_names_the_row() -> None:
    with pytest.raises(Refused) as info:
        restore(good(ts_ns="soon"))
    assert info.value.detail.startswith("P:s_f3: ")
    with pytest.raises(Refused) as info:
        restore(good(name=None))
    assert "None" in info.value.detail
    assert good(name=None).label == "a row named None"
    assert good(name="x\n" * 100).label == "a row named " + repr("x\n" * 100)[:57] + "..."
    assert good().label == "P:s_f3"


# --- JSON records (import) -------------------------------------------------------------

RECORD = {"name": "P:x_f2", "kind": "f", "count": 2, "buffer": False, "value": [1.0, "nan"],
          "ts_ns": TS, "attrs": {"egu": "K"}}


@pytest.mark.parametrize("changes", [
    {"name": None}, {"name": 5}, {"name": "x_f2"}, {"kind": "q"}, {"kind": "i"},
    {"count": "2"}, {"count": 2.0}, {"count": True}, {"buffer": "false"}, {"buffer": 0},
    {"value": "one"}, {"value": ["a", 1.0]}, {"value": [True, 1.0]}, {"value": [1.0] * 3},
    {"value": {"text": "x"}}, {"value": [[1.0], [2.0]]}, {"value": 1.0},
    {"ts_ns": 10**30}, {"ts_ns": -1}, {"ts_ns": "1"}, {"ts_ns": 1.5}, {"ts_ns": None},
    {"attrs": "egu"}, {"attrs": ["egu"]},
])
def test_from_json_refuses_a_bad_record_naming_it(changes: dict) -> None:
    with pytest.raises(Refused) as info:
        restore(from_json({**RECORD, **changes}))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name, value", [
    ("P:x_i2", [2**40, 1]), ("P:x_i2", [1.5, 1]), ("P:x_i1", 2.0), ("P:x_i1", True),
    ("P:x_i1", 2**31), ("P:x_f1", "one"), ("P:x_f1", True), ("P:x_f1", [1.0]),
    ("P:x_c4", {"base64": "abc"}), ("P:x_c4", {"base64": 5}), ("P:x_c4", {"text": 5}),
    ("P:x_c4", {"text": "hello"}), ("P:x_c4", {"other": "x"}), ("P:x_c4", "text"),
    ("P:x_c4", {"text": "\ud800"}), ("P:x_C4", ["a"]),
])
def test_from_json_refuses_a_value_of_the_wrong_form(name: str, value: object) -> None:
    pv_spec = G.parse(name)
    assert pv_spec is not None
    item = {"name": name, "kind": pv_spec.kind.value, "count": pv_spec.count,
            "buffer": pv_spec.buffer, "value": value, "ts_ns": TS}
    with pytest.raises(Refused):
        restore(from_json(item))


@pytest.mark.parametrize("item", [
    None, [], "P:x_f1", {"kind": "f", "count": 1, "buffer": False, "value": 1.0, "ts_ns": 0},
    {"name": "P:x_f1", "kind": "f", "count": 1, "buffer": False, "value": 1.0},
    {"name": "P:x_f1", "kind": "f", "count": 1, "buffer": False, "ts_ns": 0},
])
def test_from_json_refuses_a_record_that_is_not_one(item: object) -> None:
    with pytest.raises(Refused):
        from_json(item)  # type: ignore[arg-type]


def test_restore_takes_what_from_json_takes_and_nothing_else() -> None:
    saved = from_json(RECORD)
    pv_spec, stored, ts_ns, meta = restore(saved)
    assert stored[0] == 1.0 and math.isnan(stored[1]) and meta.egu == "K"
