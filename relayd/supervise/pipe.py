"""The internal pipe from the ingest worker to the CA process.

The supervisor creates it once, as an ``AF_UNIX``/``SOCK_SEQPACKET`` socket pair, and
keeps both ends for the relay's whole life; each child inherits the end it uses. Why
this kind of pipe:

* The kernel delivers each packet whole. A CA process killed in the middle of reading
  loses at most the message it was reading; its successor starts on a packet boundary.
  A byte-stream pipe would leave the successor inside a half-read frame.
* Data already in the pipe survives a restart of either child, because the supervisor
  still holds both ends.
* The writer's unread bytes are one ioctl away (`backlog`), which is the "pipe
  backlog" status PV.

Messages larger than one packet travel as numbered chunks (`packets`, `Reassembler`);
chunks of a message whose beginning was lost are dropped until the next first chunk,
which is how a restarted reader resynchronises.

The message itself is msgpack (`encode_forward`/`decode_forward`): batches of updates
already validated and converted by the worker, plus the worker's counters. numpy arrays
travel as msgpack extension types and arrive as read-only views of their own bytes.
"""

from __future__ import annotations

import array
import fcntl
import itertools
import socket
import struct
import termios
from dataclasses import dataclass, field
from typing import Any, Iterator

import msgpack
import numpy as np

from relayd.core.names import Kind
from relayd.core.ops import PipeOp

# Payload bytes per packet: fits the default socket buffer of every Linux.
CHUNK = 60_000
_HEADER = struct.Struct("!IHH")  # message id, chunk index, chunk count

# msgpack extension codes for numpy arrays inside pipe messages.
_EXT_DTYPES = {1: Kind.FLOAT.stored_dtype, 2: Kind.INT.stored_dtype, 3: Kind.CHAR.stored_dtype}
_EXT_CODES = {dtype: code for code, dtype in _EXT_DTYPES.items()}


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


# --- messages (pure) -------------------------------------------------------------------


@dataclass
class Forward:
    """One pipe message from the worker: updates in batches, and counters to add.

    Each batch is one ZMQ message's accepted updates (`relayd.core.ops.PipeOp`), applied
    atomically by the CA process. The worker sends PipeOps; `decode_forward` gives each
    back as a list in PipeOp's field order (see `relayd.core.ops` for why).
    """

    seq: int
    sent_ns: int  # time.monotonic_ns() when the worker sent it (same host clock)
    batches: list[list[PipeOp]] = field(default_factory=list)
    counters: dict[str, Any] = field(default_factory=dict)


def _default(value: object) -> object:
    if isinstance(value, np.ndarray):
        code = _EXT_CODES.get(value.dtype)
        if code is not None:
            return msgpack.ExtType(code, np.ascontiguousarray(value).tobytes())
    raise TypeError(f"cannot send {type(value).__name__} through the pipe")


def _ext_hook(code: int, data: bytes) -> object:
    dtype = _EXT_DTYPES.get(code)
    if dtype is None:
        return msgpack.ExtType(code, data)
    # A read-only view of `data`, a bytes object of its own that nothing else holds:
    # no copy is needed, and nobody can change the array behind the PV's back.
    return np.frombuffer(data, dtype=dtype)


def encode_forward(forward: Forward) -> bytes:
    return msgpack.packb(
        (forward.seq, forward.sent_ns, forward.batches, forward.counters),
        default=_default, use_bin_type=True,
    )


def decode_forward(payload: bytes) -> Forward:
    """The Forward in `payload`; `ValueError` (or msgpack's errors) if it is not one.

    Checked down to the list of batches. Each batch, and each op in it, is checked where
    it is applied: checking a batch here would cost as much again as decoding it.
    """
    seq, sent_ns, batches, counters = msgpack.unpackb(
        payload, ext_hook=_ext_hook, raw=False, strict_map_key=False, use_list=True
    )
    if not (type(batches) is list and type(counters) is dict and type(sent_ns) is int):
        raise ValueError("not a pipe message: (seq, sent_ns, [[op, ...], ...], {counters})")
    return Forward(seq, sent_ns, batches, counters)


# --- the two ends (I/O) ------------------------------------------------------------------


class PipeWriter:
    """The worker's end: sends whole messages, waiting for room when the pipe is full."""

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
    """The CA process's end: whole messages, without ever blocking."""

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
