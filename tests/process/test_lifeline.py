"""The parent/child control channel (relayd.lifeline)."""

from __future__ import annotations

import socket
import threading
import time
from typing import Iterator

import pytest

from relayd.supervise.lifeline import Lifeline

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def ends() -> Iterator[tuple[Lifeline, Lifeline]]:
    parent_sock, child_sock = Lifeline.pair()
    parent, child = Lifeline(parent_sock), Lifeline(child_sock)
    try:
        yield parent, child
    finally:
        parent_sock.close()
        child_sock.close()


def receive_some(end: Lifeline, n: int, timeout: float = 2.0) -> list[dict]:
    """At least `n` messages (receive's errors propagate: wait_for would swallow them)."""
    got: list[dict] = []
    deadline = time.monotonic() + timeout
    while len(got) < n:
        got.extend(end.receive())
        if time.monotonic() > deadline:
            raise AssertionError(f"{len(got)} of {n} messages within {timeout} s: {got}")
        time.sleep(0.001)
    return got


def test_pair_is_seqpacket_and_child_end_inheritable() -> None:
    parent, child = Lifeline.pair()
    try:
        assert parent.type == child.type == socket.SOCK_SEQPACKET
        assert child.get_inheritable()
        assert not parent.get_inheritable()
    finally:
        parent.close()
        child.close()


def test_messages_both_ways(ends) -> None:
    parent, child = ends
    assert child.send(ready=True)
    assert child.send(beat=True)
    assert child.send(fatal="cannot bind ZMQ endpoint tcp://127.0.0.1:1: Address in use")
    assert receive_some(parent, 3) == [
        {"ready": True}, {"beat": True},
        {"fatal": "cannot bind ZMQ endpoint tcp://127.0.0.1:1: Address in use"},
    ]
    assert parent.send(restarts={"ca-server": 2, "ingest": 0})
    assert receive_some(child, 1) == [{"restarts": {"ca-server": 2, "ingest": 0}}]
    assert not parent.closed and not child.closed


def test_receive_returns_empty_when_nothing_waits(ends) -> None:
    parent, child = ends
    started = time.monotonic()
    assert parent.receive() == []
    assert child.receive() == []
    assert time.monotonic() - started < 0.5
    assert not parent.closed and not child.closed


def test_receive_takes_every_waiting_message_at_once(ends) -> None:
    parent, child = ends
    for i in range(50):
        assert child.send(beat=i)
    assert parent.receive() == [{"beat": i} for i in range(50)]
    assert parent.receive() == []


@pytest.mark.parametrize("closing", ["parent", "child"])
def test_closed_other_end(ends, closing: str) -> None:
    parent, child = ends
    gone, left = (parent, child) if closing == "parent" else (child, parent)
    gone.send(beat=True)
    gone.close()
    assert gone.closed
    # What was sent before the close is still delivered; then the channel reads closed.
    assert left.receive() == [{"beat": True}]
    assert left.closed
    assert left.receive() == []
    assert left.send(beat=True) is False


def test_last_words_of_an_end_closed_with_unread_messages_are_delivered(ends) -> None:
    """A child that cannot boot says why and exits, often before it read the restart
    counts the supervisor sent it. Linux then reports ECONNRESET once, ahead of the
    child's last packets: the reason must still be read (it was lost, and the supervisor
    logged "could not boot" instead of why)."""
    parent, child = ends
    assert parent.send(restarts={"ca-server": 0})  # never read by the child
    child.send(fatal="a relay with prefix p already runs")
    child.close()
    assert parent.receive() == [{"fatal": "a relay with prefix p already runs"}]
    assert parent.closed


def test_send_to_closed_end_sets_closed(ends) -> None:
    parent, child = ends
    parent.close()
    assert child.send(beat=True) is False
    assert child.closed


def test_last_words_are_read_after_a_send_to_a_dead_child_failed(ends) -> None:
    """A child that cannot boot says why and exits; if the supervisor sends to it first
    (the restart counts, when another child became ready in the same turn), the send
    fails, and the reason must still be read, not lost as "could not boot"."""
    parent, child = ends
    child.send(fatal="autosave file x is in use by another relay (pid 7)")
    child.close()
    assert parent.send(restarts={"ca-server": 0}) is False
    assert parent.closed
    assert parent.receive() == [{"fatal": "autosave file x is in use by another relay (pid 7)"}]


def test_full_channel_makes_send_return_false(ends) -> None:
    parent, child = ends
    result: dict[str, int] = {}

    def flood() -> None:
        for count in range(100_000):
            if not child.send(beat=True, padding="x" * 100):
                result["sent"] = count
                return

    thread = threading.Thread(target=flood, daemon=True)
    thread.start()
    thread.join(5.0)
    if thread.is_alive():
        parent.sock.close()  # release the blocked sender
    assert not thread.is_alive(), "Lifeline.send blocked on a full channel"
    assert result.get("sent", 0) > 0, "the channel never filled"
    assert not child.closed  # full is not closed
    messages = parent.receive()
    assert len(messages) == result["sent"]
    assert child.send(beat=True)  # room again once read
    assert parent.receive() == [{"beat": True}]


def test_garbage_packets_are_skipped(ends) -> None:
    parent, child = ends
    raw = child.sock
    for packet in (b"not json", b"\xff\xfe\x00", b"[1, 2]", b"42", b'"text"', b"null",
                   b'{"unterminated": ', b"{" * 10_000):
        raw.send(packet)
    assert child.send(ready=True)
    raw.send(b"{]")
    assert child.send(beat=True)
    assert receive_some(parent, 2) == [{"ready": True}, {"beat": True}]
    assert not parent.closed


def test_packet_too_large_for_receive_is_skipped(ends) -> None:
    parent, child = ends
    assert child.send(text="x" * 100_000)  # truncated on receive, so not JSON
    assert child.send(beat=True)
    assert receive_some(parent, 1) == [{"beat": True}]
    assert not parent.closed


@pytest.mark.parametrize("packet", [b"[" * 100_000, b'{"a": ' * 20_000])
def test_deeply_nested_garbage_is_skipped(ends, packet: bytes) -> None:
    """Nesting beyond the JSON decoder's recursion limit is garbage like any other."""
    parent, child = ends
    child.sock.send(packet)
    assert child.send(beat=True)
    assert receive_some(parent, 1) == [{"beat": True}]
    assert not parent.closed
