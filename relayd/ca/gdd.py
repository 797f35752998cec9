"""Moving values between a PV's state and pcaspy's gdd containers.

This is the hot path of the relay: every monitor event is one `monitor_event()` call,
so it makes the fewest possible calls into the SWIG layer (a value gdd, the data, the
alarm, the time stamp) and never goes through pcaspy's generic `gdd.put`, whose type
dispatch costs more than the post itself.
"""

from __future__ import annotations

import numpy as np
from pcaspy import _cas, cas

from relayd.core.meta import Meta
from relayd.core.names import Kind, PVSpec
from relayd.core.pvstate import PVState

AIT = {Kind.FLOAT: cas.aitEnumFloat64, Kind.INT: cas.aitEnumInt32, Kind.CHAR: cas.aitEnumUint8}
GDD_APP_VALUE = 16  # gddAppType_value

# POSIX time of the EPICS epoch (1990-01-01), in nanoseconds.
EPICS_EPOCH_NS = cas.POSIX_TIME_AT_EPICS_EPOCH * 1_000_000_000
NS = 1_000_000_000


# A new epicsTimeStamp as the plain SWIG object, without pcaspy's proxy class: 0.17 us
# against 0.72 us (measured), and one is made per message, or per event of a CA put.
# It is freed like the proxy's (SWIG owns it); gdd.setTimeStamp copies it.
_new_stamp = _cas.new_epicsTimeStamp


def epics_time(ts_ns: int) -> cas.epicsTimeStamp:
    """An epicsTimeStamp for POSIX nanoseconds; times before 1990 become the epoch.

    The plain SWIG object (see `_new_stamp`): what `gdd.setTimeStamp` takes.
    """
    if ts_ns <= EPICS_EPOCH_NS:
        return _new_stamp(0, 0)
    seconds, nsec = divmod(ts_ns - EPICS_EPOCH_NS, NS)
    return _new_stamp(seconds, nsec)


# The SWIG functions behind pcaspy's gdd methods, called directly: on the plain SWIG
# object of a new gdd, building pcaspy's proxy object and looking up its methods cost
# more than the work itself (measured: 1.3 us against 0.5 us for a scalar event). They
# take a pcaspy proxy (a gdd pcas hands us) just as well.
_new_gdd = _cas.new_gdd
_prim_type = _cas.gdd_primitiveType
_set_prim_type = _cas.gdd_setPrimType
_put_number = _cas.gdd_putConvertNumeric
_set_dimension = _cas.gdd_setDimension
_set_bound = _cas.gdd_setBound
_set_stat_sevr = _cas.gdd_setStatSevr
_set_stamp = _cas.gdd_setTimeStamp
# Enum members are slow to look up in Python 3.11 (~60 ns): `fill` compares with this.
_CHAR = Kind.CHAR
_PUT_ARRAY = {
    Kind.FLOAT: _cas.gdd_putDoubleDataBuffer,
    Kind.INT: _cas.gdd_putIntDataBuffer,
    Kind.CHAR: _cas.gdd_putCharDataBuffer,
}


def fill(value: object, state: PVState, stamp: cas.epicsTimeStamp | None = None) -> None:
    """Put `state`'s value, alarm and time into the gdd `value`, typed for its PV.

    The one way a PV's state goes into a gdd: a new one for a monitor event
    (`monitor_event`), the value member of a DBR_CTRL container (`ctrl_event`), and,
    through `fill_read`, the gdd of a client's read.
    """
    spec = state.spec
    served = state.served()
    if spec.count == 1:
        _put_number(value, served[0] if spec.kind is _CHAR else served)
    else:
        _set_dimension(value, 1, None)
        _set_bound(value, 0, 0, len(served))
        _PUT_ARRAY[spec.kind](value, served)
    # Always set, even to NO_ALARM: pcas reuses containers, with the alarm they last held.
    _set_stat_sevr(value, state.status, state.severity)
    _set_stamp(value, stamp if stamp is not None else epics_time(state.ts_ns))


def fill_read(value: cas.gdd, state: PVState) -> None:
    """`fill` the gdd pcas hands a PV's ``getValue`` (a client's read).

    It may come without a type yet (as pcaspy's own PVs handle it too): it then gets the
    PV's. The gdds this module makes are typed when made, so `fill` need not ask.
    """
    if _prim_type(value) == cas.aitEnumInvalid:
        _set_prim_type(value, AIT[state.spec.kind])
    fill(value, state)


class Stamps:
    """epicsTimeStamps for POSIX nanoseconds, remembering the last one made.

    Every update of one ZMQ message carries the same arrival time, so a batch of posts
    needs one time stamp object, not one per event.
    """

    __slots__ = ("_ns", "_stamp")

    def __init__(self) -> None:
        self._ns = -1
        self._stamp: cas.epicsTimeStamp | None = None

    def __call__(self, ts_ns: int) -> cas.epicsTimeStamp:
        if ts_ns != self._ns:
            self._ns, self._stamp = ts_ns, epics_time(ts_ns)
        return self._stamp  # type: ignore[return-value]


