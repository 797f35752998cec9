"""The internal pipe's formats (relayd.supervise.pipe), values only: framing, resync, Forward messages."""

from __future__ import annotations

import math
import os
import struct
import time

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relayd.core.ops import Op, PipeOp
from relayd.supervise.pipe import (
    CHUNK, Forward, Reassembler, decode_forward, encode_forward, packets,
)

pytestmark = pytest.mark.timeout(60)

HEADER = struct.calcsize("!IHH")


def payload(size: int, tag: int = 0) -> bytes:
    """`size` bytes that differ from any other tag's at every position past the first."""
    head = struct.pack("!I", tag)[:size]
    return head + bytes([tag % 251]) * (size - len(head))


def reassemble(packet_list: list[bytes], reassembler: Reassembler | None = None) -> list[bytes]:
    reassembler = reassembler if reassembler is not None else Reassembler()
    out = []
    for packet in packet_list:
        message = reassembler.feed(packet)
        if message is not None:
            out.append(message)
    return out


# --- framing ------------------------------------------------------------------------------


@pytest.mark.parametrize("size, chunks", [
    (0, 1), (1, 1), (CHUNK - 1, 1), (CHUNK, 1), (CHUNK + 1, 2), (3 * CHUNK, 3),
    (5 * 1024 * 1024 + 3, -(-(5 * 1024 * 1024 + 3) // CHUNK)),
])
def test_round_trip(size: int, chunks: int) -> None:
    data = os.urandom(size)
    sent = list(packets(42, data))
    assert len(sent) == chunks
    assert all(len(p) <= CHUNK + HEADER for p in sent)
    reassembler = Reassembler()
    assert [reassembler.feed(p) for p in sent[:-1]] == [None] * (chunks - 1)
    assert reassembler.feed(sent[-1]) == data
    assert reassembler.dropped == 0


def test_header_carries_id_index_count() -> None:
    sent = list(packets(0x1_0000_0007, b"x" * (2 * CHUNK + 1)))
    headers = [struct.unpack_from("!IHH", p) for p in sent]
    assert headers == [(7, 0, 3), (7, 1, 3), (7, 2, 3)]  # the id wraps at 32 bits


def test_messages_in_sequence() -> None:
    messages = [payload(size, tag) for tag, size in enumerate([0, 5, CHUNK, CHUNK + 1, 1])]
    stream = [p for tag, m in enumerate(messages) for p in packets(tag, m)]
    assert reassemble(stream) == messages


def test_tail_of_message_with_lost_head_is_dropped() -> None:
    first = payload(3 * CHUNK, 1)
    second = payload(2 * CHUNK + 10, 2)
    tail = list(packets(1, first))[1:]
    reassembler = Reassembler()
    assert reassemble(tail, reassembler) == []
    assert reassembler.dropped == 2
    assert reassemble(list(packets(2, second)), reassembler) == [second]
    assert reassembler.dropped == 2


def test_restarted_reader_starts_mid_message() -> None:
    """A fresh Reassembler (a restarted CA process) joining in the middle resyncs."""
    old = list(packets(5, payload(4 * CHUNK, 5)))
    new = payload(10, 6)
    reassembler = Reassembler()
    assert reassemble(old[2:] + list(packets(6, new)), reassembler) == [new]
    assert reassembler.dropped == 2


def test_new_first_chunk_abandons_the_message_in_progress() -> None:
    old = list(packets(1, payload(3 * CHUNK, 1)))
    new = payload(CHUNK + 5, 2)
    reassembler = Reassembler()
    assert reassemble(old[:2], reassembler) == []
    assert reassemble(list(packets(2, new)), reassembler) == [new]
    assert reassembler.dropped == 2
    assert reassemble(old[2:], reassembler) == []  # the old tail, late: dropped too
    assert reassembler.dropped == 3


def test_single_chunk_message_abandons_the_message_in_progress() -> None:
    old = list(packets(1, payload(2 * CHUNK, 1)))
    small = payload(7, 2)
    reassembler = Reassembler()
    assert reassemble([old[0], *packets(2, small), old[1]], reassembler) == [small]
    assert reassembler.dropped == 2


def test_lost_middle_chunk_drops_the_message() -> None:
    old = list(packets(1, payload(3 * CHUNK, 1)))
    nxt = payload(CHUNK + 1, 2)
    reassembler = Reassembler()
    assert reassemble([old[0], old[2], *packets(2, nxt)], reassembler) == [nxt]
    assert reassembler.dropped == 2


def test_short_packet_is_dropped() -> None:
    reassembler = Reassembler()
    assert reassembler.feed(b"\x00\x01") is None
    assert reassembler.dropped == 1
    assert reassembler.feed(next(packets(3, b"ok"))) == b"ok"


SIZES = st.one_of(
    st.sampled_from([0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK, 2 * CHUNK + 1]),
    st.integers(0, 3 * CHUNK),
)


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(SIZES, min_size=1, max_size=12),
    first_id=st.integers(0, 2**32 - 1),
    data=st.data(),
)
def test_lost_packets_never_produce_a_wrong_message(sizes: list[int], first_id: int,
                                                    data: st.DataObject) -> None:
    messages = [payload(size, tag) for tag, size in enumerate(sizes)]
    framed = [list(packets(first_id + tag, m)) for tag, m in enumerate(messages)]
    stream = [(tag, p) for tag, ps in enumerate(framed) for p in ps]
    kept = data.draw(st.lists(st.booleans(), min_size=len(stream), max_size=len(stream)))
    start = data.draw(st.integers(0, len(stream)))  # a reader that joins late
    delivered = [(tag, p) for i, (tag, p) in enumerate(stream) if kept[i] and i >= start]

    reassembler = Reassembler()
    out = reassemble([p for _, p in delivered], reassembler)

    whole = [
        tag for tag, ps in enumerate(framed)
        if sum(1 for t, _ in delivered if t == tag) == len(ps)
    ]
    # Every message that arrived whole comes out, in order, and nothing else does.
    assert out == [messages[tag] for tag in whole]
    # A last small message comes out too, and every packet not used is counted dropped.
    sentinel = b"sentinel"
    assert reassemble(list(packets(first_id + len(sizes), sentinel)), reassembler) == [sentinel]
    used = sum(len(framed[tag]) for tag in whole)
    assert reassembler.dropped == len(delivered) - used


# --- Forward messages ---------------------------------------------------------------------


def put(name: str, value: object, ts_ns: int, meta: dict | None = None) -> PipeOp:
    return PipeOp(Op.PUT, name, value, ts_ns, meta)


def back_op(item: list) -> PipeOp:
    """An op as decoded (a list in PipeOp's field order), as the PipeOp it was."""
    assert type(item) is list and len(item) == len(PipeOp._fields), item
    return PipeOp(Op(item[0]), *item[1:])


def test_pipe_ops_travel_as_arrays_of_plain_values() -> None:
    """A PipeOp packs exactly as the plain tuple of its fields, the op as an int."""
    op = PipeOp(Op.META, "p:x_f1", None, 0, {"egu": "V"})
    assert encode_forward(Forward(1, 2, [[op]])) == encode_forward(
        Forward(1, 2, [[(2, "p:x_f1", None, 0, {"egu": "V"})]]))
    assert [int(code) for code in Op] == [0, 1, 2]  # on the wire: never renumber


def test_forward_round_trip() -> None:
    floats = np.array([1.5, -0.0, np.nan, np.inf, -np.inf, 1e308, 5e-324])
    ints = np.array([0, -1, 2**31 - 1, -(2**31)], dtype=np.int32)
    chars = np.array([0, 1, 255], dtype=np.uint8)
    ts = 1_700_000_000_123_456_000
    forward = Forward(
        seq=2**40, sent_ns=time.monotonic_ns(),
        batches=[
            [put("p:a_F10", floats, ts), put("p:b_i4", ints, ts), put("p:c_i3", chars, ts)],
            [put("p:d_f1", 2.5, ts, {"egu": "mm", "hihi": 1.5}), put("p:e_f1", math.nan, 1),
             put("p:f_f1", -math.inf, 2), put("p:g_i1", -(2**31), 3),
             put("p:h_c8", b"te\x00xt\xff", 4), put("p:i_c8", b"", 5),
             PipeOp(Op.DELETE, "p:j_f1", None, 0, None),
             PipeOp(Op.META, "p:k_f1", None, 0, {"desc": "k"})],
            [],
        ],
        counters={"messages": 3, "updates": 9, "refused": {"badName": 2, "malformed": 1},
                  "last_refusal": "ZMQ update: badName: 'x'"},
    )
    back = decode_forward(encode_forward(forward))
    assert back.seq == forward.seq and back.sent_ns == forward.sent_ns
    assert back.counters == forward.counters
    assert len(back.batches) == 3 and back.batches[2] == []

    for got, sent in zip(back.batches[0], forward.batches[0], strict=True):
        got = back_op(got)
        assert (got.op, got.name, got.ts_ns, got.meta) == (sent.op, sent.name, sent.ts_ns, None)
        assert isinstance(got.value, np.ndarray)
        assert got.value.dtype == sent.value.dtype
        assert got.value.tobytes() == sent.value.tobytes()  # bit for bit (NaN, -0.0, denormals)
        # A read-only view of a bytes object of its own (not of the whole payload):
        # nothing can change it, and it keeps only its own bytes alive.
        assert not got.value.flags.writeable
        assert isinstance(got.value.base, bytes) and len(got.value.base) == sent.value.nbytes

    scalars = [back_op(item) for item in back.batches[1]]
    assert scalars[0] == put("p:d_f1", 2.5, ts, {"egu": "mm", "hihi": 1.5})
    assert type(scalars[0].value) is float
    assert math.isnan(scalars[1].value)
    assert scalars[2].value == -math.inf
    assert scalars[3] == put("p:g_i1", -(2**31), 3) and type(scalars[3].value) is int
    assert scalars[4] == put("p:h_c8", b"te\x00xt\xff", 4)
    assert type(scalars[4].value) is bytes
    assert scalars[5] == put("p:i_c8", b"", 5)
    assert scalars[6:] == forward.batches[1][6:]


def test_forward_int_extremes_and_empty_arrays() -> None:
    forward = Forward(0, 0, [[put("n", 2**64 - 1, -(2**63)),
                             put("m", np.zeros(0, dtype=np.float64), 0),
                             put("o", np.zeros(0, dtype=np.int32), 0)]], {})
    back = decode_forward(encode_forward(forward))
    assert back.batches[0][0] == [Op.PUT, "n", 2**64 - 1, -(2**63), None]
    assert back.batches[0][1][2].dtype == np.float64 and back.batches[0][1][2].size == 0
    assert back.batches[0][2][2].dtype == np.int32 and back.batches[0][2][2].size == 0
    assert back.counters == {}


def test_forward_non_contiguous_array() -> None:
    values = np.arange(20.0)[::3]
    back = decode_forward(encode_forward(Forward(1, 1, [[put("n", values, 0)]])))
    np.testing.assert_array_equal(back_op(back.batches[0][0]).value, values)


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
        encode_forward(Forward(1, 1, [[put("n", value, 0)]]))


@pytest.mark.parametrize("message", [
    (1, 2, 3, {}),  # batches not a list
    (1, 2, [], []),  # counters not a map
    (1, 2.5, [], {}),  # a send time not an int
])
def test_decode_refuses_what_is_not_a_forward(message: tuple) -> None:
    """Down to the list of batches (the CA process checks each batch as it applies it)."""
    payload = msgpack.packb(message, use_bin_type=True)
    with pytest.raises(ValueError):
        decode_forward(payload)
