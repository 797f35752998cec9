"""PV attributes and their record-style fields (relayd.meta): the field table and checks."""

from __future__ import annotations

import math
from dataclasses import FrozenInstanceError, fields

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relayd.core import menus
from relayd.core.errors import Reason, Refused
from relayd.core.meta import (
    CTRL_FIELDS, DEFAULT_META, FIELDS, META_KEYS, SEVERITY_MENU, STATUS_MENU, STRING_SIZE,
    Meta, apply_changes, check_changes, field_value, record_type,
)
from relayd.core.names import Grammar, NameLimits

G = Grammar("P", NameLimits(max_name_length=64, max_elements=1000))

WRITABLE = ("EGU", "PREC", "DESC", "HOPR", "LOPR", "DRVH", "DRVL", "HIHI", "HIGH", "LOW",
            "LOLO", "HHSV", "HSV", "LSV", "LLSV", "HYST", "TMO")
READ_ONLY = ("NELM", "NORD", "RTYP", "SEVR", "STAT")
LIMITS = ("hihi", "high", "low", "lolo")
NUMBERS = ("hopr", "lopr", "drvh", "drvl")
SEVERITIES = ("hhsv", "hsv", "lsv", "llsv")


def refused(changes: object) -> str:
    """The detail of the refusal of `changes` (it must be refused as badValue)."""
    with pytest.raises(Refused) as info:
        check_changes(changes)
    assert info.value.reason is Reason.BAD_VALUE
    return info.value.detail


# --- the field table -----------------------------------------------------------------------


def test_the_fields_and_their_ca_types() -> None:
    assert tuple(FIELDS) == WRITABLE + READ_ONLY
    types = {name: field.ca_type for name, field in FIELDS.items()}
    assert types == {
        "EGU": "string", "DESC": "string", "RTYP": "string",
        "PREC": "short",
        "HOPR": "double", "LOPR": "double", "DRVH": "double", "DRVL": "double",
        "HIHI": "double", "HIGH": "double", "LOW": "double", "LOLO": "double",
        "HYST": "double", "TMO": "double",
        "HHSV": "enum", "HSV": "enum", "LSV": "enum", "LLSV": "enum",
        "SEVR": "enum", "STAT": "enum",
        "NELM": "long", "NORD": "long",
    }


def test_writable_and_read_only_fields() -> None:
    assert [name for name, field in FIELDS.items() if field.writable] == list(WRITABLE)
    assert [name for name, field in FIELDS.items() if not field.writable] == list(READ_ONLY)
    assert META_KEYS == {name.lower() for name in WRITABLE}
    assert {f.name for f in fields(Meta)} == META_KEYS
    assert all(field.attribute == name.lower() for name, field in FIELDS.items())


def test_menus() -> None:
    assert SEVERITY_MENU == ("NO_ALARM", "MINOR", "MAJOR", "INVALID")
    for name in ("HHSV", "HSV", "LSV", "LLSV", "SEVR"):
        assert FIELDS[name].menu == SEVERITY_MENU
    assert FIELDS["STAT"].menu == STATUS_MENU
    # menuAlarmStat: the statuses relayd raises sit at their EPICS indexes.
    for code, text in ((menus.STAT_NONE, "NO_ALARM"), (menus.STAT_HIHI, "HIHI"),
                       (menus.STAT_HIGH, "HIGH"), (menus.STAT_LOLO, "LOLO"),
                       (menus.STAT_LOW, "LOW"), (menus.STAT_TIMEOUT, "TIMEOUT"),
                       (menus.STAT_UDF, "UDF")):
        assert STATUS_MENU[code] == text
    assert all(not field.menu for field in FIELDS.values() if field.ca_type != "enum")


# --- defaults ------------------------------------------------------------------------------


def test_defaults() -> None:
    meta = Meta()
    assert meta == DEFAULT_META
    assert (meta.egu, meta.prec, meta.desc) == ("", 0, "")
    assert (meta.hopr, meta.lopr, meta.drvh, meta.drvl) == (0.0, 0.0, 0.0, 0.0)
    assert (meta.hihi, meta.high, meta.low, meta.lolo) == (None, None, None, None)
    # As in pcaspy, so that a limit alone raises alarms (an ai record defaults to NO_ALARM).
    assert (meta.hhsv, meta.hsv, meta.lsv, meta.llsv) == (
        menus.MAJOR, menus.MINOR, menus.MINOR, menus.MAJOR)
    assert (meta.hyst, meta.tmo) == (0.0, 0.0)
    assert meta.has_limits is False
    assert meta.has_display is False
    assert meta.changes() == {}


