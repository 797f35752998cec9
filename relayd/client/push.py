"""The push client: what a publisher script uses to send values to a relay.

    from relayd.client import Client

    with Client("tcp://relayhost:5555") as relay:
        relay.put("temperature_lab_f1", 21.2)
        relay.put_many({"fit_results_f4": [23.0, 0.1, 3231.123, 1e-4], "runs_i1": 7})
        with relay.batch() as batch:          # one message, applied by the relay at once
            batch.put("pressure_log_F100", [1e-4])
            batch.delete("old_thing_f1")

A `Client` owns one ZeroMQ PUSH socket connected to the relay's PULL socket. PUSH is
fire-and-forget: the relay sends no reply, so a refused update (bad name, wrong value
type) is not reported here but counted on the relay's status PVs and logged there. What
this client does guarantee is that a call never blocks the caller's loop for longer than
`send_timeout`: while the relay is down, messages wait in a queue of `queue_size`; once
that is full, a send raises `RelayUnreachable`.

Needs only pyzmq and msgpack: no numpy (numpy arrays are accepted when numpy is in use),
no EPICS libraries, so it runs on any host that can reach the relay.
"""

from __future__ import annotations

import time
from typing import Iterable, Mapping

import zmq

from relayd import keys

from relayd.core import protocol
from relayd.core.errors import Refused
from relayd.core.meta import check_changes


class RelayError(Exception):
    """Something went wrong talking to the relay."""


class RelayUnreachable(RelayError):
    """A message could not be queued for the relay within the send timeout."""


class Client:
    """Pushes updates to a relay's ZMQ PULL socket.

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
    """

    def __init__(self, endpoint: str = protocol.DEFAULT_ENDPOINT, *, send_timeout: float = 5.0,
                 queue_size: int = 10_000, linger: float = 2.0, context: zmq.Context | None = None,
                 immediate: bool = False,
                 max_message_size: int | None = protocol.MAX_MESSAGE_SIZE,
                 curve_secret_key: str | None = None, curve_server_key: str | None = None):
        if send_timeout < 0 or linger < 0:
            raise ValueError("send_timeout and linger must be >= 0")
        if queue_size < 1:
            raise ValueError("queue_size must be >= 1")
        self.endpoint = endpoint
        self.send_timeout = send_timeout
        self.queue_size = queue_size
        self.linger = linger
        self.immediate = immediate
        self.max_message_size = max_message_size
        self._own_context = context is None
        self._context = zmq.Context() if context is None else context
        self._socket = self._context.socket(zmq.PUSH)
        self._socket.setsockopt(zmq.SNDHWM, queue_size)
        self._socket.setsockopt(zmq.LINGER, int(linger * 1000))
        self._socket.setsockopt(zmq.IMMEDIATE, 1 if immediate else 0)
        if (curve_secret_key is None) != (curve_server_key is None):
            self._close(0)
            raise ValueError("CURVE needs both curve_secret_key and curve_server_key")
        self.curve = curve_secret_key is not None
        if curve_secret_key is not None:
            try:
                public, secret = keys.load_secret_key(curve_secret_key)
                server = keys.load_public_key(curve_server_key)  # type: ignore[arg-type]
            except ValueError:
                self._close(0)
                raise
            self._socket.curve_publickey = public
            self._socket.curve_secretkey = secret
            self._socket.curve_serverkey = server
        try:
            self._socket.connect(endpoint)
        except zmq.ZMQError as error:
            self._close(0)
            raise ValueError(f"cannot connect to {endpoint!r}: {error}") from None
        self._closed = False

    def put(self, pv: str, value: object, *, ts: float | None = None,
            meta: dict | None = None) -> None:
        """Put `value` to `pv` (with or without the relay's prefix); `ts` is POSIX seconds.

        `meta` sets attributes with the value, keyed by lower-case field name:
        ``meta={"egu": "K", "prec": 2, "hihi": 300.0, "tmo": 10}``.
        """
        self._send(protocol.encode_update(pv, value, ts=ts, meta=_checked(pv, meta)))

    def set_meta(self, pv: str, **meta: object) -> None:
        """Set attributes of the existing PV `pv`: ``set_meta("t_f1", egu="K", hihi=300)``."""
        self._send(protocol.encode_update(pv, meta=_checked(pv, meta)))

    def put_many(self, updates: Mapping[str, object] | Iterable[tuple[str, object]]) -> None:
        """Put several values in ONE message: a mapping {pv: value} or (pv, value) pairs.

        The relay applies a batch at once (clients never see half of it). Nothing is sent
        for an empty batch.
        """
        pairs = updates.items() if isinstance(updates, Mapping) else updates
        batch = [protocol.encode_update(pv, value) for pv, value in pairs]
        if batch:
            self._send(batch)

    def delete(self, pv: str) -> None:
        """Delete the PV `pv`: it disappears from the relay and its CA clients disconnect."""
        self._send(protocol.encode_update(pv, op=protocol.DELETE))

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
        return f"<Client {self.endpoint} {state}>"

    def _close(self, linger_ms: int | None) -> None:
        self._socket.close(linger=linger_ms)
        if self._own_context:
            self._context.term()  # blocks until queued messages are sent or linger expires

    def _send(self, obj: object) -> None:
        if self._closed:
            raise RelayError(f"the client for {self.endpoint} is closed")
        payload = protocol.dumps(obj)
        if self.max_message_size is not None and len(payload) > self.max_message_size:
            raise ValueError(
                f"a message of {len(payload)} bytes is longer than the relay accepts "
                f"({self.max_message_size}); send fewer or smaller updates per message"
            )
        deadline = time.monotonic() + self.send_timeout
        while True:
            try:
                self._socket.send(payload, zmq.NOBLOCK)
                return
            except zmq.Again:
                pass
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RelayUnreachable(self._unreachable_text())
            # POLLOUT can be reported and lost to a race with the I/O thread; loop to retry.
            self._socket.poll(max(1, int(remaining * 1000)), zmq.POLLOUT)

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
    """

    def __init__(self, client: Client):
        self._client = client
        self._updates: list[dict] = []

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
            self._client._send(updates)
