"""Relay PVs as pvAccess normative types, both ways: serving a state, reading a put.

One PV is one NTScalar (``_f1``/``_i1``: ``double``/``int``), NTScalarArray (arrays and
buffers: ``double[]``/``int[]``) or NTScalar ``string`` (``c`` and ``C``: text is text over
PVA). Every structure carries ``alarm`` and ``timeStamp``; numeric ones also ``display``,
``control`` and ``valueAlarm``, text ones ``display`` (description and units). The
fields come from the PV's state and attributes (`relayd.core.meta.Meta`) through one
table, `META`, which also says what a put may change: a put of ``display.units`` is a put
of ``EGU`` over CA, checked by the same `meta.check_changes`.

Choices (docs/PVA.md says them for operators):

* ``display``, ``control`` and ``valueAlarm`` limits are doubles for every numeric PV, as
  the Normative Types specification's ``display_t`` and ``control_t`` have them (p4p and
  QSRV use the value's type): a limit of 2.5 on an ``_i1`` PV stays 2.5, and an alarm
  limit that is not set reads NaN (``valueAlarm.active`` is false until one is set).
* ``alarm.status`` follows QSRV: the CA status (HIHI, TIMEOUT, UDF...) becomes the PVA
  status class (DEVICE, DRIVER...) and its name is ``alarm.message``.
* ``timeStamp`` is the same source time stamp CA serves (POSIX seconds and nanoseconds).
* text: the bytes held up to the first NUL, decoded as UTF-8, or Latin-1 when they are
  not UTF-8 (`meta.decode_text`); a put of a string stores its UTF-8 bytes.

Values only: no I/O, no threads. p4p `Value`s are plain containers, so this is tested as
the core is, with values.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

from p4p import Type, Value

from relayd.core.errors import Reason, Refused
from relayd.core.meta import STATUS_MENU, check_changes, decode_text
from relayd.core.names import Kind, PVSpec
from relayd.core.protocol import ts_problem
from relayd.core.pvstate import PVState

NS = 1_000_000_000

# (PVA field, Meta attribute): what a client reads, and may put, of a PV's attributes.
META: tuple[tuple[str, str], ...] = (
    ("display.limitLow", "lopr"),
    ("display.limitHigh", "hopr"),
    ("display.description", "desc"),
    ("display.precision", "prec"),
    ("display.units", "egu"),
    ("control.limitLow", "drvl"),
    ("control.limitHigh", "drvh"),
    ("valueAlarm.lowAlarmLimit", "lolo"),
    ("valueAlarm.lowWarningLimit", "low"),
    ("valueAlarm.highWarningLimit", "high"),
    ("valueAlarm.highAlarmLimit", "hihi"),
    ("valueAlarm.lowAlarmSeverity", "llsv"),
    ("valueAlarm.lowWarningSeverity", "lsv"),
    ("valueAlarm.highWarningSeverity", "hsv"),
    ("valueAlarm.highAlarmSeverity", "hhsv"),
    ("valueAlarm.hysteresis", "hyst"),
)
TEXT_META = tuple(item for item in META if item[0] in ("display.description", "display.units"))

# The PVA alarm status class of each CA alarm status (menuAlarmStat), as QSRV maps them:
# 0 NONE, 1 DEVICE, 2 DRIVER, 3 RECORD, 4 DB.
PVA_STATUS = (0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 1, 3, 3, 3, 3, 3, 2, 4, 4, 4, 4)
FORMS = ["Default", "String", "Binary", "Decimal", "Hex", "Exponential", "Engineering"]

_ALARM = ("alarm", ("S", "alarm_t", [("severity", "i"), ("status", "i"), ("message", "s")]))
_TIME = ("timeStamp", ("S", "time_t", [
    ("secondsPastEpoch", "l"), ("nanoseconds", "i"), ("userTag", "i")]))
_NUMERIC_META = [
    ("display", ("S", None, [
        ("limitLow", "d"), ("limitHigh", "d"), ("description", "s"), ("precision", "i"),
        ("form", ("S", "enum_t", [("index", "i"), ("choices", "as")])), ("units", "s"),
    ])),
    ("control", ("S", None, [("limitLow", "d"), ("limitHigh", "d"), ("minStep", "d")])),
    ("valueAlarm", ("S", None, [
        ("active", "?"), ("lowAlarmLimit", "d"), ("lowWarningLimit", "d"),
        ("highWarningLimit", "d"), ("highAlarmLimit", "d"), ("lowAlarmSeverity", "i"),
        ("lowWarningSeverity", "i"), ("highWarningSeverity", "i"),
        ("highAlarmSeverity", "i"), ("hysteresis", "d"),
    ])),
]
_TEXT_META = [("display", ("S", None, [("description", "s"), ("units", "s")]))]
_CODE = {Kind.FLOAT: "d", Kind.INT: "i", Kind.CHAR: "s"}


class Shape(NamedTuple):
    """What decides a PV's PVA structure: its element kind, and array or not."""

    kind: Kind
    array: bool


def shape(spec: PVSpec) -> Shape:
    """Text is one string whatever its count; numbers are arrays unless a plain _f1/_i1."""
    return Shape(spec.kind, spec.kind is not Kind.CHAR and not spec.is_scalar)


@functools.lru_cache(maxsize=None)
def structure(form: Shape) -> Type:
    """The p4p Type of every PV of this shape (made once: posts must use the open type)."""
    code = ("a" if form.array else "") + _CODE[form.kind]
    text = form.kind is Kind.CHAR
    return Type(
        [("value", code), _ALARM, _TIME, *(_TEXT_META if text else _NUMERIC_META)],
        id="epics:nt/NTScalarArray:1.0" if form.array else "epics:nt/NTScalar:1.0",
    )


