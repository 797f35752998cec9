"""The autosave database and the saver that feeds it (relayd.autosave).

`Store` is tested on real SQLite files in tmp_path. `Autosaver` is tested with live
`PVState`s and a real store; a store that fails on demand (`FlakyStore`) stands in for a
full disk, since the store is a plain class, not a protocol.
"""

from __future__ import annotations

from dataclasses import replace
import logging
import math
import os
import queue
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import numpy as np
import pytest

from relayd import config
from relayd.store.paths import default_path
from relayd.store.sqlite import MIGRATIONS, SCHEMA_VERSION, Store
from relayd.store import writer
from relayd.store.lock import InUse, StoreLock
from relayd.store.writer import Autosaver
from relayd.core.errors import BootError, Refused
from relayd.core.meta import DEFAULT_META, Meta
from relayd.core.names import Grammar
from relayd.core.pvstate import PVState, new_state
from relayd.store.rows import SavedPV, from_state, restore
from relayd.core.values import convert
from tests.harness import wait_for

G = Grammar("P")
TS = 1_700_000_000_000_000_001


def saved(base: str, value: object = 1.0, ts_ns: int = TS, **attrs: object) -> SavedPV:
    spec = G.parse(f"P:{base}")
    assert spec is not None
    if isinstance(value, list):
        value = np.asarray(value, dtype="<f8" if spec.kind.value == "f" else "<i4").tobytes()
    return SavedPV(spec.name, spec.kind.value, spec.count, spec.buffer, value, ts_ns, attrs)


def state(base: str, *puts: object, meta: Meta = DEFAULT_META) -> PVState:
    spec = G.parse(f"P:{base}")
    assert spec is not None
    result = new_state(spec, meta)
    for i, raw in enumerate(puts):
        result.put(convert(spec, raw), TS + i)
    return result


def put(target: PVState, raw: object) -> None:
    target.put(convert(target.spec, raw), target.ts_ns + 1)


def names(store: Store) -> list[str]:
    return [item.name.split(":", 1)[1] for item in store.load()]


def reopen(path: Path) -> list[SavedPV]:
    """What a new relay would restore from `path`."""
    store = Store.open(str(path))
    try:
        return store.load()
    finally:
        store.close()


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "relay.sqlite"


@pytest.fixture
def store(path: Path):
    opened = Store.open(str(path))
    yield opened
    opened.close()


# --- the store ----------------------------------------------------------------------------


def test_open_creates_the_file_and_its_directory_at_the_current_schema(path: Path) -> None:
    assert not path.parent.exists()
    Store.open(str(path)).close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"  # kept in the file
        columns = [row[1] for row in db.execute("PRAGMA table_info(pvs)")]
    assert columns == ["name", "kind", "count", "buffer", "value", "ts_ns", "attrs"]
    assert reopen(path) == []


def test_the_store_is_in_wal_mode_with_normal_sync(store: Store) -> None:
    assert store.connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.connection.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL


def test_write_and_load(store: Store, path: Path) -> None:
    rows = [
        saved("a_f1", 21.5, egu="K", prec=2),
        saved("b_i1", -(2**31)),
        saved("c_c10", b"\xff text"),
        saved("d_f3", [1.0, math.nan, -math.inf]),
        saved("e_I4", [3, 4]),
        saved("f_f1", math.inf, ts_ns=2**63 - 1),
    ]
    store.write(rows, ())
    assert store.load() == rows
    assert reopen(path) == rows


def test_a_nan_scalar_survives_the_store(store: Store) -> None:
    store.write([saved("nan_f1", math.nan)], ())
    value = store.load()[0].value
    assert isinstance(value, float) and math.isnan(value)


def test_an_update_keeps_the_creation_order(store: Store) -> None:
    store.write([saved("a_f1"), saved("b_f1"), saved("c_f1")], ())
    store.write([saved("b_f1", 2.0, egu="V"), saved("d_f1")], ())
    assert names(store) == ["a_f1", "b_f1", "c_f1", "d_f1"]
    assert store.load()[1] == saved("b_f1", 2.0, egu="V")


def test_delete(store: Store) -> None:
    store.write([saved("a_f1"), saved("b_f1"), saved("c_f1")], ())
    store.write((), ["P:b_f1", "P:never_f1"])  # deleting a name not stored is no error
    assert names(store) == ["a_f1", "c_f1"]


def test_deleted_then_created_again_goes_last(store: Store) -> None:
    store.write([saved("a_f1"), saved("b_f1")], ())
    store.write([saved("a_f1", 5.0)], ["P:a_f1"])  # deletes first, then inserts
    assert names(store) == ["b_f1", "a_f1"]


def test_a_failed_write_changes_nothing(store: Store) -> None:
    store.write([saved("a_f1"), saved("b_f1")], ())
    broken = SavedPV("P:c_f1", None, 1, False, 1.0, TS, {})  # type: ignore[arg-type]
    with pytest.raises(sqlite3.IntegrityError):
        store.write([saved("a_f1", 9.0), broken], ["P:b_f1"])
    assert store.load() == [saved("a_f1"), saved("b_f1")]
    store.write([saved("c_f1")], ())  # the connection is usable afterwards
    assert names(store) == ["a_f1", "b_f1", "c_f1"]


def fill_up(store: Store) -> None:
    """Let the database grow by two pages at most: SQLite then answers SQLITE_FULL."""
    pages = store.connection.execute("PRAGMA page_count").fetchone()[0]
    store.connection.execute(f"PRAGMA max_page_count = {pages + 2}")


def test_a_full_database_keeps_what_it_had_and_works_again(store: Store) -> None:
    store.write([saved("a_f1")], ())
    fill_up(store)
    with pytest.raises(sqlite3.OperationalError):
        store.write([saved("big_f100000", [0.0] * 100_000)], ["P:a_f1"])
    assert store.load() == [saved("a_f1")]
    store.connection.execute("PRAGMA max_page_count = 1073741823")
    store.write([saved("big_f100000", [0.0] * 100_000)], ["P:a_f1"])
    assert names(store) == ["big_f100000"]


