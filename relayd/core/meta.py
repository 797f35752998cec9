"""PV attributes (units, precision, limits, alarm settings, staleness) and their fields.

The relay's answer to "units, alarm limits and other PV attributes": each PV carries the
attributes of an EPICS record, readable and writable as record-style fields
(``NAME.EGU``) over CA and as the ``"meta"`` map of a ZMQ update. Pure: no I/O.

`FIELDS` is the one table of fields: their CA type, whether they may be written, and
how a written value is checked. Everything that handles fields (the CA field PVs, the
ZMQ ``meta`` map, autosave) goes through it.

Choices, documented in docs/ATTRIBUTES.md:

* Alarm limits are disabled until set (a new PV raises no alarm whatever its value).
  Their severities default to MAJOR/MINOR/MINOR/MAJOR, as in pcaspy, so setting a limit
  alone raises alarms; an ai record defaults its severities to NO_ALARM instead.
* An unset limit reads as 0 (in the field and in DBR_GR/DBR_CTRL data); writing NaN (CA)
  or nil/NaN (ZMQ) to a limit unsets it again.
* EGU and DESC hold up to 39 bytes (a DBR_STRING); DBR_CTRL carries only the first 7
  characters of the units, an EPICS limit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Callable

from relayd.core import menus
from relayd.core.errors import Reason, Refused, shown
from relayd.core.names import Kind, PVSpec

STRING_SIZE = 39  # longest DBR_STRING, without its NUL
SEVERITY_MENU = menus.SEVERITY_NAMES
STATUS_MENU = (
    "NO_ALARM", "READ", "WRITE", "HIHI", "HIGH", "LOLO", "LOW", "STATE", "COS", "COMM",
    "TIMEOUT", "HWLIMIT", "CALC", "SCAN", "LINK", "SOFT", "BAD_SUB", "UDF", "DISABLE",
    "SIMM", "READ_ACCESS", "WRITE_ACCESS",
)


# Attributes that appear in DBR_GR/DBR_CTRL data.
CTRL_FIELDS = ("egu", "prec", "hopr", "lopr", "drvh", "drvl", "hihi", "high", "low", "lolo")


@dataclass(frozen=True)
class Meta:
    """The settable attributes of one PV. Frozen: a change makes a new Meta."""

    egu: str = ""
    prec: int = 0
    desc: str = ""
    hopr: float = 0.0
    lopr: float = 0.0
    drvh: float = 0.0
    drvl: float = 0.0
    hihi: float | None = None
    high: float | None = None
    low: float | None = None
    lolo: float | None = None
    hhsv: int = menus.MAJOR
    hsv: int = menus.MINOR
    lsv: int = menus.MINOR
    llsv: int = menus.MAJOR
    hyst: float = 0.0
    tmo: float = 0.0

    def __post_init__(self) -> None:
        # Asked on every put, so worked out once. Not fields: not compared, not saved.
        # has_limits: any alarm limit set (only then can a value raise an alarm).
        # has_display: something a DBR_GR/DBR_CTRL client sees differs from all-zero.
        object.__setattr__(self, "has_limits", not (
            self.hihi is None and self.high is None and self.low is None and self.lolo is None
        ))
        object.__setattr__(self, "has_display", any(
            getattr(self, name) not in (None, 0, 0.0, "") for name in CTRL_FIELDS
        ))

    def control_limits(self) -> tuple[float, float]:
        """(low, high) served as DBR_CTRL control limits.

        DRVL..DRVH once set (DRVH > DRVL: an ao record applies its drive limits only
        then), else LOPR..HOPR, as the ai, longin and waveform records that RTYP names
        serve them: a client (ophyd's ``limits``) then sees the display range, not 0..0.
        """
        if self.drvh > self.drvl:
            return self.drvl, self.drvh
        return self.lopr, self.hopr

    def changes(self) -> dict[str, object]:
        """The attributes that differ from the defaults, by lower-case field name."""
        return {
            f.name: getattr(self, f.name) for f in fields(self)
            if getattr(self, f.name) != f.default
        }


DEFAULT_META = Meta()


# --- checking written values ----------------------------------------------------------


def _refuse(name: str, why: str) -> Refused:
    return Refused(Reason.BAD_VALUE, f"{name.upper()}: {why}")


def decode_text(raw: bytes) -> str:
    """Text from bytes: UTF-8, or else Latin-1, the usual EPICS charset ("\xb5m" is µm).

    Also how a text PV's bytes are served as a pvAccess string (`relayd.pva.nt`).
    """
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _string(name: str, value: object) -> str:
    if isinstance(value, (bytes, bytearray)):
        value = decode_text(bytes(value).split(b"\0", 1)[0])
    if not isinstance(value, str):
        raise _refuse(name, f"{shown(value)} is not text")
    # Bytes that were not UTF-8 reach us from CA as lone surrogates: recover them.
    try:
        raw = value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raw = value.encode("utf-8", "replace")
    value = decode_text(raw)
    if len(value.encode("utf-8")) > STRING_SIZE:
        raise _refuse(name, f"longer than {STRING_SIZE} bytes")
    return value


def _number(name: str, value: object) -> float:
    if type(value) is bool or not isinstance(value, (int, float)):
        raise _refuse(name, f"{shown(value)} is not a number")
    try:
        number = float(value)
    except OverflowError:  # an int beyond float64 (msgpack cannot carry one; JSON can)
        raise _refuse(name, f"{shown(value)} does not fit in a float64") from None
    if not math.isfinite(number):
        raise _refuse(name, f"{shown(value)} is not finite")
    return number


def _limit(name: str, value: object) -> float | None:
    """An alarm limit; None (or NaN) unsets it."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return _number(name, value)


def _non_negative(name: str, value: object) -> float:
    number = _number(name, value)
    if number < 0:
        raise _refuse(name, f"{shown(value)} is negative")
    return number


def _prec(name: str, value: object) -> int:
    if type(value) is float and value.is_integer():
        value = int(value)
    if type(value) is not int:
        raise _refuse(name, f"{shown(value)} is not an integer")
    if not 0 <= value <= 17:
        raise _refuse(name, f"{shown(value)} is outside 0..17")
    return value


def _severity(name: str, value: object) -> int:
    if isinstance(value, str) and value.upper() in SEVERITY_MENU:
        return SEVERITY_MENU.index(value.upper())
    if type(value) is int and 0 <= value < len(SEVERITY_MENU):
        return value
    raise _refuse(name, f"{shown(value)} is not one of {', '.join(SEVERITY_MENU)} (or 0..3)")


# --- the field table ----------------------------------------------------------------------


@dataclass(frozen=True)
class Field:
    """One record-style field: its CA type and how a written value is checked.

    `ca_type` is "string", "double", "short", "long" or "enum" (with `menu`).
    `check` is None for read-only fields.
    """

    name: str
    ca_type: str
    check: Callable[[str, object], object] | None
    menu: tuple[str, ...] = field(default=())

    @property
    def writable(self) -> bool:
        return self.check is not None

    @property
    def attribute(self) -> str:
        return self.name.lower()


FIELDS: dict[str, Field] = {f.name: f for f in (
    Field("EGU", "string", _string),
    Field("PREC", "short", _prec),
    Field("DESC", "string", _string),
    Field("HOPR", "double", _number),
    Field("LOPR", "double", _number),
    Field("DRVH", "double", _number),
    Field("DRVL", "double", _number),
    Field("HIHI", "double", _limit),
    Field("HIGH", "double", _limit),
    Field("LOW", "double", _limit),
    Field("LOLO", "double", _limit),
    Field("HHSV", "enum", _severity, SEVERITY_MENU),
    Field("HSV", "enum", _severity, SEVERITY_MENU),
    Field("LSV", "enum", _severity, SEVERITY_MENU),
    Field("LLSV", "enum", _severity, SEVERITY_MENU),
    Field("HYST", "double", _non_negative),
    Field("TMO", "double", _non_negative),
    Field("NELM", "long", None),
    Field("NORD", "long", None),
    Field("RTYP", "string", None),
    Field("SEVR", "enum", None, SEVERITY_MENU),
    Field("STAT", "enum", None, STATUS_MENU),
)}

# The keys of a ZMQ update's "meta" map: the writable fields, lower case.
META_KEYS = frozenset(f.attribute for f in FIELDS.values() if f.writable)


def record_type(spec: PVSpec) -> str:
    """The record type a PV stands in for (its RTYP field)."""
    if spec.count == 1 and not spec.buffer:
        return {Kind.FLOAT: "ai", Kind.INT: "longin"}.get(spec.kind, "waveform")
    return "waveform"


def check_changes(changes: object, pv: str = "") -> dict[str, object]:
    """`changes` (lower-case field name -> value) checked and normalised.

    All or nothing: the first bad key or value raises `Refused` (BAD_VALUE), whose
    detail starts with the PV name `pv` when given.
    """
    head = f"{pv}: " if pv else ""
    if not isinstance(changes, dict):
        raise Refused(Reason.BAD_VALUE,
                      f"{head}'meta' must be a map, not {type(changes).__name__}")
    checked = {}
    for key, value in changes.items():
        if not isinstance(key, str) or key not in META_KEYS:
            raise Refused(
                Reason.BAD_VALUE,
                f"{head}unknown attribute {shown(key)} "
                f"(attributes are {', '.join(sorted(META_KEYS))})",
            )
        try:
            checked[key] = FIELDS[key.upper()].check(key, value)  # type: ignore[misc]
        except Refused as refused:
            raise Refused(refused.reason, head + refused.detail) from None
    return checked


def apply_changes(meta: Meta, changes: dict[str, object]) -> Meta:
    """`meta` with `changes` checked (see `check_changes`) and applied."""
    return replace(meta, **check_changes(changes))


def field_value(meta: Meta, name: str) -> object:
    """The value of a settable field as a CA client reads it (unset limits read 0)."""
    value = getattr(meta, name.lower())
    return 0.0 if value is None else value


def _check_table() -> None:
    """Meta and FIELDS must name the same attributes: checked at import, also under -O."""
    if {f.name for f in fields(Meta)} != META_KEYS:
        raise RuntimeError("relayd.core.meta: Meta and FIELDS disagree")


_check_table()
