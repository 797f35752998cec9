"""The ingest worker's loop: the PULL socket, the pipe, the lifeline.

It binds a PULL socket on every ``--zmq-bind`` endpoint (secured by `gate`), hands each
message to `validate.Ingest`, and forwards what passes to the CA process over the
internal pipe (`relayd.supervise.pipe`), one batch per ZMQ message, several messages per
pipe write. Nothing a client sends can make the worker raise: every message is handled
inside one try.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from typing import Callable

import zmq

from relayd.config import Config
from relayd.core.errors import BootError
from relayd.core.names import Grammar
from relayd.core.ops import PipeOp
from relayd.logs import serving
from relayd.supervise.child import ChildEnv
from relayd.supervise.lifeline import Lifeline
from relayd.supervise.pipe import Forward, PipeWriter, encode_forward
from workers.ingest.gate import Gatekeeper, secure
from workers.ingest.validate import Ingest

log = logging.getLogger("relayd.ingest")

HOUSEKEEPING = 0.5  # seconds between heartbeats and lifeline checks
# One pipe message holds at most this many ZMQ messages, updates and bytes: the CA
# process decodes a pipe message in one go, so a large one would stall CA service.
MAX_MESSAGES_PER_FORWARD = 2000
MAX_UPDATES_PER_FORWARD = 5_000
MAX_FORWARD_BYTES = 4 * 1024 * 1024
PIPE_RETRY = 0.5  # seconds a forward waits for room in the pipe before a heartbeat


def bind(config: Config) -> tuple[zmq.Context, zmq.Socket, Gatekeeper | None]:
    """The PULL socket, secured (`gate.secure`) and bound on every endpoint.

    `BootError` if it cannot be secured or an endpoint cannot be bound.
    """
    context = zmq.Context()
    sock = context.socket(zmq.PULL)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, config.zmq_rcvhwm)
    sock.setsockopt(zmq.MAXMSGSIZE, config.zmq_max_message_size)
    gate = None
    try:
        gate = secure(config, context, sock)
        for endpoint in config.zmq_bind:
            try:
                sock.bind(endpoint)
            except zmq.ZMQError as error:
                raise BootError(
                    f"cannot bind ZMQ endpoint {endpoint}: {zmq.strerror(error.errno)}"
                ) from None
    except BootError:
        if gate is not None:
            gate.stop()
        sock.close()
        context.term()
        raise
    return context, sock, gate


def run(env: ChildEnv) -> None:
    """Receive, validate and forward until told to stop or the supervisor goes away."""
    config, pipe, lifeline, stopping = env.config, env.pipe, env.lifeline, env.stopping
    context, sock, gate = bind(config)
    ingest = Ingest(Grammar(config.prefix, config.name_limits))
    writer = PipeWriter(pipe)
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    # A signal (SIGTERM) must end the poll at once, not after its timeout.
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    poller.register(wake_r, zmq.POLLIN)
    log.info("%s", serving("ZMQ", config.zmq_bind,
                           "CURVE on" if config.curve_secret_key else "CURVE off"))
    lifeline.send(ready=True)
    seq = 0
    next_housekeeping = 0.0
    try:
        while not stopping() and not lifeline.closed:
            events = dict(poller.poll(int(HOUSEKEEPING * 1000)))
            if wake_r in events:
                _drain_fd(wake_r)
            if sock in events:
                batches = gather(sock, ingest)
                seq += 1
                forward = Forward(seq, time.monotonic_ns(), batches, ingest.take_counters())
                if not send(writer, encode_forward(forward), lifeline, stopping):
                    break
            now = time.monotonic()
            if now >= next_housekeeping:
                next_housekeeping = now + HOUSEKEEPING
                housekeeping(lifeline)
                if gate is not None:
                    gate.poll_handshakes()
                    ingest.note_denials(gate.denied, gate.last_denial)
                counters = ingest.take_counters()
                if counters:
                    seq += 1
                    forward = Forward(seq, time.monotonic_ns(), [], counters)
                    send(writer, encode_forward(forward), lifeline, stopping)
    finally:
        signal.set_wakeup_fd(-1)
        os.close(wake_r)
        os.close(wake_w)
        if gate is not None:
            gate.stop()
        sock.close()
        context.term()
    log.info("ingest worker stopped")


def gather(sock: zmq.Socket, ingest: Ingest) -> list[list[PipeOp]]:
    """Every message waiting (up to a bound), as batches of accepted ops."""
    batches = []
    size = updates = 0
    for _ in range(MAX_MESSAGES_PER_FORWARD):
        try:
            frame = sock.recv(zmq.NOBLOCK, copy=False)
        except zmq.Again:
            break
        data = frame.bytes
        size += len(data)
        try:
            ops = ingest.handle(data, time.time_ns())
        except Exception:  # a bug, not the client's fault: keep serving
            ingest.internal_error()
            continue
        if ops:
            batches.append(ops)
            updates += len(ops)
        if size >= MAX_FORWARD_BYTES or updates >= MAX_UPDATES_PER_FORWARD:
            break
    return batches


def send(writer: PipeWriter, payload: bytes, lifeline: Lifeline,
         stopping: Callable[[], bool]) -> bool:
    """Forward one message, waiting while the pipe is full; False if told to stop."""
    while not writer.send(payload, PIPE_RETRY):
        housekeeping(lifeline)
        if stopping() or lifeline.closed:
            return False
    return True


def _drain_fd(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass


def housekeeping(lifeline: Lifeline) -> None:
    lifeline.send(beat=True)
    lifeline.receive()
