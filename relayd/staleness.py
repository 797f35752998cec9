"""Which PVs have received nothing for longer than their TMO. Pure: times are passed in.

This is the relay's answer to "the publisher died": a PV whose TMO is set and that gets
no value for TMO seconds goes to INVALID/TIMEOUT (`PVState.go_stale`), so monitors and
archivers see it at once.

The hot path must not pay for this: a put only records its arrival time in the state
(`PVState.updated`). `StaleWatch` keeps one heap entry per watched PV, keyed by the
moment it would go stale if nothing arrived. When that moment comes, the state's own
last arrival decides: updated since, the entry moves to the new deadline; not, the PV
is stale. So the heap never holds more entries than watched PVs, however fast they
update.
"""

from __future__ import annotations

import heapq
import itertools

from relayd.pvstate import PVState


class StaleWatch:
    """Deadlines of the PVs with a staleness timeout."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, PVState]] = []
        self._order = itertools.count()  # ties never compare states
        self._watched: set[PVState] = set()

    def __len__(self) -> int:
        return len(self._watched)

    def watch(self, state: PVState, now: float) -> None:
        """Start watching `state` if its TMO is set (idempotent)."""
        if state.meta.tmo <= 0 or state in self._watched:
            return
        self._watched.add(state)
        heapq.heappush(self._heap, (max(now, state.updated) + state.meta.tmo,
                                    next(self._order), state))

    def forget(self, state: PVState) -> None:
        """Stop watching (its entry is dropped when it comes up)."""
        self._watched.discard(state)

    def next_deadline(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def expired(self, now: float) -> list[PVState]:
        """States that became stale by `now` (each returned once per staleness)."""
        stale = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, _, state = heapq.heappop(heap)
            if state not in self._watched:
                continue
            tmo = state.meta.tmo
            if tmo <= 0:
                self._watched.discard(state)
                continue
            due = state.updated + tmo
            if due > now:
                heapq.heappush(heap, (due, next(self._order), state))
                continue
            if state.go_stale():
                stale.append(state)
            heapq.heappush(heap, (now + tmo, next(self._order), state))
        return stale
