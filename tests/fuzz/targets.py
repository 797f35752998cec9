"""The decoder fuzz target, shared by the hypothesis tests and the atheris entry point.

`check(data)` feeds one ZMQ message, as bytes, to what the relay runs on every message it
receives: `relayd.core.protocol.decode`, then `workers.ingest.validate.Ingest.handle` (name parsing,
value conversion, attribute checks). It asserts only that

* nothing but `Refused` escapes either of them, and a `Refused` from `decode` is a
  ``malformed`` refusal of the whole message;
* every decoded update and every refusal is well-formed, and each item of a batch is
  accounted for exactly once;
* every accepted op is a well-formed `PipeOp` ``(op, name, value, ts_ns, meta)`` whose
  value has the stored form of the PV its name describes, and which the internal pipe
  can carry (`relayd.supervise.pipe` round trip).

Any other exception, or a failed assertion, is a finding.
"""

from __future__ import annotations

import math

import numpy as np

from relayd.core import protocol
from relayd.core.errors import Reason, Refused
from relayd.core.meta import META_KEYS
from relayd.core.names import Grammar, Kind, NameLimits
from relayd.core.intake import Intake
from relayd.core.ops import Batch, Op, PipeOp, Way
from relayd.supervise.messages import Forward, decode, encode
from workers.ingest.validate import Ingest

PREFIX = "fz"
LIMITS = NameLimits(max_name_length=64, max_elements=1000)
GRAMMAR = Grammar(PREFIX, LIMITS)
ARRIVAL_NS = 1_700_000_000_123_456_789
INT32 = (-(2**31), 2**31 - 1)


def check(data: bytes) -> None:
    """Run both stages on `data`; raise AssertionError (or the escaped error) on a finding."""
    check_decode(data)
    check_handle(data)


def check_decode(data: bytes) -> None:
    try:
        decoded = protocol.decode(data)
    except Refused as refused:
        assert refused.reason is Reason.MALFORMED, refused
        assert isinstance(refused.detail, str) and refused.detail
        return
    items = len(decoded.updates) + len(decoded.refused)
    assert decoded.batch or items == 1
    indexes = [update.index for update in decoded.updates]
    indexes += [getattr(refused, "index", None) for refused in decoded.refused]
    assert sorted(indexes) == list(range(items)), indexes
    for update in decoded.updates:
        assert isinstance(update, protocol.Update)
        assert type(update.pv) is str
        assert update.op in protocol.OPS
        if update.ts is not None:
            assert type(update.ts) is float and math.isfinite(update.ts)
            assert protocol.EPICS_EPOCH <= update.ts <= protocol.TS_MAX
        assert update.meta is None or isinstance(update.meta, dict)
        if update.op == protocol.DELETE:
            assert update.value is None and update.meta is None
        elif update.value is protocol.NO_VALUE:
            assert isinstance(update.meta, dict)
    for refused in decoded.refused:
        assert isinstance(refused, Refused) and refused.reason is Reason.MALFORMED
        assert refused.detail.startswith("update #"), refused.detail


def check_handle(data: bytes) -> None:
    ingest = Ingest(Intake(GRAMMAR, 1000))
    try:
        ops = ingest.handle(data, ARRIVAL_NS)
    except Refused:
        return
    assert isinstance(ops, list)
    for op in ops:
        check_op(op)
    counters = ingest.take_counters()
    assert counters.get("messages") == 1
    refused = counters.get("refused", {})
    assert all(Reason(code) and count > 0 for code, count in refused.items())
    if ops:  # what was accepted can travel through the internal pipe to the CA process
        forward = decode(encode(Forward(1, 2, [Batch(ops, Way.ZMQ, "zmq")], counters)))
        travelled = forward.batches[0][0]
        assert len(travelled) == len(ops)
        assert [item[:2] for item in travelled] == [[op.op, op.name] for op in ops]


def check_op(op: object) -> None:
    assert type(op) is PipeOp and type(op.op) is Op, op
    code, name, value, ts_ns, meta = op
    assert type(name) is str
    spec = GRAMMAR.parse(name)
    assert spec is not None and spec.name == name, name
    assert len(name) <= LIMITS.max_name_length and spec.count <= LIMITS.max_elements
    if meta is not None:
        assert isinstance(meta, dict) and set(meta) <= META_KEYS, meta
    if code is Op.DELETE:
        assert value is None and ts_ns == 0 and meta is None
        return
    if code is Op.META:
        assert value is None and ts_ns == 0 and isinstance(meta, dict)
        return
    assert type(ts_ns) is int and ts_ns > 0
    if spec.kind is Kind.CHAR:
        assert type(value) is bytes and len(value) <= spec.count and b"\0" not in value
    elif spec.is_scalar and not spec.buffer:
        if spec.kind is Kind.FLOAT:
            assert type(value) is float
        else:
            assert type(value) is int and INT32[0] <= value <= INT32[1]
    else:
        assert isinstance(value, np.ndarray) and value.ndim == 1, value
        assert value.dtype == (np.float64 if spec.kind is Kind.FLOAT else np.int32)
        assert value.size <= spec.count
