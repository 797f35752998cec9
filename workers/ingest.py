"""The ZMQ ingest worker: receives pushed updates, validates them, forwards them.

It binds a PULL socket on every ``--zmq-bind`` endpoint. Each message is decoded with
the wire protocol (`relayd.protocol`), each update's name parsed and its value converted
with the same grammar and rules as a CA put (`relayd.names`, `relayd.values`), and what
passes is forwarded to the CA process over the internal pipe (`relayd.pipe`), one batch
per ZMQ message. What does not pass is dropped, counted by reason, logged
(rate-limited), and reported to the CA process with the next forward, so the status
PVs show it. One bad update in a batch never discards the good ones. Nothing a client
sends can make the worker raise: every message is handled inside one try.

`Ingest` holds the validation and the counters and does no I/O; `run` is the loop.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from collections import Counter
from typing import Callable

import zmq

from relayd import protocol
from relayd.config import Config
from relayd.errors import BootError, Reason, Refused
from relayd.lifeline import Lifeline
from relayd.logs import RateLimitedLog
from relayd.names import Grammar, PVSpec
from relayd.meta import check_changes
from relayd.pipe import DELETE, META, PUT, Forward, PipeWriter, encode_forward
from relayd.protocol import NO_VALUE
from workers.gate import Gatekeeper, secure
from relayd.values import converter

log = logging.getLogger("relayd.ingest")

HOUSEKEEPING = 0.5  # seconds between heartbeats and lifeline checks
# One pipe message holds at most this many ZMQ messages, updates and bytes: the CA
# process decodes a pipe message in one go, so a large one would stall CA service.
MAX_MESSAGES_PER_FORWARD = 2000
MAX_UPDATES_PER_FORWARD = 5_000
MAX_FORWARD_BYTES = 4 * 1024 * 1024
PIPE_RETRY = 0.5  # seconds a forward waits for room in the pipe before a heartbeat


class Ingest:
    """Turns ZMQ messages into validated batches and keeps the worker's counters."""

    def __init__(self, grammar: Grammar, cache_size: int = 200_000):
        self.grammar = grammar
        # Parsed names and their value converters: publishers send the same names over
        # and over, and parsing is most of the cost of a small update.
        self._names: dict[str, tuple[PVSpec, Callable]] = {}
        self._cache_size = cache_size
        self._messages = 0
        self._denials_seen = 0
        self._updates = 0
        self._refused: Counter[str] = Counter()
        self._last_refusal = ""
        self._log = RateLimitedLog(log)

    def refuse(self, refused: Refused, source: str) -> None:
        self._refused[refused.reason.code] += 1
        self._last_refusal = f"{source}: {refused}"
        self._log.warning(refused.reason, "refused %s", self._last_refusal)

    def handle(self, message: bytes, arrival_ns: int, source: str = "ZMQ update") -> list[tuple]:
        """The accepted updates of one message, as pipe ops (see `relayd.pipe.Forward`)."""
        self._messages += 1
        try:
            decoded = protocol.decode(message)
        except Refused as refused:
            self.refuse(refused, source)
            return []
        self._updates += len(decoded.updates) + len(decoded.refused)
        problems = [(getattr(refused, "index", 0), refused) for refused in decoded.refused]
        ops = []
        for update in decoded.updates:
            try:
                ops.append(self._op(update, arrival_ns))
            except Refused as refused:
                if decoded.batch:
                    refused = Refused(refused.reason, f"update #{update.index}: {refused.detail}")
                problems.append((update.index, refused))
        # In message order, so that the last refusal reported is the last one sent.
        for _, refused in sorted(problems, key=lambda problem: problem[0]):
            self.refuse(refused, source)
        return ops

    def _op(self, update: protocol.Update, arrival_ns: int) -> tuple:
        known = self._names.get(update.pv)
        if known is None:
            spec = self.grammar.spec_for(update.pv)
            if len(self._names) >= self._cache_size:
                self._names.clear()
            known = self._names[update.pv] = (spec, converter(spec))
        spec, convert = known
        if update.op == "delete":
            return (DELETE, spec.name, None, 0, None)
        meta = check_changes(update.meta, spec.name) if update.meta is not None else None
        if update.value is NO_VALUE:
            return (META, spec.name, None, 0, meta)
        stored = convert(spec, update.value)
        ts_ns = arrival_ns if update.ts is None else round(update.ts * 1_000_000) * 1000
        return (PUT, spec.name, stored, ts_ns, meta)

    def note_denials(self, total: int, last: str) -> None:
        """Count connections the authenticator refused since the last call (of `total`)."""
        new = total - self._denials_seen
        if new > 0:
            self._denials_seen = total
            for _ in range(new):
                self.refuse(Refused(Reason.AUTH_DENIED, last), "ZMQ")

    def take_counters(self) -> dict:
        """Counters since the last call (for `relay.Stats.merge_worker`), then reset."""
        counters: dict = {}
        if self._messages:
            counters["messages"] = self._messages
        if self._updates:
            counters["updates"] = self._updates
        if self._refused:
            counters["refused"] = dict(self._refused)
            counters["last_refusal"] = self._last_refusal
        self._messages = self._updates = 0
        self._refused.clear()
        return counters


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


def run(config: Config, pipe: socket.socket, lifeline: Lifeline,
        stopping: Callable[[], bool]) -> None:
    """Receive, validate and forward until `stopping()` or the supervisor goes away."""
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
    log.info("receiving updates on %s", " ".join(config.zmq_bind))
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


def gather(sock: zmq.Socket, ingest: Ingest) -> list[list[tuple]]:
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
            log.exception("internal error handling a ZMQ message")
            ingest.refuse(Refused(Reason.INTERNAL, "message dropped"), "ZMQ update")
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
