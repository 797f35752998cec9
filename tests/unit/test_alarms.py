"""Limit alarms as an EPICS ai record raises them (relayd.alarms)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relayd.core import menus
from relayd.core.alarms import NO_ALARM, Alarm, evaluate, extremes
from relayd.core.meta import Meta

NAN = math.nan
HIHI, HIGH, LOW, LOLO = menus.STAT_HIHI, menus.STAT_HIGH, menus.STAT_LOW, menus.STAT_LOLO
NONE = menus.STAT_NONE
MINOR, MAJOR, INVALID = menus.MINOR, menus.MAJOR, menus.INVALID


def run(meta: Meta, values: list) -> list[tuple[int, int]]:
    """(status, severity) after each value, carrying the last alarm value as a PV does."""
    lalm = NAN
    seen = []
    for value in values:
        status, severity, lalm = evaluate(value, meta, lalm)
        seen.append((status, severity))
    return seen


def ai_check_alarms(high_value: float, low_value: float, meta: Meta, lalm: float
                    ) -> tuple[int, int, float]:
    """checkAlarms of EPICS base's aiRecord.c (7.0, without the AFTC filter), spelled out.

    `high_value` is compared with HIHI and HIGH, `low_value` with LOLO and LOW (both are
    VAL for a scalar). An unset relayd limit is a limit whose severity is NO_ALARM. The
    record stores LALM = the limit when in alarm, else VAL.
    """
    def sev(limit: float | None, severity: int) -> int:
        return 0 if limit is None else severity

    hyst = meta.hyst
    asev = sev(meta.hihi, meta.hhsv)
    alev = meta.hihi
    if asev and (high_value >= alev or (lalm == alev and high_value >= alev - hyst)):
        return HIHI, asev, alev
    asev = sev(meta.lolo, meta.llsv)
    alev = meta.lolo
    if asev and (low_value <= alev or (lalm == alev and low_value <= alev + hyst)):
        return LOLO, asev, alev
    asev = sev(meta.high, meta.hsv)
    alev = meta.high
    if asev and (high_value >= alev or (lalm == alev and high_value >= alev - hyst)):
        return HIGH, asev, alev
    asev = sev(meta.low, meta.lsv)
    alev = meta.low
    if asev and (low_value <= alev or (lalm == alev and low_value <= alev + hyst)):
        return LOW, asev, alev
    return NONE, menus.NO_ALARM, high_value


def same_lalm(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


# --- no limits, no alarms -------------------------------------------------------------------


@pytest.mark.parametrize("value", [0, 1e300, -1e300, NAN, math.inf, -math.inf, 5,
                                   np.array([1e9, -1e9])])
def test_a_new_pv_raises_no_alarm_whatever_its_value(value: object) -> None:
    assert evaluate(value, Meta(), NAN)[:2] == (NONE, menus.NO_ALARM)


def test_no_alarm_constant() -> None:
    assert NO_ALARM[:2] == (NONE, menus.NO_ALARM)
    assert math.isnan(NO_ALARM.lalm)
    assert isinstance(evaluate(1.0, Meta(high=0.0), NAN), Alarm)


# --- each limit ------------------------------------------------------------------------------


@pytest.mark.parametrize("limit, status, severity, inside, at, beyond", [
    ("hihi", HIHI, MAJOR, 9.99, 10.0, 11.0),
    ("high", HIGH, MINOR, 9.99, 10.0, 11.0),
    ("low", LOW, MINOR, -9.99, -10.0, -11.0),
    ("lolo", LOLO, MAJOR, -9.99, -10.0, -11.0),
])
def test_each_limit_alarms_at_and_beyond_it(limit: str, status: int, severity: int,
                                            inside: float, at: float, beyond: float) -> None:
    meta = Meta(**{limit: at})
    assert run(meta, [inside, at, beyond, inside]) == [
        (NONE, 0), (status, severity), (status, severity), (NONE, 0)]


@pytest.mark.parametrize("limit, sev_field, value", [
    ("hihi", "hhsv", 11.0), ("high", "hsv", 11.0), ("low", "lsv", -11.0),
    ("lolo", "llsv", -11.0),
])
@pytest.mark.parametrize("severity", [MINOR, MAJOR, INVALID])
def test_each_limit_raises_its_own_severity(limit: str, sev_field: str, value: float,
                                            severity: int) -> None:
    meta = Meta(**{limit: math.copysign(10.0, value), sev_field: severity})
    assert evaluate(value, meta, NAN)[1] == severity


@pytest.mark.parametrize("limit, sev_field, value", [
    ("hihi", "hhsv", 11.0), ("high", "hsv", 11.0), ("low", "lsv", -11.0),
    ("lolo", "llsv", -11.0),
])
def test_severity_no_alarm_disables_a_limit(limit: str, sev_field: str, value: float) -> None:
    meta = Meta(**{limit: math.copysign(10.0, value), sev_field: menus.NO_ALARM})
    assert evaluate(value, meta, NAN)[:2] == (NONE, menus.NO_ALARM)


def test_a_disabled_limit_lets_the_next_one_through() -> None:
    meta = Meta(hihi=20.0, high=10.0, hhsv=menus.NO_ALARM)
    assert evaluate(25.0, meta, NAN)[:2] == (HIGH, MINOR)
    meta = Meta(lolo=-20.0, low=-10.0, llsv=menus.NO_ALARM)
    assert evaluate(-25.0, meta, NAN)[:2] == (LOW, MINOR)


def test_a_limit_at_zero_is_a_limit() -> None:
    assert evaluate(0.0, Meta(high=0.0), NAN)[:2] == (HIGH, MINOR)
    assert evaluate(-0.1, Meta(high=0.0), NAN)[:2] == (NONE, 0)


# --- priority ---------------------------------------------------------------------------------


def test_priority_hihi_lolo_high_low() -> None:
    """Where limits overlap, HIHI wins over LOLO, LOLO over HIGH, HIGH over LOW."""
    assert evaluate(25.0, Meta(hihi=20.0, high=10.0), NAN)[:2] == (HIHI, MAJOR)
    assert evaluate(-25.0, Meta(lolo=-20.0, low=-10.0), NAN)[:2] == (LOLO, MAJOR)
    assert evaluate(5.0, Meta(hihi=3.0, lolo=10.0), NAN)[:2] == (HIHI, MAJOR)
    assert evaluate(5.0, Meta(high=3.0, lolo=10.0), NAN)[:2] == (LOLO, MAJOR)
    assert evaluate(5.0, Meta(high=3.0, low=10.0), NAN)[:2] == (HIGH, MINOR)
    # Priority is by limit, not by severity: a MINOR HIHI still beats a MAJOR LOLO.
    assert evaluate(5.0, Meta(hihi=3.0, hhsv=MINOR, lolo=10.0, llsv=INVALID), NAN)[:2] == (
        HIHI, MINOR)


def test_the_full_ladder() -> None:
    meta = Meta(hihi=20.0, high=10.0, low=-10.0, lolo=-20.0)
    values = [0, 10, 20, 30, 15, 5, -5, -10, -15, -20, -25, 0]
    assert run(meta, values) == [
        (NONE, 0), (HIGH, MINOR), (HIHI, MAJOR), (HIHI, MAJOR), (HIGH, MINOR), (NONE, 0),
        (NONE, 0), (LOW, MINOR), (LOW, MINOR), (LOLO, MAJOR), (LOLO, MAJOR), (NONE, 0)]


# --- hysteresis ---------------------------------------------------------------------------------


def test_hysteresis_on_the_high_side() -> None:
    meta = Meta(high=10.0, hyst=1.0)
    assert run(meta, [9.5, 10.0, 9.5, 9.0, 8.99, 9.5, 10.0]) == [
        (NONE, 0),        # below the limit, never alarmed: no alarm
        (HIGH, MINOR),    # at the limit
        (HIGH, MINOR),    # back inside, but by less than HYST: held
        (HIGH, MINOR),    # exactly HYST inside: still held (>=)
        (NONE, 0),        # more than HYST inside: cleared
        (NONE, 0),        # in the band again, but not coming from the alarm: none
        (HIGH, MINOR),
    ]


def test_hysteresis_on_the_low_side() -> None:
    meta = Meta(low=-10.0, hyst=1.0)
    assert run(meta, [-9.5, -10.0, -9.5, -9.0, -8.99, -9.5, -10.0]) == [
        (NONE, 0), (LOW, MINOR), (LOW, MINOR), (LOW, MINOR), (NONE, 0), (NONE, 0),
        (LOW, MINOR)]


def test_hysteresis_from_hihi_down_to_high() -> None:
    meta = Meta(hihi=20.0, high=10.0, hyst=2.0)
    assert run(meta, [20.0, 19.0, 18.0, 17.9, 9.0, 8.0, 7.9]) == [
        (HIHI, MAJOR), (HIHI, MAJOR), (HIHI, MAJOR), (HIGH, MINOR), (HIGH, MINOR),
        (HIGH, MINOR), (NONE, 0)]


def test_hysteresis_from_lolo_up_to_low() -> None:
    meta = Meta(lolo=-20.0, low=-10.0, hyst=2.0)
    assert run(meta, [-20.0, -18.0, -17.9, -8.0, -7.9]) == [
        (LOLO, MAJOR), (LOLO, MAJOR), (LOW, MINOR), (LOW, MINOR), (NONE, 0)]


def test_hysteresis_only_holds_the_limit_last_alarmed_on() -> None:
    """From HIHI straight into the HIGH band's hysteresis zone: HIGH, not held HIHI."""
    meta = Meta(hihi=20.0, high=10.0, hyst=15.0)
    assert run(meta, [20.0, 9.0]) == [(HIHI, MAJOR), (HIHI, MAJOR)]  # 9 >= 20 - 15
    assert run(meta, [12.0, 9.0]) == [(HIGH, MINOR), (HIGH, MINOR)]
    assert run(meta, [20.0, 4.9]) == [(HIHI, MAJOR), (NONE, 0)]


