"""The internal pipes' ends (relayd.supervise.pipe) over real socket pairs: the worker's
`PipeWriter`, the `PipeReader`, and the CA process's `Outbox` that never blocks."""

from __future__ import annotations

import os
import socket
import struct
import threading
import time

import pytest

from relayd.supervise.pipe import (
    CHUNK, Outbox, PipeReader, PipeWriter, backlog, packets, socket_pair,
)
from tests.harness import wait_for

pytestmark = pytest.mark.timeout(60)

HEADER = struct.calcsize("!IHH")


def payload(size: int, tag: int = 0) -> bytes:
    """`size` bytes that differ from any other tag's at every position past the first."""
    head = struct.pack("!I", tag)[:size]
    return head + bytes([tag % 251]) * (size - len(head))


# --- the two ends over a real socket pair -------------------------------------------------


@pytest.fixture
def pipe():
    reader_sock, writer_sock = socket_pair(1 << 20)
    try:
        yield PipeReader(reader_sock), PipeWriter(writer_sock)
    finally:
        reader_sock.close()
        writer_sock.close()


def read_one(reader: PipeReader, timeout: float = 10.0) -> bytes:
    """The next message (which may be b"", so not through wait_for's truthiness)."""
    deadline = time.monotonic() + timeout
    while True:
        message = reader.read()
        if message is not None:
            return message
        if time.monotonic() > deadline:
            raise AssertionError(f"no message on the pipe within {timeout} s")
        time.sleep(0.001)


def in_thread(target, timeout: float) -> tuple[bool, list]:
    """Run `target` in a thread; (finished within `timeout`, [its result])."""
    result: list = []
    thread = threading.Thread(target=lambda: result.append(target()), daemon=True)
    thread.start()
    thread.join(timeout)
    return not thread.is_alive(), result


def test_sockets_are_seqpacket_and_inheritable() -> None:
    reader, writer = socket_pair(1 << 20)
    try:
        for end in (reader, writer):
            assert end.type == socket.SOCK_SEQPACKET and end.family == socket.AF_UNIX
            assert end.get_inheritable()
    finally:
        reader.close()
        writer.close()


def test_large_message_arrives_whole(pipe) -> None:
    reader, writer = pipe
    data = os.urandom(5 * 1024 * 1024)
    sent: list[bool] = []
    thread = threading.Thread(target=lambda: sent.append(writer.send(data, 10.0)), daemon=True)
    thread.start()  # 5 MB does not fit in the pipe: the writer waits for the reader
    try:
        assert read_one(reader) == data
    finally:
        thread.join(10.0)
    assert sent == [True]
    assert reader.read() is None
    assert reader.dropped == 0


def test_several_messages_in_order(pipe) -> None:
    reader, writer = pipe
    messages = [payload(size, tag) for tag, size in enumerate([0, 1, CHUNK, CHUNK + 1, 200_000])]
    for message in messages:
        assert writer.send(message, 5.0)
    assert [read_one(reader) for _ in messages] == messages
    assert reader.read() is None


def test_read_returns_none_when_empty_without_blocking(pipe) -> None:
    reader, writer = pipe
    finished, result = in_thread(reader.read, 2.0)
    if not finished:
        writer.sock.shutdown(socket.SHUT_RDWR)  # let the stuck thread go
    assert finished, "PipeReader.read blocked on an empty pipe"
    assert result == [None]
    assert writer.send(b"x", 1.0)
    assert read_one(reader) == b"x"
    started = time.monotonic()
    assert reader.read() is None
    assert time.monotonic() - started < 0.5


def test_backlog_grows_on_write_and_drops_on_read(pipe) -> None:
    reader, writer = pipe
    empty = backlog(writer.sock)
    assert empty == 0
    data = payload(300_000, 1)
    assert writer.send(data, 5.0)
    assert backlog(writer.sock) >= len(data)
    more = payload(100_000, 2)
    before = backlog(writer.sock)
    assert writer.send(more, 5.0)
    assert backlog(writer.sock) >= before + len(more)
    assert read_one(reader) == data
    assert backlog(writer.sock) < before
    assert read_one(reader) == more
    wait_for(lambda: backlog(writer.sock) == empty, 2.0, what="an empty backlog")