def test_a_full_database_is_reported_as_full(store: Store) -> None:
    store.write([saved("a_f1")], ())
    fill_up(store)
    with pytest.raises(sqlite3.OperationalError, match="full"):
        store.write([saved("big_f100000", [0.0] * 100_000)], ())


def test_a_failed_replace_all_changes_nothing(store: Store) -> None:
    """The delete of the old rows is part of the transaction that writes the new ones."""
    store.write([saved("a_f1"), saved("b_f1")], ())
    broken = SavedPV("P:c_f1", None, 1, False, 1.0, TS, {})  # type: ignore[arg-type]
    with pytest.raises(sqlite3.IntegrityError):
        store.replace_all([saved("c_f1"), broken])
    assert store.load() == [saved("a_f1"), saved("b_f1")]
    assert reopen(Path(store.path)) == [saved("a_f1"), saved("b_f1")]


def test_replace_all(store: Store) -> None:
    store.write([saved("a_f1"), saved("b_f1")], ())
    store.replace_all([saved("c_f1"), saved("a_f1", 3.0)])
    assert store.load() == [saved("c_f1"), saved("a_f1", 3.0)]
    store.replace_all([])
    assert store.load() == []


def test_a_reader_beside_the_writer_sees_whole_transactions(store: Store, path: Path) -> None:
    store.write([saved("a_f1")], ())
    reader = Store.open(str(path))
    try:
        store.connection.execute("BEGIN")
        store.connection.execute("DELETE FROM pvs")
        assert names(reader) == ["a_f1"]  # not committed: not seen
        store.connection.execute("COMMIT")
        assert names(reader) == []
    finally:
        reader.close()


# --- schema versions ------------------------------------------------------------------------


def test_every_older_version_has_a_migration() -> None:
    assert sorted(MIGRATIONS) == list(range(SCHEMA_VERSION))


@pytest.mark.parametrize("how", ["empty file", "sqlite file without tables"])
def test_a_file_at_version_0_is_upgraded(path: Path, how: str) -> None:
    path.parent.mkdir(parents=True)
    if how == "empty file":
        path.write_bytes(b"")
    else:
        with sqlite3.connect(path) as db:
            db.execute("CREATE TABLE scratch (x)")
            db.execute("DROP TABLE scratch")
        assert path.stat().st_size > 0
    store = Store.open(str(path))
    try:
        assert store.connection.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        store.write([saved("a_f1")], ())
    finally:
        store.close()
    assert reopen(path) == [saved("a_f1")]


def test_a_file_of_a_newer_relayd_is_refused_and_left_alone(path: Path) -> None:
    path.parent.mkdir(parents=True)
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE future (x)")
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(BootError) as info:
        Store.open(str(path))
    message = str(info.value)
    assert "\n" not in message and str(path) in message and "newer relayd" in message
    with sqlite3.connect(path) as db:  # not migrated, not emptied
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1
        assert [row[0] for row in db.execute("SELECT name FROM sqlite_master")] == ["future"]


GARBAGE = b"this is not an SQLite database\n" * 200


def test_a_garbage_file_is_refused_with_one_line(path: Path) -> None:
    path.parent.mkdir(parents=True)
    path.write_bytes(GARBAGE)
    with pytest.raises(BootError) as info:
        Store.open(str(path))
    message = str(info.value)
    assert "\n" not in message and str(path) in message and "not a database" in message
    assert path.read_bytes() == GARBAGE  # nothing touched without reset
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


def corrupt_pages(path: Path, after_open: bool = False) -> None:
    """A store whose header is valid and some of whose pages are not; `after_open`: they
    go bad after a store was opened, and its load fails with one line naming the file."""
    store = Store.open(str(path))
    store.write([saved(f"pv{i}_f100", [float(i)] * 100) for i in range(200)], ())
    store.connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.close()
    opened = Store.open(str(path)) if after_open else None
    data = bytearray(path.read_bytes())
    page = 4096
    assert len(data) > 10 * page
    data[5 * page:8 * page] = b"\xa5" * (3 * page)
    with open(path, "r+b") as file:  # in place: the same file for the opened store
        file.write(bytes(data))
    if opened is not None:
        opened.connection.execute("PRAGMA shrink_memory")  # read from the file, not its cache
        with pytest.raises(BootError) as info:
            opened.load()
        assert "\n" not in str(info.value) and str(path) in str(info.value)
        opened.close()


def test_a_corrupt_page_is_found_at_open(path: Path) -> None:
    corrupt_pages(path)
    with pytest.raises(BootError) as info:
        Store.open(str(path))
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_reset_moves_a_garbage_file_aside_and_starts_empty(path: Path) -> None:
    path.parent.mkdir(parents=True)
    path.write_bytes(GARBAGE)
    store = Store.open(str(path), reset=True)
    try:
        assert store.load() == []
        store.write([saved("a_f1")], ())
    finally:
        store.close()
    aside = [p for p in path.parent.iterdir() if ".corrupt-" in p.name]
    assert len(aside) == 1 and aside[0].name.startswith(path.name + ".corrupt-")
    assert aside[0].read_bytes() == GARBAGE
    assert reopen(path) == [saved("a_f1")]


def test_reset_moves_a_file_with_corrupt_pages_aside(path: Path) -> None:
    corrupt_pages(path)
    store = Store.open(str(path), reset=True)
    store.close()
    assert reopen(path) == []
    assert [p for p in path.parent.iterdir() if p.name.startswith(path.name + ".corrupt-")]


def test_reset_leaves_a_good_file_alone(path: Path) -> None:
    Store.open(str(path)).write([saved("a_f1")], ())
    store = Store.open(str(path), reset=True)
    store.close()
    assert reopen(path) == [saved("a_f1")]
    assert not [p for p in path.parent.iterdir() if ".corrupt-" in p.name]


