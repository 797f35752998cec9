"""Autosave from the CA process: changes noted on the hot path, written by a thread.

A put only notes its PV as dirty (one dict assignment). Every `interval` seconds the CA
loop takes a snapshot of the dirty PVs, cheap because values are immutable or copied
only for buffers, and hands it to a writer thread, which encodes the rows and writes
them in one transaction while the CA loop goes on. A failed write (disk full, read-only
path) is kept, merged with newer changes, and retried every interval; the failure shows
in the status PVs and the log, and the relay keeps serving. An error nobody expected (a
bug) is handled the same way, logged with its traceback: the writer never goes away
and leaves the status PVs showing stale numbers. `stop` writes everything still pending
before it returns: a clean stop loses nothing.

Every interval the writer also checks that the store's files are still the ones it
writes (see `Store.changed`). If they were deleted or replaced, it makes the file again
and the CA loop's next flush hands over every PV, not only the dirty ones.

Durable acknowledgements (`relayd.ca.replies`) need to know when a change is in the
file: `flush_now` hands everything over at once and returns a generation number, and
`committed` is the highest generation whose changes the writer has committed (the file
is in WAL mode with ``synchronous=NORMAL``: a committed change survives a killed
process, not a power cut). Each counter has one writer: the CA loop counts generations,
the writer thread `committed`.
"""

from __future__ import annotations

import logging
import mmap
import queue
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np

from relayd.core.errors import BootError
from relayd.core.pvstate import PVState
from relayd.logs import RateLimitedLog
from relayd.store.rows import SavedPV, make
from relayd.store.sqlite import RowError, Store

log = logging.getLogger("relayd.autosave")

Snapshot = tuple  # (spec, value, ts_ns, meta): what `from_snapshot` needs, taken cheaply


def snapshot(state: PVState) -> Snapshot:
    """What to save of a PV, taken in the CA loop: buffers are copied, nothing else is."""
    value = state.view().copy() if state.spec.buffer else state.value  # type: ignore[attr-defined]
    return (state.spec, value, state.ts_ns, state.meta)


def snapshot_part(states: list[PVState]) -> dict[str, Snapshot]:
    """Snapshots of one part of a flush, by name; buffers in one anonymous memory map.

    Each buffer is copied in its stored form (which `rows.make` keeps as it is) into a
    memory map made for the whole part, not into a heap block of its own. The map goes
    back to the system as soon as the part is written; thousands of heap blocks freed
    by the writer thread did not: glibc kept the high-water mark of every flush, and a
    relay of 20,000 full _F1000 buffers held 3.4x their data in RSS instead of 1.3x.
    """
    views = {state: state.view().astype(state.spec.kind.stored_dtype, copy=False)  # type: ignore[attr-defined]
             for state in states if state.spec.buffer}
    total = sum(view.nbytes for view in views.values())
    block = memoryview(mmap.mmap(-1, total)) if total else memoryview(b"")
    at = 0
    saved = {}
    for state in states:
        view = views.get(state)
        if view is None:
            saved[state.spec.name] = snapshot(state)
            continue
        stored = block[at:at + view.nbytes]
        np.frombuffer(stored, dtype=np.uint8)[:] = view.view(np.uint8)
        at += view.nbytes
        saved[state.spec.name] = (state.spec, stored, state.ts_ns, state.meta)
    return saved


def from_snapshot(snap: Snapshot) -> SavedPV:
    return make(*snap)


