"""The push client: what a publisher script uses to send values to a relay.

    from relayd.client import Client

    with Client("tcp://relayhost:5555") as relay:
        relay.put("temperature_lab_f1", 21.2)
        relay.put_many({"fit_results_f4": [23.0, 0.1, 3231.123, 1e-4], "runs_i1": 7})
        with relay.batch() as batch:          # one message, applied by the relay at once
            batch.put("pressure_log_F100", [1e-4])
            batch.delete("old_thing_f1")

By default a `Client` owns one ZeroMQ PUSH socket connected to the relay's PULL socket.
PUSH is fire-and-forget, the fastest way: the relay sends no reply, so a refused update
(bad name, wrong value type) is not reported here but counted on the relay's status PVs
and logged there. What this client does guarantee is that a call never blocks the
caller's loop for longer than `send_timeout`: while the relay is down, messages wait in a
queue of `queue_size`; once that is full, a send raises `RelayUnreachable`.

With ``ack=True`` every call waits for the relay's verdict (protocol version 2, over its
acknowledged socket, `acked`) and says what became of each update::

    with Client("tcp://relayhost:5555", ack=True) as relay:
        relay.put("temperature_lab_f1", 21.2)       # "relay:temperature_lab_f1", or raises
        relay.put_many({"a_f1": 1.0, "b_i1": 2})    # the full names, or BatchRefused
        for value in readings:                      # many in flight: as fast as the window
            relay.put_async("trace_F1000", [value])
        relay.flush()                               # every verdict, or the first problem

A refusal raises `UpdateRefused` (`.pv`, `.reason`, `.text`), a refusal within a batch
`BatchRefused` (every update's result; the others were applied), no verdict within
`timeout` `RelayUnreachable`, and with ``durable=True`` an update applied but not saved
`NotDurable` (`relayd.client.errors`).

Needs only pyzmq and msgpack: no numpy (numpy arrays are accepted when numpy is in use),
no EPICS libraries, so it runs on any host that can reach the relay.
"""

from __future__ import annotations

import time
from typing import Iterable, Mapping

import zmq

from relayd import keys

from relayd.client.acked import AckChannel, Ticket, ack_endpoint_for, connected
from relayd.client.errors import BatchRefused, RelayError, RelayUnreachable
from relayd.core import protocol
from relayd.core.errors import Refused
from relayd.core.meta import check_changes