def fill(writer: PipeWriter) -> int:
    """Write single-chunk messages until the pipe is full; the number written.

    The packets go straight to the socket, without waiting, so that filling cannot hang
    whatever PipeWriter does.
    """
    for count in range(100_000):
        try:
            writer.sock.send(next(packets(1000 + count, payload(CHUNK, count))),
                             socket.MSG_DONTWAIT)
        except BlockingIOError:
            return count
    raise AssertionError("the pipe never filled up")


def test_send_times_out_when_the_reader_never_reads(pipe) -> None:
    reader, writer = pipe
    written = fill(writer)
    assert written > 0
    started = time.monotonic()
    finished, result = in_thread(lambda: writer.send(b"late", 0.3), 10.0)
    elapsed = time.monotonic() - started
    if not finished:
        reader.sock.close()  # EPIPE releases the stuck sender
    assert finished, "PipeWriter.send hung on a full pipe"
    assert result == [False]
    assert 0.25 <= elapsed < 3.0
    # What was written before is still there, whole, and the pipe works on.
    assert [read_one(reader) for _ in range(written)] == [payload(CHUNK, i) for i in range(written)]
    assert reader.read() is None
    assert writer.send(b"after", 1.0)
    assert read_one(reader) == b"after"


def test_partial_message_after_timeout_is_dropped_by_the_reader(pipe) -> None:
    reader, writer = pipe
    big = payload(8 * 1024 * 1024, 9)  # far more than the pipe holds
    assert writer.send(big, 0.2) is False
    assert reader.read() is None  # the chunks that got in make no whole message
    assert writer.send(b"next", 1.0)
    assert read_one(reader) == b"next"
    assert reader.dropped > 0


# --- the outbox: the CA process's down end ---------------------------------------------------


@pytest.fixture
def down():
    reader_sock, writer_sock = socket_pair(64 * 1024)
    try:
        yield PipeReader(reader_sock), writer_sock
    finally:
        reader_sock.close()
        writer_sock.close()


def test_the_outbox_never_blocks_and_delivers_whole_messages_in_order(down) -> None:
    reader, writer_sock = down
    outbox = Outbox(writer_sock, limit=10 * 1024 * 1024)
    messages = [payload(size, tag) for tag, size in enumerate([10, 3 * CHUNK + 7, 0, 2 * CHUNK])
                for _ in range(8)]
    started = time.monotonic()
    for message in messages:
        assert outbox.put(message)
    assert outbox.flush() is False  # far more than the pipe holds: it returns, unsent
    assert time.monotonic() - started < 1.0
    received = []
    while len(received) < len(messages):
        outbox.flush()  # as the CA loop does every cycle
        message = reader.read()
        if message is not None:
            received.append(message)
    assert received == messages
    assert outbox.flush() is True and len(outbox) == 0 and outbox.dropped == 0
    assert reader.dropped == 0


def test_a_full_outbox_drops_whole_messages_and_counts_them(down) -> None:
    reader, writer_sock = down
    outbox = Outbox(writer_sock, limit=4 * CHUNK)
    kept = [payload(CHUNK, 1), payload(2 * CHUNK, 2)]
    for message in kept:
        assert outbox.put(message)
    assert not outbox.put(payload(2 * CHUNK, 3))  # no room for all of it: none of it
    assert outbox.put(payload(10, 4))  # a smaller one still fits
    assert outbox.dropped == 1
    received = []
    while len(received) < 3:
        outbox.flush()
        message = reader.read()
        if message is not None:
            received.append(message)
    assert received == kept + [payload(10, 4)]
    assert reader.dropped == 0  # no message was cut
