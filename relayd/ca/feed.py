"""The change feed to the HTTP worker, and its one-PV query, in the CA process.

The HTTP worker keeps a mirror of the relay's PVs (`workers.http.mirror`) so that the
page, the API's lists and /metrics never cost the CA loop anything per request. This is
the CA process's side of it, built to cost the hot path one dict assignment per touched
PV per batch, and nothing at all until an HTTP worker has asked:

* while the feed runs, `CAServer.changed` is its dict of changed PVs: `CAServer.applied`,
  `meta_changed` and the staleness check note a PV there (one assignment, keyed by the
  PV object: ~25 ns, against ~250 ns for a method call that looks up the name), and
  `forget` (from `CAServer.delete`) notes a name deleted: conflated, like autosave's
  dirty set; while it does not run, `changed` is None and the hot path does nothing;
* `cycle`, once per CA loop cycle, sends the rows of the changed PVs every PERIOD
  seconds (`relayd.core.feed.row`: arrays cut to a preview), in messages of at most
  CHUNK rows and at most CYCLE_ROWS rows per cycle, with the status counters at least
  every STATUS_PERIOD; after a feed that took long (100,000 PVs all changing), the
  next waits DUTY times as long, so the feed never takes more than about 1/DUTY of the
  CA process's time: the page falls behind, the CA clients do not;
* a ``sync`` query (the worker's first words, and its words whenever it lost step)
  streams every PV, CYCLE_ROWS per cycle, the last chunk marked ``final``;
* a ``pv`` query answers one PV in full (`relayd.core.feed.full_value`).

The feed goes down the worker's pipe through its outbox, never waiting; if the outbox is
full (the worker reads nothing: stopped, hung, restarting) the feed stops and says so,
and the worker asks for a sync again once it notices the silence.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

from relayd.core.feed import FeedChunk, full_value, row
from relayd.core.writes import Relay
from relayd.logs import RateLimitedLog
from relayd.supervise.messages import Feed as FeedMessage
from relayd.supervise.messages import encode

log = logging.getLogger("relayd.ca")

ROLE = "http"  # the worker the feed is for
PERIOD = 0.25  # seconds between two feeds of changed PVs, at least
STATUS_PERIOD = 1.0  # seconds between two sends of the status counters, at most
CHUNK = 1000  # rows per feed message
CYCLE_ROWS = 2000  # rows made per CA loop cycle, at most
DUTY = 20  # a feed that took t seconds of work waits at least DUTY * t for the next


class Feed:
    """The HTTP worker's change feed (see the module docstring)."""

    def __init__(self, server: Any, status: Callable[[], dict[str, Any]],
                 put: Callable[[bytes], bool], clock: Callable[[], float] = time.monotonic):
        self.server = server  # the CAServer: its `changed` is our `dirty` while active
        self.relay: Relay = server.relay
        self.status = status  # the status PVs' values by suffix
        self.put = put  # queue one message for the worker; False if there is no room
        self.clock = clock
        self.dirty: dict[Any, None] = {}  # PVs changed since the last feed, in order
        self.deleted: set[str] = set()
        self.seq = 0
        self._sync: tuple[int, list] | None = None  # request id, PVs still to send
        self._pending: list = []  # changed PVs taken for the feed under way
        self._next_feed = 0.0
        self._next_status = 0.0
        self._work = 0.0  # seconds spent on the feed under way
        self._log = RateLimitedLog(log, burst=2, period=60.0)

    @property
    def active(self) -> bool:
        """A worker asked for the feed, and it is flowing."""
        return self.server.changed is not None

    def _start(self) -> None:
        self.dirty.clear()
        self.deleted.clear()
        self._pending = []
        self.server.changed = self.dirty

    def _stop(self) -> None:
        self.server.changed = None
        self._sync, self._pending = None, []
        self.dirty.clear()
        self.deleted.clear()

    def forget(self, pv: Any) -> None:
        """`pv` was deleted (and is not kept alive here until the next feed)."""
        if self.active:
            self.deleted.add(pv.state.spec.name)
            self.dirty.pop(pv, None)

    # --- the worker's questions ---------------------------------------------------------------

    def sync(self, request_id: Any) -> dict[str, Any]:
        """Start streaming every PV to the worker (the ``sync`` query)."""
        self._start()
        self._sync = (int(request_id), list(self.relay.registry.pvs.values()))
        return {"pvs": len(self._sync[1])}

    def query_pv(self, name: Any) -> Any:
        """One PV in full: ``[row, whole value]``, or None if there is no such PV."""
        pv = self.relay.registry.pvs.get(str(name))
        if pv is None:
            return None
        state = pv.state
        return [row(state, state.writer, state.updates), full_value(state)]

    # --- every cycle ---------------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        """True while a sync or a large feed is under way: the loop should not idle."""
        return self.active and (self._sync is not None or bool(self._pending))

    def cycle(self, now: float) -> None:
        """Send what is due, within CYCLE_ROWS rows."""
        if not self.active:
            return
        if self._sync is not None:
            self._send_sync()
        elif self._pending or now >= self._next_feed:
            self._send_changes(now)
        elif now >= self._next_status:
            self._send(FeedChunk([], [], self._status()))

    def _rows(self, taken: list) -> list:
        """The rows of the PVs in `taken` that the relay still holds."""
        pvs = self.relay.registry.pvs
        made = []
        for pv in taken:
            state = pv.state
            if pvs.get(state.spec.name) is pv:
                made.append(row(state, state.writer, state.updates))
        return made

    def _send_sync(self) -> None:
        request_id, left = self._sync  # type: ignore[misc]
        taken, rest = left[:CYCLE_ROWS], left[CYCLE_ROWS:]
        for start in range(0, max(len(taken), 1), CHUNK):
            final = not rest and start + CHUNK >= len(taken)
            chunk = FeedChunk(self._rows(taken[start:start + CHUNK]), [],
                              self._status() if final else None, request_id, final)
            if not self._send(chunk):
                return
        self._sync = (request_id, rest) if rest else None

    def _send_changes(self, now: float) -> None:
        started = time.perf_counter()
        if not self._pending:
            self._pending = list(self.dirty)
            self.dirty.clear()
        taken, self._pending = self._pending[:CYCLE_ROWS], self._pending[CYCLE_ROWS:]
        deleted: list[str] = []
        if not self._pending:
            pvs = self.relay.registry.pvs
            deleted = [name for name in self.deleted if name not in pvs]
            self.deleted.clear()
        status = self._status() if not self._pending and now >= self._next_status else None
        for start in range(0, max(len(taken), 1), CHUNK):
            last = start + CHUNK >= len(taken)
            chunk = FeedChunk(self._rows(taken[start:start + CHUNK]),
                              deleted if last else [], status if last else None)
            if (chunk.rows or chunk.deleted or chunk.status) and not self._send(chunk):
                return
        self._work += time.perf_counter() - started
        if not self._pending:
            self._next_feed = now + max(PERIOD, DUTY * self._work)
            self._work = 0.0

    def _status(self) -> dict[str, Any]:
        self._next_status = self.clock() + STATUS_PERIOD
        return {suffix: value.decode("utf-8", "replace") if isinstance(value, bytes) else value
                for suffix, value in self.status().items()}

    def _send(self, chunk: FeedChunk) -> bool:
        """Queue one feed message; on a full outbox the feed stops until the next sync."""
        self.seq += 1
        if self.put(encode(FeedMessage(self.seq, tuple(chunk)))):
            return True
        self._stop()
        self._log.warning("stopped", "the HTTP worker reads nothing (its pipe is full): its "
                          "feed stops until it asks for every PV again")
        return False


def attach(server: Any, ingest: Any, outboxes: dict[str, Any]) -> Feed | None:
    """The feed of a relay that runs an HTTP worker, hooked in; None for one that does not.

    `server` is the `CAServer` (its changes come to `touch`/`forget`, its status PVs are
    the feed's counters), `ingest` the `PipeIngest` (it answers the worker's ``sync``
    and ``pv`` queries with the feed's), `outboxes` the down pipes by role.
    """
    outbox = outboxes.get(ROLE)
    if outbox is None:
        return None
    head = len(server.relay.grammar.prefix) + 1
    status = [(pv.state.spec.name[head:], pv.compute) for pv in server.control.computed
              if pv.state.spec.name[head:].startswith("status:")]
    feed = Feed(server, lambda: {suffix: compute() for suffix, compute in status},
                outbox.put)
    server.feed = feed
    ingest.queries["sync"] = feed.sync
    ingest.queries["pv"] = feed.query_pv
    return feed
