"""A PV's state and the rules for how a put changes it. Pure: no I/O, no pcaspy.

A state starts undefined: no value, severity INVALID, status UDF, as an EPICS record
that has never processed. That is what a client monitoring a name before its first put
reads. The first put defines it; a plain PV then holds exactly the last value put, a
buffer appends every put on the right and forgets the oldest elements beyond its count.

Alarm severity and status follow the PV's attributes (`meta.Meta`) the way an ai record
follows its limits (`alarms.evaluate`): recomputed on every put and whenever the
attributes change. A PV that receives nothing for its TMO seconds goes stale: severity
INVALID, status TIMEOUT, until the next put.

`served()` is the value as the CA layer hands it out:

* scalars: the number (0 while undefined, the UDF convention);
* arrays and buffers: exactly the elements held (none while undefined);
* text: its bytes plus one terminating NUL when the count leaves room, as a waveform
  written with ``caput -S`` holds it, so C clients may treat it as a C string.
"""

from __future__ import annotations

import math

import numpy as np

from relayd.core import alarms, menus
from relayd.core.meta import DEFAULT_META, Meta, field_value, record_type
from relayd.core.names import Kind, PVSpec
from relayd.core.ring import Ring
from relayd.core.values import Stored

# Enum members are slow to look up in Python 3.11 (~70 ns each), and every put and every
# event asks these: module constants instead.
_CHAR = Kind.CHAR
_STAT_NONE, _NO_ALARM = menus.STAT_NONE, menus.NO_ALARM

_EMPTY = {kind: np.empty(0, dtype=kind.dtype) for kind in Kind}
for _array in _EMPTY.values():
    _array.flags.writeable = False


class PVState:
    """Value, times, alarm and attributes of one plain (non-buffer) PV."""

    __slots__ = ("spec", "value", "ts_ns", "status", "severity", "meta", "lalm", "stale",
                 "updated", "writer", "updates")

    def __init__(self, spec: PVSpec, meta: Meta = DEFAULT_META):
        self.spec = spec
        self.value: Stored | None = None
        self.ts_ns = 0  # the value's time stamp (source time, or arrival), POSIX ns
        self.status = menus.STAT_UDF
        self.severity = menus.INVALID
        self.meta = meta
        self.lalm = math.nan  # last alarm value, for hysteresis
        self.stale = False
        self.updated = 0.0  # monotonic time of the last put, for staleness
        # Who put the last value ("zmq 10.0.0.5", "ca user@host"; "" if unknown or never),
        # and how many values were put since this process made the PV (for rates).
        self.writer = ""
        self.updates = 0

    @property
    def defined(self) -> bool:
        """True once any value has been put."""
        return self.value is not None

    def put(self, value: Stored, ts_ns: int, now: float = 0.0) -> bool:
        """Apply a value already passed through `values.convert` for this spec.

        `now` is the monotonic arrival time (staleness counts from it). Returns True
        when the alarm status or severity changed, so the caller knows to post an alarm
        event as well as a value event.
        """
        self.value = value
        return self._stamp(value, ts_ns, now)

    def _stamp(self, alarm_value: object, ts_ns: int, now: float) -> bool:
        self.ts_ns = ts_ns
        self.updated = now
        self.stale = False
        return self._set_alarm(alarm_value)

    def _set_alarm(self, alarm_value: object) -> bool:
        meta = self.meta
        if meta.has_limits and self.spec.kind is not _CHAR:
            status, severity, self.lalm = alarms.evaluate(alarm_value, meta, self.lalm)
        else:
            status, severity = _STAT_NONE, _NO_ALARM
        changed = severity != self.severity or status != self.status
        self.status, self.severity = status, severity
        return changed

    def alarm_value(self) -> object:
        """What the limits are checked against: the value (every element of an array)."""
        return self.value

    def set_meta(self, meta: Meta) -> bool:
        """Replace the attributes; True if the alarm changed with them.

        Turning TMO off ends a staleness; the alarm is then judged afresh.
        """
        self.meta = meta
        if self.stale and meta.tmo <= 0:
            self.stale = False
        if not self.defined or self.stale:
            return False
        # LALM is kept, as a record keeps it: an alarm held by hysteresis stays held
        # unless the limit it was raised at changed.
        return self._set_alarm(self.alarm_value())

    def field(self, name: str) -> object:
        """The value of record-style field `name` (upper case, see `meta.FIELDS`)."""
        if name == "NELM":
            return self.spec.count
        if name == "NORD":
            return len(self) if self.defined else 0
        if name == "RTYP":
            return record_type(self.spec)
        if name == "SEVR":
            return self.severity
        if name == "STAT":
            return self.status
        return field_value(self.meta, name)

    def go_stale(self) -> bool:
        """Mark the PV stale (INVALID/TIMEOUT); True if it was not already."""
        if self.stale or not self.defined:
            return False
        self.stale = True
        self.status, self.severity = menus.STAT_TIMEOUT, menus.INVALID
        return True

    def served(self) -> float | int | bytes | np.ndarray:
        value = self.value
        spec = self.spec
        if spec.kind is _CHAR:
            text = value if value is not None else b""
            return text + b"\0" if len(text) < spec.count else text
        if value is None:
            return 0 if spec.is_scalar else _EMPTY[spec.kind]
        return value

    def __len__(self) -> int:
        """Elements held (NORD)."""
        served = self.served()
        return 1 if self.spec.is_scalar else len(served)


class BufferState(PVState):
    """A right-appending buffer: every put appends all its elements."""

    __slots__ = ("ring",)

    def __init__(self, spec: PVSpec, meta: Meta = DEFAULT_META):
        super().__init__(spec, meta)
        # Made at the first put: a name only watched (a placeholder) holds no memory.
        self.ring: Ring | None = None

    def put(self, value: Stored, ts_ns: int, now: float = 0.0) -> bool:
        if isinstance(value, bytes):
            value = np.frombuffer(value, dtype=np.uint8)
        if self.ring is None:
            self.ring = Ring(self.spec.count, self.spec.kind.dtype)
        self.ring.extend(value)  # type: ignore[arg-type]
        self.value = self.ring
        return self._stamp(self.alarm_value(), ts_ns, now)

    def view(self) -> np.ndarray:
        """The elements held, oldest first."""
        return self.ring.view() if self.ring is not None else _EMPTY[self.spec.kind]

    def alarm_value(self) -> object:
        """A buffer is a time trace: its alarm follows its newest element."""
        view = self.view()
        return view[-1:] if len(view) else None

    def served(self) -> bytes | np.ndarray:
        view = self.view()
        if self.spec.kind is _CHAR:
            text = view.tobytes()
            return text + b"\0" if len(text) < self.spec.count else text
        return view


def new_state(spec: PVSpec, meta: Meta = DEFAULT_META) -> PVState:
    """The right state class for `spec`, with attributes `meta`."""
    return BufferState(spec, meta) if spec.buffer else PVState(spec, meta)