class Client:
    """Pushes updates to a relay's ZMQ PULL socket, or, with `ack`, its acknowledged one.

    `endpoint` is the relay's ZMQ address (its ``zmq_bind``). A message that cannot be
    handed to ZeroMQ within `send_timeout` seconds raises `RelayUnreachable`. Up to
    `queue_size` messages wait while the relay is down or slow (ZMQ_SNDHWM), and `close`
    waits up to `linger` seconds for them to leave.

    With ``immediate=True`` messages are queued only on an established connection
    (ZMQ_IMMEDIATE), so a send to a relay that is not there raises `RelayUnreachable`
    after `send_timeout` instead of waiting in the queue: what a one-shot command wants.
    The default queues, so a publisher loop rides out a relay restart.

    A message longer than `max_message_size` bytes (the relay's ZMQ_MAXMSGSIZE, 64 MiB
    by default) raises ValueError before it is sent: the relay would drop the connection
    on it. `context` is a zmq.Context to share; by default the client has its own, and
    terminating it at `close` is what makes the linger wait happen.

    For a relay with CURVE on, give `curve_secret_key` (this publisher's ``.key_secret``
    file, whose public half is in the relay's authorised keys) and `curve_server_key`
    (the relay's ``.key``). A relay that does not know the key never accepts the
    connection: messages then wait in the queue, and `RelayUnreachable` follows.

    With ``ack=True`` the client talks to the relay's acknowledged socket instead:
    `ack_endpoint`, by default `endpoint`'s host at port 5556 (``--zmq-ack-bind``'s
    default). Each call then waits up to `timeout` seconds for the verdict and returns
    the full PV names (see the module doc for what it raises); `put_async` and
    `put_many_async` keep up to `window` requests in flight, and `flush` waits for them.
    ``durable=True`` asks the relay to answer only once the updates are in its autosave
    file. The socket is not thread-safe: one client per thread.
    """

    def __init__(self, endpoint: str = protocol.DEFAULT_ENDPOINT, *, send_timeout: float = 5.0,
                 queue_size: int = 10_000, linger: float = 2.0, context: zmq.Context | None = None,
                 immediate: bool = False,
                 max_message_size: int | None = protocol.MAX_MESSAGE_SIZE,
                 curve_secret_key: str | None = None, curve_server_key: str | None = None,
                 ack: bool = False, ack_endpoint: str | None = None, timeout: float = 5.0,
                 window: int = 100, durable: bool = False):
        if send_timeout < 0 or linger < 0 or timeout < 0:
            raise ValueError("send_timeout, linger and timeout must be >= 0")
        if queue_size < 1:
            raise ValueError("queue_size must be >= 1")
        self.endpoint = endpoint
        self.send_timeout = send_timeout
        self.queue_size = queue_size
        self.linger = linger
        self.immediate = immediate
        self.max_message_size = max_message_size
        self.ack = ack
        self.durable = durable
        if (curve_secret_key is None) != (curve_server_key is None):
            raise ValueError("CURVE needs both curve_secret_key and curve_server_key")
        self.curve = curve_secret_key is not None
        curve = None
        if curve_secret_key is not None:
            curve = (*keys.load_secret_key(curve_secret_key),
                     keys.load_public_key(curve_server_key))  # type: ignore[arg-type]
        self._own_context = context is None
        self._context = zmq.Context() if context is None else context
        self._socket: zmq.Socket | None = None
        self._acked: AckChannel | None = None
        self._async: list[Ticket] = []
        try:
            if ack:
                self.ack_endpoint = ack_endpoint or ack_endpoint_for(endpoint)
                self._acked = AckChannel(
                    self.ack_endpoint, self._context, timeout=timeout, window=window,
                    queue_size=queue_size, linger=linger, immediate=immediate,
                    max_message_size=max_message_size, curve=curve)
            else:
                self._socket = connected(
                    self._context, zmq.PUSH, endpoint, queue_size=queue_size,
                    linger=linger, immediate=immediate, curve=curve)
        except BaseException:
            if self._own_context:
                self._context.term()
            raise
        self._closed = False

    def put(self, pv: str, value: object, *, ts: float | None = None,
            meta: dict | None = None) -> str | None:
        """Put `value` to `pv` (with or without the relay's prefix); `ts` is POSIX seconds.

        `meta` sets attributes with the value, keyed by lower-case field name:
        ``meta={"egu": "K", "prec": 2, "hihi": 300.0, "tmo": 10}``. With `ack`, the full
        name the value landed in.
        """
        return self._one(protocol.encode_update(pv, value, ts=ts, meta=_checked(pv, meta)))

    def set_meta(self, pv: str, **meta: object) -> str | None:
        """Set attributes of the existing PV `pv`: ``set_meta("t_f1", egu="K", hihi=300)``."""
        return self._one(protocol.encode_update(pv, meta=_checked(pv, meta)))

    def put_many(self, updates: Mapping[str, object] | Iterable[tuple[str, object]]
                 ) -> list[str] | None:
        """Put several values in ONE message: a mapping {pv: value} or (pv, value) pairs.

        The relay applies a batch at once (clients never see half of it). Nothing is sent
        for an empty batch. With `ack`, the full names, in order; `BatchRefused` if any
        update was refused (the others were applied).
        """
        pairs = updates.items() if isinstance(updates, Mapping) else updates
        batch = [protocol.encode_update(pv, value) for pv, value in pairs]
        return self._send(batch) if batch else ([] if self.ack else None)

    def delete(self, pv: str) -> str | None:
        """Delete the PV `pv`: it disappears from the relay and its CA clients disconnect."""
        return self._one(protocol.encode_update(pv, op=protocol.DELETE))

    def put_async(self, pv: str, value: object, *, ts: float | None = None,
                  meta: dict | None = None) -> Ticket:
        """With `ack`: send a put without waiting for its verdict (at most `window` in
        flight); its `Ticket` (``ticket.result()`` waits), and `flush` waits for all."""
        return self._submit(protocol.encode_update(pv, value, ts=ts, meta=_checked(pv, meta)))

    def put_many_async(self, updates: Mapping[str, object] | Iterable[tuple[str, object]]
                       ) -> Ticket:
        """With `ack`: `put_many` without waiting; see `put_async`."""
        pairs = updates.items() if isinstance(updates, Mapping) else updates
        return self._submit([protocol.encode_update(pv, value) for pv, value in pairs])

    def flush(self) -> list[str]:
        """Wait for the verdict of every request sent by `put_async`/`put_many_async`
        since the last flush; their full names, in order of sending.

        Every request is waited for, then the first problem is raised: `RelayUnreachable`
        if any got no answer, else `BatchRefused` with every result if any update was
        refused, else `NotDurable`. Fire-and-forget: nothing to wait for, [].
        """
        tickets, self._async = self._async, []
        names: list[str] = []
        problems: list[RelayError] = []
        results = []
        for ticket in tickets:
            try:
                names += ticket.result()
            except RelayError as problem:
                problems.append(problem)
            if ticket.reply is not None:
                results += ticket.reply.results
        unanswered = [p for p in problems if isinstance(p, RelayUnreachable)]
        if unanswered:
            raise unanswered[0]
        if not all(result.ok for result in results):
            raise BatchRefused(results)
        if problems:
            raise problems[0]  # NotDurable, or ProtocolError
        return names

    def batch(self) -> Batch:
        """A `Batch` that is sent as one message when its ``with`` block ends normally."""
        return Batch(self)

    def close(self) -> None:
        """Close the socket, waiting up to `linger` seconds for queued messages to leave."""
        if not self._closed:
            self._closed = True
            self._close(None)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        way = f" (acknowledged: {self.ack_endpoint})" if self.ack else ""
        return f"<Client {self.endpoint}{way} {state}>"

    def _close(self, linger_ms: int | None) -> None:
        if self._socket is not None:
            self._socket.close(linger=linger_ms)
        if self._acked is not None:
            self._acked.close()
        if self._own_context:
            self._context.term()  # blocks until queued messages are sent or linger expires

    def _one(self, update: dict) -> str | None:
        names = self._send(update)
        return None if names is None else names[0]

    def _submit(self, obj: dict | list) -> Ticket:
        if self._closed:
            raise RelayError(f"the client for {self.endpoint} is closed")
        if self._acked is None:
            raise ValueError("put_async needs Client(..., ack=True); pushes never wait anyway")
        ticket = self._acked.submit(obj, self.durable)
        self._async.append(ticket)
        return ticket

    def _send(self, obj: dict | list) -> list[str] | None:
        """Send one message: pushed (None), or acknowledged (the full names, or raises)."""
        if self._closed:
            raise RelayError(f"the client for {self.endpoint} is closed")
        if self._acked is not None:
            return self._acked.submit(obj, self.durable).result()
        payload = protocol.dumps(obj)
        if self.max_message_size is not None and len(payload) > self.max_message_size:
            raise ValueError(
                f"a message of {len(payload)} bytes is longer than the relay accepts "
                f"({self.max_message_size}); send fewer or smaller updates per message"
            )
        deadline = time.monotonic() + self.send_timeout
        sock = self._socket
        while True:
            try:
                sock.send(payload, zmq.NOBLOCK)  # type: ignore[union-attr]
                return None
            except zmq.Again:
                pass
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RelayUnreachable(self._unreachable_text())
            # POLLOUT can be reported and lost to a race with the I/O thread; loop to retry.
            sock.poll(max(1, int(remaining * 1000)), zmq.POLLOUT)  # type: ignore[union-attr]

    def _unreachable_text(self) -> str:
        question = "is relayd running and listening there?"
        if self.curve:
            question = ("is relayd running and listening there, with CURVE on, this "
                        "publisher's key authorised and the right server key?")
        if self.immediate:
            return (
                f"no connection to a relay at {self.endpoint} within "
                f"{self.send_timeout:g} s; {question}"
            )
        return (
            f"cannot queue a message for {self.endpoint} within {self.send_timeout:g} s: "
            f"the queue of {self.queue_size} messages is full and the relay is not taking "
            f"any; {question}"
        )


