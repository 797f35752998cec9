"""Alarm severity and status from a value and its limits, as an EPICS ai record does.

Pure. `evaluate` follows the ai record's ``checkAlarms``: HIHI, then LOLO, then HIGH,
then LOW, each only if its limit is set and its severity is not NO_ALARM; hysteresis
(HYST) keeps an alarm raised until the value is back inside the limit by more than
HYST, which is what the last alarm value (LALM) remembers. For an array the highest
element is compared with the high limits and the lowest with the low limits; NaN
elements are ignored (as NaN compares false with every limit). Text raises no alarms.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from relayd.core import menus
from relayd.core.meta import Meta


class Alarm(NamedTuple):
    status: int
    severity: int
    lalm: float  # the limit last alarmed on, or the value when out of alarm


NO_ALARM = Alarm(menus.STAT_NONE, menus.NO_ALARM, math.nan)


def extremes(value: object) -> tuple[float, float] | None:
    """(lowest, highest) of a numeric value; None for text or no elements."""
    if isinstance(value, (int, float)):
        number = float(value)
        return number, number
    if isinstance(value, np.ndarray) and value.dtype.kind in "iuf" and value.size:
        if value.dtype.kind == "f":
            finite = value[~np.isnan(value)]
            if not finite.size:
                return None
            return float(finite.min()), float(finite.max())
        return float(value.min()), float(value.max())
    return None


def evaluate(value: object, meta: Meta, lalm: float) -> Alarm:
    """The alarm for `value` under `meta`, given the last alarm value `lalm`."""
    if not meta.has_limits:
        return NO_ALARM
    span = extremes(value)
    if span is None:
        return NO_ALARM
    low_value, high_value = span
    hyst = meta.hyst
    for limit, severity, status, high_side in (
        (meta.hihi, meta.hhsv, menus.STAT_HIHI, True),
        (meta.lolo, meta.llsv, menus.STAT_LOLO, False),
        (meta.high, meta.hsv, menus.STAT_HIGH, True),
        (meta.low, meta.lsv, menus.STAT_LOW, False),
    ):
        if limit is None or severity == menus.NO_ALARM:
            continue
        if high_side:
            raised = high_value >= limit or (lalm == limit and high_value >= limit - hyst)
        else:
            raised = low_value <= limit or (lalm == limit and low_value <= limit + hyst)
        if raised:
            return Alarm(status, severity, limit)
    return Alarm(menus.STAT_NONE, menus.NO_ALARM, high_value)
