"""The autosave database: one SQLite file that holds every PV of one relay.

One table, ``pvs``, holds each PV's definition, value (a buffer's whole content), time
stamp and non-default attributes (`rows.SavedPV`); the schema version is SQLite's
``user_version``, and `Store.open` upgrades an older file step by step (`MIGRATIONS`).
The file is in WAL mode with ``synchronous=NORMAL``: a transaction is durable once
committed as far as a killed process is concerned (a power cut may lose the last ones),
and a kill at any moment leaves a consistent file. `writer.Autosaver` feeds it from the
CA process; `cli` exports and imports it.

A relay's CA process holds the store's lock (`lock.StoreLock`) for its whole life, so a
second relay cannot use the same file. A file deleted or replaced under a running relay
would silently take every later write with it: `Store.changed` notices, `Store.reopen`
makes the file again (the writer checks every interval and then writes every PV).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sqlite3
import struct
import time
from typing import Iterable

from relayd.core.errors import BootError
from relayd.store.lock import StoreLock
from relayd.store.rows import SavedPV

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


COLUMNS = ["name", "kind", "count", "buffer", "value", "ts_ns", "attrs"]
# The files of one store in WAL mode; all three exist while a connection is open.
SUFFIXES = ("", "-wal", "-shm")

Identity = tuple  # (st_dev, st_ino) of each of a store's files, None for a missing one


class Store:
    """The autosave database, and (for a relay's CA process or an import) its lock."""

    def __init__(self, connection: sqlite3.Connection, path: str,
                 lock: StoreLock | None = None):
        self.connection = connection
        self.path = path
        self.lock = lock
        self._files = _identity(path)  # the files as opened: see `changed`

    @classmethod
    def open(cls, path: str, reset: bool = False, lock: bool = False) -> "Store":
        """Open (creating or upgrading) the store; `BootError` with one line if unusable.

        With `lock`, the store's lock is taken first (see `lock`): `InUse`, a BootError
        naming the holder's pid, if another process holds it. With `reset`, an
        unreadable or corrupt file is moved aside (its name gets ``.corrupt-<time>``) and
        an empty store is started instead.
        """
        held = _take_lock(path) if lock else None
        try:
            return cls(_open_or_reset(path, reset), path, held)
        except BaseException:
            if held is not None:
                held.release()
            raise

    def load(self) -> list[SavedPV]:
        """Every row as it is in the file, whatever a column holds: `rows.restore` is
        the judge, so that one bad row is left out instead of failing the load.
        `BootError` naming the file if SQLite cannot read it (an I/O error, pages that
        went bad since `open` checked them)."""
        try:
            try:
                return self._load()
            except sqlite3.OperationalError:
                # TEXT that is not UTF-8 (SQLite allows it): read again, more slowly, with
                # such text as bytes, which `rows.restore` refuses as a name or attrs.
                self.connection.text_factory = _text
                try:
                    return self._load()
                finally:
                    self.connection.text_factory = str
        except sqlite3.Error as error:
            raise BootError(f"autosave file {self.path} is unusable: {error}") from None

    def _load(self) -> list[SavedPV]:
        rows = self.connection.execute(
            "SELECT name, kind, count, buffer, value, ts_ns, attrs FROM pvs ORDER BY rowid"
        )
        return [SavedPV(name, kind, count, _flag(buffer), _from_sql(kind, count, buffer, value),
                        ts_ns, _json(attrs))
                for name, kind, count, buffer, value, ts_ns, attrs in rows]

    def write(self, saved: Iterable[SavedPV], deleted: Iterable[str]) -> None:
        """One transaction: remove `deleted`, then insert or update `saved`."""
        self._transaction(saved, "DELETE FROM pvs WHERE name = ?", [(n,) for n in deleted])

    def replace_all(self, saved: Iterable[SavedPV]) -> None:
        """Make the store hold exactly `saved` (for import), in one transaction: if it
        fails, the store holds what it held."""
        self._transaction(saved, "DELETE FROM pvs", [()])

    def _transaction(self, saved: Iterable[SavedPV], delete: str, deleted: list) -> None:
        connection = self.connection
        connection.execute("BEGIN")
        try:
            connection.executemany(delete, deleted)
            # An upsert keeps a PV's row (and rowid) so that the store, and the relay
            # restored from it, keep the PVs in creation order.
            connection.executemany(
                "INSERT INTO pvs (name, kind, count, buffer, value, ts_ns, attrs) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET "
                "kind = excluded.kind, count = excluded.count, buffer = excluded.buffer, "
                "value = excluded.value, ts_ns = excluded.ts_ns, attrs = excluded.attrs",
                map(encode_row, saved),
            )
            connection.execute("COMMIT")
        except BaseException:
            # SQLite may have ended the transaction itself (a full disk does), and a
            # ROLLBACK then would replace the real error with "no transaction is active".
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise

    # --- the files under a running relay ---------------------------------------------

    def changed(self) -> str | None:
        """What became of the store's files since they were opened, or None.

        A connection writes on through its open files after they are deleted or
        replaced: nothing fails, and nothing reaches the file the next start reads.
        """
        for suffix, was, now in zip(SUFFIXES, self._files, _identity(self.path)):
            if now != was:
                what = "the file" if not suffix else f"its {suffix} file"
                return f"{what} was {'deleted' if now is None else 'replaced'}"
        return None

    def reopen(self) -> str | None:
        """Open the store afresh at its path, after `changed` found its files gone or
        replaced. A file of someone else's found at the path is moved aside (its name
        gets ``.replaced-<time>``): returns where, if so. Raises what `open` would."""
        try:
            # SQLite neither checkpoints nor deletes the -wal of a moved or deleted file.
            self.connection.close()
        except sqlite3.Error:
            pass
        found = _identity(self.path)
        main_gone = found[0] is None
        for suffix, was, now in zip(SUFFIXES[1:], self._files[1:], found[1:]):
            # Ours, of the old file, or without any file: a new file must not take it.
            if now is not None and (now == was or main_gone):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path + suffix)
        aside = None
        if not main_gone and found[0] != self._files[0]:
            aside = _aside(self.path, "replaced")  # with its own -wal and -shm, if any
        self.connection = _open(self.path)
        self._files = _identity(self.path)
        return aside

    def lock_lost(self) -> bool:
        """Whether the lock file was deleted or replaced (another relay could lock a new
        one there); `relock` takes a new one."""
        return self.lock is not None and not self.lock.intact()

    def relock(self) -> None:
        if self.lock is not None:
            self.lock = self.lock.renew()

    def close(self) -> None:
        self.connection.close()
        if self.lock is not None:
            self.lock.release()
            self.lock = None


