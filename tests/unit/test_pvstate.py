"""A PV's state and how puts change it (relayd.pvstate)."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from relayd.core import menus
from relayd.core.meta import DEFAULT_META, FIELDS, Meta
from relayd.core.names import Grammar, PVSpec
from relayd.core.pvstate import BufferState, PVState, new_state
from relayd.core.values import convert

G = Grammar("P")


def spec(suffix: str) -> PVSpec:
    result = G.parse(f"P:s_{suffix}")
    assert result is not None
    return result


def put(state: PVState, raw: object, ts_ns: int = 1) -> bool:
    return state.put(convert(state.spec, raw), ts_ns)


def test_alarm_codes() -> None:
    assert (menus.NO_ALARM, menus.MINOR, menus.MAJOR, menus.INVALID) == (0, 1, 2, 3)
    assert menus.STAT_NONE == 0
    assert menus.STAT_UDF == 17


@pytest.mark.parametrize("suffix", ["f1", "i1", "f3", "i3", "c5", "F3", "I3", "C5"])
def test_new_state_is_undefined(suffix: str) -> None:
    state = new_state(spec(suffix))
    assert state.defined is False
    assert state.severity == 3
    assert state.status == 17
    assert state.ts_ns == 0


def test_new_state_class() -> None:
    assert type(new_state(spec("f3"))) is PVState
    assert type(new_state(spec("c3"))) is PVState
    assert type(new_state(spec("F3"))) is BufferState
    assert type(new_state(spec("C3"))) is BufferState


@pytest.mark.parametrize("suffix", ["f1", "i1"])
def test_undefined_scalar_serves_zero(suffix: str) -> None:
    state = new_state(spec(suffix))
    assert state.served() == 0
    assert len(state) == 1


@pytest.mark.parametrize(
    "suffix, dtype",
    [("f3", np.float64), ("i3", np.int32), ("F3", np.float64), ("I3", np.int32)],
)
def test_undefined_array_serves_nothing(suffix: str, dtype: type) -> None:
    state = new_state(spec(suffix))
    served = state.served()
    assert isinstance(served, np.ndarray)
    assert served.shape == (0,)
    assert served.dtype == dtype
    assert len(state) == 0


@pytest.mark.parametrize("suffix", ["c1", "c5", "C5"])
def test_undefined_text_serves_a_terminator(suffix: str) -> None:
    state = new_state(spec(suffix))
    assert state.served() == b"\0"
    assert len(state) == 1


@pytest.mark.parametrize(
    "suffix, first, second",
    [
        ("f1", 1.0, 2.0),
        ("i1", 1, 2),
        ("f3", [1.0], [2.0, 3.0]),
        ("c5", "a", "b"),
        ("F3", [1.0], [2.0]),
        ("C5", "a", "b"),
    ],
)
def test_first_put_changes_alarm_second_does_not(suffix: str, first: object, second: object) -> None:
    state = new_state(spec(suffix))
    assert put(state, first, ts_ns=100) is True
    assert state.defined is True
    assert (state.severity, state.status) == (menus.NO_ALARM, menus.STAT_NONE)
    assert state.ts_ns == 100
    assert put(state, second, ts_ns=200) is False
    assert (state.severity, state.status) == (menus.NO_ALARM, menus.STAT_NONE)
    assert state.ts_ns == 200


def test_scalar_holds_the_last_value() -> None:
    state = new_state(spec("f1"))
    put(state, 1.5)
    assert state.served() == 1.5
    put(state, -2)
    assert state.served() == -2.0
    assert type(state.served()) is float
    assert len(state) == 1
    ints = new_state(spec("i1"))
    put(ints, 3.7)
    assert ints.served() == 3
    assert type(ints.served()) is int


def test_plain_array_holds_exactly_the_elements_put() -> None:
    state = new_state(spec("f5"))
    put(state, [1.0, 2.0, 3.0])
    assert state.served().tolist() == [1.0, 2.0, 3.0]
    assert len(state) == 3
    put(state, [9.0])
    assert state.served().tolist() == [9.0]
    assert len(state) == 1
    put(state, [])
    assert state.served().tolist() == []
    assert len(state) == 0
    put(state, [1, 2, 3, 4, 5])
    assert len(state) == 5


def test_int_array() -> None:
    state = new_state(spec("i4"))
    put(state, [1, -2, 3.9])
    served = state.served()
    assert served.dtype == np.int32
    assert served.tolist() == [1, -2, 3]


def test_text_gets_a_terminator_only_when_count_leaves_room() -> None:
    state = new_state(spec("c5"))
    put(state, "abc")
    assert state.served() == b"abc\0"
    assert len(state) == 4
    put(state, "abcd")
    assert state.served() == b"abcd\0"
    put(state, "abcde")
    assert state.served() == b"abcde"
    assert len(state) == 5
    put(state, "")
    assert state.served() == b"\0"
    put(state, b"x\0yz")
    assert state.served() == b"x\0"


def test_text_of_count_one() -> None:
    state = new_state(spec("c1"))
    put(state, "")
    assert state.served() == b"\0"
    put(state, "Z")
    assert state.served() == b"Z"


def test_float_buffer_appends() -> None:
    state = new_state(spec("F4"))
    put(state, 1.0)
    assert state.served().tolist() == [1.0]
    put(state, [2.0])
    assert state.served().tolist() == [1.0, 2.0]
    put(state, [3.0, 4.0])
    assert state.served().tolist() == [1.0, 2.0, 3.0, 4.0]
    put(state, 5.0)
    assert state.served().tolist() == [2.0, 3.0, 4.0, 5.0]
    put(state, [6.0, 7.0, 8.0])
    assert state.served().tolist() == [5.0, 6.0, 7.0, 8.0]
    assert len(state) == 4
    assert state.served().dtype == np.float64


def test_buffer_put_of_more_than_fits_at_once() -> None:
    state = new_state(spec("I3"))
    put(state, [1, 2])
    put(state, [10, 20, 30])
    assert state.served().tolist() == [10, 20, 30]
    assert state.served().dtype == np.int32


def test_buffer_wraps_around_many_times() -> None:
    state = new_state(spec("I3"))
    for value in range(1, 50):
        put(state, value)
        assert state.served().tolist() == list(range(max(1, value - 2), value + 1))
    assert len(state) == 3


def test_buffer_empty_put_defines_it_without_elements() -> None:
    state = new_state(spec("F3"))
    assert put(state, []) is True
    assert state.defined is True
    assert state.served().tolist() == []
    assert len(state) == 0


def test_char_buffer_tail_reads_as_one_text() -> None:
    state = new_state(spec("C8"))
    put(state, "abc")
    assert state.served() == b"abc\0"
    put(state, b"def")
    assert state.served() == b"abcdef\0"
    put(state, "gh")
    assert state.served() == b"abcdefgh"
    put(state, "ijk")
    assert state.served() == b"defghijk"
    assert len(state) == 8
    put(state, "12345678")
    assert state.served() == b"12345678"
    put(state, "9\0ignored")
    assert state.served() == b"23456789"


def test_char_buffer_with_room_left() -> None:
    state = new_state(spec("C3"))
    put(state, "a")
    assert state.served() == b"a\0"
    assert len(state) == 2
    put(state, "bc")
    assert state.served() == b"abc"
    put(state, "d")
    assert state.served() == b"bcd"


# --- attributes, alarms, staleness and fields ------------------------------------------------


def with_meta(suffix: str, **attributes: object) -> PVState:
    return new_state(spec(suffix), Meta(**attributes))


def alarm_of(state: PVState) -> tuple[int, int]:
    return state.status, state.severity


def test_new_state_takes_the_default_meta() -> None:
    assert new_state(spec("f1")).meta == DEFAULT_META
    assert new_state(spec("F3"), Meta(tmo=5.0)).meta.tmo == 5.0


def test_a_new_pv_raises_no_alarm_whatever_its_value() -> None:
    for value in (1e300, -1e300, 0.0, math.nan):
        state = new_state(spec("f1"))
        put(state, value)
        assert alarm_of(state) == (menus.STAT_NONE, menus.NO_ALARM)


def test_put_evaluates_the_limits_and_says_when_the_alarm_changed() -> None:
    state = with_meta("f1", high=10.0, hihi=20.0)
    assert put(state, 5.0) is True                     # UDF -> no alarm
    assert put(state, 6.0) is False
    assert put(state, 10.0) is True
    assert alarm_of(state) == (menus.STAT_HIGH, menus.MINOR)
    assert put(state, 15.0) is False                   # same alarm: no change
    assert put(state, 25.0) is True
    assert alarm_of(state) == (menus.STAT_HIHI, menus.MAJOR)
    assert put(state, 0.0) is True
    assert alarm_of(state) == (menus.STAT_NONE, menus.NO_ALARM)


def test_hysteresis_across_puts() -> None:
    state = with_meta("f1", high=10.0, hyst=1.0)
    for value, expected in ((10.5, menus.STAT_HIGH), (9.5, menus.STAT_HIGH),
                            (8.5, menus.STAT_NONE), (9.5, menus.STAT_NONE)):
        put(state, value)
        assert state.status == expected, value


def test_int_pvs_alarm() -> None:
    state = with_meta("i1", lolo=-5.0)
    put(state, -5)
    assert alarm_of(state) == (menus.STAT_LOLO, menus.MAJOR)


def test_arrays_alarm_on_highest_and_lowest_element() -> None:
    state = with_meta("f4", high=10.0, low=-10.0)
    put(state, [0.0, 11.0, 1.0])
    assert alarm_of(state) == (menus.STAT_HIGH, menus.MINOR)
    put(state, [0.0, -11.0])
    assert alarm_of(state) == (menus.STAT_LOW, menus.MINOR)
    put(state, [])
    assert alarm_of(state) == (menus.STAT_NONE, menus.NO_ALARM)


@pytest.mark.parametrize("suffix", ["F4", "I4"])
def test_buffers_alarm_on_their_newest_element(suffix: str) -> None:
    state = with_meta(suffix, high=10.0)
    put(state, [20, 1])
    assert alarm_of(state) == (menus.STAT_NONE, menus.NO_ALARM)   # 20 is not the newest
    put(state, [1, 20])
    assert alarm_of(state) == (menus.STAT_HIGH, menus.MINOR)
    put(state, [3])
    assert alarm_of(state) == (menus.STAT_NONE, menus.NO_ALARM)
    assert state.served().tolist() == [1, 1, 20, 3]  # the alarm never changes the data


@pytest.mark.parametrize("suffix, value", [("c10", "zzz"), ("c1", "z"), ("C10", "zzz")])
def test_text_never_alarms(suffix: str, value: str) -> None:
    state = with_meta(suffix, hihi=-1e300, high=-1e300, low=1e300, lolo=1e300)
    put(state, value)
    assert alarm_of(state) == (menus.STAT_NONE, menus.NO_ALARM)
    assert state.set_meta(Meta(hihi=0.0)) is False
    assert alarm_of(state) == (menus.STAT_NONE, menus.NO_ALARM)


def test_set_meta_judges_the_value_by_the_new_limits() -> None:
    state = new_state(spec("f1"))
    put(state, 15.0)
    assert state.set_meta(Meta(high=10.0)) is True
    assert alarm_of(state) == (menus.STAT_HIGH, menus.MINOR)
    assert state.set_meta(Meta(high=10.0, hsv=menus.MAJOR)) is True
    assert alarm_of(state) == (menus.STAT_HIGH, menus.MAJOR)
    assert state.set_meta(Meta(high=10.0, hsv=menus.MAJOR, egu="mm")) is False
    assert state.set_meta(Meta(high=20.0)) is True
    assert alarm_of(state) == (menus.STAT_NONE, menus.NO_ALARM)
    assert state.meta == Meta(high=20.0)
    assert state.served() == 15.0  # attributes never change the value or its time
    assert state.ts_ns == 1


def test_set_meta_of_an_undefined_pv_keeps_it_undefined() -> None:
    state = new_state(spec("f1"))
    assert state.set_meta(Meta(high=-1.0, egu="mm")) is False
    assert alarm_of(state) == (menus.STAT_UDF, menus.INVALID)
    assert state.meta.egu == "mm"


def test_unrelated_attributes_keep_an_alarm_held_by_hysteresis() -> None:
    """As in an ai record, changing the units does not re-judge the value: an alarm held
    by HYST stays until a value leaves the hysteresis band."""
    state = with_meta("f1", high=10.0, hyst=1.0)
    put(state, 10.5)
    put(state, 9.5)
    assert alarm_of(state) == (menus.STAT_HIGH, menus.MINOR)
    state.set_meta(replace(state.meta, egu="mm"))
    assert alarm_of(state) == (menus.STAT_HIGH, menus.MINOR)


def test_meta_changes_with_a_value_keep_hysteresis() -> None:
    """A ZMQ put carrying attributes sets them before judging the value (Relay.apply)."""
    state = with_meta("f1", high=10.0, hyst=1.0)
    put(state, 10.5)
    state.meta = replace(state.meta, egu="mm")
    put(state, 9.5)
    assert alarm_of(state) == (menus.STAT_HIGH, menus.MINOR)


def test_go_stale_once() -> None:
    state = with_meta("f1", tmo=1.0)
    assert state.go_stale() is False  # never defined: nothing to time out
    assert alarm_of(state) == (menus.STAT_UDF, menus.INVALID)
    put(state, 2.5, ts_ns=77)
    assert state.go_stale() is True
    assert state.stale is True
    assert alarm_of(state) == (menus.STAT_TIMEOUT, menus.INVALID)
    assert state.go_stale() is False
    assert (state.served(), state.ts_ns) == (2.5, 77)  # value and time stamp unchanged


def test_the_next_value_clears_staleness() -> None:
    state = with_meta("f1", tmo=1.0, high=10.0)
    put(state, 20.0)
    state.go_stale()
    assert put(state, 20.0) is True  # TIMEOUT -> HIGH is an alarm change
    assert state.stale is False
    assert alarm_of(state) == (menus.STAT_HIGH, menus.MINOR)
    state.go_stale()
    assert put(state, 1.0) is True
    assert alarm_of(state) == (menus.STAT_NONE, menus.NO_ALARM)


def test_put_records_its_arrival_time() -> None:
    state = with_meta("F3", tmo=1.0)
    state.put(convert(state.spec, [1.0]), 5, 123.5)
    assert state.updated == 123.5


def test_attributes_do_not_end_a_staleness_unless_tmo_is_turned_off() -> None:
    state = with_meta("f1", tmo=1.0, high=10.0)
    put(state, 20.0)
    state.go_stale()
    assert state.set_meta(replace(state.meta, egu="mm", high=30.0)) is False
    assert alarm_of(state) == (menus.STAT_TIMEOUT, menus.INVALID)
    assert state.set_meta(replace(state.meta, tmo=5.0)) is False
    assert state.stale is True
    assert state.set_meta(replace(state.meta, tmo=0.0)) is True
    assert state.stale is False
    assert alarm_of(state) == (menus.STAT_NONE, menus.NO_ALARM)  # judged afresh: 20 < 30


@pytest.mark.parametrize("suffix, value, nelm, nord, rtyp", [
    ("f1", 1.5, 1, 1, "ai"),
    ("i1", 3, 1, 1, "longin"),
    ("f5", [1.0, 2.0], 5, 2, "waveform"),
    ("i4", [1, 2, 3, 4], 4, 4, "waveform"),
    ("F5", [1.0, 2.0, 3.0], 5, 3, "waveform"),
    ("I2", [1, 2], 2, 2, "waveform"),
    ("c10", "abc", 10, 4, "waveform"),   # the text and its terminating NUL, as caput -S
    ("c3", "abc", 3, 3, "waveform"),
    ("c1", "x", 1, 1, "waveform"),
    ("C8", "abc", 8, 4, "waveform"),
])
def test_read_only_fields(suffix: str, value: object, nelm: int, nord: int, rtyp: str) -> None:
    state = new_state(spec(suffix))
    assert state.field("NORD") == 0  # nothing held yet
    put(state, value)
    assert state.field("NELM") == nelm
    assert state.field("NORD") == nord
    assert state.field("RTYP") == rtyp
    assert (state.field("SEVR"), state.field("STAT")) == (menus.NO_ALARM, menus.STAT_NONE)


def test_sevr_and_stat_fields_follow_the_alarm() -> None:
    state = with_meta("f1", hihi=1.0, tmo=1.0)
    assert (state.field("SEVR"), state.field("STAT")) == (menus.INVALID, menus.STAT_UDF)
    put(state, 2.0)
    assert (state.field("SEVR"), state.field("STAT")) == (menus.MAJOR, menus.STAT_HIHI)
    state.go_stale()
    assert (state.field("SEVR"), state.field("STAT")) == (menus.INVALID, menus.STAT_TIMEOUT)


def test_writable_fields_read_the_attributes() -> None:
    state = with_meta("f1", egu="mm", prec=3, desc="d", hopr=9.0, lopr=-9.0, drvh=5.0,
                      drvl=-5.0, high=4.0, hhsv=menus.INVALID, hyst=0.5, tmo=2.0)
    expected = {"EGU": "mm", "PREC": 3, "DESC": "d", "HOPR": 9.0, "LOPR": -9.0, "DRVH": 5.0,
                "DRVL": -5.0, "HIHI": 0.0, "HIGH": 4.0, "LOW": 0.0, "LOLO": 0.0,
                "HHSV": menus.INVALID, "HSV": menus.MINOR, "LSV": menus.MINOR,
                "LLSV": menus.MAJOR, "HYST": 0.5, "TMO": 2.0}
    assert {name: state.field(name) for name in expected} == expected
    assert set(expected) | {"NELM", "NORD", "RTYP", "SEVR", "STAT"} == set(FIELDS)
