"""The internal pipes between the workers and the CA process: packets and their ends.

The supervisor creates two pipes per worker, each an ``AF_UNIX``/``SOCK_SEQPACKET``
socket pair, and keeps every end for the relay's whole life; each child inherits the
ends it uses. The *up* pipe carries a worker's batches to the CA process, the *down*
pipe the CA process's answers back (`relayd.supervise.messages` says what travels). Why
this kind of pipe:

* The kernel delivers each packet whole. A process killed in the middle of reading
  loses at most the message it was reading; its successor starts on a packet boundary.
  A byte-stream pipe would leave the successor inside a half-read frame.
* Data already in a pipe survives a restart of either child, because the supervisor
  still holds both ends.
* The writer's unread bytes are one ioctl away (`backlog`), which is the "pipe
  backlog" status PV.

Messages larger than one packet travel as numbered chunks (`packets`, `Reassembler`);
chunks of a message whose beginning was lost are dropped until the next first chunk,
which is how a restarted reader resynchronises.

Three ends: `PipeWriter` (a worker's up end: waits for room, with a timeout),
`PipeReader` (never blocks) and `Outbox` (the CA process's down end: never blocks
either; it queues whole messages up to a bound and sends what the pipe takes).
"""

from __future__ import annotations

import array
import fcntl
import itertools
import socket
import struct
import termios
from collections import deque
from typing import Iterator

# Payload bytes per packet: fits the default socket buffer of every Linux.
CHUNK = 60_000
_HEADER = struct.Struct("!IHH")  # message id, chunk index, chunk count


def socket_pair(buffer_bytes: int) -> tuple[socket.socket, socket.socket]:
    """A new pipe: (reader end, writer end), with `buffer_bytes` of buffering asked for.

    The kernel caps the buffer at net.core.wmem_max (and doubles what it grants).
    """
    reader, writer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for end in (reader, writer):
        end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, buffer_bytes)
        end.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffer_bytes)
        end.set_inheritable(True)
    return reader, writer


def backlog(writer: socket.socket) -> int:
    """Bytes written into the pipe and not yet read by the other end."""
    count = array.array("i", [0])
    fcntl.ioctl(writer.fileno(), termios.TIOCOUTQ, count)
    return count[0]


class WorkerPipes:
    """One worker's two pipes, both ends of each: the supervisor holds them all."""

    def __init__(self, up: tuple[socket.socket, socket.socket],
                 down: tuple[socket.socket, socket.socket]):
        self.up_reader, self.up_writer = up
        self.down_reader, self.down_writer = down

    @classmethod
    def make(cls, buffer_bytes: int) -> WorkerPipes:
        return cls(socket_pair(buffer_bytes), socket_pair(buffer_bytes))

    def worker_ends(self) -> tuple[socket.socket, socket.socket]:
        """What the worker gets: (up writer, down reader)."""
        return (self.up_writer, self.down_reader)

    def ca_ends(self) -> tuple[socket.socket, socket.socket, socket.socket]:
        """What the CA process gets: (up reader, down writer, up writer for the backlog)."""
        return (self.up_reader, self.down_writer, self.up_writer)

    def close(self) -> None:
        for end in (self.up_reader, self.up_writer, self.down_reader, self.down_writer):
            end.close()


# --- framing (pure) -------------------------------------------------------------------


def packets(message_id: int, payload: bytes) -> Iterator[bytes]:
    """The packets that carry `payload` as message `message_id`."""
    count = max(1, -(-len(payload) // CHUNK))
    if count > 0xFFFF:
        raise ValueError(f"pipe message of {len(payload)} bytes is too large")
    view = memoryview(payload)
    for index in range(count):
        yield _HEADER.pack(message_id & 0xFFFFFFFF, index, count) + view[
            index * CHUNK:(index + 1) * CHUNK
        ]


class Reassembler:
    """Joins the chunks of each message; drops chunks of messages begun elsewhere."""

    def __init__(self) -> None:
        self._id: int | None = None
        self._parts: list[bytes] = []
        self._count = 0
        self.dropped = 0  # chunks thrown away while resynchronising

    def feed(self, packet: bytes) -> bytes | None:
        """Take one packet; return a whole message when one completes."""
        if len(packet) < _HEADER.size:
            self.dropped += 1
            return None
        message_id, index, count = _HEADER.unpack_from(packet)
        body = packet[_HEADER.size:]
        if index == 0:
            if self._parts:
                self.dropped += len(self._parts)
            if count == 1:
                self._parts = []
                return body
            self._id, self._parts, self._count = message_id, [body], count
            return None
        if message_id != self._id or index != len(self._parts):
            self.dropped += 1
            return None
        self._parts.append(body)
        if len(self._parts) < self._count:
            return None
        message = b"".join(self._parts)
        self._parts = []
        return message


# --- the two ends (I/O) ------------------------------------------------------------------


class PipeWriter:
    """A worker's up end: sends whole messages, waiting for room when the pipe is full."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self._ids = itertools.count()

    def send(self, payload: bytes, timeout: float | None) -> bool:
        """Send one message; False if the pipe stayed full for `timeout` seconds.

        A message is sent whole or not at all, unless the timeout strikes between two
        chunks of a large message; the reader then drops the partial message.
        """
        self.sock.settimeout(timeout)
        message_id = next(self._ids)
        try:
            for packet in packets(message_id, payload):
                self.sock.send(packet)
        except (socket.timeout, BlockingIOError):
            return False
        return True


class PipeReader:
    """A reading end (the CA process's up ends, a worker's down end): whole messages,
    without ever blocking."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.sock.setblocking(False)
        self._reassembler = Reassembler()

    def fileno(self) -> int:
        return self.sock.fileno()

    @property
    def dropped(self) -> int:
        return self._reassembler.dropped

    def read(self) -> bytes | None:
        """The next whole message, or None if none is waiting."""
        while True:
            try:
                packet = self.sock.recv(CHUNK + _HEADER.size)
            except (BlockingIOError, InterruptedError):
                return None
            if not packet:
                return None
            message = self._reassembler.feed(packet)
            if message is not None:
                return message


class Outbox:
    """The CA process's down end: whole messages queued, sent without ever blocking.

    `put` queues a message's packets unless that would take the queue beyond `limit`
    bytes: then the message is dropped and counted (`dropped`), and whoever waits for
    it times out. `flush` sends queued packets until the pipe is full. A message is
    never cut by a drop: only whole messages are queued or refused.
    """

    def __init__(self, sock: socket.socket, limit: int):
        self.sock = sock
        self.sock.setblocking(False)
        self.limit = limit
        self._packets: deque[bytes] = deque()
        self._bytes = 0
        self._ids = itertools.count()
        self.dropped = 0  # messages refused because the queue was full

    def __len__(self) -> int:
        """Bytes queued and not yet sent."""
        return self._bytes

    def put(self, payload: bytes) -> bool:
        """Queue one message; False (and counted) if the queue has no room for it."""
        if self._bytes + len(payload) > self.limit:
            self.dropped += 1
            return False
        for packet in packets(next(self._ids), payload):
            self._packets.append(packet)
            self._bytes += len(packet)
        return True

    def flush(self) -> bool:
        """Send what the pipe takes now; True once the queue is empty."""
        queue = self._packets
        while queue:
            try:
                self.sock.send(queue[0])
            except (BlockingIOError, InterruptedError):
                return False
            self._bytes -= len(queue.popleft())
        return True
