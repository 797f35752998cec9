"""The ingest worker's rules: a ZMQ message in, validated pipe ops out. No sockets.

Each message is decoded with the wire protocol (`relayd.core.protocol`), each update's
name parsed and its value converted with the same grammar and rules as a CA put
(`relayd.core.names`, `relayd.core.values`); what passes becomes a pipe op, ready for
the CA process to store. What does not pass is counted by reason and logged
(rate-limited); the counters travel to the CA process with the next forward, so the
status PVs show them. One bad update in a batch never discards the good ones.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Callable

from relayd.core import protocol
from relayd.core.errors import Reason, Refused
from relayd.core.meta import check_changes
from relayd.core.names import Grammar, PVSpec
from relayd.core.ops import Op, PipeOp
from relayd.core.protocol import NO_VALUE
from relayd.core.values import converter
from relayd.logs import RateLimitedLog

log = logging.getLogger("relayd.ingest")

# Enum members are slow to look up in Python 3.11 (~60 ns each): `_op` uses these.
_PUT, _DELETE, _META = Op.PUT, Op.DELETE, Op.META


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
        # Tracebacks of bugs: a message that triggers one must not flood the log.
        self._errors = RateLimitedLog(log, burst=3, period=60.0)

    def refuse(self, refused: Refused, source: str) -> None:
        self._refused[refused.reason.code] += 1
        self._last_refusal = f"{source}: {refused}"
        self._log.warning(refused.reason, "refused %s", self._last_refusal)

    def internal_error(self, source: str = "ZMQ update") -> None:
        """A message was dropped because handling it raised: a bug, not the sender's fault.

        Call it in the ``except`` clause: the traceback is logged (rate-limited) and the
        message counted as an ``internal`` refusal.
        """
        self._errors.log(logging.ERROR, "internal",
                         "internal error handling a ZMQ message; it was dropped", exc_info=True)
        self.refuse(Refused(Reason.INTERNAL, "message dropped"), source)

    def handle(self, message: bytes, arrival_ns: int, source: str = "ZMQ update"
               ) -> list[PipeOp]:
        """The accepted updates of one message, as pipe ops, in message order."""
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

    def _op(self, update: protocol.Update, arrival_ns: int) -> PipeOp:
        known = self._names.get(update.pv)
        if known is None:
            spec = self.grammar.spec_for(update.pv)
            if len(self._names) >= self._cache_size:
                self._names.clear()
            known = self._names[update.pv] = (spec, converter(spec))
        spec, convert = known
        if update.op == "delete":
            return PipeOp(_DELETE, spec.name, None, 0, None)
        meta = check_changes(update.meta, spec.name) if update.meta is not None else None
        if update.value is NO_VALUE:
            return PipeOp(_META, spec.name, None, 0, meta)
        stored = convert(spec, update.value)
        ts_ns = arrival_ns if update.ts is None else round(update.ts * 1_000_000) * 1000
        return PipeOp(_PUT, spec.name, stored, ts_ns, meta)

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
