"""A PV's state and the rules for how a put changes it. Pure: no I/O, no pcaspy.

A state starts undefined: no value, severity INVALID, status UDF, as an EPICS record
that has never processed. That is what a client monitoring a name before its first put
reads. The first put defines it; a plain PV then holds exactly the last value put, a
buffer appends every put on the right and forgets the oldest elements beyond its count.

`served()` is the value as the CA layer hands it out:

* scalars: the number (0 while undefined, the UDF convention);
* arrays and buffers: exactly the elements held (none while undefined);
* text: its bytes plus one terminating NUL when the count leaves room, as a waveform
  written with ``caput -S`` holds it, so C clients may treat it as a C string.
"""

from __future__ import annotations

import numpy as np

from relayd import alarm
from relayd.names import Kind, PVSpec
from relayd.ring import Ring
from relayd.values import Stored

_NUMPY_DTYPE = {Kind.FLOAT: np.float64, Kind.INT: np.int32, Kind.CHAR: np.uint8}
_EMPTY = {kind: np.empty(0, dtype=dt) for kind, dt in _NUMPY_DTYPE.items()}
for _array in _EMPTY.values():
    _array.flags.writeable = False


class PVState:
    """Value, source time and alarm of one plain (non-buffer) PV."""

    __slots__ = ("spec", "value", "ts_ns", "status", "severity")

    def __init__(self, spec: PVSpec):
        self.spec = spec
        self.value: Stored | None = None
        self.ts_ns = 0
        self.status = alarm.STAT_UDF
        self.severity = alarm.INVALID

    @property
    def defined(self) -> bool:
        """True once any value has been put."""
        return self.value is not None

    def put(self, value: Stored, ts_ns: int) -> bool:
        """Apply a value already passed through `values.convert` for this spec.

        Returns True when the alarm status or severity changed with it, so the caller
        knows to post an alarm event as well as a value event.
        """
        self.value = value
        return self._stamp(ts_ns)

    def _stamp(self, ts_ns: int) -> bool:
        self.ts_ns = ts_ns
        changed = self.severity != alarm.NO_ALARM or self.status != alarm.STAT_NONE
        self.status = alarm.STAT_NONE
        self.severity = alarm.NO_ALARM
        return changed

    def served(self) -> float | int | bytes | np.ndarray:
        value = self.value
        spec = self.spec
        if spec.kind is Kind.CHAR:
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

    def __init__(self, spec: PVSpec):
        super().__init__(spec)
        self.ring = Ring(spec.count, _NUMPY_DTYPE[spec.kind])

    def put(self, value: Stored, ts_ns: int) -> bool:
        if isinstance(value, bytes):
            value = np.frombuffer(value, dtype=np.uint8)
        self.ring.extend(value)  # type: ignore[arg-type]
        self.value = self.ring
        return self._stamp(ts_ns)

    def served(self) -> bytes | np.ndarray:
        view = self.ring.view()
        if self.spec.kind is Kind.CHAR:
            text = view.tobytes()
            return text + b"\0" if len(text) < self.spec.count else text
        return view


def new_state(spec: PVSpec) -> PVState:
    """The right state class for `spec`."""
    return BufferState(spec) if spec.buffer else PVState(spec)
