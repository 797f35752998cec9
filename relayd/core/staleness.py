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

from relayd.core.pvstate import PVState


class StaleWatch:
    """Deadlines of the PVs with a staleness timeout."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, PVState]] = []
        self._order = itertools.count()  # ties never compare states
        # The deadline of each watched state's one live heap entry; an entry whose
        # deadline is not this one was superseded (TMO lowered) or forgotten.
        self._deadline: dict[PVState, float] = {}

    def __len__(self) -> int:
        return len(self._deadline)

    def _push(self, state: PVState, deadline: float) -> None:
        self._deadline[state] = deadline
        heapq.heappush(self._heap, (deadline, next(self._order), state))

    def watch(self, state: PVState, now: float) -> None:
        """Watch `state` if its TMO is set; call after each put and each TMO change.

        Cheap when nothing changes: a later deadline is left to the entry already in
        the heap, which re-checks when it comes up. Only an earlier one (TMO lowered)
        needs a new entry.
        """
        tmo = state.meta.tmo
        if tmo <= 0:
            return
        due = max(now, state.updated) + tmo
        current = self._deadline.get(state)
        if current is None or due < current:
            self._push(state, due)

    def forget(self, state: PVState) -> None:
        """Stop watching (its entry is dropped when it comes up)."""
        self._deadline.pop(state, None)

    def next_deadline(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def expired(self, now: float) -> list[PVState]:
        """States that became stale by `now` (each returned once per staleness)."""
        stale = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            deadline, _, state = heapq.heappop(heap)
            if self._deadline.get(state) != deadline:
                continue
            tmo = state.meta.tmo
            if tmo <= 0:
                del self._deadline[state]
                continue
            due = state.updated + tmo
            if due > now:
                self._push(state, due)
                continue
            if state.go_stale():
                stale.append(state)
            self._push(state, now + tmo)
        return stale