def test_lalm_is_the_limit_in_alarm_and_the_value_out_of_it() -> None:
    meta = Meta(high=10.0, hyst=1.0)
    assert evaluate(12.0, meta, NAN) == (HIGH, MINOR, 10.0)
    assert evaluate(3.0, meta, NAN) == (NONE, 0, 3.0)
    assert evaluate(9.5, meta, 10.0) == (HIGH, MINOR, 10.0)


def test_no_hysteresis_without_hyst() -> None:
    meta = Meta(high=10.0)
    assert run(meta, [10.0, 9.999999]) == [(HIGH, MINOR), (NONE, 0)]


# --- values of every kind ----------------------------------------------------------------------


def test_integers_alarm_like_floats() -> None:
    meta = Meta(hihi=10.0, lolo=-10.0)
    assert run(meta, [9, 10, -10, 0]) == [(NONE, 0), (HIHI, MAJOR), (LOLO, MAJOR), (NONE, 0)]


def test_arrays_alarm_on_their_highest_and_lowest_element() -> None:
    meta = Meta(hihi=10.0, high=5.0, low=-5.0, lolo=-10.0)
    assert evaluate(np.array([0.0, 11.0, -1.0]), meta, NAN)[:2] == (HIHI, MAJOR)
    assert evaluate(np.array([0.0, 6.0, -1.0]), meta, NAN)[:2] == (HIGH, MINOR)
    assert evaluate(np.array([0.0, 4.0, -6.0]), meta, NAN)[:2] == (LOW, MINOR)
    assert evaluate(np.array([0.0, 4.0, -11.0]), meta, NAN)[:2] == (LOLO, MAJOR)
    assert evaluate(np.array([-4.0, 4.0]), meta, NAN)[:2] == (NONE, 0)
    # Highest and lowest both out: the priority decides (LOLO before HIGH).
    assert evaluate(np.array([6.0, -11.0]), meta, NAN)[:2] == (LOLO, MAJOR)
    assert evaluate(np.array([11, -11], dtype=np.int32), meta, NAN)[:2] == (HIHI, MAJOR)


