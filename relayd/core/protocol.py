"""The relay's wire protocol, version 1: msgpack updates over ZeroMQ. Pure: no I/O.

Both ends share this module: the relay's ingest worker calls `decode` on every frame it
pulls, and the push client calls `encode_update` and `dumps` to build them, so the two
can never disagree about the format. docs/PROTOCOL.md is the spec for other languages.

A message is one ZeroMQ frame holding one msgpack object: a map (one update) or an array
of maps (a batch). An update map has the keys

* ``pv``: the PV name, with or without the relay's prefix (str, required);
* ``op``: ``"put"`` (the default) or ``"delete"``;
* ``value``: what to put (absent for a delete; a put needs a value, a meta map, or both);
* ``ts``: the source time in POSIX seconds (int or float, optional);
* ``meta``: PV attributes to set, keyed by lower-case field name (``egu``, ``prec``,
  ``hihi``...); checked by the relay (`relayd.meta`), with the value or alone;
* ``v``: the protocol version (optional; only 1).

Any other key is refused rather than ignored, so a misspelled ``"ts"`` cannot silently
turn into "no time stamp". Later versions may add keys; a relay that does not know them
refuses the update, which is the safe way round.

`decode` checks structure only. Whether a value suits its PV (text to a float PV, too
many elements...) depends on the name, which only the relay can resolve: it calls
`relayd.core.values.convert` after `decode`. One bad update in a batch is refused on its own;
the good ones are kept.

The module imports with msgpack alone. numpy is imported only when a packed array is
decoded or when the caller already has numpy loaded, so a publisher on a small host can
use the push client without numpy.
"""

from __future__ import annotations

import math
import numbers
import sys
from dataclasses import dataclass, field
from typing import NamedTuple

import msgpack

from relayd.core.errors import Reason, Refused
from relayd.core.packed import DTYPES, PACKED_KEYS, pack_array, unpack_array  # noqa: F401
from relayd.core.packed import type_name as _type_name

VERSION = 1

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5555"
# The relay's default ZMQ_MAXMSGSIZE (Config.zmq_max_message_size): a longer message
# makes the relay drop the connection, losing the message, so the client checks first.
MAX_MESSAGE_SIZE = 64 * 1024 * 1024

# The EPICS epoch, 1990-01-01 UTC, in POSIX seconds, and the last second the CA server
# library can carry: an EPICS time stamp would reach 2126, but pcas passes it on as
# unsigned 32-bit POSIX seconds, which end on 2106-02-07 06:28:15 UTC.
EPICS_EPOCH = 631_152_000
TS_MAX = 2**32 - 1

PUT = "put"
DELETE = "delete"
OPS = (PUT, DELETE)
KEYS = frozenset({"pv", "op", "value", "ts", "meta", "v"})

class _NoValue:
    """The value of an update that only sets attributes (a ``meta`` map, no ``value``)."""

    def __repr__(self) -> str:
        return "NO_VALUE"


NO_VALUE = _NoValue()


class Update(NamedTuple):
    """One well-formed update. `value` is None for a delete, a numpy array when packed,
    NO_VALUE for attributes alone; `meta` is the attribute map or None.

    A named tuple rather than a dataclass: one is made per update on the ingest hot
    path, and a tuple is several times cheaper to build.
    """

    pv: str
    op: str
    value: object
    ts: float | None
    index: int
    meta: dict | None = None


@dataclass
class Decoded:
    """What one message held: its good updates, and one `Refused` per bad one."""

    updates: list[Update] = field(default_factory=list)
    refused: list[Refused] = field(default_factory=list)
    batch: bool = False


# --- decoding ---------------------------------------------------------------------------


def _malformed(detail: str) -> Refused:
    return Refused(Reason.MALFORMED, detail)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def short(obj: object, limit: int = 60) -> str:
    """repr(obj), cut short: details quote what a client sent, which may be huge."""
    return _clip(repr(obj), limit)


# msgpack's own texts for these are empty or say little.
_UNPACK_ERRORS = (
    (msgpack.ExtraData, "trailing bytes after the msgpack object"),
    (msgpack.StackError, "not msgpack: nested too deeply"),
    (msgpack.FormatError, "not msgpack: a reserved or invalid type byte"),
)


def decode(message: bytes, max_updates: int = 100_000) -> Decoded:
    """The updates in one message; `Refused` (MALFORMED) if the message is unusable.

    The whole message is refused when it is not msgpack, has bytes after its object, is
    neither a map nor an array, or is a batch of more than `max_updates` updates.
    Otherwise each update is checked on its own: a bad one lands in `refused` with a
    detail starting ``update #i:``, and the rest are kept in message order.
    """
    return decode_object(unpack(message), max_updates)


