"""A PV's state and how puts change it (relayd.pvstate)."""

from __future__ import annotations

import numpy as np
import pytest

from relayd import alarm
from relayd.names import Grammar, PVSpec
from relayd.pvstate import BufferState, PVState, new_state
from relayd.values import convert

G = Grammar("P")


def spec(suffix: str) -> PVSpec:
    result = G.parse(f"P:s_{suffix}")
    assert result is not None
    return result


def put(state: PVState, raw: object, ts_ns: int = 1) -> bool:
    return state.put(convert(state.spec, raw), ts_ns)


def test_alarm_codes() -> None:
    assert (alarm.NO_ALARM, alarm.MINOR, alarm.MAJOR, alarm.INVALID) == (0, 1, 2, 3)
    assert alarm.STAT_NONE == 0
    assert alarm.STAT_UDF == 17


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
    assert (state.severity, state.status) == (alarm.NO_ALARM, alarm.STAT_NONE)
    assert state.ts_ns == 100
    assert put(state, second, ts_ns=200) is False
    assert (state.severity, state.status) == (alarm.NO_ALARM, alarm.STAT_NONE)
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
