"""The CA layer's ceiling from Python: one process posting with the cheapest calls pcas allows.

Per monitor event it makes the calls an event needs and nothing else:

* raw SWIG functions (`pcaspy._cas.gdd_putConvertNumeric`, `_cas.PV_postEvent`, ...), not
  pcaspy's proxy classes, whose attribute lookups and wrapper frames cost more than
  the work (measured in-process: ``_cas.new_gdd`` + free 0.23 us, a value 0.07 us, a
  time stamp 0.09 us; ``cas.epicsTimeStamp()`` through its proxy 0.69 us);
* one `epicsTimeStamp` per round (or per ZMQ message), not one per update;
* gdds built once per PV and reused once pcas is done with them (below); an array is
  copied straight into its gdd's buffer.

Is reusing a gdd safe? ``casPV::postEvent`` does not copy the gdd: every event it
queues (``casMonEvent``, one per subscription) holds a counted reference to it
(``smartConstGDDPointer``), dropped once the event has been written to the client's
buffer (pcas: generic/casEventSys.cc ``postEvent``, casMonEvent.h, casMonitor.cc).
A gdd changed while an event still references it changes that event: measured, a gdd
posted with 3.0 and, before ``cas.process``, set to 4.0 and posted again reached a
pyepics client as 4.0, 4.0 - the 3.0 was lost. So a gdd may be reused only when its
reference count is back to 1 (ours alone); otherwise the PV takes another gdd of its
pool (a new one if none is free: the pool never grows past what pcas holds).

pcaspy does not expose the count (``gdd::ref_cnt`` is private and ``noReferencing``,
which fails when it is above 1, is not wrapped), but it can be read: `GddLayout.probe`
finds the word of a gdd that ``gdd.reference()`` raises by exactly one (offset 64 with
pcaspy 0.8.1 on x86_64), and a ctypes view of that word reads it in ~15 ns. The data
pointer of an array gdd is found the same way (the pointer whose memory holds a
known array) and checked by content; if either probe fails, the server says so and stops.
"""

from __future__ import annotations

import ctypes

import numpy as np
from pcaspy import _cas, cas

GDD_APP_VALUE = 16  # gddAppType_value
MASK = cas.DBE_VALUE | cas.DBE_LOG
_new_gdd = _cas.new_gdd
_put_number = _cas.gdd_putConvertNumeric
_set_stamp = _cas.gdd_setTimeStamp
_post = _cas.PV_postEvent


class LayoutError(RuntimeError):
    """The gdd's memory layout is not what this module can read safely."""


class GddLayout:
    """Where a gdd keeps its reference count and its data pointer (bytes from its start)."""

    WORDS = 18  # a gdd is 72 bytes with pcaspy 0.8.1 (ref_cnt at 64, flags at 68): read no further

    def __init__(self) -> None:
        self.refs = self._probe_refs()
        self.data = self._probe_data()

    @staticmethod
    def _words(gdd: object) -> list[int]:
        return [ctypes.c_uint32.from_address(int(gdd) + 4 * i).value for i in range(GddLayout.WORDS)]

    def _probe_refs(self) -> int:
        gdd = _new_gdd(GDD_APP_VALUE, cas.aitEnumFloat64)
        before = self._words(gdd)
        _cas.gdd_reference(gdd)
        during = self._words(gdd)
        _cas.gdd_unreference(gdd)
        rose = [i for i, (a, b) in enumerate(zip(before, during)) if b == a + 1]
        changed = [i for i, (a, b) in enumerate(zip(before, during)) if b != a]
        if len(rose) != 1 or changed != rose or before[rose[0]] != 1 or self._words(gdd) != before:
            raise LayoutError(f"cannot find a gdd's reference count (changed words {changed})")
        return 4 * rose[0]

    def _probe_data(self) -> int:
        """The word that points at an array gdd's data, checked by content.

        Candidates are the words that change when the gdd gets a new buffer (the data
        pointer and its destructor's); only those are read through, 64 bytes each.
        """
        gdd = array_gdd(8)
        before = self._words(gdd)
        known = np.arange(1.0, 9.0)
        _cas.gdd_putDoubleDataBuffer(gdd, known)
        after = self._words(gdd)
        for offset in range(0, self.refs, 8):
            i = offset // 4
            if before[i:i + 2] == after[i:i + 2]:
                continue
            pointer = ctypes.c_uint64.from_address(int(gdd) + offset).value
            if pointer >= 1 << 16 and ctypes.string_at(pointer, known.nbytes) == known.tobytes():
                return offset
        raise LayoutError("cannot find an array gdd's data pointer")

    def refcount(self, gdd: object) -> ctypes.c_uint32:
        """A live view of `gdd`'s reference count (valid while `gdd` is alive)."""
        return ctypes.c_uint32.from_address(int(gdd) + self.refs)

    def buffer(self, gdd: object, count: int) -> np.ndarray:
        """A float64 numpy view of `gdd`'s data buffer (valid until its buffer changes)."""
        pointer = ctypes.c_uint64.from_address(int(gdd) + self.data).value
        return np.ctypeslib.as_array((ctypes.c_double * count).from_address(pointer))