def test_meta_is_frozen() -> None:
    with pytest.raises(FrozenInstanceError):
        DEFAULT_META.egu = "mm"  # type: ignore[misc]


@pytest.mark.parametrize("name", LIMITS)
def test_unset_limits_read_zero(name: str) -> None:
    assert field_value(DEFAULT_META, name.upper()) == 0.0
    assert field_value(Meta(**{name: -2.5}), name.upper()) == -2.5


def test_field_value_of_every_writable_field() -> None:
    meta = Meta(egu="mm", prec=3, desc="a PV", hopr=10, lopr=-10, drvh=5, drvl=-5, hihi=9,
                high=8, low=-8, lolo=-9, hhsv=1, hsv=2, lsv=3, llsv=0, hyst=0.5, tmo=2)
    assert {name: field_value(meta, name) for name in WRITABLE} == {
        "EGU": "mm", "PREC": 3, "DESC": "a PV", "HOPR": 10, "LOPR": -10, "DRVH": 5,
        "DRVL": -5, "HIHI": 9, "HIGH": 8, "LOW": -8, "LOLO": -9, "HHSV": 1, "HSV": 2,
        "LSV": 3, "LLSV": 0, "HYST": 0.5, "TMO": 2,
    }


# --- strings: EGU, DESC ------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["egu", "desc"])
def test_strings(key: str) -> None:
    assert check_changes({key: "mm"}) == {key: "mm"}
    assert check_changes({key: ""}) == {key: ""}
    assert check_changes({key: "x" * STRING_SIZE}) == {key: "x" * STRING_SIZE}
    assert check_changes({key: "µ" * 19}) == {key: "µ" * 19}       # 38 bytes
    assert check_changes({key: b"deg C"}) == {key: "deg C"}       # bin is text too
    assert check_changes({key: b"mm\0junk"}) == {key: "mm"}       # a C string ends at NUL
    assert STRING_SIZE == 39


@pytest.mark.parametrize("key", ["egu", "desc"])
@pytest.mark.parametrize("value, why", [
    ("x" * 40, "longer than 39 bytes"),
    ("µ" * 20, "longer than 39 bytes"),  # 40 bytes in UTF-8, 20 characters
    (5, "5 is not text"),
    (1.5, "1.5 is not text"),
    (None, "None is not text"),
    (["m", "m"], "['m', 'm'] is not text"),
])
def test_bad_strings(key: str, value: object, why: str) -> None:
    assert refused({key: value}) == f"{key.upper()}: {why}"


# --- PREC ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("value, stored", [(0, 0), (3, 3), (17, 17), (2.0, 2)])
def test_prec(value: object, stored: int) -> None:
    checked = check_changes({"prec": value})
    assert checked == {"prec": stored} and type(checked["prec"]) is int


@pytest.mark.parametrize("value, why", [
    (-1, "-1 is outside 0..17"),
    (18, "18 is outside 0..17"),
    (2.5, "2.5 is not an integer"),
    (True, "True is not an integer"),
    ("3", "'3' is not an integer"),
    (None, "None is not an integer"),
    (math.nan, "nan is not an integer"),
])
def test_bad_prec(value: object, why: str) -> None:
    assert refused({"prec": value}) == f"PREC: {why}"


# --- display and control limits -----------------------------------------------------------------


@pytest.mark.parametrize("key", NUMBERS)
@pytest.mark.parametrize("value", [0, -5, 1e300, 2.5, -0.0])
def test_display_and_control_limits(key: str, value: float) -> None:
    checked = check_changes({key: value})
    assert checked == {key: float(value)} and type(checked[key]) is float