def unpack(message: bytes) -> object:
    """The one msgpack object in `message`, every length bounded by the message's size;
    `Refused` (MALFORMED) if there is none."""
    try:
        # max_*_len bound every declared length by the message size, so a short message
        # cannot make the unpacker allocate much; strict_map_key keeps keys str/bytes.
        size = len(message)
        return msgpack.unpackb(
            message, raw=False, strict_map_key=True, use_list=True,
            max_str_len=size, max_bin_len=size, max_array_len=size,
            max_map_len=size // 2, max_ext_len=size,
        )
    except (ValueError, TypeError, OverflowError, RecursionError,
            msgpack.UnpackException) as error:
        for kind, text in _UNPACK_ERRORS:
            if isinstance(error, kind):
                raise _malformed(text) from None
        raise _malformed(f"not msgpack: {_clip(str(error), 120)}") from None


def decode_object(obj: object, max_updates: int = 100_000) -> Decoded:
    """The updates in an unpacked message body: a map (one update) or an array of maps.

    The same checks as `decode` after unpacking; the acknowledged way in (protocol
    version 2, `relayd.core.acks`) carries such a body inside its request.
    """
    if isinstance(obj, dict):
        items, batch = [obj], False
    elif isinstance(obj, list):
        if len(obj) > max_updates:
            raise _malformed(f"a batch of {len(obj)} updates; the limit is {max_updates}")
        items, batch = obj, True
    else:
        raise _malformed(
            f"a msgpack {_type_name(obj)} where a map (one update) or an array of maps "
            "(a batch) was expected"
        )
    decoded = Decoded(batch=batch)
    for index, item in enumerate(items):
        try:
            decoded.updates.append(_update(item, index))
        except _BadUpdate as error:
            refused = _malformed(f"update #{index}: {error}")
            refused.index = index  # type: ignore[attr-defined]
            decoded.refused.append(refused)
    return decoded


class _BadUpdate(Exception):
    """An update that is refused on its own; `decode` prefixes its number."""


def check_update(item: object, index: int = 0) -> Update:
    """One update map already decoded by another way in (JSON over HTTP), checked exactly
    as `decode` checks each update of a message; `Refused` (MALFORMED) if it is bad."""
    try:
        return _update(item, index)
    except _BadUpdate as error:
        raise _malformed(str(error)) from None


def _update(item: object, index: int) -> Update:
    # The common case first: just a name and a plain value (no packed array).
    if type(item) is dict and len(item) == 2:
        pv, value = item.get("pv"), item.get("value", _MISSING)
        if type(pv) is str and value is not _MISSING and type(value) in _PLAIN:
            return new_tuple(Update, (pv, PUT, value, None, index, None))
    return _full_update(item, index)


# A NamedTuple's constructor is a Python function (a frame per call: a fifth of the ingest
# worker's time with batches of 100); the hot paths make theirs with tuple.__new__ and
# every field in order, which makes the very same object.
new_tuple = tuple.__new__
_MISSING = object()
# msgpack-native value types that `_value` passes through unchanged.
_PLAIN = frozenset({float, int, str, bytes, list, bool, type(None)})


def _full_update(item: object, index: int) -> Update:
    if not isinstance(item, dict):
        raise _BadUpdate(f"a msgpack {_type_name(item)} where a map was expected")
    _check_keys(item)
    meta = item.get("meta")  # nil is the same as no 'meta'
    if meta is not None and not isinstance(meta, dict):
        raise _BadUpdate(f"'meta' is a msgpack {_type_name(meta)}, not a map")
    pv, op, ts = _target(item)
    if op == DELETE:
        if "value" in item:
            raise _BadUpdate("a delete carries no 'value'")
        if meta is not None:
            raise _BadUpdate("a delete carries no 'meta'")
        return Update(pv, DELETE, None, ts, index)
    if "value" not in item:
        if meta is None:
            raise _BadUpdate("a put needs a 'value', a 'meta' map, or both")
        return Update(pv, PUT, NO_VALUE, ts, index, meta)
    return Update(pv, PUT, _value(item["value"]), ts, index, meta)


def _check_keys(item: dict) -> None:
    """The protocol version, if given, is ours, and every key is one we know."""
    if "v" in item:
        version = item["v"]
        if type(version) is not int or version != VERSION:
            raise _BadUpdate(
                f"protocol version {short(version)} is not supported "
                f"(this relay speaks version {VERSION})"
            )
    unknown = [key for key in item if key not in KEYS]
    if unknown:
        noun = "key" if len(unknown) == 1 else "keys"
        listed = ", ".join(sorted(short(key, 40) for key in unknown))
        raise _BadUpdate(f"unknown {noun} {listed} (keys are pv, op, value, ts, meta, v)")


