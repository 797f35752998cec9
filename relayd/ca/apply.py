"""Applying the workers' batches in the CA process.

A worker has already parsed every name and converted every value with the same grammar
and rules as a CA put (`relayd.core.intake`); what arrives here is ready to store
(`relayd.core.ops.PipeOp`), in batches (`relayd.core.ops.Batch`), over each worker's up
pipe (`relayd.supervise.messages`). `PipeIngest` reads every up pipe in turn. Per batch
(one message of a client) all updates are applied first and monitors are posted after,
so a batch becomes visible in one processing cycle (atomically), and a plain PV updated
several times in one batch posts one event carrying its last value (conflation). A
buffer receives every element, in order, and posts once with all of them.

Refusals that only the CA process can decide (the relay is full, a delete of a name
that holds no PV) are counted here, by way in; one refused update never stops the rest
of its batch. A batch that asks for an answer gets one verdict per op (`replies`), once
applied. `PipeIngest` needs only a few things of the CA server (`IngestServer`), so it is
tested with real pipes and a recording server, without pcas.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Any, Callable, Protocol

from relayd.ca.gdd import Stamps
from relayd.ca.pvs import DBE_ALL, DBE_PROPERTY, DBE_VALUE_LOG
from relayd.core.errors import Reason, Refused
from relayd.core.ops import Op, Way, accepted_wire, refused_wire
from relayd.core.writes import Relay
from relayd.logs import RateLimitedLog
from relayd.supervise.messages import Forward, Query, QueryResult, decode
from relayd.supervise.pipe import PipeReader

log = logging.getLogger("relayd.ca")

# Where a refusal came from, in the log and lastRefusal, by way in.
SOURCES = {Way.ZMQ.value: "ZMQ update", Way.HTTP.value: "HTTP update"}
SOURCE = SOURCES[Way.ZMQ.value]
# Events per PV between two turns of the CA library. pcas queues up to 16 events per
# monitor but only 4 per subscription on average per client before it merges them, and
# the events of the last cycle may not have left yet.
POSTS_PER_CYCLE = 2

# Enum members are slow to look up in Python 3.11 (~60 ns each): the loop uses these.
_PUT, _DELETE, _META = Op.PUT, Op.DELETE, Op.META


class IngestServer(Protocol):
    """What `PipeIngest` needs of the CA server (`relayd.ca.server.CAServer`)."""

    relay: Relay[Any]

    def report(self, refused: Refused, source: str, way: str = Way.CA.value) -> int:
        """Count (by way in) and log a refusal."""

    def delete(self, name: str, source: str) -> Any:
        """Delete the PV `name` and return it; `Refused` if there is none."""

    def applied(self, pv: Any, mask: int, now: float, stamp: Any = None) -> None:
        """A value was applied to `pv`: post it to monitors with `mask` (DBE_* bits;
        DBE_PROPERTY when its attributes changed too)."""

    def meta_changed(self, pv: Any, alarm_changed: bool, now: float) -> None:
        """`pv`'s attributes alone changed."""