@pytest.mark.parametrize("key", NUMBERS)
@pytest.mark.parametrize("value, why", [
    (math.nan, "nan is not finite"),
    (math.inf, "inf is not finite"),
    (-math.inf, "-inf is not finite"),
    (None, "None is not a number"),       # only alarm limits can be unset
    (True, "True is not a number"),
    ("10", "'10' is not a number"),
    ([1.0], "[1.0] is not a number"),
])
def test_bad_display_and_control_limits(key: str, value: object, why: str) -> None:
    assert refused({key: value}) == f"{key.upper()}: {why}"


# Every numeric field, whatever its checker: an int too large for a float64 is refused, not
# an OverflowError (a Python client and an autosave import hand such ints over; msgpack
# cannot carry them).
HUGE_INTS = [10**400, -(10**400), 2**1024, 10**5000]
HUGE_IDS = ["1e400", "-1e400", "2**1024", "1e5000"]  # 1e5000: beyond the 4,300 digits repr takes


@pytest.mark.parametrize("key", NUMBERS + LIMITS + ("hyst", "tmo"))
@pytest.mark.parametrize("value", HUGE_INTS, ids=HUGE_IDS)
def test_an_int_too_large_for_a_double_is_refused(key: str, value: int) -> None:
    detail = refused({key: value})
    assert detail.startswith(f"{key.upper()}: ") and detail.endswith(" does not fit in a float64")
    assert len(detail) < 100  # not the 400 digits


@pytest.mark.parametrize("key", ["prec", *SEVERITIES])
@pytest.mark.parametrize("value", HUGE_INTS, ids=HUGE_IDS)
def test_a_huge_int_for_an_integer_field_is_refused(key: str, value: int) -> None:
    assert len(refused({key: value})) < 150


def test_a_huge_key_is_refused_and_shown_short() -> None:
    with pytest.raises(Refused) as info:
        check_changes({10**5000: 1.0})
    assert "unknown attribute an integer of 16610 bits" in info.value.detail


@pytest.mark.parametrize("meta, limits", [
    (Meta(), (0.0, 0.0)),
    (Meta(hopr=100.0, lopr=-100.0), (-100.0, 100.0)),     # DRVH/DRVL unset: HOPR/LOPR
    (Meta(hopr=100.0), (0.0, 100.0)),
    (Meta(hopr=100.0, lopr=-100.0, drvh=50.0, drvl=-50.0), (-50.0, 50.0)),
    (Meta(hopr=100.0, drvh=50.0), (0.0, 50.0)),            # DRVH > DRVL = 0: set
    (Meta(lopr=-100.0, drvl=-5.0), (-5.0, 0.0)),           # DRVH 0 > DRVL -5: set
    (Meta(hopr=100.0, drvh=5.0, drvl=5.0), (0.0, 100.0)),   # DRVH = DRVL: unset, as in ao
    (Meta(hopr=100.0, drvh=-5.0, drvl=5.0), (0.0, 100.0)),  # DRVH < DRVL: unset
])
def test_control_limits_are_drvl_drvh_once_set_else_lopr_hopr(meta: Meta, limits: tuple
                                                               ) -> None:
    assert meta.control_limits() == limits


# --- alarm limits --------------------------------------------------------------------------------


@pytest.mark.parametrize("key", LIMITS)
def test_alarm_limits(key: str) -> None:
    assert check_changes({key: 10}) == {key: 10.0}
    assert type(check_changes({key: 10})[key]) is float
    assert check_changes({key: -2.5}) == {key: -2.5}
    assert check_changes({key: 0}) == {key: 0.0}


@pytest.mark.parametrize("key", LIMITS)
@pytest.mark.parametrize("unset", [None, math.nan, float("-nan")])
def test_none_or_nan_unsets_an_alarm_limit(key: str, unset: object) -> None:
    assert check_changes({key: unset}) == {key: None}
    meta = apply_changes(Meta(**{key: 5.0}), {key: unset})
    assert getattr(meta, key) is None
    assert meta.has_limits is False


@pytest.mark.parametrize("key", LIMITS)
@pytest.mark.parametrize("value, why", [
    (math.inf, "inf is not finite"),
    (-math.inf, "-inf is not finite"),
    (True, "True is not a number"),
    ("high", "'high' is not a number"),
    (b"1", "b'1' is not a number"),
    ({"value": 1}, "{'value': 1} is not a number"),
])
def test_bad_alarm_limits(key: str, value: object, why: str) -> None:
    assert refused({key: value}) == f"{key.upper()}: {why}"