def array_gdd(count: int) -> object:
    """A value gdd of `count` float64, its buffer allocated (zeros)."""
    gdd = _new_gdd(GDD_APP_VALUE, cas.aitEnumFloat64)
    _cas.gdd_setDimension(gdd, 1, None)
    _cas.gdd_setBound(gdd, 0, 0, count)
    _cas.gdd_putDoubleDataBuffer(gdd, np.zeros(count))
    return gdd


class Slot:
    """One gdd of a PV's pool, with a view of its reference count (and of its buffer)."""

    __slots__ = ("gdd", "refs", "data")

    def __init__(self, layout: GddLayout, count: int):
        self.gdd = _new_gdd(GDD_APP_VALUE, cas.aitEnumFloat64) if count == 1 else array_gdd(count)
        self.refs = layout.refcount(self.gdd)
        self.data = layout.buffer(self.gdd, count) if count > 1 else None


def _make_pv_class():
    class DirectPV(cas.casPV):
        """A float64 PV posting from a pool of reusable gdds (`post`)."""

        def __init__(self, name: str, count: int, layout: GddLayout):
            cas.casPV.__init__(self)
            self.name = name
            self.count = count
            self.layout = layout
            self.value: object = 0.0 if count == 1 else np.zeros(count)
            self.monitored = False
            self.pool = [Slot(layout, count)]
            self.raw = self.this  # the SWIG pointer object: no attribute lookup per post

        def free_slot(self) -> Slot:
            """A gdd of the pool that no queued event references (a new one if none)."""
            for slot in self.pool:
                if slot.refs.value == 1:
                    return slot
            slot = Slot(self.layout, self.count)
            self.pool.append(slot)
            return slot

        def post(self, stamp: object) -> None:
            """Post the current value with `stamp` (an epicsTimeStamp's SWIG pointer)."""
            slot = self.free_slot()
            if self.count == 1:
                _put_number(slot.gdd, self.value)
            else:
                slot.data[:] = self.value
            _set_stamp(slot.gdd, stamp)
            _post(self.raw, MASK, slot.gdd)

        def getValue(self, gdd):
            if gdd.primitiveType() == cas.aitEnumInvalid:
                gdd.setPrimType(cas.aitEnumFloat64)
            if self.count == 1:
                gdd.putConvertNumeric(float(self.value))
            else:
                gdd.setDimension(1)
                gdd.setBound(0, 0, self.count)
                gdd.putDoubleDataBuffer(np.ascontiguousarray(self.value, dtype=np.float64))
            return cas.S_casApp_success

        def interestRegister(self):
            self.monitored = True
            return cas.S_casApp_success

        def interestDelete(self):
            self.monitored = False

        def getName(self):
            return self.name

        def bestExternalType(self):
            return cas.aitEnumFloat64

        def maxDimension(self):
            return 0 if self.count == 1 else 1

        def maxBound(self, dimension):
            return self.count if dimension == 0 else 0

    class DirectCAServer(cas.caServer):
        def __init__(self, pvs: dict):
            cas.caServer.__init__(self)
            self.pvs = pvs

        def pvExistTest(self, context, address, name):
            return cas.pverExistsHere if name in self.pvs else cas.pverDoesNotExistHere

        def pvAttach(self, context, name):
            return self.pvs.get(name, cas.S_casApp_pvNotFound)

    return DirectPV, DirectCAServer


class DirectServer:
    """The ceiling: casPV objects of our own, posting the cheapest way (module docstring)."""

    def __init__(self, prefix: str, names: list[str], count: int, status_pv: str):
        DirectPV, DirectCAServer = _make_pv_class()
        layout = GddLayout()
        self.pvs = {f"{prefix}:{name}": DirectPV(f"{prefix}:{name}", count, layout)
                    for name in names}
        all_pvs = dict(self.pvs)
        status = f"{prefix}:{status_pv}"
        all_pvs[status] = DirectPV(status, 1, layout)
        self.ordered = list(self.pvs.values())
        self.count = count
        self.server = DirectCAServer(all_pvs)
        self.process = cas.process
        # A round's source array: element 0 carries the round number (the monitor's
        # "last value"), as the pusher's arrays do.
        self._source = np.zeros(count) if count > 1 else None

    def gdds(self) -> int:
        """gdds in every PV's pool: 1 per PV while pcas sends each event before the next."""
        return sum(len(pv.pool) for pv in self.ordered)

    def apply(self, updates: list[tuple[str, object]]) -> None:
        """One ZMQ message: set every value, then post each touched PV once, one stamp."""
        touched = {}
        pvs = self.pvs
        for name, value in updates:
            target = pvs[name]
            target.value = value
            touched[name] = target
        stamp = cas.epicsTimeStamp()
        raw = stamp.this
        for target in touched.values():
            if target.monitored:
                target.post(raw)

    def post_round(self, value: float) -> None:
        """Every PV once, with `value` and one time stamp."""
        stamp = cas.epicsTimeStamp()
        raw = stamp.this
        if self._source is None:
            for target in self.ordered:
                target.value = value
                if target.monitored:
                    target.post(raw)
            return
        self._source[0] = value
        for target in self.ordered:
            target.value = self._source
            if target.monitored:
                target.post(raw)
