"""What autosave keeps of a PV, and the one gate it passes to become a PV again. Pure.

A `SavedPV` is one row of the store: the PV's definition (name, type, count, buffer or
not), its value (a buffer's whole content, oldest first), the value's time stamp and its
non-default attributes. `from_state` takes one from a live PV. `restore` is the one
gate back: a relay runs every row through it at start, and ``relayd autosave import``
runs every record through it before writing anything, so what import accepts, the next
start restores. A store is a file that anything may have written (another tool, a bug,
a disk), so a row read from it may hold anything in any column until `restore` passed
it; `restore` checks every column and says what is wrong with `Refused`, never with
another exception. The JSON form (`to_json`/`from_json`) is what export and import use.

Value encoding in the store: a scalar is stored as the number itself (SQLite REAL or
INTEGER; a NaN as its 8 bytes, since SQLite turns a NaN REAL into NULL), an array or
buffer as its little-endian bytes (float64, int32), text as its bytes.
"""

from __future__ import annotations

import base64
import binascii
import math
import sys
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np

from relayd.core.errors import Reason, Refused
from relayd.core.meta import DEFAULT_META, Meta, check_changes
from relayd.core.names import Grammar, Kind, NameLimits, PVSpec
from relayd.core.protocol import TS_MAX
from relayd.core.pvstate import PVState
from relayd.core.values import Stored, convert

NS = 1_000_000_000
# The last nanosecond a CA time stamp carries through the CA server library (see
# `protocol.ts_problem`): a later one makes every read of the PV fail.
TS_NS_MAX = (TS_MAX + 1) * NS - 1


@dataclass(frozen=True)
class SavedPV:
    """One saved PV. Read from a file, any field may hold anything: see `restore`."""

    name: str
    kind: str  # "f", "i" or "c"
    count: int
    buffer: bool
    value: float | int | bytes | None
    ts_ns: int
    attrs: dict[str, Any]

    @property
    def spec(self) -> PVSpec:
        return PVSpec(self.name, Kind(self.kind), self.count, self.buffer)

    @property
    def label(self) -> str:
        """The row's name for a log line: its name, or what stands in its place."""
        name = self.name
        if isinstance(name, str) and name.isprintable() and len(name) <= 200:
            return name
        return f"a row named {_short(name)}"


def make(spec: PVSpec, value: object, ts_ns: int, meta: Meta) -> SavedPV:
    """The saved form of a PV from its pieces; `value` is a number, bytes, an array of
    the elements (a buffer's content, oldest first) or None."""
    if value is None:
        stored: float | int | bytes | None = None
    elif isinstance(value, np.ndarray):
        stored = value.astype(spec.kind.stored_dtype, copy=False).tobytes()
    else:
        stored = value  # type: ignore[assignment]  # a float, an int or bytes
    return SavedPV(spec.name, spec.kind.value, spec.count, spec.buffer, stored,
                   ts_ns, meta.changes())


def from_state(state: PVState) -> SavedPV:
    """The saved form of a live PV."""
    value = state.view() if state.spec.buffer else state.value  # type: ignore[attr-defined]
    return make(state.spec, value, state.ts_ns, state.meta)


# --- the one gate ------------------------------------------------------------------------


class NameRules(Protocol):
    def parse(self, full_name: str) -> PVSpec | None: ...


UNLIMITED = NameLimits(max_name_length=sys.maxsize, max_elements=sys.maxsize)


class AnyRelay:
    """The names of every relay at once: a name some prefix makes a PV name of, with no
    limits. For import and export, which know neither the relay's prefix (unless told)
    nor its limits; a relay checks its own at start."""

    def parse(self, full_name: str) -> PVSpec | None:
        for at, char in enumerate(full_name):
            if char == ":" and at:
                try:
                    spec = Grammar(full_name[:at], UNLIMITED).parse(full_name)
                except ValueError:  # not a usable prefix
                    continue
                if spec is not None:
                    return spec
        return None