def test_an_unusable_path_is_a_boot_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    for reset in (False, True):
        with pytest.raises(BootError) as info:
            Store.open(str(blocker / "relay.sqlite"), reset=reset)
        assert "\n" not in str(info.value) and str(blocker) in str(info.value)


# --- where the store lives -------------------------------------------------------------------


def test_default_path() -> None:
    assert default_path("lab:bl1", {"XDG_STATE_HOME": "/var/state"}) == \
        "/var/state/relayd/lab:bl1.sqlite"
    home = os.path.expanduser("~")
    assert default_path("relay", {}) == f"{home}/.local/state/relayd/relay.sqlite"
    assert default_path("relay", {"XDG_STATE_HOME": ""}) == \
        f"{home}/.local/state/relayd/relay.sqlite"


def test_two_prefixes_never_share_a_default_file() -> None:
    assert default_path("lab:bl1", {}) != default_path("lab_bl1", {})


def test_options_in_the_config_file(tmp_path: Path) -> None:
    toml = tmp_path / "relayd.toml"
    toml.write_text('[relayd]\nautosave = "/var/lib/relayd/relay.sqlite"\n'
                    'autosave_interval = 0.5\n')
    parsed = config.parse(["--config", str(toml)])
    assert parsed.autosave_path == "/var/lib/relayd/relay.sqlite"
    assert parsed.autosave_interval == 0.5
    toml.write_text("no_autosave = true\n")
    assert config.parse(["--config", str(toml)]).autosave_path is None


def test_options() -> None:
    assert config.parse([]).autosave_interval == 1.0
    assert config.parse(["--prefix", "x"]).autosave_path == default_path("x")
    chosen = config.parse(["--autosave", "/tmp/x.sqlite", "--autosave-interval", "0.2",
                           "--autosave-reset"])
    assert chosen.autosave_path == "/tmp/x.sqlite"
    assert chosen.autosave_interval == 0.2 and chosen.autosave_reset is True
    assert config.parse(["--no-autosave", "--autosave", "/tmp/x.sqlite"]).autosave_path is None
    for bad in ("0", "-1", "61"):
        with pytest.raises((SystemExit, ValueError)):
            config.parse(["--autosave-interval", bad])


# --- the autosaver ----------------------------------------------------------------------------


class FlakyStore(Store):
    """A store whose writes fail while `failing` is set, as on a full disk."""

    failing = False
    attempts = 0

    def write(self, saved, deleted) -> None:
        self.attempts += 1
        if self.failing:
            raise sqlite3.OperationalError("database or disk is full")
        super().write(saved, deleted)


