"""What every way in hands the CA process, and what it hands back. Pure.

A worker (`workers.ingest`, `workers.http`) turns each accepted update into one `PipeOp`
(`relayd.core.intake`) and sends them in `Batch`es over its internal channel
(`relayd.supervise.messages`); the CA process (`relayd.ca.apply`) applies each batch at
once. Every value is already checked and converted to its stored form, and every
attribute change checked (`meta.check_changes`), so the CA process only decides what
needs the relay's state (is the relay full, does the PV exist). When the batch asks for
an answer (`Batch.reply`), the CA process sends one `Verdict` per op back down.

`Way` names each way in: the status PVs count accepted updates and refusals by way
(``status:accepted:zmq``), and a PV's last writer starts with it (``zmq 10.0.0.5``).

On the wire a PipeOp is a msgpack array in field order, ``op`` an integer: a NamedTuple
packs as an array and an `IntEnum` as an int, at no cost to the sender. The receiver gets
plain lists back and unpacks them in field order, ``op, name, value, ts_ns, meta = item``,
rather than building a PipeOp for each: that would cost more than decoding the message
(measured: ~200 ns against ~100 ns per op). A Batch travels the same way, its `way` as
the Way's value (a str: `Way` is a str enum, so it packs as one), and a Verdict as
`Verdict.to_wire`.
"""

from __future__ import annotations

from enum import Enum, IntEnum
from typing import Any, NamedTuple

from relayd.core.errors import Reason, Refused


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


class Way(str, Enum):
    """A way into the relay. The value is the word the status PVs and writers use.

    A str enum: a member packs as its value and equals it, so counters keyed by the
    plain str (as it comes off the wire) are found with either.
    """

    CA = "ca"  # a Channel Access put
    ZMQ = "zmq"  # a ZeroMQ message, pushed or acknowledged
    HTTP = "http"  # the HTTP worker's API
    PVA = "pva"  # a pvAccess put


class Batch(NamedTuple):
    """One message's accepted updates, applied by the CA process at once.

    `source` is who sent it as the PV's last writer shows it (``zmq 10.0.0.5``). `reply`
    is the request id the worker chose for the verdicts (None: nobody waits for them);
    with `durable` the verdicts wait until autosave has committed the changes.
    """

    ops: list[PipeOp]
    way: str  # a `Way` (its value on the wire)
    source: str
    reply: int | None = None
    durable: bool = False


class Verdict(NamedTuple):
    """What became of one update: accepted into PV `pv`, or refused for `reason`.

    `pv` is the full name when accepted, the name as sent when refused; `detail` is the
    refusal's text ("" when accepted).
    """

    pv: str
    reason: Reason | None = None
    detail: str = ""

    @classmethod
    def accepted(cls, name: str) -> Verdict:
        return cls(name)

    @classmethod
    def refused(cls, name: str, refused: Refused) -> Verdict:
        return cls(name, refused.reason, refused.detail)

    @property
    def ok(self) -> bool:
        return self.reason is None

    def to_wire(self) -> tuple:
        """``(pv, reason code or None, detail)``: what the internal channel carries."""
        return (self.pv, None if self.reason is None else self.reason.code, self.detail)

    @classmethod
    def from_wire(cls, item: Any) -> Verdict:
        """The Verdict of `to_wire`'s tuple; ValueError if `item` is not one."""
        pv, code, detail = item
        if type(pv) is not str or type(detail) is not str:
            raise ValueError(f"not a verdict: {item!r}")
        return cls(pv, None if code is None else Reason(code), detail)


def accepted_wire(name: str) -> tuple:
    """`Verdict.accepted(name).to_wire()`, made without the NamedTuple (the CA loop's)."""
    return (name, None, "")


def refused_wire(name: str, refused: Refused) -> tuple:
    """`Verdict.refused(name, refused).to_wire()`, made without the NamedTuple."""
    return (name, refused.reason.code, refused.detail)