ANY_RELAY = AnyRelay()


def restore(saved: SavedPV, grammar: NameRules = ANY_RELAY
            ) -> tuple[PVSpec, Stored, int, Meta]:
    """(spec, stored value, time stamp, attributes) to rebuild the PV; `Refused` if bad.

    A row is data from a file, so it passes the same gates as a put: its name must be a
    name of `grammar` (this relay's prefix and limits at start), and say the same type,
    count and buffer as the row; its value goes through `values.convert`; its time stamp
    must be one CA can carry; its attributes must be what `meta.check_changes` accepts.
    """
    spec = _spec(saved, grammar)
    stored = convert(spec, _raw_value(saved, spec))
    ts_ns = saved.ts_ns
    if type(ts_ns) is not int or not 0 <= ts_ns <= TS_NS_MAX:
        raise Refused(Reason.BAD_VALUE, f"{saved.name}: the time stamp {_short(ts_ns)} is "
                      f"not POSIX nanoseconds from 0 to {TS_NS_MAX} (2106)")
    return spec, stored, ts_ns, _meta(saved)


def _spec(saved: SavedPV, grammar: NameRules) -> PVSpec:
    """The spec the row's name gives, if kind, count and buffer say exactly that."""
    name = saved.name
    if not isinstance(name, str):
        raise Refused(Reason.BAD_NAME, f"{saved.label}: the name is not text")
    parsed = grammar.parse(name)  # Refused beyond a limit
    if parsed is None:
        raise Refused(Reason.BAD_NAME, f"{saved.label}: not a PV name of this relay")
    kind, count, buffer = saved.kind, saved.count, saved.buffer
    if (type(kind) is not str or type(count) is not int or type(buffer) is not bool
            or (kind, count, buffer) != (parsed.kind.value, parsed.count, parsed.buffer)):
        raise Refused(Reason.BAD_VALUE,
                      f"{name}: saved as kind {_short(kind)}, count {_short(count)}, "
                      f"buffer {_short(buffer)}, which its name does not say")
    return parsed


def _meta(saved: SavedPV) -> Meta:
    """The row's attributes applied to the defaults, if `meta.check_changes` takes them."""
    attrs = saved.attrs
    if not isinstance(attrs, dict):
        raise Refused(Reason.BAD_VALUE,
                      f"{saved.name}: the attributes {_short(attrs)} are not a JSON object")
    try:
        changes = check_changes(attrs, saved.name)
    except OverflowError:  # an integer no float holds (JSON has them; CA and ZMQ do not)
        raise Refused(Reason.BAD_VALUE, f"{saved.name}: the attributes {_short(attrs)} hold "
                      "a number too large for a float64") from None
    return replace(DEFAULT_META, **changes) if changes else DEFAULT_META


def _raw_value(saved: SavedPV, spec: PVSpec) -> object:
    """The row's value as `convert` takes it: a number, text bytes or an array."""
    value = saved.value
    if value is None:
        raise Refused(Reason.BAD_VALUE, f"{spec.name}: saved without a value")
    if spec.is_scalar and not spec.buffer:
        allowed = (int,) if spec.kind is Kind.INT else (int, float)
        if type(value) not in allowed:
            raise Refused(Reason.BAD_VALUE, f"{spec.name}: the saved value {_short(value)} is "
                          f"not {'an integer' if spec.kind is Kind.INT else 'a number'}")
        return value
    if type(value) is not bytes:
        raise Refused(Reason.BAD_VALUE,
                      f"{spec.name}: the saved value {_short(value)} is not bytes")
    if spec.kind is Kind.CHAR:
        return value
    dtype = spec.kind.stored_dtype
    if len(value) % dtype.itemsize:
        raise Refused(Reason.BAD_VALUE, f"{spec.name}: saved array has a partial element")
    return np.frombuffer(value, dtype=dtype)


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# --- JSON (export/import) -----------------------------------------------------------

