"""Which PVs have received nothing for longer than their TMO. Pure: times are passed in.

This is the relay's answer to "the publisher died": a PV whose TMO is set and that gets
no value for TMO seconds goes to INVALID/TIMEOUT (`PVState.go_stale`), so monitors and
archivers see it at once.

The hot path must not pay for this: a put only records its arrival time in the state
(`PVState.updated`). `StaleWatch` keeps one heap entry per watched PV, keyed by the
moment it would go stale if nothing arrived. When that moment comes, the state's own
last arrival decides: updated since, the entry moves to the new deadline; not, the PV
is stale. So the heap holds about one entry per watched PV however fast they update,
and a PV no longer watched (deleted, TMO lowered) is let go of at once: its entry stays
only as an empty slot, dropped when it comes up or when such slots outnumber the rest.
"""

from __future__ import annotations

import heapq
import itertools

from relayd.core.pvstate import PVState


# Dead entries (forgotten or superseded) are dropped from the heap in one pass once they
# outnumber the live ones and this many: amortised O(1), and the heap stays within twice
# the watched PVs plus this, however many PVs come and go.
COMPACT_AT = 64


class StaleWatch:
    """Deadlines of the PVs with a staleness timeout."""

    def __init__(self) -> None:
        # Entries are [deadline, order, state]; `order` breaks ties, so states are never
        # compared. A forgotten or superseded entry has its state set to None at once:
        # the heap never keeps a deleted PV (and its value) alive until its deadline,
        # which with a large TMO was for ever (issue 11).
        self._heap: list[list] = []
        self._order = itertools.count()
        self._entry: dict[PVState, list] = {}  # each watched state's one live entry
        self._dead = 0  # entries in the heap whose state is None

    def __len__(self) -> int:
        return len(self._entry)

    def _push(self, state: PVState, deadline: float) -> None:
        old = self._entry.get(state)
        if old is not None:
            self._drop(old)
        entry = [deadline, next(self._order), state]
        self._entry[state] = entry
        heapq.heappush(self._heap, entry)

    def _drop(self, entry: list) -> None:
        """Let go of an entry's state now; compact the heap once dead entries dominate."""
        entry[2] = None
        self._dead += 1
        if self._dead > COMPACT_AT and self._dead > len(self._entry):
            self._heap[:] = [item for item in self._heap if item[2] is not None]
            heapq.heapify(self._heap)
            self._dead = 0

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
        current = self._entry.get(state)
        if current is None or due < current[0]:
            self._push(state, due)

    def forget(self, state: PVState) -> None:
        """Stop watching `state` (a deleted PV): nothing here refers to it afterwards."""
        entry = self._entry.pop(state, None)
        if entry is not None:
            self._drop(entry)

    def heap_size(self) -> int:
        """Entries in the heap, live and dead (bounded: see COMPACT_AT)."""
        return len(self._heap)

    def next_deadline(self) -> float | None:
        heap = self._heap
        while heap and heap[0][2] is None:
            heapq.heappop(heap)
            self._dead -= 1
        return heap[0][0] if heap else None

    def expired(self, now: float) -> list[PVState]:
        """States that became stale by `now` (each returned once per staleness)."""
        stale = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            state = heapq.heappop(heap)[2]
            if state is None:
                self._dead -= 1
                continue
            del self._entry[state]  # this entry is done; a new one follows if still due
            tmo = state.meta.tmo
            if tmo <= 0:
                continue
            due = state.updated + tmo
            if due > now:
                self._push(state, due)
                continue
            if state.go_stale():
                stale.append(state)
            self._push(state, now + tmo)
        return stale