# --- severities ----------------------------------------------------------------------------------


@pytest.mark.parametrize("key", SEVERITIES)
@pytest.mark.parametrize("value, index", [
    ("NO_ALARM", 0), ("MINOR", 1), ("MAJOR", 2), ("INVALID", 3),
    ("minor", 1), ("Major", 2),
    (0, 0), (1, 1), (2, 2), (3, 3),
])
def test_severities_by_name_and_index(key: str, value: object, index: int) -> None:
    assert check_changes({key: value}) == {key: index}


@pytest.mark.parametrize("key", SEVERITIES)
@pytest.mark.parametrize("value", [4, -1, 1.0, True, "MAJR", "", " MAJOR", None, [2]])
def test_bad_severities(key: str, value: object) -> None:
    assert refused({key: value}) == (
        f"{key.upper()}: {value!r} is not one of NO_ALARM, MINOR, MAJOR, INVALID (or 0..3)")


# --- HYST and TMO --------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["hyst", "tmo"])
def test_hyst_and_tmo(key: str) -> None:
    assert check_changes({key: 0}) == {key: 0.0}
    assert check_changes({key: 0.5}) == {key: 0.5}
    assert check_changes({key: 3600}) == {key: 3600.0}


@pytest.mark.parametrize("key", ["hyst", "tmo"])
@pytest.mark.parametrize("value, why", [
    (-0.5, "-0.5 is negative"),
    (-1, "-1 is negative"),
    (math.nan, "nan is not finite"),
    (math.inf, "inf is not finite"),
    (None, "None is not a number"),
    ("1", "'1' is not a number"),
    (False, "False is not a number"),
])
def test_bad_hyst_and_tmo(key: str, value: object, why: str) -> None:
    assert refused({key: value}) == f"{key.upper()}: {why}"


# --- keys and the whole map ----------------------------------------------------------------------


@pytest.mark.parametrize("key", [
    "EGU", "Egu", "units", "val", "nelm", "nord", "rtyp", "sevr", "stat", "", "egu ",
    5, None, b"egu",
])
def test_unknown_keys_are_refused(key: object) -> None:
    assert refused({key: 1}) == (
        f"unknown attribute {key!r} (attributes are desc, drvh, drvl, egu, hhsv, high, "
        "hihi, hopr, hsv, hyst, llsv, lolo, lopr, low, lsv, prec, tmo)")


@pytest.mark.parametrize("changes", [None, [], [("egu", "mm")], "egu=mm", 5])
def test_meta_must_be_a_map(changes: object) -> None:
    assert refused(changes) == f"'meta' must be a map, not {type(changes).__name__}"


def test_empty_map_changes_nothing() -> None:
    assert check_changes({}) == {}
    assert apply_changes(DEFAULT_META, {}) == DEFAULT_META


def test_every_attribute_at_once() -> None:
    changes = {"egu": "K", "prec": 2, "desc": "cold head", "hopr": 300, "lopr": 0,
               "drvh": 290, "drvl": 4, "hihi": 295, "high": 280, "low": 5, "lolo": 4.5,
               "hhsv": "INVALID", "hsv": "MAJOR", "lsv": 1, "llsv": "no_alarm",
               "hyst": 0.5, "tmo": 10}
    meta = apply_changes(DEFAULT_META, changes)
    assert meta == Meta(egu="K", prec=2, desc="cold head", hopr=300.0, lopr=0.0, drvh=290.0,
                        drvl=4.0, hihi=295.0, high=280.0, low=5.0, lolo=4.5, hhsv=3, hsv=2,
                        lsv=1, llsv=0, hyst=0.5, tmo=10.0)
    # lopr 0 and lsv MINOR are the defaults
    assert set(meta.changes()) == META_KEYS - {"lopr", "lsv"}


def test_all_or_nothing() -> None:
    """One bad key or value refuses the whole map, wherever it is; nothing is applied."""
    before = Meta(egu="mm", hihi=5.0)
    for bad in ({"egu": "K", "hihi": "x"}, {"hihi": 7, "nope": 1}, {"bogus": 1, "egu": "K"},
                {"egu": "K", "prec": 99, "desc": "d"}):
        with pytest.raises(Refused):
            apply_changes(before, bad)
        assert before == Meta(egu="mm", hihi=5.0)