def test_nan_elements_are_ignored() -> None:
    meta = Meta(high=5.0, low=-5.0)
    assert evaluate(np.array([NAN, 6.0, NAN]), meta, NAN)[:2] == (HIGH, MINOR)
    assert evaluate(np.array([NAN, 1.0]), meta, NAN)[:2] == (NONE, 0)
    assert evaluate(np.array([NAN, NAN]), meta, NAN)[:2] == (NONE, 0)
    assert evaluate(NAN, meta, NAN)[:2] == (NONE, 0)
    assert evaluate(NAN, meta, 5.0)[:2] == (NONE, 0)  # not held by hysteresis either


def test_infinities_alarm() -> None:
    meta = Meta(high=5.0, low=-5.0)
    assert evaluate(math.inf, meta, NAN)[:2] == (HIGH, MINOR)
    assert evaluate(np.array([-math.inf, 0.0]), meta, NAN)[:2] == (LOW, MINOR)


@pytest.mark.parametrize("value", [b"text", b"", "text", np.frombuffer(b"zz", np.uint8)[:0],
                                   np.array([], dtype=np.float64), None])
def test_text_and_empty_values_never_alarm(value: object) -> None:
    meta = Meta(hihi=-1e300, high=-1e300, low=1e300, lolo=1e300)
    assert evaluate(value, meta, NAN)[:2] == (NONE, menus.NO_ALARM)