def _target(item: dict) -> tuple[str, str, float | None]:
    """The update's PV name, op and source time stamp (None when not given)."""
    if "pv" not in item:
        raise _BadUpdate("no 'pv'")
    pv = item["pv"]
    if not isinstance(pv, str):
        raise _BadUpdate(f"'pv' is a {_type_name(pv)}, not a str")
    op = item.get("op", PUT)
    if not isinstance(op, str) or op not in OPS:
        raise _BadUpdate(f"'op' {short(op)} is not 'put' or 'delete'")
    ts = item.get("ts")  # nil is the same as no 'ts'
    if ts is not None:
        why = ts_problem(ts)
        if why:
            raise _BadUpdate(why)
        ts = float(ts)
    return pv, op, ts


def ts_problem(ts: object) -> str | None:
    """Why `ts` is not a usable source time stamp, or None if it is.

    A time stamp is POSIX seconds, an int or a float, finite, and within what an EPICS
    time stamp holds as it travels through the CA server library: from 1990-01-01
    (631152000) to 2106-02-07 06:28:15 UTC (4294967295).
    """
    if type(ts) not in (int, float):
        return f"'ts' is a {_type_name(ts)}, not a number of POSIX seconds"
    if not math.isfinite(ts):
        return f"'ts' {ts!r} is not finite"
    if ts < EPICS_EPOCH:
        return f"'ts' {ts!r} is before the EPICS epoch 1990-01-01 ({EPICS_EPOCH})"
    if ts > TS_MAX:
        return f"'ts' {ts!r} is after the last time stamp CA can carry, in 2106 ({TS_MAX})"
    return None


def _value(value: object) -> object:
    """The value of a put: msgpack-native as is, a packed array as a numpy array."""
    if isinstance(value, dict):
        try:
            return unpack_array(value)
        except ValueError as error:
            raise _BadUpdate(str(error)) from None
    if isinstance(value, (msgpack.ExtType, msgpack.Timestamp)):
        raise _BadUpdate(f"'value' is a msgpack {type(value).__name__}, not part of protocol v1")
    return value


# --- encoding ---------------------------------------------------------------------------


def encode_update(pv: str, value: object = None, *, op: str = PUT,
                  ts: float | None = None, meta: dict | None = None) -> dict:
    """The update map for one put or delete, ready for `dumps` (alone or in a list).

    `meta` sets PV attributes (``{"egu": "mm", "hihi": 10}``); with it the value may be
    left out (None) to set attributes alone. The relay checks the attributes.

    numpy arrays and `array.array` are sent packed (see `pack_array`); lists and tuples
    go as msgpack arrays, bytes as bin, str as str, numpy scalars as plain numbers. The
    checks here are the structural ones `decode` makes, so a mistake raises at the line
    that made it instead of being refused silently on the relay (a PUSH socket gets no
    reply). Raises TypeError or ValueError.
    """
    if not isinstance(pv, str):
        raise TypeError(f"the PV name must be a str, not {type(pv).__name__}")
    update: dict[str, object] = {"pv": pv}
    if meta is not None and not isinstance(meta, dict):
        raise TypeError(f"meta must be a dict, not {type(meta).__name__}")
    if op == DELETE:
        if value is not None:
            raise ValueError("a delete carries no value")
        if meta is not None:
            raise ValueError("a delete carries no meta")
        update["op"] = DELETE
    elif op == PUT:
        if value is None and meta is None:
            raise ValueError(f"a put to {pv!r} needs a value, a meta dict, or both")
        if value is not None:
            packed = pack_array(value)
            update["value"] = packed if packed is not None else _plain(value)
        if meta is not None:
            update["meta"] = meta
    else:
        raise ValueError(f"op must be 'put' or 'delete', not {op!r}")
    if ts is not None:
        if not isinstance(ts, numbers.Real):
            raise TypeError(f"ts must be a number of POSIX seconds, not {short(ts)}")
        ts = ts if type(ts) is int else float(ts)
        why = ts_problem(ts)
        if why:
            raise ValueError(why)
        update["ts"] = ts
    return update


def _plain(value: object) -> object:
    """numpy scalars (and 0-d arrays) as the Python numbers msgpack knows; else unchanged."""
    numpy = sys.modules.get("numpy")
    if (numpy is not None and isinstance(value, (numpy.generic, numpy.ndarray))
            and value.ndim == 0):
        return value.item()
    return value


def _default(obj: object) -> object:
    """msgpack's hook for types it does not know: numpy scalars, e.g. inside a list."""
    plain = _plain(obj)
    if plain is not obj:
        return plain
    raise TypeError(f"cannot send a {type(obj).__name__} in a relay message")


def dumps(obj: object) -> bytes:
    """One message: `obj` (an update map or a list of them) as msgpack bytes."""
    return msgpack.packb(obj, use_bin_type=True, default=_default)
