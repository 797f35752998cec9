"""The counters an operator watches, as the CA process keeps them. Pure: no I/O.

Every way in counts here: accepted updates and refusals, in total, by reason (with the
text of the last one) and by way in (`relayd.core.ops.Way`), deletes; a worker's own
counts arrive as increments (`Stats.merge_worker`). The status PVs (`relayd.core.status`)
read them. Counters by way are keyed by the way's value, a plain str (what the internal
channel carries; a `Way` member finds the same entry).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from relayd.core.errors import Reason, Refused
from relayd.core.ops import Way


class Stats:
    """Counters an operator watches; served by the status PVs."""

    def __init__(self) -> None:
        self.accepted = 0
        self.refused = 0
        self.by_reason: Counter[Reason] = Counter()
        self.accepted_by_way: Counter[str] = Counter()
        self.refused_by_way: Counter[str] = Counter()
        self.last_refusal = ""
        self.deleted = 0
        # ZMQ ingest, as counted by the worker (see `merge_worker`)
        self.zmq_messages = 0
        self.zmq_updates = 0
        # the internal pipe, as measured by the CA process
        self.pipe_backlog = 0  # bytes waiting
        self.pipe_lag = 0.0  # seconds from the worker's send to the last apply
        self.pipe_dropped = 0  # chunks of incomplete messages the CA process dropped
        self.reply_dropped = 0  # answers to workers dropped: their outbox was full
        # restarts of each child process, as told by the supervisor
        self.restarts: dict[str, int] = {}
        # autosave, as its writer reports it (an `autosave.AutosaveStatus`), if enabled
        self.autosave: Any = None
        self.restored = 0  # PVs restored at start

    def count_refusal(self, refused: Refused, source: str, way: str = Way.CA) -> str:
        """Count a refusal of way in `way` and return the one-line text that describes it."""
        self.refused += 1
        self.by_reason[refused.reason] += 1
        self.refused_by_way[way] += 1
        self.last_refusal = f"{source}: {refused}"
        return self.last_refusal

    def merge_worker(self, counters: dict) -> None:
        """Add counters the ingest worker reports (increments since its last report).

        ``{"messages": n, "updates": n, "refused": {reason code: n}, "last_refusal": text,
        "way": way}``, `way` being the way in of the refusals (`Way`'s value); unknown keys
        and reason codes are ignored, so old and new processes interwork.
        """
        way = str(counters.get("way", ""))
        self.zmq_messages += int(counters.get("messages", 0))
        self.zmq_updates += int(counters.get("updates", 0))
        for code, count in dict(counters.get("refused", {})).items():
            try:
                reason = Reason(code)
            except ValueError:
                continue
            self.by_reason[reason] += int(count)
            self.refused += int(count)
            if way:
                self.refused_by_way[way] += int(count)
        last = counters.get("last_refusal")
        if last:
            self.last_refusal = str(last)