class PipeIngest:
    """Reads the workers' up pipes and applies what they carry to one CA server.

    `readers` are the up pipes by worker role; `answer(role, request_id, verdicts,
    durable)` takes the verdicts of a batch that asked for them (`Replies.verdicts`),
    and `queries` answer `Query` messages by kind (``handler(args) -> payload``).
    """

    def __init__(self, server: IngestServer, readers: dict[str, PipeReader],
                 answer: Callable[[str, int, list, bool], None] | None = None,
                 send: Callable[[str, Any], None] | None = None):
        self.server = server
        self.readers = readers
        self._roles = list(readers)
        self._turn = 0  # the reader to try first, in turn
        self.answer = answer
        self.send = send
        self.queries: dict[str, Callable[[Any], Any]] = {}
        self.relay = server.relay
        self.stats = server.relay.stats
        self._pending: deque[list] = deque()  # batches read but not yet applied
        self._role = ""  # the worker they came from
        self._sent_ns = 0  # when the worker sent the forward they came in
        self._stamps = Stamps()
        # Events posted to each PV in this cycle (see `drain`).
        self._posts: dict[Any, int] = {}
        self._cycle_full = False
        self._dropped = 0  # the readers' dropped chunks already reported
        # Internal errors (with their traceback) and dropped chunks: a message that
        # triggers a bug, or a pipe that keeps breaking, must not flood the log.
        self._log = RateLimitedLog(log, burst=3, period=60.0)

    def drain(self, max_updates: int, budget: float) -> bool:
        """Apply waiting batches; True once every pipe is empty.

        Stops early, returning False, after `max_updates` updates or `budget` seconds,
        so that the CA library gets its turn, or once a PV has been posted
        POSTS_PER_CYCLE times: pcas queues only a few events per monitor between two
        calls to ``cas.process`` and merges the rest, so a bounded cycle is also what
        lets a fast client receive every update (of a few hot array PVs too).
        """
        deadline = time.perf_counter() + budget
        applied = 0
        self._posts.clear()
        self._cycle_full = False
        while True:
            if not self._pending:
                if not self._read():
                    return True
                continue
            batch = self._pending.popleft()
            try:
                applied += self.apply_batch(batch)
            except Exception:  # a bug, or a batch that is not a list: keep serving
                self._internal_error("a batch from the pipe", "pipe", "")
            if not self._pending:
                self.stats.pipe_lag = max(0, time.monotonic_ns() - self._sent_ns) / 1e9
            if (applied >= max_updates or self._cycle_full
                    or time.perf_counter() > deadline):
                return False

    def _read(self) -> bool:
        """Take the next message of the next pipe that has one, in turn; False if none."""
        count = len(self._roles)
        for _ in range(count):
            role = self._roles[self._turn]
            self._turn = (self._turn + 1) % count
            reader = self.readers[role]
            payload = reader.read()
            if sum(r.dropped for r in self.readers.values()) != self._dropped:
                self._report_dropped()
            if payload is not None:
                self._take(role, payload)
                return True
        return False

    def _take(self, role: str, payload: bytes) -> None:
        try:
            message = decode(payload)
        except Exception as error:
            self.server.report(
                Refused(Reason.INTERNAL, f"undecodable pipe message: {error!r}"), "pipe")
            return
        if type(message) is Forward:
            if message.counters:
                self.stats.merge_worker(message.counters)
            self._pending.extend(message.batches)
            self._role = role
            self._sent_ns = message.sent_ns
        elif type(message) is Query:
            self._query(role, message)
        else:
            self.server.report(Refused(Reason.INTERNAL, f"a {type(message).__name__} "
                                       "on an up pipe"), "pipe")

    def _query(self, role: str, query: Query) -> None:
        """Answer a worker's question with the handler of its kind."""
        handler = self.queries.get(query.kind)
        if handler is None:
            result = QueryResult(query.request_id, None, f"unknown query {query.kind!r}")
        else:
            try:
                result = QueryResult(query.request_id, handler(query.args), "")
            except Exception as error:
                self._internal_error(f"a {query.kind!r} query", "pipe")
                result = QueryResult(query.request_id, None, f"internal error: {error!r}")
        if self.send is not None:
            self.send(role, result)

    def _report_dropped(self) -> None:
        """Show the chunks of incomplete messages the reader dropped (see `pipe.Reassembler`).

        Either a send the worker timed out on (a full pipe) and repeated whole, so that
        nothing is lost, or a message cut short by a restart of either process, whose
        updates are lost. The reader cannot tell which.
        """
        dropped = sum(reader.dropped for reader in self.readers.values())
        self._log.warning(
            "dropped", "internal pipe: dropped %d chunks of incomplete messages (%d since "
            "start): a send a worker repeated after a full pipe (nothing lost), or "
            "a message cut short by a restart (its updates lost)",
            dropped - self._dropped, dropped,
        )
        self._dropped = self.stats.pipe_dropped = dropped

    def apply_batch(self, batch: list) -> int:
        """Apply one batch (a `Batch`, as a list), then post each touched PV once; answer
        it if it asks. The number of ops applied or refused."""
        ops, way, source, reply, durable = batch
        verdicts: list | None = None if reply is None else []
        not_counted = 0  # refusals and deletes: not accepted updates
        touched: dict[Any, int] = {}
        relay = self.relay
        pvs = relay.registry.pvs
        now = time.monotonic()
        where = SOURCES.get(way, way)
        for item in ops:
            name = None
            try:
                op, name, value, ts_ns, meta = item
                if op == _PUT:
                    pv = pvs.get(name)
                    if pv is None:
                        pv = relay.ensure(name)
                    mask = touched.get(pv, DBE_VALUE_LOG)
                    if relay.apply(pv, value, ts_ns, now, meta, source):
                        mask |= DBE_ALL
                    if meta:
                        mask |= DBE_PROPERTY
                    touched[pv] = mask
                elif op == _META:
                    pv, alarm_changed = relay.set_meta(name, meta)
                    self.server.meta_changed(pv, alarm_changed, now)
                elif op == _DELETE:
                    touched.pop(self.server.delete(name, where), None)
                    not_counted += 1
                else:
                    raise ValueError(f"unknown pipe op {op!r}")
            except Exception as error:  # a refusal, or a bug: the rest is applied
                not_counted += 1
                if isinstance(error, Refused):
                    self.server.report(error, where, way)
                else:
                    error = self._internal_error(f"an update to {name!r}", where, way)
                if verdicts is not None:
                    verdicts.append(refused_wire(str(name), error))
                continue
            if verdicts is not None:
                verdicts.append(accepted_wire(name))
        self.stats.accepted_by_way[way] += len(ops) - not_counted
        # Then post each PV the batch touched, once, and note PVs posted POSTS_PER_CYCLE
        # times (inline: a call per batch shows when every message is a batch of one).
        stamps = self._stamps
        posts = self._posts
        applied = self.server.applied
        for pv, mask in touched.items():
            applied(pv, mask, now, stamps(pv.state.ts_ns))
            count = posts.get(pv, 0) + 1
            posts[pv] = count
            if count >= POSTS_PER_CYCLE:
                self._cycle_full = True
        if verdicts is not None and self.answer is not None:
            self.answer(self._role, reply, verdicts, durable)
        return len(ops)

    def _internal_error(self, what: str, source: str, way: str = Way.CA.value) -> Refused:
        """A bug, not the sender's fault: count it, log it with its traceback (rate-limited)."""
        self._log.log(logging.ERROR, "internal", "internal error applying %s", what,
                      exc_info=True)
        refused = Refused(Reason.INTERNAL, f"applying {what}")
        self.server.report(refused, source, way)
        return refused
