"""Applying the ingest worker's batches in the CA process.

The worker has already parsed every name and converted every value with the same
grammar and rules as a CA put; what arrives here is ready to store. Per batch (one ZMQ
message) all updates are applied first and monitors are posted after, so a batch
becomes visible in one processing cycle (atomically), and a plain PV updated several
times in one batch posts one event carrying its last value (conflation). A buffer
receives every element, in order, and posts once with all of them.

Refusals that only the CA process can decide (the relay is full, a delete of a name
that holds no PV) are counted here; one refused update never stops the rest of its
batch.
"""

from __future__ import annotations

import logging
import time
from collections import deque

from pcaspy import cas

from relayd.ca.gdd import Stamps
from relayd.ca.pvs import DBE_ALL, DBE_VALUE_LOG, ServedPV
from relayd.ca.server import CAServer
from relayd.core.errors import Reason, Refused
from relayd.supervise.pipe import DELETE, META, PUT, PipeReader, decode_forward

log = logging.getLogger("relayd.ca")

SOURCE = "ZMQ update"
# Events per PV between two turns of the CA library. pcas queues up to 16 events per
# monitor but only 4 per subscription on average per client before it merges them, and
# the events of the last cycle may not have left yet.
POSTS_PER_CYCLE = 2


class PipeIngest:
    """Reads the pipe and applies what it carries to one `CAServer`."""

    def __init__(self, server: CAServer, reader: PipeReader):
        self.server = server
        self.reader = reader
        self.relay = server.relay
        self.stats = server.relay.stats
        self._pending: deque[list] = deque()  # batches read but not yet applied
        self._sent_ns = 0  # when the worker sent the forward they came in
        self._stamps = Stamps()
        # Events posted to each PV in this cycle (see `drain`).
        self._posts: dict[ServedPV, int] = {}
        self._cycle_full = False

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
                if payload is None:
                    return True
                self._take(payload)
                continue
            batch = self._pending.popleft()
            self.apply_batch(batch)
            applied += len(batch)
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

    def apply_batch(self, ops: list) -> None:
        """Apply one ZMQ message's updates, then post each touched PV once."""
        touched: dict[ServedPV, int] = {}
        pvs = self.relay.registry.pvs
        now = time.monotonic()
        relay = self.relay
        for op, name, value, ts_ns, meta in ops:
            try:
                if op == PUT:
                    pv = pvs.get(name)
                    if pv is not None:
                        alarm_changed = relay.update(pv, value, ts_ns, now, meta)
                    else:
                        pv, alarm_changed = relay.apply(self._spec(name), value, ts_ns, now, meta)
                    mask = touched.get(pv, DBE_VALUE_LOG)
                    if alarm_changed:
                        mask |= DBE_ALL
                    if meta:
                        mask |= cas.DBE_PROPERTY
                    touched[pv] = mask
                elif op == META:
                    pv, alarm_changed = self.relay.set_meta(name, meta)
                    self.server.meta_changed(pv, alarm_changed, now)
                elif op == DELETE:
                    touched.pop(self.server.delete(name, SOURCE), None)
            except Refused as refused:
                self.server.report(refused, SOURCE)
            except Exception:
                log.exception("internal error applying an update to %r", name)
                self.server.report(Refused(Reason.INTERNAL, f"update to {name!r}"), SOURCE)
        stamps = self._stamps
        posts = self._posts
        for pv, mask in touched.items():
            if mask & cas.DBE_PROPERTY:
                pv.post_property()
                mask &= ~cas.DBE_PROPERTY
            self.server.applied(pv, mask, now, stamps(pv.state.ts_ns))
            count = posts.get(pv, 0) + 1
            posts[pv] = count
            if count >= POSTS_PER_CYCLE:
                self._cycle_full = True

    def _spec(self, name: str):
        spec = self.relay.grammar.parse(name)
        if spec is None:
            raise Refused(Reason.BAD_NAME, f"{name!r} is not a relay PV name")
        return spec