class GatedStore(Store):
    """A store whose writes wait for `gate`, to change states while a save is under way."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.gate = threading.Event()
        self.entered = threading.Event()

    def write(self, saved, deleted) -> None:
        self.entered.set()
        assert self.gate.wait(10)
        super().write(saved, deleted)


INTERVAL = 0.05


@pytest.fixture
def saver(path: Path):
    """An autosaver on a real store; stopped at the end if the test did not."""
    made: list[Autosaver] = []

    def make(store_class: type[Store] = Store, interval: float = INTERVAL,
             states: list[PVState] | None = None, lock: bool = False) -> Autosaver:
        everything = [] if states is None else states
        made.append(Autosaver(store_class.open(str(path), lock=lock), interval,
                              lambda: everything))
        return made[-1]

    yield make
    for autosaver in made:
        autosaver.stop(5)


def test_nothing_is_written_before_a_flush(saver, path: Path) -> None:
    autosaver = saver(interval=60)
    autosaver.touch(state("a_f1", 1.0))
    time.sleep(0.1)
    assert reopen(path) == []
    assert autosaver.status.enabled and autosaver.status.last_save == 0.0


def test_a_flush_writes_the_latest_state(saver, path: Path) -> None:
    autosaver = saver()
    a, b = state("a_f1", 1.0), state("b_F3", [1.0])
    autosaver.touch(a)
    autosaver.touch(b)
    put(a, 2.0)
    put(b, [2.0, 3.0, 4.0])
    before = time.time()
    autosaver.flush()
    assert autosaver.wait_idle(5)
    assert reopen(path) == [from_state(a), from_state(b)]
    assert reopen(path)[1].value == np.array([2.0, 3.0, 4.0]).tobytes()
    assert autosaver.status.last_save >= before
    assert autosaver.status.saved == 2 and autosaver.status.failures == 0


def test_tick_flushes_once_the_interval_has_passed(saver, path: Path) -> None:
    autosaver = saver(interval=0.2)
    a = state("a_f1", 1.0)
    autosaver.touch(a)
    autosaver.tick(time.monotonic())  # too early
    time.sleep(0.1)
    assert reopen(path) == []
    autosaver.tick(time.monotonic() + 0.2)
    assert autosaver.wait_idle(5)
    assert reopen(path) == [from_state(a)]


def test_forget_removes_the_pv(saver, path: Path) -> None:
    autosaver = saver()
    a, b = state("a_f1", 1.0), state("b_f1", 2.0)
    autosaver.touch(a)
    autosaver.touch(b)
    autosaver.flush()
    assert autosaver.wait_idle(5)
    autosaver.forget(a.spec.name)
    autosaver.flush()
    assert autosaver.wait_idle(5)
    assert reopen(path) == [from_state(b)]


def test_a_pv_changed_then_deleted_before_a_flush_is_not_written(saver, path: Path) -> None:
    autosaver = saver()
    a = state("a_f1", 1.0)
    autosaver.touch(a)
    autosaver.forget(a.spec.name)
    autosaver.flush()
    assert autosaver.wait_idle(5)
    assert reopen(path) == []


def test_a_pv_deleted_and_created_again_goes_last(saver, path: Path) -> None:
    autosaver = saver()
    a, b = state("a_f1", 1.0), state("b_f1", 2.0)
    autosaver.touch(a)
    autosaver.touch(b)
    autosaver.flush()
    assert autosaver.wait_idle(5)
    again = state("a_f1", 3.0)  # the relay's pvlist is now b_f1, a_f1
    autosaver.forget(a.spec.name)
    autosaver.touch(again)
    autosaver.flush()
    assert autosaver.wait_idle(5)
    assert [item.name for item in reopen(path)] == ["P:b_f1", "P:a_f1"]


def test_a_large_flush_is_handed_over_a_few_cycles_in_creation_order(saver, path: Path,
                                                                      monkeypatch) -> None:
    """The CA loop snapshots at most SNAPSHOTS_PER_TICK PVs per cycle; nothing is lost or
    reordered, and a PV deleted and created again in the middle still ends up last."""
    monkeypatch.setattr(writer, "SNAPSHOTS_PER_TICK", 10)
    autosaver = saver(interval=0.05)
    states = [state(f"pv{i}_f1", float(i)) for i in range(35)]
    for item in states:
        autosaver.touch(item)
    time.sleep(0.06)
    autosaver.tick(time.monotonic())            # the first 10
    assert autosaver.wait_idle(5)
    assert [row.name for row in reopen(path)] == [s.spec.name for s in states[:10]]
    # pv3 (saved) and pv20 (not yet) are deleted and made again during the flush.
    again = [state("pv3_f1", 103.0), state("pv20_f1", 120.0)]
    for item in again:
        autosaver.forget(item.spec.name)
        autosaver.touch(item)
    for _ in range(3):                          # the other 25
        autosaver.tick(time.monotonic())
    assert autosaver.wait_idle(5)
    assert len(reopen(path)) == 35
    time.sleep(0.06)
    autosaver.tick(time.monotonic())            # the next flush: the deletes, the new ones
    assert autosaver.wait_idle(5)
    rows = reopen(path)
    expected = [s for s in states if s.spec.name not in ("P:pv3_f1", "P:pv20_f1")] + again
    assert rows == [from_state(s) for s in expected]


def test_handing_says_a_flush_is_in_parts_until_its_last_part(saver, path: Path,
                                                                monkeypatch) -> None:
    """What keeps the CA loop from idling between the parts of a flush."""
    monkeypatch.setattr(writer, "SNAPSHOTS_PER_TICK", 10)
    autosaver = saver(interval=0.05)
    assert not autosaver.handing
    for i in range(25):
        autosaver.touch(state(f"pv{i}_f1", float(i)))
    autosaver.tick(time.monotonic())            # not due yet: nothing handed
    assert not autosaver.handing
    time.sleep(0.06)
    seen = []
    for _ in range(3):                          # 10, 10, then the last 5
        autosaver.tick(time.monotonic())
        seen.append(autosaver.handing)
    assert seen == [True, True, False]
    assert autosaver.wait_idle(5)
    assert len(reopen(path)) == 25
    autosaver.touch(state("pv0_f1", 100.0))
    autosaver.flush()                           # all at once: never in parts
    assert not autosaver.handing


def test_a_parts_buffers_are_copied_into_one_memory_map(saver, path: Path) -> None:
    """Buffers of one part go into one anonymous memory map, which goes back to the system
    once the part is written (heap blocks freed by the writer thread stayed in the CA
    process's RSS); what is written is each buffer's stored form, as before."""
    import mmap

    states = [state("f_F1000", list(range(600)), list(range(600, 1200))), state("s_f1", 2.5),
              state("i_I7", [1, 2, 3]), state("c_C16", "text"), state("e_F8")]
    part = writer.snapshot_part(states)
    assert list(part) == [s.spec.name for s in states]
    maps = {id(value.obj) for _, value, _, _ in part.values() if isinstance(value, memoryview)}
    assert len(maps) == 1
    assert all(isinstance(value.obj, mmap.mmap) for _, value, _, _ in part.values()
               if isinstance(value, memoryview))
    assert part["P:s_f1"][1] == 2.5
    put(states[0], [5000.0])  # later changes are not in the snapshot
    assert [bytes(writer.from_snapshot(snap).value or b"") for snap in part.values()
            if snap[0].buffer] == [
        np.arange(200, 1200, dtype="<f8").tobytes(), np.array([1, 2, 3], "<i4").tobytes(),
        b"text", b""]
    autosaver = saver()
    for item in states:
        autosaver.touch(item)
    autosaver.flush()
    assert autosaver.wait_idle(5)
    assert reopen(path) == [from_state(s) for s in states]


def test_stop_writes_everything(saver, path: Path) -> None:
    autosaver = saver(interval=60)  # no flush on its own before stop
    states = [state(f"pv{i}_I5", [i]) for i in range(50)]
    for item in states:
        autosaver.touch(item)
    autosaver.flush()
    for item in states:
        put(item, [100])
        autosaver.touch(item)
    autosaver.forget(states[0].spec.name)
    assert autosaver.stop() is True
    assert reopen(path) == [from_state(item) for item in states[1:]]
    assert autosaver.status.pending == 0


def test_a_snapshot_is_the_state_at_the_flush(path: Path) -> None:
    """The CA loop goes on changing a PV while the writer saves it: what is written is
    the buffer as it was at the flush, whole, and the later change comes with the next."""
    autosaver = Autosaver(GatedStore.open(str(path)), 60, lambda: [])
    try:
        buffer, plain = state("b_F4", [1.0, 2.0]), state("p_f3", [1.0, 1.0, 1.0])
        autosaver.touch(buffer)
        autosaver.touch(plain)
        autosaver.flush()
        assert autosaver.store.entered.wait(5)  # type: ignore[attr-defined]
        at_flush = [from_state(buffer), from_state(plain)]
        put(buffer, [3.0, 4.0, 5.0, 6.0])
        put(plain, [2.0, 2.0, 2.0])
        autosaver.store.gate.set()  # type: ignore[attr-defined]
        assert autosaver.wait_idle(5)
        assert reopen(path) == at_flush
        autosaver.touch(buffer)
        autosaver.touch(plain)
    finally:
        autosaver.store.gate.set()  # type: ignore[attr-defined]
        assert autosaver.stop()
    assert reopen(path) == [from_state(buffer), from_state(plain)]


def test_a_failed_write_is_kept_shown_and_retried(saver, path: Path) -> None:
    autosaver = saver(FlakyStore)
    flaky: FlakyStore = autosaver.store  # type: ignore[assignment]
    a, b, c = state("a_f1", 1.0), state("b_i1", 1), state("c_f1", 1.0)
    autosaver.touch(c)
    autosaver.flush()
    assert autosaver.wait_idle(5)
    flaky.failing = True
    autosaver.touch(a)
    autosaver.touch(b)
    autosaver.forget(c.spec.name)
    autosaver.flush()
    wait_for(lambda: autosaver.status.failures >= 2, what="a retry that fails again")
    status = autosaver.status
    assert status.pending == 3  # two PVs to save, one to delete
    assert status.last_error == "OperationalError: database or disk is full"
    # Newer changes merge with the kept ones: still the latest of each PV, once.
    put(a, 2.0)
    autosaver.touch(a)
    autosaver.flush()
    wait_for(lambda: status.failures >= 4, what="more failed retries")
    assert status.pending == 3
    assert reopen(path) == [from_state(c)]  # nothing half-written
    flaky.failing = False
    wait_for(lambda: status.pending == 0, what="the kept changes written")
    assert status.last_error == ""
    assert reopen(path) == [from_state(a), from_state(b)]
    failures = status.failures
    attempts = flaky.attempts
    time.sleep(5 * INTERVAL)
    assert status.failures == failures and flaky.attempts == attempts  # no busy retrying
    assert autosaver.stop() is True


def test_stop_says_false_when_the_last_changes_cannot_be_written(saver, path: Path) -> None:
    autosaver = saver(FlakyStore, interval=60)
    autosaver.store.failing = True  # type: ignore[attr-defined]
    autosaver.touch(state("a_f1", 1.0))
    assert autosaver.stop() is False
    assert autosaver.status.pending == 1 and autosaver.status.failures >= 1
    assert reopen(path) == []


def test_stop_with_nothing_to_write(saver) -> None:
    autosaver = saver()
    assert autosaver.stop() is True
    assert autosaver.status.failures == 0 and autosaver.status.saved == 0


def test_touch_costs_no_io(saver, path: Path) -> None:
    """A put only notes its PV: no snapshot, no encoding, no write until the flush."""
    autosaver = saver(FlakyStore, interval=60)
    big = state("big_f100000", np.arange(100_000.0))
    for _ in range(10_000):
        autosaver.touch(big)
    assert autosaver.store.attempts == 0  # type: ignore[attr-defined]
    assert autosaver.status.saved == 0  # nothing written before the flush


# --- rows as they are in the file ------------------------------------------------------------


def hand_made(path: Path, rows: list[tuple]) -> None:
    """A store at the current schema written by another tool: no constraints but the
    key, so any column may hold anything, NULL included."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE pvs (name TEXT PRIMARY KEY, kind, count, buffer, value, "
                   "ts_ns, attrs)")
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        db.executemany("INSERT INTO pvs VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
    db.close()


GOOD_ROW = ("P:good_f1", "f", 1, 0, 1.5, TS, "{}")
BAD_ROWS = [
    ("P:a_f1", "f", 1, 0, 1.5, TS, "{not json"),
    (None, "f", 1, 0, 1.5, TS, "{}"),
    ("P:b_f1", "f", 1, 0, 1.5, "soon", "{}"),
    ("P:c_f1", "f", 1, 0, "1.5", TS, "{}"),
    ("P:d_f1", "f", "1", 0, 1.5, TS, "{}"),
    ("P:e_f1", "f", 1, 7, 1.5, TS, "{}"),
    ("P:f_f1", None, None, None, None, None, None),
    ("P:g_f1", "f", 1, 0, 1.5, TS, '["egu"]'),
    ("P:h_f1", "f", 1, 0, 1.5, TS, b'{"egu": "\xff"}'),
    ("P:i_f1", "f", 1, 0, 1.5, 2**63 - 1, "{}"),
    ("P:j_f1", "f", 1, 0, 1.5, TS, '{"prec": 99}'),
    ("P:k_f1", "f", 1, 0, 1.5, TS, "[" * 100_000),
    (b"P:l_f1", "f", 1, 0, 1.5, TS, "{}"),
]


def test_load_reads_every_row_whatever_it_holds(path: Path) -> None:
    """Loading never fails on a row: each comes back as it is, and `rows.restore` (the
    one gate) refuses the bad ones, naming them."""
    hand_made(path, [GOOD_ROW, *BAD_ROWS, ("P:z_i1", "i", 1, 1 == 0, 7, TS, '{"egu": "V"}')])
    with sqlite3.connect(path) as db:  # text that is not UTF-8, as another tool may write
        db.execute("INSERT INTO pvs VALUES (CAST(x'503aff5f6631' AS TEXT), 'f', 1, 0, "
                   "1.5, ?, '{}')", (TS,))
        db.execute("INSERT INTO pvs VALUES ('P:m_f1', CAST(x'ff' AS TEXT), 1, 0, 1.5, ?, "
                   "'{}')", (TS,))
    db.close()
    loaded = reopen(path)
    assert len(loaded) == len(BAD_ROWS) + 4
    assert loaded[0] == SavedPV("P:good_f1", "f", 1, False, 1.5, TS, {})
    assert loaded[-3] == SavedPV("P:z_i1", "i", 1, False, 7, TS, {"egu": "V"})
    refused = []
    for item in loaded[1:-3] + loaded[-2:]:
        with pytest.raises(Refused) as info:
            restore(item, G)
        refused.append(str(info.value))
    assert all("\n" not in line for line in refused)
    restore(loaded[0], G)
    restore(loaded[-3], G)


def test_a_file_that_cannot_be_read_at_load_is_a_boot_error(path: Path) -> None:
    """Pages that went bad after `open` checked them: one line naming the file, not an
    sqlite3 exception that would crash the CA process at every restart."""
    corrupt_pages(path, after_open=True)


def test_a_file_without_the_table_is_unusable(path: Path) -> None:
    path.parent.mkdir(parents=True)
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE other (x)")
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    db.close()
    with pytest.raises(BootError) as info:
        Store.open(str(path))
    assert "\n" not in str(info.value) and str(path) in str(info.value)
    assert "pvs" in str(info.value)
    Store.open(str(path), reset=True).close()  # moved aside, a new one started
    assert reopen(path) == []


@pytest.mark.parametrize("table, why", [
    ("pvs (name TEXT PRIMARY KEY, value)", "columns"),
    ("pvs (name, kind, count, buffer, value, ts_ns, attrs)", "key"),
    ("pvs (name, kind, count, buffer, value, ts_ns TEXT PRIMARY KEY, attrs)", "key"),
])
def test_a_table_of_another_shape_is_unusable(path: Path, table: str, why: str) -> None:
    """Writes could never work on it (an upsert needs the name as its key)."""
    path.parent.mkdir(parents=True)
    with sqlite3.connect(path) as db:
        db.execute(f"CREATE TABLE {table}")
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    db.close()
    with pytest.raises(BootError) as info:
        Store.open(str(path))
    assert why in str(info.value) and "\n" not in str(info.value)


# --- the writer thread: stopping, and errors it did not expect -----------------------------------


class RacyQueue(queue.Queue):
    """A queue whose timed `get` runs out *just before* `stop` hands over its sentinel:
    the writer sees Empty, then finds the sentinel behind it (the race of issue 10)."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting = threading.Event()  # the writer is in the race window
        self.sentinel = threading.Event()  # stop() has queued its None

    def get(self, block: bool = True, timeout: float | None = None):
        try:
            return super().get(block, timeout)
        except queue.Empty:
            if block and timeout is not None and not self.sentinel.is_set():
                self.waiting.set()
                self.sentinel.wait(10)
            raise

    def put(self, item, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        if item is None:
            self.sentinel.set()


def test_stop_finds_its_sentinel_behind_a_timeout(saver, path: Path, monkeypatch) -> None:
    racy = RacyQueue()
    monkeypatch.setattr(writer, "queue", types.SimpleNamespace(Queue=lambda: racy,
                                                               Empty=queue.Empty))
    autosaver = saver(FlakyStore)
    autosaver.store.failing = True  # type: ignore[attr-defined]
    a = state("a_f1", 1.0)
    autosaver.touch(a)
    autosaver.flush()  # fails: kept, retried after a timed wait
    assert racy.waiting.wait(10), "the writer never waited with a timeout"
    autosaver.store.failing = False  # type: ignore[attr-defined]
    started = time.monotonic()
    assert autosaver.stop(timeout=5) is True
    assert time.monotonic() - started < 3
    assert reopen(path) == [from_state(a)]


class BuggyStore(Store):
    """A store whose writes raise what no store should (a bug), `bugs` times."""

    bugs = 1

    def write(self, saved, deleted) -> None:
        if self.bugs:
            self.bugs -= 1
            raise RuntimeError("a bug")
        super().write(saved, deleted)


def test_an_unexpected_error_is_logged_counted_and_the_writer_goes_on(saver, path: Path,
                                                                       caplog) -> None:
    autosaver = saver(BuggyStore)
    a = state("a_f1", 1.0)
    with caplog.at_level(logging.ERROR, logger="relayd.autosave"):
        autosaver.touch(a)
        autosaver.flush()
        wait_for(lambda: autosaver.status.failures == 1, what="the failure counted")
        wait_for(lambda: autosaver.status.pending == 0, what="the retry written")
    assert reopen(path) == [from_state(a)]
    bugs = [r for r in caplog.records if "a bug" in r.getMessage() or r.exc_info]
    assert len(bugs) == 1 and bugs[0].exc_info is not None  # with its traceback
    assert bugs[0].levelno == logging.ERROR and str(path) in bugs[0].getMessage()
    assert autosaver.status.last_error == ""  # cleared once a write worked
    b = state("b_f1", 2.0)
    autosaver.touch(b)
    assert autosaver.stop() is True  # still alive: it writes and stops
    assert reopen(path) == [from_state(a), from_state(b)]


def test_an_error_every_time_is_shown_and_logged_rate_limited(saver, caplog) -> None:
    autosaver = saver(BuggyStore)
    autosaver.store.bugs = 10**9  # type: ignore[attr-defined]
    with caplog.at_level(logging.ERROR, logger="relayd.autosave"):
        autosaver.touch(state("a_f1", 1.0))
        autosaver.flush()
        wait_for(lambda: autosaver.status.failures >= 6, what="failures counted")
        status = autosaver.status
        assert status.pending == 1 and status.last_error == "RuntimeError: a bug"
    assert 1 <= len([r for r in caplog.records if r.exc_info]) <= 2
    assert autosaver.stop(timeout=5) is False  # what could not be written is said


# --- the lock: one relay per store ---------------------------------------------------------------


def lock_file(path: Path) -> Path:
    return Path(f"{path}.lock")


def test_the_lock_keeps_a_second_user_out_and_names_the_holder(path: Path) -> None:
    first = Store.open(str(path), lock=True)
    try:
        assert lock_file(path).read_text() == f"{os.getpid()}\n"
        with pytest.raises(InUse) as info:
            Store.open(str(path), lock=True)
        assert str(info.value) == (f"autosave file {path} is in use by another relay "
                                   f"(pid {os.getpid()})")
        assert isinstance(info.value, BootError)
        Store.open(str(path)).close()  # without the lock (export): fine
    finally:
        first.close()
    assert not lock_file(path).exists()  # a clean release deletes it
    Store.open(str(path), lock=True).close()


HOLDER = """
import sys, time
from relayd.store.sqlite import Store
store = Store.open(sys.argv[1], lock=True)
print("held", flush=True)
time.sleep(60)
"""


def test_a_holder_killed_lets_go_of_the_lock(path: Path) -> None:
    """What a CA process restarted by its supervisor relies on: the kernel releases the
    lock of a killed process; the file it leaves behind is no obstacle."""
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        with pytest.raises(InUse, match=rf"\(pid {holder.pid}\)$"):
            Store.open(str(path), lock=True)
    finally:
        holder.kill()
        holder.wait(10)
    assert lock_file(path).read_text() == f"{holder.pid}\n"  # left behind, unlocked
    store = Store.open(str(path), lock=True)
    try:
        assert lock_file(path).read_text() == f"{os.getpid()}\n"
    finally:
        store.close()


def test_reset_never_moves_a_store_in_use_aside(path: Path) -> None:
    path.parent.mkdir(parents=True)
    path.write_bytes(GARBAGE)
    held = StoreLock.take(str(path))
    try:
        with pytest.raises(InUse):
            Store.open(str(path), reset=True, lock=True)
    finally:
        held.release()
    assert path.read_bytes() == GARBAGE
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


def test_a_failed_open_lets_go_of_the_lock(path: Path) -> None:
    path.parent.mkdir(parents=True)
    path.write_bytes(GARBAGE)
    with pytest.raises(BootError, match="not a database"):
        Store.open(str(path), lock=True)
    assert not lock_file(path).exists()
    StoreLock.take(str(path)).release()


def test_a_lock_file_that_cannot_be_made_is_a_boot_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(BootError) as info:
        Store.open(str(blocker / "relay.sqlite"), lock=True)
    assert "\n" not in str(info.value) and str(blocker) in str(info.value)


def test_a_deleted_lock_file_is_made_again(saver, path: Path, caplog) -> None:
    autosaver = saver(lock=True)
    with caplog.at_level(logging.WARNING, logger="relayd.autosave"):
        lock_file(path).unlink()
        wait_for(lambda: lock_file(path).exists(), what="the lock file made again")
    assert lock_file(path).read_text() == f"{os.getpid()}\n"
    with pytest.raises(InUse):
        Store.open(str(path), lock=True)
    assert any("lock file" in r.getMessage() and str(path) in r.getMessage()
               for r in caplog.records if r.levelno == logging.WARNING)
    assert autosaver.stop() is True
    assert not lock_file(path).exists()


# --- the file deleted or replaced under the writer ----------------------------------------------


def names_in(path: Path) -> list[str] | None:
    """The names in the store at `path`, read-only (never creating the file); None if
    there is no readable store there (yet)."""
    if not path.exists():
        return None
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error:
        return None
    try:
        return [row[0] for row in db.execute("SELECT name FROM pvs ORDER BY rowid")]
    except sqlite3.Error:
        return None
    finally:
        db.close()


def wait_remade(autosaver: Autosaver, path: Path, states: list[PVState], caplog) -> str:
    """Wait for the writer to say it made the file again, then for the file to hold
    every PV of `states`; the writer's warning. Each poll is a turn of the CA loop too
    (`tick`), from this thread, as the CA loop's own. (Nothing reads the file before the
    warning: a reader could take the writer's old -wal for the file's own.)"""
    def warnings() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING
                and r.getMessage().startswith("autosave file ")]

    def check(condition) -> bool:
        autosaver.tick(time.monotonic())
        return condition()

    wait_for(lambda: check(warnings), what="the writer's warning")
    wait_for(lambda: check(lambda: names_in(path) == [s.spec.name for s in states]),
             what="every PV in the file made again")
    assert len(warnings()) == 1, warnings()
    return warnings()[0]


@pytest.fixture
def three(saver, path: Path):
    """An autosaver that has saved three PVs, and those PVs."""
    states = [state("a_f1", 1.0), state("b_F4", [1.0, 2.0]), state("c_c10", "text")]
    autosaver = saver(states=states, lock=True)
    for item in states:
        autosaver.touch(item)
    autosaver.flush()
    assert autosaver.wait_idle(5)
    assert names_in(path) == [s.spec.name for s in states]
    return autosaver, states


@pytest.mark.parametrize("deleted", [("", "-wal", "-shm"), ("",), ("-wal", "-shm")])
def test_a_deleted_file_is_made_again_with_every_pv(three, path: Path, caplog,
                                                    deleted: tuple) -> None:
    autosaver, states = three
    with caplog.at_level(logging.WARNING, logger="relayd.autosave"):
        for suffix in deleted:
            os.unlink(f"{path}{suffix}")
        warning = wait_remade(autosaver, path, states, caplog)
        assert autosaver.store.changed() is None
    assert str(path) in warning and "was deleted" in warning and "every PV" in warning
    # It goes on writing into the new file, and what a new start reads is all there.
    put(states[0], 5.0)
    autosaver.touch(states[0])
    assert autosaver.stop() is True
    assert reopen(path) == [from_state(s) for s in states]
    assert autosaver.status.failures == 0
    assert not [p for p in path.parent.iterdir() if ".replaced-" in p.name]


class HeldStore(Store):
    """A store whose next write, once `held`, waits for `gate`."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.held = False
        self.gate = threading.Event()
        self.entered = threading.Event()

    def write(self, saved, deleted) -> None:
        if self.held:
            self.held = False
            self.entered.set()
            assert self.gate.wait(10)
        super().write(saved, deleted)