def _row(name: str, snap: Snapshot) -> SavedPV:
    """The row of the PV `name`; `RowError` if its snapshot cannot make one."""
    try:
        return from_snapshot(snap)
    except (TypeError, ValueError, OverflowError, AttributeError) as error:
        raise RowError(name, error) from error


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

    def merge(self, saved: dict[str, Snapshot], deleted: set[str],
              everything: bool = False) -> None:
        """Add newer changes. `everything`: the first part of a flush of every PV, in
        creation order, which supersedes the saves kept so far (not the deletes)."""
        if everything:
            self.saved.clear()
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
    """Notes changes in the CA loop and writes them from a thread.

    `states` gives every PV's state, in creation order, for a flush of everything (after
    the file was made again). `stored` are the names the store held at start: a row
    that was not restored (a bad row, see `rows.restore`) is kept as it is, but a PV
    made later under its name replaces it at the end of the store, in creation order.
    """

    def __init__(self, store: Store, interval: float,
                 states: Callable[[], Iterable[PVState]], stored: Iterable[str] = ()):
        self.store = store
        self.interval = interval
        self.status = AutosaveStatus(enabled=True, path=store.path)
        self._states = states
        self._dirty: dict[str, PVState] = {}
        self._deleted: set[str] = set()
        self._left_out = {name for name in stored if isinstance(name, str)}
        self._left_out.difference_update(state.spec.name for state in states())
        # A flush in progress: the states still to snapshot (from `_pos` on) and the
        # deletes to hand with the first part.
        self._todo: list[PVState] | None = None
        self._pos = 0
        self._todo_everything = False  # the flush in progress is of every PV, not begun
        self._todo_deleted: set[str] = set()
        self._next = time.monotonic() + interval
        # The writer counts the times it made the file again; the CA loop, the times it
        # flushed everything since. Two counters: neither thread writes the other's.
        # Until the first part of that flush comes, the writer writes nothing (what it
        # wrote first would come first in the new file, out of creation order).
        self._remade = self._everything_sent = 0
        self._awaiting_everything = False  # the writer thread's own
        self._generation = 0  # the CA loop's: the last `flush_now`
        self.committed = 0  # the writer thread's: every change up to it is in the file
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
            if now < self._next and self._remade == self._everything_sent:
                return
            self._start()
        self._hand(SNAPSHOTS_PER_TICK)

    @property
    def handing(self) -> bool:
        """A flush is being handed over in parts (see `tick`).

        The CA loop then must not idle between cycles: at one part per idle wait
        (IDLE, 0.2 s), 100,000 new PVs took 9 s to reach the file instead of ~2 s.
        """
        return self._todo is not None

    def flush(self) -> None:
        """Hand everything that changed to the writer thread, now."""
        if self._todo is not None:  # finish the flush in progress first
            self._hand(None)
        self._start()
        self._hand(None)

    def flush_now(self) -> int:
        """Hand everything that changed to the writer now; the generation that, once
        `committed` reaches it, says every change made before this call is in the file."""
        self._generation += 1
        self.flush()
        self._queue.put(({}, set(), False, self._generation))
        return self._generation

    def _start(self) -> None:
        self._next = time.monotonic() + self.interval
        # In the order the PVs were first touched: the store keeps creation order. A PV
        # changed again during the flush is in `_dirty` again, for the next one; a PV
        # deleted during it is saved by this one and deleted by the next (the writer
        # applies the parts in order).
        remade = self._remade
        self._todo_everything = remade != self._everything_sent
        if self._todo_everything:  # the file was made again: every PV
            self._everything_sent = remade
            self._todo = list(self._states())
        else:
            self._todo = list(self._dirty.values())
        self._pos = 0
        if self._left_out and self._dirty:
            reused = self._left_out.intersection(self._dirty)
            self._left_out -= reused
            self._deleted |= reused  # delete the old row first: the new one goes last
        self._todo_deleted, self._deleted = self._deleted, set()
        self._dirty = {}

    def _hand(self, limit: int | None) -> None:
        todo, start = self._todo or [], self._pos
        end = len(todo) if limit is None else min(len(todo), start + limit)
        deleted, self._todo_deleted = self._todo_deleted, set()
        if end >= len(todo):
            self._todo = None
        self._pos = end
        everything, self._todo_everything = self._todo_everything, False
        if end > start or deleted or everything:
            self._queue.put((snapshot_part(todo[start:end]), deleted, everything, 0))

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
        next_check = time.monotonic() + self.interval
        taken = 0  # the highest generation handed over so far
        while True:
            items = self._take()
            stopping = None in items  # stop() asked, after everything before it
            try:
                for item in items:
                    if item is not None:
                        saved, deleted, everything, generation = item
                        self._awaiting_everything &= not everything
                        pending.merge(dict(saved), set(deleted), everything)
                        taken = max(taken, generation)
                if stopping or time.monotonic() >= next_check:
                    next_check = time.monotonic() + self.interval
                    self._check_files(pending, stopping)
                if len(pending) and not self._awaiting_everything:
                    self._write(pending)
            except Exception as error:  # a bug: say so, keep the changes, go on
                self._failed(error, len(pending), bug=True)
            self.status.pending = len(pending)
            if not len(pending) and not self._awaiting_everything:
                self.committed = taken
            for _ in items:
                self._queue.task_done()
            if stopping:
                return

    def _take(self) -> list:
        """What the CA loop handed over: waits up to one interval for a first item (so
        that failed writes are retried and the files checked), then takes what queued
        up behind it (the parts of one flush arrive one CA cycle apart)."""
        items: list = []
        try:
            items.append(self._queue.get(timeout=self.interval))
            while items[-1] is not None:
                items.append(self._queue.get_nowait())
        except queue.Empty:
            pass
        return items

    def _write(self, pending: _Pending) -> None:
        while True:
            try:
                rows = [_row(name, snap) for name, snap in pending.saved.items()]
                self.store.write(rows, pending.deleted)
                break
            except RowError as error:  # that PV alone is left out: the rest are written
                if pending.saved.pop(error.name, None) is None:
                    raise  # not a row of ours: a bug elsewhere (never loop on it)
                self.status.failures += 1
                self._errors.log(logging.ERROR, "row", "autosave: %s left out of %s (%s, a "
                                 "bug in relayd); the other changes are written", error.name,
                                 self.store.path, error, exc_info=error)
            except (sqlite3.Error, OSError) as error:
                self._failed(error, len(pending))
                return
        if self.status.last_error:
            log.info("autosave to %s works again", self.store.path)
        self.status.saved += len(pending.saved)
        self.status.last_save = time.time()
        self.status.last_error = ""
        pending.saved.clear()
        pending.deleted.clear()

    def _failed(self, error: Exception, kept: int, bug: bool = False) -> None:
        """Count a failed write, show why in the status PVs, log it (rate-limited)."""
        self.status.failures += 1
        self.status.last_error = f"{type(error).__name__}: {error}"
        self._errors.log(logging.ERROR, "bug" if bug else "write",
                         "autosave to %s failed (%s%s); %d changes kept, retrying every %.1f s",
                         self.store.path, self.status.last_error,
                         ", a bug in relayd" if bug else "", kept, self.interval,
                         exc_info=error if bug else None)

    def _check_files(self, pending: _Pending, stopping: bool) -> None:
        """Make the store's file again if it was deleted or replaced (then the CA loop
        hands every PV over), and its lock file if that went."""
        store = self.store
        problem = store.changed()
        if problem is not None:
            try:
                aside = store.reopen()
            except (sqlite3.Error, OSError, ValueError) as error:
                self._failed(error, len(pending))  # tried again at the next check
            else:
                self._remade += 1
                self._awaiting_everything = True
                log.warning("autosave file %s: %s while relayd ran; made it again%s, and "
                            "every PV is written to it again", store.path, problem,
                            f" (what was there is now {aside})" if aside else "")
        if stopping and self._remade != self._everything_sent:
            # Made again after the last flush of everything, and no flush comes now. The
            # CA loop waits in `stop` meanwhile: its PVs hold still, read them here.
            pending.merge({state.spec.name: snapshot(state) for state in self._states()},
                          set(), everything=True)
            self._awaiting_everything = False
        if store.lock_lost():
            try:
                store.relock()
            except (BootError, OSError) as error:  # InUse: another relay took it
                self._errors.log(logging.ERROR, "lock", "autosave: the lock file of %s was "
                                 "deleted while relayd ran, and cannot be taken again: %s",
                                 store.path, error)
            else:
                log.warning("autosave: the lock file of %s was deleted or replaced while "
                            "relayd ran; made it again", store.path)

    def wait_idle(self, timeout: float) -> bool:
        """Wait until the writer has handled everything handed to it (for tests/tools)."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True
