"""What each dtype accepts, and the form a value is stored in. Pure: no I/O, no pcaspy.

`convert` is the single gate every value passes, whether it came from a CA put or a ZMQ
message, so both paths accept and refuse exactly the same things. It never mutates; it
returns the stored form or raises `Refused` (BAD_VALUE or TOO_MANY_ELEMENTS).

Stored forms (and why):

* ``f`` scalar: a Python float; ``i`` scalar: a Python int. Scalars are the hot path and
  plain numbers are the cheapest thing to hand to the CA layer.
* numeric arrays and buffers: a 1-D numpy array of float64 or int32, the CA wire types,
  never sharing memory anyone could change (a writable input array is copied; a
  read-only view of received bytes is kept as it is).
* ``c``/``C``: bytes, the text without its NUL terminator.

Conversions:

* ``f`` takes ints and floats (bools count as 0/1). NaN and infinities are stored as sent.
* ``i`` takes integers in the int32 range. A float is truncated toward zero, as the C
  conversion in an EPICS longout record does; a float that is not finite or does not fit
  in int32 is refused (a C cast would be undefined behaviour).
* ``c`` takes text: str (stored UTF-8 encoded) or bytes, NUL-terminated or not; the text
  ends at the first NUL. A sequence of byte values 0..255 is taken as text too, as CA
  char arrays arrive that way: a list of ints, or an integer array of any dtype (a packed
  array), with the same verdict for the same values (a negative one is refused, never
  wrapped).
* A scalar PV takes a number or a one-element sequence. Strings are never parsed as
  numbers here: a string sent to a numeric PV is refused.
* An array or buffer put may hold fewer elements than the PV's count, never more.
"""

from __future__ import annotations

import math
from typing import Callable, Union

import numpy as np

from relayd.core.errors import Reason, Refused, shown
from relayd.core.names import Kind, PVSpec

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1

Stored = Union[float, int, bytes, np.ndarray]

_TEXT_TYPES = (str, bytes, bytearray, memoryview)


def _bad(spec: PVSpec, why: str) -> Refused:
    return Refused(Reason.BAD_VALUE, f"{spec.name}: {why}")


def _too_many(spec: PVSpec, n: int) -> Refused:
    return Refused(
        Reason.TOO_MANY_ELEMENTS, f"{spec.name}: {n} elements, the PV holds {spec.count}"
    )


def numeric_array(spec: PVSpec, raw: object) -> np.ndarray:
    """`raw` as a 1-D numpy array of numbers (bool, int or float), or `Refused`."""
    if isinstance(raw, _TEXT_TYPES):
        raise _bad(spec, f"text {shown(raw)} sent to a numeric PV")
    if isinstance(raw, np.ndarray):
        array = raw
    else:
        try:
            array = np.asarray(raw)
        except (ValueError, TypeError, OverflowError):
            raise _bad(spec, f"{shown(raw)} is not a number or a list of numbers")
    if array.dtype.kind not in "biuf":
        raise _bad(spec, f"{shown(raw)} is not a number or a list of numbers")
    if array.ndim == 0:
        array = array.reshape(1)
    elif array.ndim != 1:
        raise _bad(spec, f"a {array.ndim}-dimensional array; PVs hold one dimension")
    return array


def _float_scalar(spec: PVSpec, raw: object) -> float:
    kind = type(raw)
    if kind is float:
        return raw  # type: ignore[return-value]
    if kind is int or kind is bool:
        try:
            return float(raw)  # type: ignore[arg-type]
        except OverflowError:
            raise _bad(spec, f"{shown(raw)} does not fit in a float64")
    array = numeric_array(spec, raw)
    if array.size != 1:
        raise _too_many(spec, array.size) if array.size > 1 else _bad(spec, "no value")
    return float(array[0])


