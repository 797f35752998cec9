"""The ingest worker's rules: a ZMQ message in, validated pipe ops out. No sockets.

Each message is decoded with the wire protocol (`relayd.core.protocol`), and each update
judged by the intake every worker shares (`relayd.core.intake`): the name parsed, the
value converted with the same grammar and rules as a CA put. What passes becomes a pipe
op, ready for the CA process to store. What does not pass is counted by reason and
logged (rate-limited); the counters travel to the CA process with the next forward, so
the status PVs show them. One bad update in a batch never discards the good ones.

An acknowledged request (protocol version 2) is judged the same way (`judge`), and keeps
each update's fate: its op, or its refusal as a `Verdict`.
"""

from __future__ import annotations

import logging
from collections import Counter

from relayd.core import protocol
from relayd.core.errors import Reason, Refused
from relayd.core.intake import Intake
from relayd.core.ops import PipeOp, Verdict, Way
from relayd.logs import RateLimitedLog

log = logging.getLogger("relayd.ingest")

SOURCE = "ZMQ update"  # where a refusal came from, in the log and lastRefusal


class Ingest:
    """Turns ZMQ messages into validated batches and keeps the worker's counters."""

    def __init__(self, intake: Intake):
        self.intake = intake
        self._prepare = intake.prepare
        self.received = 0  # messages since start (reported as increments: `take_counters`)
        self._reported = 0
        self._denials_seen = 0
        self._updates = 0
        self._refused: Counter[str] = Counter()
        self._last_refusal = ""
        self._log = RateLimitedLog(log)
        # Tracebacks of bugs: a message that triggers one must not flood the log.
        self._errors = RateLimitedLog(log, burst=3, period=60.0)

    def refuse(self, refused: Refused, source: str) -> None:
        self._refused[refused.reason.code] += 1
        self._last_refusal = f"{source}: {refused}"
        self._log.warning(refused.reason, "refused %s", self._last_refusal)

    def internal_error(self, source: str = SOURCE) -> None:
        """A message was dropped because handling it raised: a bug, not the sender's fault.

        Call it in the ``except`` clause: the traceback is logged (rate-limited) and the
        message counted as an ``internal`` refusal.
        """
        self._errors.log(logging.ERROR, "internal",
                         "internal error handling a ZMQ message; it was dropped", exc_info=True)
        self.refuse(Refused(Reason.INTERNAL, "message dropped"), source)

    def handle(self, message: bytes, arrival_ns: int, source: str = SOURCE
               ) -> list[PipeOp]:
        """The accepted updates of one message, as pipe ops, in message order."""
        self.received += 1
        try:
            decoded = protocol.decode(message)
        except Refused as refused:
            self.refuse(refused, source)
            return []
        return self.judge(decoded, arrival_ns, source)

    def judge(self, decoded: protocol.Decoded, arrival_ns: int, source: str = SOURCE,
              fates: list | None = None) -> list[PipeOp]:
        """The pipe ops of a decoded message's accepted updates, in message order.

        With `fates` (a list, one slot per update of the message, in order), each slot
        is filled: the index of the update's op in the returned list, or the `Verdict`
        that refused it (its ``pv`` the slot's name as sent, which the caller put there).
        """
        self._updates += len(decoded.updates) + len(decoded.refused)
        # Most messages have no refusal: they skip making and sorting the list (a frame
        # each in Python 3.11, ~0.2 us a message).
        problems = ([(getattr(refused, "index", 0), refused) for refused in decoded.refused]
                    if decoded.refused else [])
        ops: list[PipeOp] = []
        prepare = self._prepare
        for update in decoded.updates:
            try:
                op = prepare(update, arrival_ns)
            except Refused as refused:
                if decoded.batch:
                    refused = Refused(refused.reason, f"update #{update.index}: {refused.detail}")
                problems.append((update.index, refused))
                continue
            if fates is not None:
                fates[update.index] = len(ops)
            ops.append(op)
        if problems:
            self._refuse_all(problems, source, fates)
        return ops

    def _refuse_all(self, problems: list, source: str, fates: list | None) -> None:
        """Count and log the refusals of one message; note each in `fates` if given."""
        # In message order, so that the last refusal reported is the last one sent.
        for index, refused in sorted(problems, key=lambda problem: problem[0]):
            self.refuse(refused, source)
            if fates is not None:
                fates[index] = Verdict.refused(fates[index], refused)

    def note_denials(self, total: int, last: str) -> None:
        """Count connections the authenticator refused since the last call (of `total`)."""
        new = total - self._denials_seen
        if new > 0:
            self._denials_seen = total
            for _ in range(new):
                self.refuse(Refused(Reason.AUTH_DENIED, last), "ZMQ")

    def count_message(self) -> None:
        """One more message received (one that `handle` did not see: a request)."""
        self.received += 1

    def take_counters(self) -> dict:
        """Counters since the last call (for `relay.Stats.merge_worker`), then reset."""
        counters: dict = {}
        if self.received != self._reported:
            counters["messages"] = self.received - self._reported
        if self._updates:
            counters["updates"] = self._updates
        if self._refused:
            counters["refused"] = dict(self._refused)
            counters["last_refusal"] = self._last_refusal
        if counters:
            counters["way"] = Way.ZMQ.value
        self._reported = self.received
        self._updates = 0
        self._refused.clear()
        return counters