def test_a_file_made_again_holds_the_pvs_in_creation_order(saver, path: Path,
                                                           caplog) -> None:
    """A change that reaches the writer as it makes the file again is not written first:
    it waits for the flush of every PV, which comes in creation order."""
    states = [state("a_f1", 1.0), state("b_F4", [1.0, 2.0]), state("c_c10", "text")]
    autosaver = saver(HeldStore, states=states, lock=True)
    store: HeldStore = autosaver.store  # type: ignore[assignment]
    for item in states:
        autosaver.touch(item)
    autosaver.flush()
    assert autosaver.wait_idle(5)
    store.held = True
    put(states[0], 2.0)
    autosaver.touch(states[0])
    autosaver.flush()
    assert store.entered.wait(5)  # the writer is inside a write
    held_at = time.monotonic()
    for suffix in ("", "-wal", "-shm"):
        os.unlink(f"{path}{suffix}")
    put(states[1], [3.0])
    autosaver.touch(states[1])
    autosaver.flush()  # queued behind the write: the file is not yet known to be gone
    time.sleep(max(0.0, held_at + 2 * INTERVAL - time.monotonic()))  # a check is due
    with caplog.at_level(logging.WARNING, logger="relayd.autosave"):
        store.gate.set()
        assert autosaver.wait_idle(5)
        assert len(caplog.records) == 1  # made again in the pass that took the change...
        assert names_in(path) == []  # ...and the change not written ahead of the others
        wait_remade(autosaver, path, states, caplog)
    assert autosaver.stop() is True
    assert reopen(path) == [from_state(s) for s in states]


