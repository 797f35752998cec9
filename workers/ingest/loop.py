"""The ingest worker's loop: its ZMQ sockets, its pipes, its lifeline, its clean stop.

It reads the PULL socket (pushes) and the ROUTER socket (acknowledged requests, `acks`),
hands each message to `validate.Ingest`, and forwards what passes to the CA process over
its up pipe (`relayd.supervise.pipe`), one batch per message, several messages per pipe
write. The CA process's verdicts come back on the down pipe and go out as replies.
Nothing a client sends can make the worker raise: every message is handled inside one
try.

On SIGTERM (`Worker.stop`) it loses nothing it has received: it reads on until the
sockets are quiet (at most PRE_CUT: what waits in the network's buffers comes in), unbinds
PULL (senders keep what they have not sent yet, for the next relay), takes in every
message ZMQ has already received on both sockets, forwards them, waits for the verdicts
of the requests among them and answers them, all within shares of ``--stop-grace``; the
CA process (which the supervisor stops only after the workers) applies and saves them.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import time
from typing import Callable

import zmq

from relayd.core.intake import Intake
from relayd.core.names import Grammar
from relayd.core.ops import Way
from relayd.logs import serving
from relayd.supervise.child import ChildEnv
from relayd.supervise.lifeline import Lifeline
from relayd.supervise.messages import Forward, Verdicts, decode, encode
from relayd.supervise.pipe import PipeReader, PipeWriter
from workers.ingest.acks import Acks
from workers.ingest.sockets import Sockets, bind
from workers.ingest.validate import Ingest

log = logging.getLogger("relayd.ingest")

HOUSEKEEPING = 0.5  # seconds between heartbeats and lifeline checks
# One pipe message holds at most this many ZMQ messages, updates and bytes: the CA
# process decodes a pipe message in one go, so a large one would stall CA service.
MAX_MESSAGES_PER_FORWARD = 2000
MAX_UPDATES_PER_FORWARD = 5_000
MAX_FORWARD_BYTES = 4 * 1024 * 1024
PIPE_RETRY = 0.5  # seconds a forward waits for room in the pipe before a heartbeat
# At SIGTERM: the share of --stop-grace within which what ZMQ received is taken in and
# forwarded, and the share after which verdicts are no longer waited for (the CA
# process needs the rest to apply and save).
STOP_FORWARD_SHARE = 0.3
STOP_ANSWER_SHARE = 0.5
QUIET = 0.05  # seconds without a message after which PULL is taken to be empty
PRE_CUT = 0.5  # seconds at most of reading before the PULL endpoints are unbound
_ZMQ = Way.ZMQ.value


def run(env: ChildEnv) -> None:
    """Receive, validate and forward until told to stop or the supervisor goes away."""
    worker = Worker(env, bind(env.config))
    try:
        worker.serve()
        if not env.lifeline.closed:
            worker.stop()
    finally:
        worker.close()
    log.info("ingest worker stopped")


class Worker:
    """The worker's state between turns of its loop."""

    def __init__(self, env: ChildEnv, sockets: Sockets):
        config = self.config = env.config
        self.env = env
        self.sockets = sockets
        grammar = Grammar(config.prefix, config.name_limits)
        self.ingest = Ingest(Intake.bounded(grammar, config.max_pvs, config.max_placeholders))
        self.writer = PipeWriter(env.channel.up)
        self.down = PipeReader(env.channel.down)
        self.acks = Acks(self.ingest, sockets.router) if sockets.router is not None else None
        self.poller = zmq.Poller()
        self.poller.register(sockets.pull, zmq.POLLIN)
        if sockets.router is not None:
            self.poller.register(sockets.router, zmq.POLLIN)
        self.poller.register(self.down.fileno(), zmq.POLLIN)
        # A signal (SIGTERM) must end the poll at once, not after its timeout.
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        signal.set_wakeup_fd(self.wake_w)
        self.poller.register(self.wake_r, zmq.POLLIN)
        self.seq = 0
        self.unsent: list[bytes] = []  # forwards given up on (stopping): sent by `stop`
        self.next_housekeeping = 0.0
        self._router_polled = True

    def serve(self) -> None:
        """Turns until told to stop or the supervisor has gone."""
        config = self.config
        curve = "CURVE on" if config.curve_secret_key else "CURVE off"
        log.info("%s", serving("ZMQ", config.zmq_bind, curve))
        log.info("%s", serving("ZMQ-ack", config.ack_endpoints,
                               curve if config.ack_endpoints else "--no-zmq-ack"))
        lifeline, stopping = self.env.lifeline, self.env.stopping
        lifeline.send(ready=True)
        while not stopping() and not lifeline.closed:
            events = dict(self.poller.poll(int(HOUSEKEEPING * 1000)))
            if not self.turn(events, stopping):
                break

    def turn(self, events: dict, give_up: Callable[[], bool]) -> bool:
        """Handle what `events` says is ready; False if a forward had to give up."""
        if self.wake_r in events:
            _drain_fd(self.wake_r)
        if self.down.fileno() in events:
            self.read_down()
        sockets = self.sockets
        batches = gather(sockets.pull, self.ingest) if sockets.pull in events else []
        if sockets.router is not None and sockets.router in events:
            batches += gather_requests(sockets.router, self.acks)
        if batches and not self.forward(batches, give_up):
            return False
        self._poll_router()
        now = time.monotonic()
        if now >= self.next_housekeeping:
            self.housekeeping(now, give_up)
        return True

    def forward(self, batches: list, give_up: Callable[[], bool]) -> bool:
        """Send `batches` (and the counters) to the CA process; False if given up (then
        it waits in `unsent`, for `stop`)."""
        self.seq += 1
        forward = Forward(self.seq, time.monotonic_ns(), batches, self.ingest.take_counters())
        payload = encode(forward)
        if send(self.writer, payload, self.env.lifeline, give_up):
            return True
        self.unsent.append(payload)
        return False

    def read_down(self) -> None:
        """Every answer the CA process sent: verdicts become replies."""
        while (payload := self.down.read()) is not None:
            try:
                message = decode(payload)
                if type(message) is Verdicts and self.acks is not None:
                    self.acks.answer(message)
            except Exception:  # a bug, or a damaged message: keep serving
                self.ingest.internal_error("CA process answer")

    def _poll_router(self) -> None:
        """Read the ROUTER only while there is room for more requests waiting."""
        if self.acks is None or self._router_polled != self.acks.full:
            return
        self._router_polled = not self.acks.full
        self.poller.modify(self.sockets.router, zmq.POLLIN if self._router_polled else 0)

    def housekeeping(self, now: float, give_up: Callable[[], bool]) -> None:
        """Heartbeat, refusals of the gate, counters, forgotten requests."""
        self.next_housekeeping = now + HOUSEKEEPING
        beat(self.env.lifeline)
        gate = self.sockets.gate
        if gate is not None:
            gate.poll_handshakes()
            self.ingest.note_denials(gate.denied, gate.last_denial)
        if self.acks is not None:
            self.acks.expire(now)
        counters = self.ingest.take_counters()
        if counters:
            self.seq += 1
            forward = Forward(self.seq, time.monotonic_ns(), [], counters)
            send(self.writer, encode(forward), self.env.lifeline, give_up)

    def stop(self) -> None:
        """Take in, forward and answer what ZMQ received, within shares of the grace;
        log what was received (pushes and requests) and whether all of it went on."""
        start = time.monotonic()
        forward_by = start + STOP_FORWARD_SHARE * self.config.stop_grace
        answer_by = start + STOP_ANSWER_SHARE * self.config.stop_grace
        before = self._received()
        # Still bound, first: what waits in the network's buffers (a worker that was
        # stalled) comes in, instead of being cut off with the connections.
        complete = self.take_in(min(start + PRE_CUT, forward_by), forward_by)
        self.sockets.stop_pushes()
        complete = complete and self.take_in(forward_by, forward_by)
        waiting = self.await_verdicts(answer_by)
        # The last counters (refusals while stopping) go with one more forward.
        complete &= self.forward([], lambda: time.monotonic() >= answer_by)
        (pushes, requests), (pushes_before, requests_before) = self._received(), before
        received = (f"{pushes} pushes and {requests} requests received since start "
                    f"({pushes - pushes_before} and {requests - requests_before} of them "
                    "after the stop signal)")
        if complete and not waiting:
            log.info("stopping: %s, every one forwarded and every request answered",
                     received)
        else:
            log.warning("stopping: %s; %s; %d requests unanswered (their senders are told "
                        "nothing)", received, "every one forwarded" if complete else
                        "the rest could not be forwarded within the stop grace", waiting)

    def _received(self) -> tuple[int, int]:
        """(pushes, requests) received since start."""
        requests = self.acks.received if self.acks is not None else 0
        return self.ingest.received - requests, requests

    def take_in(self, until: float, forward_by: float) -> bool:
        """Read both sockets, forwarding as it goes, until PULL has been quiet for QUIET
        seconds and the ROUTER read empty once, or `until`; False if a forward could not
        go out by `forward_by` (the pipe stayed full)."""
        sockets = self.sockets
        quiet_since = time.monotonic()
        router_open = sockets.router is not None
        give_up = lambda: time.monotonic() >= forward_by  # noqa: E731
        unsent, self.unsent = self.unsent, []
        for payload in unsent:
            if not send(self.writer, payload, self.env.lifeline, give_up):
                return False
        while time.monotonic() < until:
            before = self.ingest.received
            batches = gather(sockets.pull, self.ingest)
            got_pull = self.ingest.received != before
            if router_open:
                before = self.ingest.received
                batches += gather_requests(sockets.router, self.acks)
                router_open = self.ingest.received != before  # until it reads empty
            if batches and not self.forward(batches, give_up):
                return False
            self.read_down()
            now = time.monotonic()
            if got_pull or router_open:
                quiet_since = now
            elif now - quiet_since >= QUIET:
                break
            else:
                sockets.pull.poll(int(QUIET * 1000))
        return True

    def await_verdicts(self, deadline: float) -> int:
        """Answer the requests forwarded so far as their verdicts come; how many are
        still unanswered at `deadline`."""
        if self.acks is None:
            return 0
        while self.acks.pending and time.monotonic() < deadline:
            if select.select([self.down.sock], [], [], 0.05)[0]:
                self.read_down()
            beat(self.env.lifeline)
        return len(self.acks.pending)

    def close(self) -> None:
        signal.set_wakeup_fd(-1)
        os.close(self.wake_r)
        os.close(self.wake_w)
        self.sockets.close()


