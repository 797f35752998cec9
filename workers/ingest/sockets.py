"""The ingest worker's two ZMQ sockets, bound and secured, and how they close.

* PULL on every ``--zmq-bind`` endpoint: fire-and-forget pushes (protocol version 1).
* ROUTER on every ``--zmq-ack-bind`` endpoint, unless ``--no-zmq-ack``: acknowledged
  requests (protocol version 2, `acks`).

Both get the same receive high-water mark, message size limit and security (`gate`:
CURVE, ``--zmq-allow``, loopback unless CURVE or ``--insecure``).
"""

from __future__ import annotations

from dataclasses import dataclass

import zmq

from relayd.config import Config
from relayd.core.errors import BootError
from workers.ingest.gate import Gatekeeper, secure

REPLY_LINGER = 1.0  # seconds the ROUTER's last replies may take to leave, at stop


@dataclass
class Sockets:
    """The worker's context and sockets (`router` None when acknowledgements are off)."""

    context: zmq.Context
    pull: zmq.Socket
    router: zmq.Socket | None
    gate: Gatekeeper | None
    pull_endpoints: list[str]  # as bound (a wildcard port resolved)

    def stop_pushes(self) -> None:
        """Take no more pushes: unbind PULL. Messages ZMQ already received stay readable;
        each sender keeps what it has not sent yet and sends it to the next relay."""
        for endpoint in self.pull_endpoints:
            try:
                self.pull.unbind(endpoint)
            except zmq.ZMQError:
                pass

    def close(self) -> None:
        """Close everything; the replies already queued get REPLY_LINGER to leave."""
        if self.gate is not None:
            self.gate.stop()
        self.pull.close(linger=0)
        if self.router is not None:
            self.router.close(linger=int(REPLY_LINGER * 1000))
        self.context.term()


def _socket(context: zmq.Context, kind: int, config: Config) -> zmq.Socket:
    sock = context.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, config.zmq_rcvhwm)
    sock.setsockopt(zmq.MAXMSGSIZE, config.zmq_max_message_size)
    return sock


def bind(config: Config) -> Sockets:
    """Both sockets, secured (`gate.secure`) and bound on every endpoint.

    `BootError` if they cannot be secured or an endpoint cannot be bound.
    """
    context = zmq.Context()
    pull = _socket(context, zmq.PULL, config)
    router = _socket(context, zmq.ROUTER, config) if config.ack_endpoints else None
    pairs = [(pull, endpoint) for endpoint in config.zmq_bind]
    if router is not None:
        pairs += [(router, endpoint) for endpoint in config.ack_endpoints]
    sockets = Sockets(context, pull, router, None, [])
    try:
        sockets.gate = secure(config, context, [s for s in (pull, router) if s is not None],
                              [endpoint for _, endpoint in pairs])
        for sock, endpoint in pairs:
            try:
                sock.bind(endpoint)
            except zmq.ZMQError as error:
                raise BootError(
                    f"cannot bind ZMQ endpoint {endpoint}: {zmq.strerror(error.errno)}"
                ) from None
            if sock is pull:
                sockets.pull_endpoints.append(sock.last_endpoint.decode())
    except BootError:
        sockets.close()
        raise
    return sockets