def _int_from_number(spec: PVSpec, value: object) -> int:
    if isinstance(value, (float, np.floating)):
        if not math.isfinite(value):
            raise _bad(spec, f"{shown(value)} cannot be stored in an int32 PV")
        value = math.trunc(value)
    number = int(value)  # type: ignore[call-overload]
    if not INT32_MIN <= number <= INT32_MAX:
        raise _bad(spec, f"{shown(number)} is outside the int32 range")
    return number


def _int_scalar(spec: PVSpec, raw: object) -> int:
    kind = type(raw)
    if kind is int or kind is bool or kind is float:
        return _int_from_number(spec, raw)
    array = numeric_array(spec, raw)
    if array.size != 1:
        raise _too_many(spec, array.size) if array.size > 1 else _bad(spec, "no value")
    return _int_from_number(spec, array[0].item())


def _int_array(spec: PVSpec, array: np.ndarray) -> np.ndarray:
    if array.dtype.kind == "f":
        if array.size and not np.isfinite(array).all():
            raise _bad(spec, "NaN or infinity cannot be stored in an int32 PV")
        array = np.trunc(array)
    if array.size and (array.min() < INT32_MIN or array.max() > INT32_MAX):
        raise _bad(spec, "a value is outside the int32 range")
    return array.astype(np.int32)


def _text(spec: PVSpec, raw: object) -> bytes:
    if isinstance(raw, str):
        try:
            data = raw.encode("utf-8")
        except UnicodeEncodeError as error:
            raise _bad(spec, f"text that is not valid Unicode ({error.reason})")
    elif isinstance(raw, (bytes, bytearray, memoryview)):
        data = bytes(raw)
    elif isinstance(raw, np.ndarray) and raw.dtype.kind in "iu" and raw.ndim == 1:
        # Byte values, as a list of ints would carry them: the same values get the same
        # verdict whatever integer dtype packed them (an int8 -1 is refused, not 255).
        if raw.size and (raw.min() < 0 or raw.max() > 255):
            raise _bad(spec, "a byte value outside 0..255")
        data = raw.astype(np.uint8).tobytes()
    elif isinstance(raw, (list, tuple)) and all(type(b) is int for b in raw):
        if not all(0 <= b <= 255 for b in raw):
            raise _bad(spec, "a byte value outside 0..255")
        data = bytes(raw)
    else:
        raise _bad(spec, f"{shown(raw)} is not text (str or bytes)")
    end = data.find(b"\0")
    if end >= 0:
        data = data[:end]
    if len(data) > spec.count:
        raise _too_many(spec, len(data))
    return data


def convert(spec: PVSpec, raw: object) -> Stored:
    """The stored form of `raw` for a PV of `spec`, or `Refused` saying why not."""
    return converter(spec)(spec, raw)


def converter(spec: PVSpec) -> Callable[[PVSpec, object], Stored]:
    """The conversion function for PVs like `spec`: ``converter(spec)(spec, raw)``.

    Chosen once per name by callers that convert many values (the ingest worker caches
    it with the parsed name), instead of on every value.
    """
    if spec.kind is Kind.CHAR:
        return _text
    if spec.is_scalar and not spec.buffer:
        return _float_scalar if spec.kind is Kind.FLOAT else _int_scalar
    return _int_array_of if spec.kind is Kind.INT else _float_array_of


def _sized_array(spec: PVSpec, raw: object) -> np.ndarray:
    array = numeric_array(spec, raw)
    if array.size > spec.count:
        raise _too_many(spec, array.size)
    return array


def _int_array_of(spec: PVSpec, raw: object) -> np.ndarray:
    return _int_array(spec, _sized_array(spec, raw))


def _float_array_of(spec: PVSpec, raw: object) -> np.ndarray:
    array = _sized_array(spec, raw)
    if array.dtype == np.float64 and array.dtype.isnative and not array.flags.writeable:
        # A read-only array (a view of received bytes, which are immutable) cannot
        # change behind the PV's back: no copy needed. This is the packed-array path.
        return array
    return np.array(array, dtype=np.float64)  # a copy: never alias the sender's memory