def _checked(pv: str, meta: dict | None) -> dict | None:
    """`meta` as given, once the relay's own rules accept it (ValueError if not).

    PUSH gets no reply, so an attribute the relay would refuse is caught here, at the
    line that sent it, rather than only counted on the relay.
    """
    if meta is None:
        return None
    try:
        check_changes(meta, pv)
    except Refused as refused:
        raise ValueError(refused.detail) from None
    return meta


class Batch:
    """Updates collected in a ``with`` block and sent as ONE message when it ends.

    If the block raises, nothing is sent: a batch is all or nothing on the sending side
    too. Each `put`/`delete` checks its update at once, so a mistake raises at its line.
    With an acknowledged client the end of the block waits for the verdicts: `names`
    holds the full names then, and a refusal raises `BatchRefused` there.
    """

    def __init__(self, client: Client):
        self._client = client
        self._updates: list[dict] = []
        self.names: list[str] | None = None

    def put(self, pv: str, value: object, *, ts: float | None = None,
            meta: dict | None = None) -> None:
        """Add a put of `value` (and attributes `meta`) to `pv` to the batch."""
        self._updates.append(protocol.encode_update(pv, value, ts=ts, meta=_checked(pv, meta)))

    def set_meta(self, pv: str, **meta: object) -> None:
        """Add attribute changes for `pv` to the batch."""
        self._updates.append(protocol.encode_update(pv, meta=_checked(pv, meta)))

    def delete(self, pv: str) -> None:
        """Add a delete of `pv` to the batch."""
        self._updates.append(protocol.encode_update(pv, op=protocol.DELETE))

    def __len__(self) -> int:
        return len(self._updates)

    def __enter__(self) -> Batch:
        return self

    def __exit__(self, exc_type: object, exc: object, traceback: object) -> None:
        updates, self._updates = self._updates, []
        if exc_type is None and updates:
            self.names = self._client._send(updates)