def test_apply_changes_keeps_the_rest() -> None:
    meta = apply_changes(Meta(egu="mm", hihi=5.0, hhsv=menus.MINOR), {"hihi": 6})
    assert meta == Meta(egu="mm", hihi=6.0, hhsv=menus.MINOR)
    assert apply_changes(meta, {"hihi": None}) == Meta(egu="mm", hhsv=menus.MINOR)


# --- has_limits, has_display, changes -------------------------------------------------------------


@pytest.mark.parametrize("key", LIMITS)
def test_has_limits(key: str) -> None:
    assert Meta(**{key: 1.0}).has_limits is True
    assert Meta(**{key: 0.0}).has_limits is True   # a limit at 0 is set
    assert Meta(**{key: None}).has_limits is False


@pytest.mark.parametrize("changes", [
    {"egu": "mm", "hopr": 10, "prec": 3, "desc": "d", "hhsv": 0, "hyst": 1, "tmo": 5},
])
def test_only_alarm_limits_make_has_limits(changes: dict) -> None:
    assert apply_changes(DEFAULT_META, changes).has_limits is False


@pytest.mark.parametrize("key, value", [
    ("egu", "mm"), ("prec", 3), ("hopr", 10.0), ("lopr", -1.0), ("drvh", 1.0), ("drvl", -1.0),
    ("hihi", 1.0), ("high", 1.0), ("low", -1.0), ("lolo", -1.0),
])
def test_has_display_for_what_dbr_ctrl_carries(key: str, value: object) -> None:
    assert key in CTRL_FIELDS
    assert Meta(**{key: value}).has_display is True


@pytest.mark.parametrize("key, value", [
    ("desc", "not in DBR_CTRL"), ("hhsv", 0), ("hsv", 3), ("hyst", 1.0), ("tmo", 1.0),
    ("hihi", 0.0), ("hopr", 0.0), ("egu", ""),  # all-zero is what DBR_CTRL shows anyway
])
def test_no_display_for_the_rest(key: str, value: object) -> None:
    assert Meta(**{key: value}).has_display is False


def test_has_flags_follow_changes() -> None:
    meta = apply_changes(DEFAULT_META, {"hihi": 5, "egu": "mm"})
    assert (meta.has_limits, meta.has_display) == (True, True)
    meta = apply_changes(meta, {"hihi": None, "egu": ""})
    assert (meta.has_limits, meta.has_display) == (False, False)


def test_changes_are_what_differs_from_the_defaults() -> None:
    assert Meta(egu="mm", hihi=1.0, hhsv=menus.MAJOR, hsv=menus.NO_ALARM).changes() == {
        "egu": "mm", "hihi": 1.0, "hsv": 0}
    assert Meta(hihi=0.0).changes() == {"hihi": 0.0}  # set to 0 is not unset


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(sorted(META_KEYS)), st.one_of(
    st.none(), st.booleans(), st.integers(-5, 40), st.floats(), st.text(max_size=45),
    st.sampled_from(SEVERITY_MENU), st.integers(2**1023, 2**1100)), max_size=6))
def test_random_maps_are_checked_all_or_nothing(changes: dict) -> None:
    try:
        checked = check_changes(changes)
    except Refused as refusal:
        assert refusal.reason is Reason.BAD_VALUE
        return
    assert set(checked) == set(changes)
    meta = apply_changes(DEFAULT_META, changes)
    for key, value in checked.items():
        assert getattr(meta, key) == value or (value is None and getattr(meta, key) is None)
    # Checked values are stable: checking them again changes nothing.
    assert check_changes(checked) == checked


# --- record types ----------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix, rtyp", [
    ("f1", "ai"), ("i1", "longin"), ("c1", "waveform"), ("c40", "waveform"),
    ("f4", "waveform"), ("i4", "waveform"), ("F4", "waveform"), ("I2", "waveform"),
    ("C10", "waveform"),
])
def test_record_type(suffix: str, rtyp: str) -> None:
    spec = G.parse(f"P:x_{suffix}")
    assert spec is not None
    assert record_type(spec) == rtyp
