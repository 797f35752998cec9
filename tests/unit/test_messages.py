"""What travels on the internal channels (relayd.supervise.messages) and the ops, batches
and verdicts inside (relayd.core.ops), values only: every kind of message round-trips,
numpy arrays travel bit for bit, and what is not a message is refused."""

from __future__ import annotations

import math
import time

import msgpack
import numpy as np
import pytest

from relayd.core.errors import Reason, Refused
from relayd.core.ops import Batch, Op, PipeOp, Verdict, Way, accepted_wire, refused_wire
from relayd.supervise.messages import (
    KINDS, Forward, Query, QueryResult, Verdicts, decode, encode,
)

pytestmark = pytest.mark.timeout(60)


def put(name: str, value: object, ts_ns: int, meta: dict | None = None) -> PipeOp:
    return PipeOp(Op.PUT, name, value, ts_ns, meta)


def batch(*ops: PipeOp, reply: int | None = None, durable: bool = False) -> Batch:
    return Batch(list(ops), Way.ZMQ, "zmq 127.0.0.1", reply, durable)


def back_op(item: list) -> PipeOp:
    """An op as decoded (a list in PipeOp's field order), as the PipeOp it was."""
    assert type(item) is list and len(item) == len(PipeOp._fields), item
    return PipeOp(Op(item[0]), *item[1:])


def ops_of(message: Forward, index: int) -> list:
    """The ops of batch `index` of a decoded forward (a batch is a list in field order)."""
    ops, way, source, reply, durable = message.batches[index]
    return ops


def test_pipe_ops_and_batches_travel_as_arrays_of_plain_values() -> None:
    """A PipeOp packs exactly as the plain tuple of its fields, the op as an int; a Batch
    likewise, its way as the way's value."""
    op = PipeOp(Op.META, "p:x_f1", None, 0, {"egu": "V"})
    assert encode(Forward(1, 2, [batch(op, reply=7)], {})) == encode(
        Forward(1, 2, [([(2, "p:x_f1", None, 0, {"egu": "V"})], "zmq", "zmq 127.0.0.1", 7,
                        False)], {}))
    assert [int(code) for code in Op] == [0, 1, 2]  # on the wire: never renumber
    assert [way.value for way in Way] == ["ca", "zmq", "http", "pva"]
    assert sorted(KINDS) == [1, 2, 3, 4, 5]  # tags travel: never reuse one


def test_forward_round_trip() -> None:
    floats = np.array([1.5, -0.0, np.nan, np.inf, -np.inf, 1e308, 5e-324])
    ints = np.array([0, -1, 2**31 - 1, -(2**31)], dtype=np.int32)
    chars = np.array([0, 1, 255], dtype=np.uint8)
    ts = 1_700_000_000_123_456_000
    forward = Forward(
        seq=2**40, sent_ns=time.monotonic_ns(),
        batches=[
            batch(put("p:a_F10", floats, ts), put("p:b_i4", ints, ts), put("p:c_i3", chars, ts)),
            batch(put("p:d_f1", 2.5, ts, {"egu": "mm", "hihi": 1.5}), put("p:e_f1", math.nan, 1),
                  put("p:f_f1", -math.inf, 2), put("p:g_i1", -(2**31), 3),
                  put("p:h_c8", b"te\x00xt\xff", 4), put("p:i_c8", b"", 5),
                  PipeOp(Op.DELETE, "p:j_f1", None, 0, None),
                  PipeOp(Op.META, "p:k_f1", None, 0, {"desc": "k"}), reply=2**63 - 1,
                  durable=True),
            batch(),
        ],
        counters={"messages": 3, "updates": 9, "refused": {"badName": 2, "malformed": 1},
                  "last_refusal": "ZMQ update: badName: 'x'", "way": "zmq"},
    )
    back = decode(encode(forward))
    assert type(back) is Forward
    assert back.seq == forward.seq and back.sent_ns == forward.sent_ns
    assert back.counters == forward.counters
    assert len(back.batches) == 3 and back.batches[2] == [[], "zmq", "zmq 127.0.0.1", None, False]
    assert back.batches[1][1:] == ["zmq", "zmq 127.0.0.1", 2**63 - 1, True]

    for got, sent in zip(ops_of(back, 0), forward.batches[0].ops, strict=True):
        got = back_op(got)
        assert (got.op, got.name, got.ts_ns, got.meta) == (sent.op, sent.name, sent.ts_ns, None)
        assert isinstance(got.value, np.ndarray)
        assert got.value.dtype == sent.value.dtype
        assert got.value.tobytes() == sent.value.tobytes()  # bit for bit (NaN, -0.0, denormals)
        # A read-only view of a bytes object of its own (not of the whole payload):
        # nothing can change it, and it keeps only its own bytes alive.
        assert not got.value.flags.writeable
        assert isinstance(got.value.base, bytes) and len(got.value.base) == sent.value.nbytes

    scalars = [back_op(item) for item in ops_of(back, 1)]
    assert scalars[0] == put("p:d_f1", 2.5, ts, {"egu": "mm", "hihi": 1.5})
    assert type(scalars[0].value) is float
    assert math.isnan(scalars[1].value)
    assert scalars[2].value == -math.inf
    assert scalars[3] == put("p:g_i1", -(2**31), 3) and type(scalars[3].value) is int
    assert scalars[4] == put("p:h_c8", b"te\x00xt\xff", 4)
    assert type(scalars[4].value) is bytes
    assert scalars[5] == put("p:i_c8", b"", 5)
    assert scalars[6:] == forward.batches[1].ops[6:]


