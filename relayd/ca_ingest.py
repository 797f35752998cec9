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

from relayd.ca_pvs import DBE_ALL, DBE_VALUE_LOG, ServedPV
from relayd.ca_server import CAServer
from relayd.errors import Reason, Refused
from relayd.pipe import DELETE, PUT, Forward, PipeReader, decode_forward

log = logging.getLogger("relayd.ca")

SOURCE = "ZMQ update"


class PipeIngest:
    """Reads the pipe and applies what it carries to one `CAServer`."""

    def __init__(self, server: CAServer, reader: PipeReader):
        self.server = server
        self.reader = reader
        self.relay = server.relay
        self.stats = server.relay.stats

    def drain(self, budget: float) -> bool:
        """Apply waiting messages for up to `budget` seconds; True if the pipe is empty."""
        deadline = time.perf_counter() + budget
        while True:
            payload = self.reader.read()
            if payload is None:
                return True
            try:
                forward = decode_forward(payload)
            except Exception as error:
                self.server.report(
                    Refused(Reason.INTERNAL, f"undecodable pipe message: {error!r}"), "pipe"
                )
                continue
            self.apply(forward)
            if time.perf_counter() > deadline:
                return False

    def apply(self, forward: Forward) -> None:
        if forward.counters:
            self.stats.merge_worker(forward.counters)
        for batch in forward.batches:
            self.apply_batch(batch)
        self.stats.pipe_lag = max(0, time.monotonic_ns() - forward.sent_ns) / 1e9

    def apply_batch(self, ops: list) -> None:
        """Apply one ZMQ message's updates, then post each touched PV once."""
        touched: dict[ServedPV, int] = {}
        pvs = self.relay.registry.pvs
        for op, name, value, ts_ns in ops:
            try:
                if op == PUT:
                    pv = pvs.get(name)
                    spec = pv.state.spec if pv is not None else self._spec(name)
                    pv, alarm_changed = self.relay.apply(spec, value, ts_ns)
                    mask = touched.get(pv, DBE_VALUE_LOG)
                    touched[pv] = mask | DBE_ALL if alarm_changed else mask
                elif op == DELETE:
                    touched.pop(self.server.delete(name, SOURCE), None)
            except Refused as refused:
                self.server.report(refused, SOURCE)
            except Exception:
                log.exception("internal error applying an update to %r", name)
                self.server.report(Refused(Reason.INTERNAL, f"update to {name!r}"), SOURCE)
        for pv, mask in touched.items():
            pv.post(mask)

    def _spec(self, name: str):
        spec = self.relay.grammar.parse(name)
        if spec is None:
            raise Refused(Reason.BAD_NAME, f"{name!r} is not a relay PV name")
        return spec
