"""The operations the ingest worker forwards to the CA process. Pure.

The worker (`workers.ingest.validate`) turns each accepted update into one `PipeOp`; the
internal pipe (`relayd.supervise.pipe`) carries them in batches; the CA process
(`relayd.ca.apply`) applies them. Every value is already checked and converted to its
stored form, and every attribute change checked (`meta.check_changes`), so the CA process
only decides what needs the relay's state (is the relay full, does the PV exist).

On the wire a PipeOp is a msgpack array in field order, ``op`` an integer: a NamedTuple
packs as an array and an `IntEnum` as an int, at no cost to the sender. The receiver gets
plain lists back and unpacks them in field order, ``op, name, value, ts_ns, meta = item``,
rather than building a PipeOp for each: that would cost more than decoding the message
(measured: ~200 ns against ~100 ns per op).
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any, NamedTuple


class Op(IntEnum):
    """What a `PipeOp` does; the numbers travel on the wire, so never renumber them."""

    PUT = 0  # store `value` (and the attribute changes in `meta`, if any) in PV `name`
    DELETE = 1  # delete PV `name`
    META = 2  # change PV `name`'s attributes only (`meta`); the PV must exist


class PipeOp(NamedTuple):
    """One accepted update, ready to store.

    * ``PipeOp(Op.PUT, full_name, stored_value, ts_ns, meta_changes or None)``
    * ``PipeOp(Op.META, full_name, None, 0, meta_changes)``
    * ``PipeOp(Op.DELETE, full_name, None, 0, None)``
    """

    op: Op
    name: str  # the full PV name, prefix included
    value: Any  # the stored form (`relayd.core.values.convert`), None unless PUT
    ts_ns: int  # the value's time stamp, POSIX nanoseconds; 0 unless PUT
    meta: dict | None  # checked attribute changes, or None