def gather(sock: zmq.Socket, ingest: Ingest) -> list:
    """Every push waiting (up to a bound), as batches (`Batch`es, as tuples).

    A push names no sender (its `Batch.source` is "": the PV's writer shows ``zmq``):
    looking the sender's address up costs ~0.25 µs a message (`zmq.Frame.get`), several
    percent of the worker's hot path. Acknowledged requests name theirs
    (``zmq 10.0.0.5``).
    """
    batches = []
    size = updates = 0
    for _ in range(MAX_MESSAGES_PER_FORWARD):
        try:
            # Straight to bytes: a zmq.Frame first, then its bytes, cost ~0.37 us more a
            # message (measured: 0.24 against 0.61 us for a small one; large ones copy
            # once either way).
            data = sock.recv(zmq.NOBLOCK)
        except zmq.Again:
            break
        size += len(data)
        try:
            ops = ingest.handle(data, time.time_ns())
        except Exception:  # a bug, not the client's fault: keep serving
            ingest.internal_error()
            continue
        if ops:
            # A tuple in Batch's field order, its defaults left out (see `Batch`): a
            # NamedTuple costs ~0.2 µs more to make, and each field to pack and unpack.
            batches.append((ops, _ZMQ))
            updates += len(ops)
        if size >= MAX_FORWARD_BYTES or updates >= MAX_UPDATES_PER_FORWARD:
            break
    return batches


def gather_requests(sock: zmq.Socket, acks: Acks | None) -> list:
    """Every acknowledged request waiting (up to a bound and while there is room), as
    batches; requests answered at once (refused, or malformed) yield none."""
    batches = []
    size = 0
    for _ in range(MAX_MESSAGES_PER_FORWARD):
        if acks is None or acks.full:
            break
        try:
            frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
        except zmq.Again:
            break
        size += len(frames[-1])
        try:
            batch = acks.receive(frames, time.time_ns())
        except Exception:  # a bug, not the client's fault: keep serving
            acks.ingest.internal_error("ZMQ request")
            continue
        if batch is not None:
            batches.append(batch)
        if size >= MAX_FORWARD_BYTES:
            break
    return batches


def send(writer: PipeWriter, payload: bytes, lifeline: Lifeline,
         give_up: Callable[[], bool]) -> bool:
    """Forward one message, waiting while the pipe is full; False if `give_up` says so."""
    while not writer.send(payload, PIPE_RETRY):
        beat(lifeline)
        if give_up() or lifeline.closed:
            return False
    return True


def _drain_fd(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass


def beat(lifeline: Lifeline) -> None:
    lifeline.send(beat=True)
    lifeline.receive()
