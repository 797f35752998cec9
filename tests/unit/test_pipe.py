"""The internal pipes' framing (relayd.supervise.pipe), values only: packets and resync.

What the packets carry is tested in test_messages.py."""

from __future__ import annotations

import os
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relayd.supervise.pipe import CHUNK, Reassembler, packets

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