def test_a_file_deleted_just_before_a_stop_gets_every_pv(three, path: Path) -> None:
    """No interval, no flush of everything left: the stop itself notices, and writes
    every PV (the CA loop waits in `stop`, so the writer reads the PVs itself)."""
    autosaver, states = three
    for suffix in ("", "-wal", "-shm"):
        os.unlink(f"{path}{suffix}")
    put(states[1], [3.0])
    autosaver.touch(states[1])
    assert autosaver.stop() is True
    assert reopen(path) == [from_state(s) for s in states]  # in creation order


def test_a_replaced_file_is_moved_aside_and_made_again(three, path: Path, tmp_path: Path,
                                                       caplog) -> None:
    autosaver, states = three
    other = tmp_path / "other.sqlite"
    made = Store.open(str(other))
    made.write([saved("other_f1")], ())
    made.close()
    os.replace(other, path)
    with caplog.at_level(logging.WARNING, logger="relayd.autosave"):
        warning = wait_remade(autosaver, path, states, caplog)
    aside = [p for p in path.parent.iterdir() if p.name.startswith(f"{path.name}.replaced-")]
    assert len(aside) == 1
    assert names_in(aside[0]) == ["P:other_f1"]
    assert "was replaced" in warning and str(aside[0]) in warning
    assert autosaver.stop() is True


