"""Applying the ingest worker's batches in the CA process.

The worker has already parsed every name and converted every value with the same
grammar and rules as a CA put; what arrives here is ready to store
(`relayd.core.ops.PipeOp`). Per batch (one ZMQ message) all updates are applied first
and monitors are posted after, so a batch becomes visible in one processing cycle
(atomically), and a plain PV updated several times in one batch posts one event carrying
its last value (conflation). A buffer receives every element, in order, and posts once
with all of them.

Refusals that only the CA process can decide (the relay is full, a delete of a name
that holds no PV) are counted here; one refused update never stops the rest of its
batch. `PipeIngest` needs only a few things of the CA server (`IngestServer`), so it is
tested with a real pipe and a recording server, without pcas.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Any, Protocol

from relayd.ca.gdd import Stamps
from relayd.ca.pvs import DBE_ALL, DBE_PROPERTY, DBE_VALUE_LOG
from relayd.core.errors import Reason, Refused
from relayd.core.ops import Op
from relayd.core.writes import Relay
from relayd.logs import RateLimitedLog
from relayd.supervise.pipe import PipeReader, decode_forward

log = logging.getLogger("relayd.ca")

SOURCE = "ZMQ update"
# Events per PV between two turns of the CA library. pcas queues up to 16 events per
# monitor but only 4 per subscription on average per client before it merges them, and
# the events of the last cycle may not have left yet.
POSTS_PER_CYCLE = 2

# Enum members are slow to look up in Python 3.11 (~60 ns each): the loop uses these.
_PUT, _DELETE, _META = Op.PUT, Op.DELETE, Op.META


class IngestServer(Protocol):
    """What `PipeIngest` needs of the CA server (`relayd.ca.server.CAServer`)."""

    relay: Relay[Any]

    def report(self, refused: Refused, source: str) -> int:
        """Count and log a refusal."""

    def delete(self, name: str, source: str) -> Any:
        """Delete the PV `name` and return it; `Refused` if there is none."""

    def applied(self, pv: Any, mask: int, now: float, stamp: Any = None) -> None:
        """A value was applied to `pv`: post it to monitors with `mask` (DBE_* bits;
        DBE_PROPERTY when its attributes changed too)."""

    def meta_changed(self, pv: Any, alarm_changed: bool, now: float) -> None:
        """`pv`'s attributes alone changed."""


class PipeIngest:
    """Reads the pipe and applies what it carries to one CA server."""

    def __init__(self, server: IngestServer, reader: PipeReader):
        self.server = server
        self.reader = reader
        self.relay = server.relay
        self.stats = server.relay.stats
        self._pending: deque[list] = deque()  # batches read but not yet applied
        self._sent_ns = 0  # when the worker sent the forward they came in
        self._stamps = Stamps()
        # Events posted to each PV in this cycle (see `drain`).
        self._posts: dict[Any, int] = {}
        self._cycle_full = False
        self._dropped = 0  # the reader's dropped chunks already reported
        # Internal errors (with their traceback) and dropped chunks: a message that
        # triggers a bug, or a pipe that keeps breaking, must not flood the log.
        self._log = RateLimitedLog(log, burst=3, period=60.0)

    def drain(self, max_updates: int, budget: float) -> bool:
        """Apply waiting batches; True once the pipe is empty.

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
                payload = self.reader.read()
                if self.reader.dropped != self._dropped:
                    self._report_dropped()
                if payload is None:
                    return True
                self._take(payload)
                continue
            batch = self._pending.popleft()
            try:
                self.apply_batch(batch)
                applied += len(batch)
            except Exception:  # a bug, or a batch that is not a list: keep serving
                self._internal_error("a batch from the pipe", "pipe")
            if not self._pending:
                self.stats.pipe_lag = max(0, time.monotonic_ns() - self._sent_ns) / 1e9
            if (applied >= max_updates or self._cycle_full
                    or time.perf_counter() > deadline):
                return False

    def _take(self, payload: bytes) -> None:
        try:
            forward = decode_forward(payload)
        except Exception as error:
            self.server.report(
                Refused(Reason.INTERNAL, f"undecodable pipe message: {error!r}"), "pipe"
            )
            return
        if forward.counters:
            self.stats.merge_worker(forward.counters)
        self._pending.extend(forward.batches)
        self._sent_ns = forward.sent_ns

    def _report_dropped(self) -> None:
        """Show the chunks of incomplete messages the reader dropped (see `pipe.Reassembler`).

        Either a send the worker timed out on (a full pipe) and repeated whole, so that
        nothing is lost, or a message cut short by a restart of either process, whose
        updates are lost. The reader cannot tell which.
        """
        dropped = self.reader.dropped
        self._log.warning(
            "dropped", "internal pipe: dropped %d chunks of incomplete messages (%d since "
            "start): a send the ingest worker repeated after a full pipe (nothing lost), or "
            "a message cut short by a restart (its updates lost)",
            dropped - self._dropped, dropped,
        )
        self._dropped = self.stats.pipe_dropped = dropped

    def apply_batch(self, ops: list) -> None:
        """Apply one ZMQ message's updates (PipeOps, as lists), then post each touched PV once."""
        touched: dict[Any, int] = {}
        relay = self.relay
        pvs = relay.registry.pvs
        now = time.monotonic()
        for item in ops:
            name = None
            try:
                op, name, value, ts_ns, meta = item
                if op == _PUT:
                    pv = pvs.get(name)
                    if pv is None:
                        pv = relay.ensure(name)
                    mask = touched.get(pv, DBE_VALUE_LOG)
                    if relay.apply(pv, value, ts_ns, now, meta):
                        mask |= DBE_ALL
                    if meta:
                        mask |= DBE_PROPERTY
                    touched[pv] = mask
                elif op == _META:
                    pv, alarm_changed = relay.set_meta(name, meta)
                    self.server.meta_changed(pv, alarm_changed, now)
                elif op == _DELETE:
                    touched.pop(self.server.delete(name, SOURCE), None)
                else:
                    raise ValueError(f"unknown pipe op {op!r}")
            except Refused as refused:
                self.server.report(refused, SOURCE)
            except Exception:
                self._internal_error(f"an update to {name!r}", SOURCE)
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

    def _internal_error(self, what: str, source: str) -> None:
        """A bug, not the sender's fault: count it, log it with its traceback (rate-limited)."""
        self._log.log(logging.ERROR, "internal", "internal error applying %s", what,
                      exc_info=True)
        self.server.report(Refused(Reason.INTERNAL, f"applying {what}"), source)
