"""The acknowledged side of the push client: requests over a DEALER socket, replies matched
by id, a window of several requests in flight (protocol version 2, docs/PROTOCOL.md).

`AckChannel.submit` sends one request and returns its `Ticket` at once; `Ticket.result`
waits for the reply (reading every reply that comes meanwhile, for whichever ticket) and
turns it into the full PV names, or raises (`relayd.client.errors`). With a window of N,
`submit` waits for a reply whenever N requests are open, so a fast loop keeps N in
flight and never more. A request with no reply within `timeout` of its sending is given
up: its ticket raises `RelayUnreachable`, and a reply that comes later is ignored.
"""

from __future__ import annotations

import itertools
import math
import time
from urllib.parse import urlsplit

import zmq

from relayd.core.acks import DEFAULT_ENDPOINT, Reply, decode_reply, encode_request
from relayd.client.errors import (
    BatchRefused, NotDurable, ProtocolError, RelayError, RelayUnreachable, UpdateRefused,
)

DEFAULT_PORT = int(DEFAULT_ENDPOINT.rsplit(":", 1)[1])


def ack_endpoint_for(endpoint: str) -> str:
    """The relay's default acknowledged endpoint beside its PULL `endpoint`: the same
    host, port 5556 (the default of ``--zmq-ack-bind``). ValueError if not TCP."""
    parts = urlsplit(endpoint)
    if parts.scheme != "tcp" or not parts.hostname:
        raise ValueError(f"no default acknowledged endpoint beside {endpoint!r} (not "
                         "tcp://HOST:PORT): give the acknowledged endpoint")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"tcp://{host}:{DEFAULT_PORT}"


def connected(context: zmq.Context, kind: int, endpoint: str, *, queue_size: int,
              linger: float, immediate: bool, curve: tuple[bytes, bytes, bytes] | None
              ) -> zmq.Socket:
    """A client socket (PUSH or DEALER) with the client's options, connected to
    `endpoint`; ValueError if it cannot be."""
    sock = context.socket(kind)
    sock.setsockopt(zmq.SNDHWM, queue_size)
    sock.setsockopt(zmq.LINGER, int(linger * 1000))
    sock.setsockopt(zmq.IMMEDIATE, 1 if immediate else 0)
    if curve is not None:
        sock.curve_publickey, sock.curve_secretkey, sock.curve_serverkey = curve
    try:
        sock.connect(endpoint)
    except zmq.ZMQError as error:
        sock.close(0)
        raise ValueError(f"cannot connect to {endpoint!r}: {error}") from None
    return sock


class Ticket:
    """One request in flight: `result` waits for its reply."""

    __slots__ = ("id", "single", "durable", "deadline", "reply", "error", "_channel")

    def __init__(self, channel: AckChannel, request_id: int, single: bool, durable: bool,
                 deadline: float):
        self._channel = channel
        self.id = request_id
        self.single = single  # one update, not a batch: a refusal raises UpdateRefused
        self.durable = durable
        self.deadline = deadline
        self.reply: Reply | None = None
        self.error: RelayError | None = None  # no answer in time

    @property
    def done(self) -> bool:
        return self.reply is not None or self.error is not None

    def result(self) -> list[str]:
        """The full names the updates landed in, in order, once the relay has applied
        them; raises `UpdateRefused`/`BatchRefused`, `NotDurable`, `RelayUnreachable`."""
        self._channel.wait(self)
        reply = self.reply
        if reply is None:
            raise self.error or RelayUnreachable(self._channel.no_answer())
        if reply.error is not None:
            raise ProtocolError(reply.error.reason or "", reply.error.text)
        if not all(result.ok for result in reply.results):
            if self.single and len(reply.results) == 1:
                raise UpdateRefused.of(reply.results[0])
            raise BatchRefused(reply.results)
        if self.durable and not reply.durable:
            raise NotDurable(reply.results, reply.note)
        return [result.pv for result in reply.results]


class AckChannel:
    """A DEALER socket connected to the relay's acknowledged endpoint."""

    def __init__(self, endpoint: str, context: zmq.Context, *, timeout: float, window: int,
                 queue_size: int, linger: float, immediate: bool,
                 max_message_size: int | None, curve: tuple[bytes, bytes, bytes] | None):
        if window < 1:
            raise ValueError("window must be >= 1")
        self.endpoint = endpoint
        self.timeout = timeout
        self.window = window
        self.max_message_size = max_message_size
        self._open: dict[int, Ticket] = {}
        self._ids = itertools.count(1)
        self.sock = connected(context, zmq.DEALER, endpoint, queue_size=queue_size,
                              linger=linger, immediate=immediate, curve=curve)

    def submit(self, updates: dict | list, durable: bool) -> Ticket:
        """Send one request; its ticket. Waits for replies while the window is full."""
        request_id = next(self._ids)
        payload = encode_request(request_id, updates, durable)
        if self.max_message_size is not None and len(payload) > self.max_message_size:
            raise ValueError(
                f"a message of {len(payload)} bytes is longer than the relay accepts "
                f"({self.max_message_size}); send fewer or smaller updates per message")
        while len(self._open) >= self.window:
            self._receive(min(ticket.deadline for ticket in self._open.values()))
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                self.sock.send(payload, zmq.NOBLOCK)
                break
            except zmq.Again:
                if time.monotonic() >= deadline:
                    raise RelayUnreachable(self.no_answer()) from None
                self.sock.poll(max(1, int((deadline - time.monotonic()) * 1000)), zmq.POLLOUT)
        ticket = Ticket(self, request_id, isinstance(updates, dict), durable, deadline)
        self._open[request_id] = ticket
        return ticket

    def wait(self, ticket: Ticket) -> None:
        """Read replies until `ticket` has its own, or give it up at its deadline."""
        while not ticket.done:
            self._receive(ticket.deadline)

    def _receive(self, until: float) -> None:
        """Read the replies there are, or that come before `until`; then give up what is
        overdue."""
        remaining = max(0.0, until - time.monotonic())
        if self.sock.poll(math.ceil(remaining * 1000), zmq.POLLIN):
            while True:
                try:
                    frame = self.sock.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                try:
                    reply = decode_reply(frame)
                except ValueError:
                    continue  # not a reply of this protocol: nothing waits for it
                ticket = self._open.pop(reply.id, None)
                if ticket is not None:
                    ticket.reply = reply
        now = time.monotonic()
        for request_id, ticket in list(self._open.items()):
            if ticket.deadline <= now:
                del self._open[request_id]
                ticket.error = RelayUnreachable(self.no_answer())

    def no_answer(self) -> str:
        return (f"no answer from {self.endpoint} within {self.timeout:g} s; is relayd "
                "running there, with its acknowledged socket (--zmq-ack-bind)? The update "
                "may or may not have been applied")

    def close(self, linger: float | None = None) -> None:
        self.sock.close(None if linger is None else int(linger * 1000))
