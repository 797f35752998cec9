"""Autosave: every PV kept in SQLite, so that a restart brings the relay back whole.

`Store` is the database. One table, ``pvs``, holds each PV's definition, value (a
buffer's whole content), time stamp and non-default attributes (`saved.SavedPV`); the
schema version is SQLite's ``user_version``, and `Store.open` upgrades an older file
step by step (`MIGRATIONS`). The file is in WAL mode with ``synchronous=NORMAL``: a
transaction is durable once committed as far as a killed process is concerned (a power
cut may lose the last ones), and a kill at any moment leaves a consistent file.

`Autosaver` keeps saving off the hot path. A put only notes its PV as dirty (one dict
assignment). Every `interval` seconds the CA loop takes a snapshot of the dirty PVs,
cheap because values are immutable or copied only for buffers, and hands it to a writer
thread, which encodes the rows and writes them in one transaction while the CA loop
goes on. A failed write (disk full, read-only path) is kept, merged with newer changes,
and retried every interval; the failure shows in the status PVs and the log, and the
relay keeps serving. `stop` writes everything still pending before it returns: a clean
stop loses nothing.
"""

from __future__ import annotations

import json
import logging
import math
import os
import queue
import sqlite3
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Iterable

from relayd.errors import BootError
from relayd.logs import RateLimitedLog
from relayd.pvstate import PVState
from relayd.saved import SavedPV, make

log = logging.getLogger("relayd.autosave")

SCHEMA_VERSION = 1

_CREATE_V1 = """
CREATE TABLE pvs (
    name   TEXT PRIMARY KEY,
    kind   TEXT NOT NULL,      -- f, i or c
    count  INTEGER NOT NULL,
    buffer INTEGER NOT NULL,   -- 1 for F/I/C buffers
    value,                     -- number, or little-endian bytes of the elements / text
    ts_ns  INTEGER NOT NULL,   -- the value's time stamp, POSIX nanoseconds
    attrs  TEXT NOT NULL       -- JSON of the attributes that differ from the defaults
)
"""

# How to bring a file at version N up to N + 1. A newer relayd opens an older file.
MIGRATIONS = {0: (_CREATE_V1,)}


def default_path(prefix: str, environ: dict | None = None) -> str:
    """Where autosave keeps a relay's PVs unless told: one file per prefix, named by it
    as it is (a prefix holds only letters, digits, '_', '-' and ':', all fine in a file
    name), so two prefixes never share a file."""
    environ = os.environ if environ is None else environ
    state_home = environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return os.path.join(state_home, "relayd", f"{prefix}.sqlite")


class Store:
    """The autosave database."""

    def __init__(self, connection: sqlite3.Connection, path: str):
        self.connection = connection
        self.path = path

    @classmethod
    def open(cls, path: str, reset: bool = False) -> "Store":
        """Open (creating or upgrading) the store; `BootError` with one line if unusable.

        With `reset`, an unreadable or corrupt file is moved aside (its name gets
        ``.corrupt-<time>``) and an empty store is started instead.
        """
        try:
            return cls._open(path)
        except (sqlite3.Error, OSError, ValueError) as error:
            if not reset or not os.path.exists(path):
                raise BootError(f"autosave file {path} is unusable: {error}") from None
            aside = f"{path}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}"
            for suffix in ("", "-wal", "-shm"):
                if os.path.exists(path + suffix):
                    os.replace(path + suffix, aside + suffix)
            log.warning("autosave file %s was unusable (%s); moved to %s, starting empty",
                        path, error, aside)
            try:
                return cls._open(path)
            except (sqlite3.Error, OSError, ValueError) as again:
                raise BootError(f"autosave file {path} is unusable: {again}") from None

    @classmethod
    def _open(cls, path: str) -> "Store":
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        try:
            # The version first: a file this relayd does not know is not touched.
            version = connection.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise ValueError(f"it was written by a newer relayd (schema {version}, "
                                 f"this relayd knows up to {SCHEMA_VERSION})")
            connection.execute("PRAGMA journal_mode=WAL").fetchone()
            connection.execute("PRAGMA synchronous=NORMAL")
            while version < SCHEMA_VERSION:
                connection.execute("BEGIN")
                for statement in MIGRATIONS[version]:
                    connection.execute(statement)
                version += 1
                connection.execute(f"PRAGMA user_version = {version}")
                connection.execute("COMMIT")
            # A quick check reads every page: corruption is found now, not at restore.
            problem = connection.execute("PRAGMA quick_check").fetchone()[0]
            if problem != "ok":
                raise ValueError(f"integrity check failed: {problem}")
        except BaseException:
            connection.close()
            raise
        return cls(connection, path)

    def load(self) -> list[SavedPV]:
        rows = self.connection.execute(
            "SELECT name, kind, count, buffer, value, ts_ns, attrs FROM pvs ORDER BY rowid"
        )
        return [SavedPV(name, kind, count, bool(buffer), _from_sql(kind, count, buffer, value),
                        ts_ns, json.loads(attrs))
                for name, kind, count, buffer, value, ts_ns, attrs in rows]

    def write(self, saved: Iterable[SavedPV], deleted: Iterable[str]) -> None:
        """One transaction: remove `deleted`, then insert or update `saved`."""
        connection = self.connection
        connection.execute("BEGIN")
        try:
            connection.executemany("DELETE FROM pvs WHERE name = ?", ((n,) for n in deleted))
            # An upsert keeps a PV's row (and rowid) so that the store, and the relay
            # restored from it, keep the PVs in creation order.
            connection.executemany(
                "INSERT INTO pvs (name, kind, count, buffer, value, ts_ns, attrs) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET "
                "kind = excluded.kind, count = excluded.count, buffer = excluded.buffer, "
                "value = excluded.value, ts_ns = excluded.ts_ns, attrs = excluded.attrs",
                ((s.name, s.kind, s.count, int(s.buffer), _to_sql(s.value), s.ts_ns,
                  json.dumps(s.attrs, sort_keys=True)) for s in saved),
            )
            connection.execute("COMMIT")
        except BaseException:
            # SQLite may have ended the transaction itself (a full disk does), and a
            # ROLLBACK then would replace the real error with "no transaction is active".
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise

    def replace_all(self, saved: Iterable[SavedPV]) -> None:
        """Make the store hold exactly `saved` (for import)."""
        self.connection.execute("DELETE FROM pvs")
        self.write(saved, ())

    def close(self) -> None:
        self.connection.close()


_NAN = struct.pack("<d", math.nan)


def _to_sql(value: object) -> object:
    """A saved value as SQLite stores it: SQLite turns a NaN REAL into NULL, so a NaN
    scalar is kept as its 8 bytes instead."""
    if isinstance(value, float) and math.isnan(value):
        return struct.pack("<d", value)
    return value


def _from_sql(kind: str, count: int, buffer: int, value: object) -> object:
    if kind == "f" and count == 1 and not buffer and isinstance(value, bytes) and len(value) == 8:
        return struct.unpack("<d", value)[0]
    return value


# --- saving from the CA loop ------------------------------------------------------------

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
        todo, start = self._todo, self._pos
        assert todo is not None
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
