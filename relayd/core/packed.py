"""Numeric arrays as compact maps, ``{"dtype": typestr, "data": bytes}``: both directions.

A list of a million floats costs a million msgpack objects to build and to read; a
packed array is one bin and a numpy typestr, exact and cheap. The push client packs
numpy arrays and `array.array` (`pack_array`); the relay reads them back as read-only
numpy views of the received bytes (`unpack_array`). Pure. numpy is never imported to
pack (a value can only be a numpy array if the caller has numpy loaded), only to unpack.
"""

from __future__ import annotations

import array
import sys
from typing import Any

# numpy typestrs a packed array may use, with their item sizes. Every one is a CA-able
# number: bools, float16, complex, strings and objects are left out on purpose.
DTYPES = {
    "<f8": 8, ">f8": 8, "<f4": 4, ">f4": 4,
    "|i1": 1, "<i2": 2, ">i2": 2, "<i4": 4, ">i4": 4, "<i8": 8, ">i8": 8,
    "|u1": 1, "<u2": 2, ">u2": 2, "<u4": 4, ">u4": 4, "<u8": 8, ">u8": 8,
}
PACKED_KEYS = frozenset({"dtype", "data"})

# array.array typecodes by kind; the size comes from the array's itemsize.
_ARRAY_KINDS = {
    "b": "i", "h": "i", "i": "i", "l": "i", "q": "i",
    "B": "u", "H": "u", "I": "u", "L": "u", "Q": "u",
    "f": "f", "d": "f",
}
_NATIVE = "<" if sys.byteorder == "little" else ">"


_MSGPACK_NAMES = {type(None): "nil", dict: "map", list: "array", bytes: "bin"}


def type_name(obj: object) -> str:
    """The msgpack name of a decoded object's type (nil, bool, int, float, str, bin...)."""
    return _MSGPACK_NAMES.get(type(obj), type(obj).__name__)


def unpack_array(value: dict) -> Any:
    """The numpy array a packed ``{"dtype", "data"}`` map holds; ValueError saying why not."""
    if value.keys() != PACKED_KEYS:
        keys = ", ".join(sorted(repr(key)[:40] for key in value))
        raise ValueError(
            f"a map 'value' must be a packed array with keys dtype and data, not {{{keys}}}"
        )
    dtype, data = value["dtype"], value["data"]
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise ValueError(
            f"packed array dtype {repr(dtype)[:60]} is not one of {' '.join(DTYPES)}"
        )
    if not isinstance(data, bytes):
        raise ValueError(f"packed array data is a {type_name(data)}, not msgpack bin")
    itemsize = DTYPES[dtype]
    if len(data) % itemsize:
        raise ValueError(
            f"packed array data of {len(data)} bytes is not a whole number of "
            f"{dtype} items ({itemsize} bytes each)"
        )
    try:
        import numpy
    except ImportError:
        raise ValueError("packed arrays need numpy, which is not installed here") from None
    return numpy.frombuffer(data, dtype=dtype)


def pack_array(value: object) -> dict | None:
    """The packed form ``{"dtype": typestr, "data": bytes}`` of a numeric array, else None.

    Packs 1-D numpy arrays (bool as ``|u1``, float16 widened to float32) and
    `array.array` of a numeric typecode; anything else gives None and is sent as it is.
    A numpy array that cannot be a PV value (2-D, complex, strings...) raises ValueError
    or TypeError. numpy is never imported here: a value can only be a numpy array if the
    caller has loaded numpy already.
    """
    if isinstance(value, array.array):
        kind = _ARRAY_KINDS.get(value.typecode)
        if kind is None:
            raise TypeError(
                f"array.array of typecode {value.typecode!r} is not numeric; send text as a str"
            )
        order = "|" if value.itemsize == 1 else _NATIVE
        return {"dtype": f"{order}{kind}{value.itemsize}", "data": value.tobytes()}
    numpy = sys.modules.get("numpy")
    if numpy is None or not isinstance(value, numpy.ndarray):
        return None
    if value.ndim != 1:
        if value.ndim == 0:
            return None  # a 0-d array is a scalar: the protocol sends its item
        raise ValueError(f"a {value.ndim}-dimensional array; PVs hold one dimension")
    if value.dtype.kind == "b":
        value = value.astype(numpy.uint8)
    elif value.dtype.kind == "f" and value.dtype.itemsize == 2:
        value = value.astype(numpy.float32)
    typestr = value.dtype.str
    if typestr not in DTYPES:
        raise TypeError(f"a numpy array of dtype {value.dtype} cannot be a PV value")
    return {"dtype": typestr, "data": value.tobytes()}
