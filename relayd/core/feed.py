"""The change feed: what the CA process tells the HTTP worker about its PVs. Pure.

The HTTP worker answers reads (the PV list, the web page, /metrics) from a mirror of the
relay's PVs, never by asking the CA loop per request. The CA process keeps the mirror
current by sending `FeedChunk` messages: the rows of PVs touched since the last feed
(conflated: a PV put 100 times in a quarter second is sent once, with its last value and
its update count), the names deleted, and the status counters. A (re)started worker asks
for a full sync: every PV, streamed in chunks, the last one marked ``final`` so that the
worker can drop the names the relay no longer holds.

A row is the PV as a list shows it: arrays and buffers cut to a preview of PREVIEW
elements (the first of an array, the newest of a buffer), text to PREVIEW_TEXT
characters. `full_value` is the whole value, for the one-PV query.

Everything here travels as msgpack (tuples become arrays), so both ends build and read it
with these functions only: the format lives in one place.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from relayd.core.meta import DEFAULT_META, Meta
from relayd.core.names import Kind
from relayd.core.pvstate import PVState

PREVIEW = 16  # elements of an array or buffer a row carries
PREVIEW_TEXT = 200  # characters of a text PV a row carries


class Row(NamedTuple):
    """One PV as the feed carries it (a msgpack array in this field order)."""

    name: str  # the full name
    value: Any  # float | int | str | list: the value, or its preview (None: undefined)
    elements: int  # elements held (NORD); more than len(value) when cut to a preview
    severity: int  # menuAlarmSevr
    status: int  # menuAlarmStat
    ts_ns: int  # the value's time stamp, POSIX ns (0: undefined)
    meta: dict | None  # the attributes that differ from the defaults, or None
    writer: str  # who last wrote it ("zmq 127.0.0.1", "ca user@host", ...)
    updates: int  # values accepted since the relay (this CA process) started


class FeedChunk(NamedTuple):
    """One feed message: rows, deletes, status counters; part of a sync, or not.

    `sync` is the id of the sync request this chunk answers (0 for an ordinary feed);
    `final` marks the last chunk of a sync. `status` maps status PV suffixes
    (``status:pvs``) to their values, or is None when it has not been refreshed.
    """

    rows: list
    deleted: list
    status: dict | None = None
    sync: int = 0
    final: bool = False


def text(raw: bytes) -> str:
    """A text PV's bytes as str: UTF-8, or Latin-1 when they are not (the EPICS charset)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _preview(state: PVState) -> tuple[Any, int]:
    """The value a row carries and the elements held."""
    spec = state.spec
    if not state.defined:
        return None, 0
    if spec.kind is Kind.CHAR:
        whole = state.view().tobytes() if spec.buffer else state.value  # type: ignore[attr-defined]
        return text(whole[:PREVIEW_TEXT * 4])[:PREVIEW_TEXT], len(whole)
    if spec.buffer:
        view = state.view()  # type: ignore[attr-defined]
        return view[-PREVIEW:].tolist(), len(view)
    value = state.value
    if spec.is_scalar:
        return value, 1
    return value[:PREVIEW].tolist(), len(value)  # type: ignore[index]


def row(state: PVState, writer: str = "", updates: int = 0) -> Row:
    """The feed row of one PV."""
    value, elements = _preview(state)
    meta = state.meta
    changes = None if meta is DEFAULT_META else (meta.changes() or None)
    return Row(state.spec.name, value, elements, state.severity, state.status,
               state.ts_ns, changes, writer, updates)


def full_value(state: PVState) -> Any:
    """The whole value of a PV, as a row would carry it uncut (None: undefined)."""
    spec = state.spec
    if not state.defined:
        return None
    if spec.buffer:
        view = state.view()  # type: ignore[attr-defined]
        return text(view.tobytes()) if spec.kind is Kind.CHAR else view.tolist()
    value = state.value
    if spec.kind is Kind.CHAR:
        return text(value)  # type: ignore[arg-type]
    return value if spec.is_scalar else value.tolist()  # type: ignore[union-attr]


def attributes(changes: dict | None) -> dict[str, Any]:
    """Every settable attribute of a PV whose non-default ones are `changes`."""
    base = {name: getattr(DEFAULT_META, name) for name in Meta.__dataclass_fields__}
    if changes:
        base.update(changes)
    return base


def json_safe(value: Any) -> Any:
    """`value` with NaN and infinities as the strings "NaN", "Infinity", "-Infinity".

    JSON has no such numbers, and browsers refuse the ones Python writes by default.
    """
    if type(value) is float:
        return value if math.isfinite(value) else _NON_FINITE[str(value)]
    if type(value) is list and value and type(value[0]) is float:
        if all(map(math.isfinite, value)):
            return value
        return [json_safe(item) for item in value]
    if isinstance(value, np.generic):
        return json_safe(value.item())
    return value


_NON_FINITE = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}