def test_forward_int_extremes_and_empty_arrays() -> None:
    forward = Forward(0, 0, [batch(put("n", 2**64 - 1, -(2**63)),
                                   put("m", np.zeros(0, dtype=np.float64), 0),
                                   put("o", np.zeros(0, dtype=np.int32), 0))], {})
    ops = ops_of(decode(encode(forward)), 0)
    assert ops[0] == [Op.PUT, "n", 2**64 - 1, -(2**63), None]
    assert ops[1][2].dtype == np.float64 and ops[1][2].size == 0
    assert ops[2][2].dtype == np.int32 and ops[2][2].size == 0


def test_forward_non_contiguous_array() -> None:
    values = np.arange(20.0)[::3]
    back = decode(encode(Forward(1, 1, [batch(put("n", values, 0))], {})))
    np.testing.assert_array_equal(back_op(ops_of(back, 0)[0]).value, values)


@pytest.mark.parametrize("value", [
    np.array([1.0], dtype=np.float32),
    np.array([1], dtype=np.int64),
    np.array([1 + 2j]),
    object(),
    {1, 2},
    1 + 2j,
])
def test_forward_unsupported_type(value: object) -> None:
    with pytest.raises(TypeError):
        encode(Forward(1, 1, [batch(put("n", value, 0))], {}))


def test_the_other_messages_round_trip() -> None:
    refused = Refused(Reason.BAD_VALUE, "p:b_f1: text 'x' sent to a numeric PV")
    verdicts = [accepted_wire("p:a_f1"), refused_wire("p:b_f1", refused)]
    for message in (Query(5, "pv", {"name": "p:a_f1"}),
                    Verdicts(2**62, verdicts, False, "autosave is off"),
                    Verdicts(1, [], True, ""),
                    QueryResult(5, {"value": [1.0, 2.0]}, ""),
                    QueryResult(6, None, "unknown query 'x'")):
        back = decode(encode(message))
        assert type(back) is type(message)
        assert back.request_id == message.request_id
        assert encode(back) == encode(message)  # field for field (tuples come back lists)
    back = decode(encode(Verdicts(1, verdicts, True, "")))
    assert [Verdict.from_wire(item) for item in back.verdicts] == [
        Verdict.accepted("p:a_f1"), Verdict.refused("p:b_f1", refused)]


def test_verdicts() -> None:
    refused = Refused(Reason.PV_LIMIT, "p:x_f1: the relay holds 10 PVs already")
    assert Verdict.accepted("p:x_f1").ok and Verdict.accepted("p:x_f1").detail == ""
    verdict = Verdict.refused("x_f1", refused)
    assert not verdict.ok and (verdict.reason, verdict.detail) == (refused.reason, refused.detail)
    assert verdict.to_wire() == refused_wire("x_f1", refused) == ("x_f1", "pvLimit",
                                                                  refused.detail)
    assert Verdict.accepted("a").to_wire() == accepted_wire("a") == ("a", None, "")
    for bad in (("a", "noSuchReason", ""), ("a", None), (1, None, ""), ("a", None, None)):
        with pytest.raises((ValueError, TypeError)):
            Verdict.from_wire(bad)


@pytest.mark.parametrize("obj", [
    (1, 1, 2, 3, {}),  # batches not a list
    (1, 1, 2, [], []),  # counters not a map
    (1, 1, 2.5, [], {}),  # a send time not an int
    (1, 1, 2, []),  # a field short
    (3, 1, [], True, "", "extra"),  # a field too many
    (9, 1, 2),  # an unknown tag
    ("1", 1, 2, [], {}),  # a tag not an int
    [],  # no tag
    {"tag": 1},  # not an array
])
def test_decode_refuses_what_is_not_a_message(obj: object) -> None:
    """Down to the message's shape (the CA process checks each batch as it applies it)."""
    with pytest.raises(ValueError):
        decode(msgpack.packb(obj, use_bin_type=True))
