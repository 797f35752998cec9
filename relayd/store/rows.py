"""What autosave keeps of a PV, and how it turns back into one. Pure: no I/O.

A `SavedPV` is one row of the store: the PV's definition (name, type, count, buffer or
not), its value (a buffer's whole content, oldest first), the value's time stamp and its
non-default attributes. `from_state` takes one from a live PV; `restore` rebuilds the
pieces a PV is made of. The JSON form (`to_json`/`from_json`) is what
``relayd autosave export/import`` reads and writes.

Value encoding in the store: a scalar is stored as the number itself (SQLite REAL or
INTEGER; a NaN as its 8 bytes, since SQLite turns a NaN REAL into NULL), an array or
buffer as its little-endian bytes (float64, int32), text as its bytes.
"""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from relayd.core.errors import Reason, Refused
from relayd.core.meta import DEFAULT_META, Meta, apply_changes
from relayd.core.names import Grammar, Kind, PVSpec
from relayd.core.pvstate import PVState
from relayd.core.values import convert


@dataclass(frozen=True)
class SavedPV:
    """One saved PV."""

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


def restore(saved: SavedPV, grammar: Grammar | None = None) -> tuple[PVSpec, object, int, Meta]:
    """(spec, stored value, time stamp, attributes) to rebuild the PV; `Refused` if bad.

    A row is data from a file, so it passes the same gates as a put: with `grammar`, its
    name must be one of this relay's, within its limits, and say the same type and count
    as the row; its value goes through `values.convert`.
    """
    spec = saved.spec
    if grammar is not None:
        parsed = grammar.parse(saved.name)  # Refused beyond a limit
        if parsed is None:
            raise Refused(Reason.BAD_NAME, f"{saved.name}: not a PV name of this relay")
        if parsed != spec:
            raise Refused(Reason.BAD_VALUE,
                          f"{saved.name}: saved as {spec.kind.value}{spec.count}"
                          f"{' buffer' if spec.buffer else ''}, which its name does not say")
    value = saved.value
    if value is None:
        raise Refused(Reason.BAD_VALUE, f"{saved.name}: saved without a value")
    if spec.kind is Kind.CHAR:
        raw: object = bytes(value)  # type: ignore[arg-type]
    elif spec.is_scalar and not spec.buffer:
        if spec.kind is Kind.INT and type(value) is not int:
            raise Refused(Reason.BAD_VALUE, f"{saved.name}: saved {value!r} is not an integer")
        raw = value
    else:
        data = bytes(value)  # type: ignore[arg-type]
        dtype = spec.kind.stored_dtype
        if len(data) % dtype.itemsize:
            raise Refused(Reason.BAD_VALUE, f"{saved.name}: saved array has a partial element")
        raw = np.frombuffer(data, dtype=dtype)
    stored = convert(spec, raw)
    meta = apply_changes(DEFAULT_META, saved.attrs) if saved.attrs else DEFAULT_META
    return spec, stored, saved.ts_ns, meta


# --- JSON (export/import) -----------------------------------------------------------


def _json_number(number: float) -> object:
    if math.isfinite(number):
        return number
    return "nan" if math.isnan(number) else ("inf" if number > 0 else "-inf")


def _from_json_number(item: object) -> float:
    if isinstance(item, str):
        return float(item)  # "nan", "inf", "-inf"
    return float(item)  # type: ignore[arg-type]


def to_json(saved: SavedPV) -> dict[str, Any]:
    """A JSON-safe dict: text as str (or base64 when not UTF-8), arrays as lists,
    NaN and infinities as the strings "nan", "inf", "-inf"."""
    spec = saved.spec
    value: Any = saved.value
    if value is None:
        encoded: Any = None
    elif spec.kind is Kind.CHAR:
        try:
            encoded = {"text": bytes(value).decode("utf-8")}
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


def from_json(item: dict[str, Any]) -> SavedPV:
    """The inverse of `to_json`; ValueError/KeyError/TypeError on a bad record."""
    kind = Kind(item["kind"])
    count, buffer = int(item["count"]), bool(item["buffer"])
    spec = PVSpec(str(item["name"]), kind, count, buffer)
    raw = item["value"]
    value: float | int | bytes | None
    if raw is None:
        value = None
    elif kind is Kind.CHAR:
        value = raw["text"].encode() if "text" in raw else base64.b64decode(raw["base64"])
    elif spec.is_scalar and not buffer:
        value = _from_json_number(raw) if kind is Kind.FLOAT else int(raw)
    else:
        numbers = [_from_json_number(x) for x in raw] if kind is Kind.FLOAT else raw
        value = np.asarray(numbers, dtype=kind.stored_dtype).tobytes()
    attrs = dict(item.get("attrs") or {})
    return SavedPV(spec.name, kind.value, count, buffer, value, int(item["ts_ns"]), attrs)