_NON_FINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def _json_number(number: float) -> object:
    if math.isfinite(number):
        return number
    return "nan" if math.isnan(number) else ("inf" if number > 0 else "-inf")


def to_json(saved: SavedPV) -> dict[str, Any]:
    """A JSON-safe dict of a row `restore` accepted: text as str (or base64 when not
    UTF-8), arrays as lists, NaN and infinities as the strings "nan", "inf", "-inf"."""
    spec = saved.spec
    value: Any = saved.value
    if spec.kind is Kind.CHAR:
        try:
            encoded: Any = {"text": bytes(value).decode("utf-8")}
        except UnicodeDecodeError:
            encoded = {"base64": base64.b64encode(bytes(value)).decode()}
    elif spec.is_scalar and not spec.buffer:
        encoded = _json_number(value) if spec.kind is Kind.FLOAT else int(value)
    else:
        array = np.frombuffer(bytes(value), dtype=spec.kind.stored_dtype)
        if spec.kind is Kind.FLOAT:
            encoded = [_json_number(x) for x in array.tolist()]
        else:
            encoded = array.tolist()
    # Attributes are always finite numbers or text (see meta.check_changes): JSON as is.
    return {"name": saved.name, "kind": saved.kind, "count": saved.count,
            "buffer": saved.buffer, "value": encoded, "ts_ns": saved.ts_ns,
            "attrs": dict(saved.attrs)}


def from_json(item: object) -> SavedPV:
    """The inverse of `to_json`: the row a JSON record stands for; `Refused` naming the
    record if its value cannot be read. The rest is for `restore` to check."""
    if not isinstance(item, dict):
        raise Refused(Reason.BAD_VALUE, f"{_short(item)} is not a JSON object")
    name = item.get("name")
    for key in ("name", "kind", "count", "buffer", "value", "ts_ns"):
        if key not in item:
            raise Refused(Reason.BAD_VALUE, f"{_short(name)}: the record has no {key!r}")
    attrs = item.get("attrs")
    saved = SavedPV(name, item["kind"], item["count"], item["buffer"], None, item["ts_ns"],
                    {} if attrs is None else attrs)
    if item["value"] is None:
        return saved  # `restore` says why that will not do
    spec = _spec(saved, ANY_RELAY)
    return replace(saved, value=_from_json_value(spec, item["value"]))


def _from_json_value(spec: PVSpec, raw: object) -> float | int | bytes:
    """A record's value in the stored form, through `convert` as a put's would be."""
    def bad(why: str) -> Refused:
        return Refused(Reason.BAD_VALUE, f"{spec.name}: the value {_short(raw)} {why}")

    if spec.kind is Kind.CHAR:
        if not isinstance(raw, dict) or not isinstance(raw.get("text", raw.get("base64")), str):
            raise bad('is not {"text": str} or {"base64": str}')
        try:
            text: object = (raw["text"] if "text" in raw
                            else base64.b64decode(raw["base64"], validate=True))
        except binascii.Error as error:
            raise bad(f"is not base64 ({error})") from None
        return convert(spec, text)  # type: ignore[return-value]
    scalar = spec.is_scalar and not spec.buffer
    numbers = [raw] if scalar else raw
    if not isinstance(numbers, list):
        raise bad("is not a list")
    floats = spec.kind is Kind.FLOAT
    for number in numbers:
        if floats and isinstance(number, str) and number in _NON_FINITE:
            continue
        if type(number) is not int and not (floats and type(number) is float):
            raise bad(f"holds {_short(number)}, not {'a number' if floats else 'an integer'}")
    numbers = [_NON_FINITE.get(x, x) if isinstance(x, str) else x for x in numbers]
    stored = convert(spec, numbers[0] if scalar else numbers)
    if isinstance(stored, np.ndarray):
        return stored.astype(spec.kind.stored_dtype, copy=False).tobytes()
    return stored  # type: ignore[return-value]