def _take_lock(path: str) -> StoreLock:
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        return StoreLock.take(path)
    except OSError as error:
        raise BootError(f"autosave file {path} is unusable: its lock file: "
                        f"{error.strerror or error}") from None


def _open_or_reset(path: str, reset: bool) -> sqlite3.Connection:
    try:
        return _open(path)
    except (sqlite3.Error, OSError, ValueError) as error:
        if not reset or not os.path.exists(path):
            raise BootError(f"autosave file {path} is unusable: {error}") from None
        aside = _aside(path, "corrupt")
        log.warning("autosave file %s was unusable (%s); moved to %s, starting empty",
                    path, error, aside)
        try:
            return _open(path)
        except (sqlite3.Error, OSError, ValueError) as again:
            raise BootError(f"autosave file {path} is unusable: {again}") from None


def _open(path: str) -> sqlite3.Connection:
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
        _check_table(connection)
        # A quick check reads every page: corruption is found now, not at restore.
        problem = connection.execute("PRAGMA quick_check").fetchone()[0]
        if problem != "ok":
            raise ValueError(f"integrity check failed: {problem}")
    except BaseException:
        connection.close()
        raise
    return connection


def _check_table(connection: sqlite3.Connection) -> None:
    """ValueError unless the table is one this relayd can read and write (a file of the
    right version made by another tool may hold anything)."""
    table = connection.execute("PRAGMA table_info(pvs)").fetchall()
    columns = [column[1] for column in table]
    if not table:
        raise ValueError("it has no table pvs")
    if columns != COLUMNS:
        raise ValueError(f"its table pvs has the columns {columns}, not {COLUMNS}")
    if [column[1] for column in table if column[5]] != ["name"]:
        raise ValueError("the key of its table pvs is not the name alone")


def _identity(path: str) -> Identity:
    """(st_dev, st_ino) of the store's file, its -wal and its -shm; None if missing."""
    found = []
    for suffix in SUFFIXES:
        try:
            status = os.stat(path + suffix)
        except OSError:  # gone, or its directory gone (or made a file)
            found.append(None)
        else:
            found.append((status.st_dev, status.st_ino))
    return tuple(found)


def _aside(path: str, why: str) -> str:
    """Move the store's files out of the way, to ``<path>.<why>-<time>``; where to."""
    aside = f"{path}.{why}-{time.strftime('%Y%m%dT%H%M%S')}"
    for suffix in SUFFIXES:
        if os.path.exists(path + suffix):
            os.replace(path + suffix, aside + suffix)
    return aside


_NAN = struct.pack("<d", math.nan)


class RowError(ValueError):
    """One PV's row cannot be encoded (a bug: rows are checked before they get here).
    `name` says which; the transaction it was in is rolled back."""

    def __init__(self, name: str, error: Exception):
        super().__init__(f"the row of {name} cannot be encoded: {type(error).__name__}: "
                         f"{error}")
        self.name = name


def encode_row(s: SavedPV) -> tuple:
    """`s` as the parameters of its INSERT; `RowError` if it cannot be."""
    try:
        return (s.name, s.kind, s.count, int(s.buffer), _to_sql(s.value), s.ts_ns,
                json.dumps(s.attrs, sort_keys=True))
    except (TypeError, ValueError, OverflowError, AttributeError) as error:
        raise RowError(str(s.name), error) from error


def _to_sql(value: object) -> object:
    """A saved value as SQLite stores it: SQLite turns a NaN REAL into NULL, so a NaN
    scalar is kept as its 8 bytes instead."""
    if isinstance(value, float) and math.isnan(value):
        return struct.pack("<d", value)
    return value


def _from_sql(kind: object, count: object, buffer: object, value: object) -> object:
    if kind == "f" and count == 1 and not buffer and isinstance(value, bytes) and len(value) == 8:
        return struct.unpack("<d", value)[0]
    return value


def _flag(buffer: object) -> object:
    """The buffer column as a bool when it is 0 or 1 (SQLite has no bool), else as is."""
    return bool(buffer) if type(buffer) is int and buffer in (0, 1) else buffer


def _json(attrs: object) -> object:
    """The attrs column decoded from JSON; as it is when it is not JSON."""
    if isinstance(attrs, (str, bytes)):
        try:
            return json.loads(attrs)
        except (ValueError, RecursionError):
            return attrs
    return attrs


def _text(data: bytes) -> str | bytes:
    """A TEXT value as str; as bytes when it is not UTF-8 (which SQLite allows), so
    that reading such a row does not fail the whole load."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data
