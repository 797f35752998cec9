"""The autosave database: one SQLite file that holds every PV of one relay.

One table, ``pvs``, holds each PV's definition, value (a buffer's whole content), time
stamp and non-default attributes (`rows.SavedPV`); the schema version is SQLite's
``user_version``, and `Store.open` upgrades an older file step by step (`MIGRATIONS`).
The file is in WAL mode with ``synchronous=NORMAL``: a transaction is durable once
committed as far as a killed process is concerned (a power cut may lose the last ones),
and a kill at any moment leaves a consistent file. `writer.Autosaver` feeds it from the
CA process; `cli` exports and imports it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sqlite3
import struct
import time
from typing import Iterable

from relayd.core.errors import BootError
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
