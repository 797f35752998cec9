"""The ingest worker's acknowledged requests: ROUTER requests in, replies out.

A request (protocol version 2, `relayd.core.acks`) is judged like a pushed message
(`validate.Ingest.judge`); what passes goes to the CA process as one batch with a reply
id, and the request waits here (`Pending`) until the CA process's verdicts come back
down the pipe (`relayd.supervise.messages.Verdicts`). Then each update's result (the
worker's own refusal, or the CA process's verdict) goes back to the client in order. A
request none of whose updates passed, and one that cannot be read at all, is answered at
once.

Reply ids are this worker's: they start at a random 62-bit number in each incarnation
and go up by one, so the answers to a restarted predecessor's requests (still in the
down pipe) are recognised and ignored. A request whose verdicts never come (the CA
process dropped them, or lost the batch in a restart) is forgotten after PENDING_TTL and
counted in a rate-limited WARNING; its client has long since timed out ("no answer").
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass

import zmq

from relayd.core.acks import BadRequest, decode_request, encode_error, encode_reply
from relayd.core.errors import Reason, Refused
from relayd.core.ops import Verdict, Way
from relayd.logs import RateLimitedLog
from relayd.supervise.messages import Verdicts
from workers.ingest.validate import Ingest

log = logging.getLogger("relayd.ingest")

SOURCE = "ZMQ request"  # where a refusal came from, in the log and lastRefusal
PENDING_TTL = 60.0  # seconds a request waits for its verdicts before it is forgotten
MAX_PENDING = 10_000  # requests waiting for verdicts; beyond, the socket is not read
_ZMQ = Way.ZMQ.value


@dataclass
class Pending:
    """A forwarded request waiting for its verdicts."""

    envelope: list[bytes]  # the ROUTER's routing frames: where the reply goes
    request_id: int | str  # the client's id
    names: list[str | None]  # each update's name as sent
    fates: list  # per update: the index of its op in the batch, or its `Verdict`
    expires: float


class Acks:
    """The requests of one ROUTER socket, from arrival to reply."""

    def __init__(self, ingest: Ingest, router: zmq.Socket):
        self.ingest = ingest
        self.router = router
        self.pending: dict[int, Pending] = {}
        self._next = random.getrandbits(62)
        self._expired = 0
        self._log = RateLimitedLog(log, burst=3, period=60.0)

    @property
    def full(self) -> bool:
        """Too many requests wait for verdicts: leave new ones in ZMQ's queue."""
        return len(self.pending) >= MAX_PENDING

    def receive(self, frames: list[zmq.Frame], arrival_ns: int) -> tuple | None:
        """One request as received: the batch to forward (a `Batch`, as a tuple), or
        None when it was answered at once."""
        self.ingest.count_message()
        envelope = [frame.bytes for frame in frames[:-1]]
        body = frames[-1]
        try:
            if not envelope or len(envelope) > 2 or envelope[1:] not in ([], [b""]):
                raise BadRequest(None, Refused(Reason.MALFORMED, "a request is one frame "
                                               "(DEALER), or an empty frame and one (REQ)"))
            request = decode_request(body.bytes)
        except BadRequest as bad:
            self.ingest.refuse(bad.refused, SOURCE)
            self.send(envelope, encode_error(bad.id, bad.refused))
            return None
        fates: list = list(request.names)
        ops = self.ingest.judge(request.decoded, arrival_ns, SOURCE, fates)
        if not ops:  # nothing passed: nothing to apply, nothing to save
            self.send(envelope, encode_reply(request.id, fates, request.durable))
            return None
        reply = self._next
        self._next = (self._next + 1) & ((1 << 63) - 1)
        self.pending[reply] = Pending(envelope, request.id, request.names, fates,
                                      time.monotonic() + PENDING_TTL)
        source = f"zmq {body.get('Peer-Address')}"
        return (ops, _ZMQ, source, reply, request.durable)

    def answer(self, verdicts: Verdicts) -> None:
        """The CA process's verdicts for one request: reply to its client."""
        pending = self.pending.pop(verdicts.request_id, None)
        if pending is None:
            return  # a predecessor's request, or one already forgotten
        applied = [Verdict.from_wire(item) for item in verdicts.verdicts]
        results = []
        for name, fate in zip(pending.names, pending.fates):
            if isinstance(fate, Verdict):
                results.append(fate)
                continue
            verdict = applied[fate] if fate < len(applied) else Verdict(
                "", Reason.INTERNAL, "no verdict for this update")
            results.append(verdict if verdict.ok else verdict._replace(pv=name or verdict.pv))
        self.send(pending.envelope, encode_reply(pending.request_id, results,
                                                 verdicts.durable, verdicts.note))

    def expire(self, now: float) -> None:
        """Forget requests whose verdicts did not come within PENDING_TTL."""
        expired = [reply for reply, pending in self.pending.items() if pending.expires <= now]
        for reply in expired:
            del self.pending[reply]
        if expired:
            self._expired += len(expired)
            self._log.warning("expired", "%d acknowledged request(s) got no verdict from "
                              "the CA process within %.0f s (%d since start; it restarted, "
                              "or dropped answers: see status:pipe:replyDropped); their "
                              "senders were told nothing", len(expired), PENDING_TTL,
                              self._expired)

    def send(self, envelope: list[bytes], payload: bytes) -> None:
        """A reply to the client at `envelope`; dropped by ZMQ if it has gone."""
        try:
            self.router.send_multipart([*envelope, payload], zmq.NOBLOCK)
        except zmq.ZMQError:
            pass  # not routable (the client left) or its queue is full: it times out
