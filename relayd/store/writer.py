"""Autosave from the CA process: changes noted on the hot path, written by a thread.

A put only notes its PV as dirty (one dict assignment). Every `interval` seconds the CA
loop takes a snapshot of the dirty PVs, cheap because values are immutable or copied
only for buffers, and hands it to a writer thread, which encodes the rows and writes
them in one transaction while the CA loop goes on. A failed write (disk full, read-only
path) is kept, merged with newer changes, and retried every interval; the failure shows
in the status PVs and the log, and the relay keeps serving. `stop` writes everything
still pending before it returns: a clean stop loses nothing.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from dataclasses import dataclass, field

from relayd.core.pvstate import PVState
from relayd.logs import RateLimitedLog
from relayd.store.rows import SavedPV, make
from relayd.store.sqlite import Store

log = logging.getLogger("relayd.autosave")

Snapshot = tuple  # (spec, value, ts_ns, meta): what `from_snapshot` needs, taken cheaply


def snapshot(state: PVState) -> Snapshot:
    """What to save of a PV, taken in the CA loop: buffers are copied, nothing else is."""
    value = state.view().copy() if state.spec.buffer else state.value  # type: ignore[attr-defined]
    return (state.spec, value, state.ts_ns, state.meta)


def from_snapshot(snap: Snapshot) -> SavedPV:
    return make(*snap)


@dataclass
class AutosaveStatus:
    """What the status PVs show about autosave."""

    enabled: bool = False
    last_save: float = 0.0  # wall time of the last successful write
    pending: int = 0  # changes waiting to be written (after a failure)
    failures: int = 0
    last_error: str = ""
    saved: int = 0  # rows written since start
    path: str = ""


@dataclass
class _Pending:
    saved: dict[str, Snapshot] = field(default_factory=dict)
    deleted: set[str] = field(default_factory=set)

    def merge(self, saved: dict[str, Snapshot], deleted: set[str]) -> None:
        # A delete is kept even when the name is saved again: the write deletes first,
        # so a PV deleted and created again takes a new place (its creation order).
        for name in deleted:
            self.saved.pop(name, None)
        self.deleted |= deleted
        self.saved.update(saved)

    def __len__(self) -> int:
        return len(self.saved) + len(self.deleted)


SNAPSHOTS_PER_TICK = 2000


class Autosaver:
    """Notes changes in the CA loop and writes them from a thread."""

    def __init__(self, store: Store, interval: float):
        self.store = store
        self.interval = interval
        self.status = AutosaveStatus(enabled=True, path=store.path)
        self._dirty: dict[str, PVState] = {}
        self._deleted: set[str] = set()
        # A flush in progress: the states still to snapshot (from `_pos` on) and the
        # deletes to hand with the first part.
        self._todo: list[PVState] | None = None
        self._pos = 0
        self._todo_deleted: set[str] = set()
        self._next = time.monotonic() + interval
        self._queue: queue.Queue = queue.Queue()
        self._errors = RateLimitedLog(log, burst=2, period=60.0)
        self._thread = threading.Thread(target=self._run, name="relayd-autosave", daemon=True)
        self._thread.start()

    # called from the CA loop --------------------------------------------------------------

    def touch(self, state: PVState) -> None:
        """`state` changed; it is saved at the next flush."""
        self._dirty[state.spec.name] = state

    def forget(self, name: str) -> None:
        """The PV `name` was deleted; it is removed from the store at the next flush."""
        self._dirty.pop(name, None)
        self._deleted.add(name)

    def tick(self, now: float) -> None:
        """Called every CA loop cycle: start a flush when one is due, or go on with one.

        A flush hands at most SNAPSHOTS_PER_TICK snapshots per cycle, so that saving
        100,000 new PVs never holds CA service up for long (it took ~150 ms in one go).
        """
        if self._todo is None:
            if now < self._next:
                return
            self._start()
        self._hand(SNAPSHOTS_PER_TICK)

    def flush(self) -> None:
        """Hand everything that changed to the writer thread, now."""
        if self._todo is not None:  # finish the flush in progress first
            self._hand(None)
        self._start()
        self._hand(None)

    def _start(self) -> None:
        self._next = time.monotonic() + self.interval
        # In the order the PVs were first touched: the store keeps creation order. A PV
        # changed again during the flush is in `_dirty` again, for the next one; a PV
        # deleted during it is saved by this one and deleted by the next (the writer
        # applies the parts in order).
        self._todo, self._pos = list(self._dirty.values()), 0
        self._todo_deleted, self._deleted = self._deleted, set()
        self._dirty = {}

    def _hand(self, limit: int | None) -> None:
        todo, start = self._todo or [], self._pos
        end = len(todo) if limit is None else min(len(todo), start + limit)
        deleted, self._todo_deleted = self._todo_deleted, set()
        if end >= len(todo):
            self._todo = None
        self._pos = end
        if end > start or deleted:
            saved = {state.spec.name: snapshot(state) for state in todo[start:end]}
            self._queue.put((saved, deleted))

    def stop(self, timeout: float = 30.0) -> bool:
        """Write everything still pending, then close; False if that did not succeed."""
        self.flush()
        self._queue.put(None)
        self._thread.join(timeout)
        ok = not self._thread.is_alive() and self.status.pending == 0
        if not self._thread.is_alive():
            self.store.close()
        return ok

    # the writer thread --------------------------------------------------------------------

    def _run(self) -> None:
        pending = _Pending()
        while True:
            try:
                item = self._queue.get(timeout=self.interval if len(pending) else None)
            except queue.Empty:
                item, queued = ((), ()), False  # nothing new: retry what failed
            else:
                queued = True
            taken = 1 if queued else 0
            # Parts of one flush arrive one CA cycle apart: write what is there together.
            while item is not None:
                pending.merge(dict(item[0]), set(item[1]))
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                taken += 1
            if len(pending):
                self._write(pending)
            self.status.pending = len(pending)
            for _ in range(taken):
                self._queue.task_done()
            if item is None and queued:  # stop() asked, after everything before it
                return

    def _write(self, pending: _Pending) -> None:
        try:
            rows = [from_snapshot(snap) for snap in pending.saved.values()]
            self.store.write(rows, pending.deleted)
        except (sqlite3.Error, OSError) as error:
            self.status.failures += 1
            self.status.last_error = f"{type(error).__name__}: {error}"
            self._errors.log(logging.ERROR, "write", "autosave to %s failed (%s); %d changes "
                             "kept, retrying every %.1f s", self.store.path,
                             self.status.last_error, len(pending), self.interval)
            return
        if self.status.last_error:
            log.info("autosave to %s works again", self.store.path)
        self.status.saved += len(pending.saved)
        self.status.last_save = time.time()
        self.status.last_error = ""
        pending.saved.clear()
        pending.deleted.clear()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until the writer has handled everything handed to it (for tests/tools)."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True