def test_a_reader_beside_the_writer_changes_nothing(three, path: Path) -> None:
    """An export opens and closes the file while the relay writes: no false alarm."""
    autosaver, states = three
    for _ in range(3):
        reader = Store.open(str(path))
        assert [item.name for item in reader.load()] == [s.spec.name for s in states]
        reader.close()
    assert autosaver.store.changed() is None
    assert autosaver.stop() is True


def test_a_file_that_cannot_be_made_again_is_a_failure_retried(three, path: Path,
                                                               caplog) -> None:
    autosaver, states = three
    shutil.rmtree(path.parent)
    path.parent.write_text("")  # in the way: the file cannot be made again
    wait_for(lambda: autosaver.status.failures >= 2, what="failures counted")
    assert autosaver.status.last_error != ""
    with caplog.at_level(logging.WARNING, logger="relayd.autosave"):
        path.parent.unlink()
        wait_remade(autosaver, path, states, caplog)
    assert lock_file(path).read_text() == f"{os.getpid()}\n"  # the lock is back too
    assert autosaver.stop() is True
    assert autosaver.status.last_error == ""


def test_a_pv_made_under_the_name_of_a_row_left_out_goes_last(path: Path) -> None:
    """The bad row is kept as it is until a PV of its name is saved: that one replaces it
    at the end of the store, in creation order, as the relay lists it."""
    hand_made(path, [("P:a_f1", "f", 1, 0, 1.0, "soon", "{}"), GOOD_ROW])
    store = Store.open(str(path))
    good = state("good_f1", 1.5)
    autosaver = Autosaver(store, 60, lambda: [good], [row.name for row in store.load()])
    try:
        again = state("a_f1", 2.0)
        autosaver.touch(again)
    finally:
        assert autosaver.stop() is True
    assert [item.name for item in reopen(path)] == ["P:good_f1", "P:a_f1"]
    assert reopen(path)[1] == from_state(again)


def test_a_row_that_cannot_be_encoded_is_left_out_and_the_others_are_written(
        saver, path: Path, caplog) -> None:
    """One bad row (a bug) must not hold every other change out of the file for ever."""
    autosaver = saver()
    good, bad, other = state("a_f1", 1.0), state("b_f1", 2.0), state("c_f1", 3.0)
    bad.meta = replace(bad.meta, egu=object())  # json cannot encode it: a bug's doing
    with caplog.at_level(logging.ERROR, logger="relayd.autosave"):
        for item in (good, bad, other):
            autosaver.touch(item)
        autosaver.flush()
        assert autosaver.wait_idle(5)
    assert reopen(path) == [from_state(good), from_state(other)]
    assert autosaver.status.pending == 0 and autosaver.status.failures == 1
    left_out = [r for r in caplog.records if "left out of" in r.getMessage()]
    assert len(left_out) == 1 and "P:b_f1" in left_out[0].getMessage()
    assert left_out[0].exc_info is not None  # with its traceback: a bug to report
    later = state("d_f1", 4.0)
    autosaver.touch(later)
    assert autosaver.stop() is True
    assert reopen(path) == [from_state(good), from_state(other), from_state(later)]