def test_extremes() -> None:
    assert extremes(3) == (3.0, 3.0)
    assert extremes(-2.5) == (-2.5, -2.5)
    assert extremes(np.array([3.0, -1.0, NAN, 7.0])) == (-1.0, 7.0)
    assert extremes(np.array([5, -5], dtype=np.int32)) == (-5.0, 5.0)
    assert extremes(np.array([NAN])) is None
    assert extremes(np.array([], dtype=np.int32)) is None
    assert extremes(b"abc") is None
    lowest, highest = extremes(NAN)
    assert math.isnan(lowest) and math.isnan(highest)


# --- the ai record, for random sequences ------------------------------------------------------


limits = st.none() | st.integers(-6, 6).map(float)
severities = st.integers(0, 3)
metas = st.builds(
    Meta, hihi=limits, high=limits, low=limits, lolo=limits, hhsv=severities,
    hsv=severities, lsv=severities, llsv=severities,
    hyst=st.sampled_from([0.0, 0.5, 1.0, 2.0, 3.0]),
)
scalars = st.integers(-16, 16).map(lambda n: n / 2) | st.just(NAN) | st.integers(-8, 8)


@settings(max_examples=500, deadline=None)
@given(metas, st.lists(scalars, min_size=1, max_size=30))
def test_scalars_alarm_exactly_as_the_ai_record(meta: Meta, values: list) -> None:
    ours = theirs = NAN
    for value in values:
        status, severity, ours = evaluate(value, meta, ours)
        expected_status, expected_severity, theirs = ai_check_alarms(value, value, meta,
                                                                     theirs)
        assert (status, severity) == (expected_status, expected_severity), (value, meta)
        if meta.has_limits:  # without limits nothing reads LALM
            assert same_lalm(ours, theirs)


arrays = st.lists(st.integers(-16, 16).map(lambda n: n / 2) | st.just(NAN), min_size=1,
                  max_size=5).map(lambda items: np.array(items, dtype=np.float64))


@settings(max_examples=300, deadline=None)
@given(metas, st.lists(arrays, min_size=1, max_size=20))
def test_arrays_alarm_as_the_ai_record_on_their_extremes(meta: Meta, values: list) -> None:
    ours = theirs = NAN
    for value in values:
        status, severity, ours = evaluate(value, meta, ours)
        finite = value[~np.isnan(value)]
        if not finite.size:  # as a NaN scalar: no alarm, and no hysteresis after it
            assert (status, severity) == (NONE, menus.NO_ALARM)
            theirs = NAN
            continue
        expected = ai_check_alarms(float(finite.max()), float(finite.min()), meta, theirs)
        theirs = expected[2]
        assert (status, severity) == expected[:2], (value, meta)