@functools.lru_cache(maxsize=None)
def leaves(form: Shape) -> frozenset[str]:
    """Every leaf field name (``display.units``...) of the structure of this shape."""
    return frozenset(_leaf_names(structure(form), ""))


def _leaf_names(kind: Type, head: str) -> list[str]:
    names = []
    for name in kind.keys():
        inner = kind[name]
        if isinstance(inner, Type):
            names.extend(_leaf_names(inner, f"{head}{name}."))
        else:
            names.append(head + name)
    return names


def meta_table(spec: PVSpec) -> tuple[tuple[str, str], ...]:
    return TEXT_META if spec.kind is Kind.CHAR else META


# --- serving a state ------------------------------------------------------------------------


def text_of(state: PVState) -> str:
    """A text PV's value as a string: its bytes up to the first NUL (see the module doc)."""
    return decode_text(bytes(state.served()).split(b"\0", 1)[0])


def fill_value(value: Value, state: PVState) -> None:
    """Put the state's value and time stamp into `value` (marking them)."""
    value["value"] = text_of(state) if state.spec.kind is Kind.CHAR else state.served()
    seconds, nanoseconds = divmod(state.ts_ns, NS)
    value["timeStamp.secondsPastEpoch"] = seconds
    value["timeStamp.nanoseconds"] = nanoseconds


def fill_alarm(value: Value, state: PVState) -> None:
    status = state.status
    value["alarm.severity"] = state.severity
    value["alarm.status"] = PVA_STATUS[status] if status < len(PVA_STATUS) else 6
    value["alarm.message"] = STATUS_MENU[status] if 0 < status < len(STATUS_MENU) else ""


def fill_meta(value: Value, state: PVState) -> None:
    """The attributes: display, control, valueAlarm (unset alarm limits read NaN)."""
    meta = state.meta
    for field, attribute in meta_table(state.spec):
        setting = getattr(meta, attribute)
        value[field] = math.nan if setting is None else setting
    if state.spec.kind is not Kind.CHAR:
        value["valueAlarm.active"] = meta.has_limits
        # Served as over CA: DRVL..DRVH once set, else LOPR..HOPR (Meta.control_limits);
        # a put to control.limitLow/High still sets DRVL/DRVH.
        value["control.limitLow"], value["control.limitHigh"] = meta.control_limits()


def full(state: PVState) -> Value:
    """Everything about the PV, every field marked: what a SharedPV is opened with, and
    what is posted when the attributes changed."""
    form = shape(state.spec)
    value = Value(structure(form), {})
    fill_value(value, state)
    fill_alarm(value, state)
    fill_meta(value, state)
    if form.kind is not Kind.CHAR:
        value["display.form.choices"] = FORMS
        value["display.form.index"] = 0
    return value


@functools.lru_cache(maxsize=None)
def scratch(form: Shape) -> Value:
    """One reusable Value per shape for monitor updates.

    A post copies what it is given (pvxs clones it for each subscriber and assigns the
    marked fields to the PV's current value), so the CA loop fills this one, posts it and
    unmarks it, instead of building a Value per update.
    """
    return Value(structure(form), {})


# --- reading a put ------------------------------------------------------------------------


NO_VALUE = object()  # a put that sets attributes only


class Put(NamedTuple):
    """What a PVA put asks: a value (or NO_VALUE), its time stamp (None: arrival time),
    and attribute changes already checked (`meta.check_changes`)."""

    value: object
    ts_ns: int | None
    meta: dict


_TIME_FIELDS = ("timeStamp.secondsPastEpoch", "timeStamp.nanoseconds")


def read_put(put: Value, current: Value, spec: PVSpec) -> Put:
    """The put a client sent, as the relay understands it; `Refused` if it cannot be.

    Only the fields the client marked count. ``value``, ``timeStamp`` (seconds and
    nanoseconds) and the attribute fields of `META` may be put; any other marked field
    must hold what the PV serves (`current`), so that a client may put back a whole
    structure it read, but not pretend to set what the relay computes (the alarm).
    """
    form = shape(spec)
    marked = put.changedSet(expand=True) & leaves(form)
    table = meta_table(spec)
    settable = {"value", *_TIME_FIELDS, *(field for field, _ in table)}
    for field in sorted(marked - settable):
        if put[field] != current[field]:
            raise Refused(Reason.READ_ONLY, f"{spec.name}: {field} is not settable over "
                          "pvAccess (put value, timeStamp, display, control or valueAlarm)")
    value = put["value"] if "value" in marked else NO_VALUE
    ts_ns = _time_stamp(put, spec) if marked.intersection(_TIME_FIELDS) else None
    changes = {attribute: put[field] for field, attribute in table if field in marked}
    meta = check_changes(changes, spec.name) if changes else {}
    if value is NO_VALUE and ts_ns is not None:
        raise Refused(Reason.BAD_VALUE, f"{spec.name}: a timeStamp without a value")
    if value is NO_VALUE and not meta:
        raise Refused(Reason.BAD_VALUE, f"{spec.name}: the put holds neither a value nor "
                      "an attribute (mark value, display.*, control.* or valueAlarm.*)")
    return Put(value, ts_ns, meta)


def _time_stamp(put: Value, spec: PVSpec) -> int:
    """The put's source time stamp in POSIX nanoseconds, checked as a ZMQ 'ts' is."""
    seconds, nanoseconds = put["timeStamp.secondsPastEpoch"], put["timeStamp.nanoseconds"]
    why = None if 0 <= nanoseconds < NS else f"nanoseconds {nanoseconds} not in 0..999999999"
    why = why or ts_problem(seconds + nanoseconds / NS)
    if why:
        raise Refused(Reason.BAD_VALUE, f"{spec.name}: timeStamp: {why}")
    return seconds * NS + nanoseconds