def extract(value: cas.gdd, spec: PVSpec) -> object:
    """The data of a CA put as plain Python, for `values.convert`.

    The CA server library has already converted the put to the PV's native type, so a
    scalar is one number and an array is a list of numbers (bytes for char PVs).
    """
    if value.isScalar():
        number = value.getConvertNumeric()
        if spec.kind is Kind.CHAR:
            return bytes([int(number) & 0xFF])
        if spec.kind is Kind.INT:
            return int(number)
        return number
    count = value.getDataSizeElements()
    if spec.kind is Kind.CHAR:
        return bytes(value.getCharArray(count))
    data = value.getNumericArray(count)
    if spec.kind is Kind.INT:
        return np.array(data, dtype=np.int64)
    return np.array(data, dtype=np.float64)


# --- DBR_GR/DBR_CTRL containers -----------------------------------------------------------

# gddAppType_dbr_ctrl_<type> and where the value sits in it. The members before the value
# are: 1 units, 2 LOW, 3 HIGH, 4 LOLO, 5 HIHI, 6 DRVL, 7 DRVH, 8 LOPR, 9 HOPR, and for
# doubles 10 PREC.
CTRL_APP = {Kind.FLOAT: 34, Kind.INT: 33, Kind.CHAR: 32}
# Every numeric DBR_CTRL a client may ask for (short 29, float 30, char 32, long 33,
# double 34); they share the layout up to the control limits.
CTRL_APPS_ALL = frozenset({29, 30, 32, 33, 34})
CTRL_VALUE = {Kind.FLOAT: 11, Kind.INT: 10, Kind.CHAR: 10}
CTRL_LIMITS = ((2, "low"), (3, "high"), (4, "lolo"), (5, "hihi"), (8, "lopr"), (9, "hopr"))
CONTROL_LOW, CONTROL_HIGH = 6, 7  # from `Meta.control_limits`


def put_control_limits(container: cas.gdd, meta: Meta) -> None:
    """The control limits of a DBR_CTRL container (see `Meta.control_limits`)."""
    low, high = meta.control_limits()
    container[CONTROL_LOW].putConvertNumeric(low)
    container[CONTROL_HIGH].putConvertNumeric(high)


def ctrl_event(state: PVState, stamp: cas.epicsTimeStamp | None = None) -> cas.gdd:
    """A DBR_CTRL container for a monitor event: value, alarm, time and attributes.

    pcas fills a client's DBR_GR/DBR_CTRL monitor only from what is posted; a value-only
    event would reset a display's units and limits to zero. PVs whose attributes are all
    defaults post value-only events (cheaper, and all-zero is then the truth).
    """
    kind = state.spec.kind
    meta = state.meta
    container = cas.gdd.createDD(CTRL_APP[kind])
    container[1].putConvertString(meta.egu)
    for index, name in CTRL_LIMITS:
        limit = getattr(meta, name)
        container[index].putConvertNumeric(0.0 if limit is None else limit)
    put_control_limits(container, meta)
    if kind is Kind.FLOAT:
        container[10].putConvertNumeric(meta.prec)
    fill(container[CTRL_VALUE[kind]], state, stamp)
    return container


def monitor_event(state: PVState, stamp: cas.epicsTimeStamp | None = None) -> object:
    """The gdd to post for `state`: with its attributes when it has any.

    Otherwise a value gdd alone, a plain SWIG object (see `fill`).
    """
    if state.meta.has_display:
        return ctrl_event(state, stamp)
    value = _new_gdd(GDD_APP_VALUE, AIT[state.spec.kind])
    fill(value, state, stamp)
    return value


# --- record-style fields ------------------------------------------------------------------

FIELD_AIT = {
    "string": cas.aitEnumString,
    "double": cas.aitEnumFloat64,
    "short": cas.aitEnumInt16,
    "long": cas.aitEnumInt32,
    "enum": cas.aitEnumEnum16,
}


def fill_field(value: cas.gdd, ca_type: str, field_value: object, state: PVState) -> None:
    """Put a field's value into `value`, with its PV's alarm and time (as a record does)."""
    if value.primitiveType() == cas.aitEnumInvalid:
        value.setPrimType(FIELD_AIT[ca_type])
    if ca_type == "string":
        value.putConvertString(str(field_value))
    else:
        value.putConvertNumeric(field_value)
    value.setStatSevr(state.status, state.severity)
    value.setTimeStamp(epics_time(state.ts_ns))


def field_event(ca_type: str, field_value: object, state: PVState) -> cas.gdd:
    value = cas.gdd(GDD_APP_VALUE, FIELD_AIT[ca_type])
    fill_field(value, ca_type, field_value, state)
    return value


def extract_field(value: cas.gdd, ca_type: str) -> object:
    """A put to a field as plain Python (pcas has converted it to the field's type)."""
    if ca_type == "string":
        return value.getConvertString()
    number = value.getConvertNumeric()
    if ca_type in ("short", "long", "enum"):
        return int(number)
    return number
