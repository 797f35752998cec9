"""``relayd autosave export|import`` as a user runs it: a subprocess on real files.

What a failing command must do: exit 1 with one line on stderr that says why (never a
traceback), and leave the store exactly as it was. Import checks every record with the
same function a relay uses at start (`rows.restore`), so what import accepts, the next
start restores; and it refuses to write a store that a running relay holds.
"""

from __future__ import annotations

import json
import os
import resource
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from relayd.store.sqlite import SCHEMA_VERSION, Store

TS = 1_700_000_000_000_000_000


def cli(*args: str, input: str | None = None, fsize: int | None = None
        ) -> subprocess.CompletedProcess:
    """Run ``relayd autosave ARGS``; `fsize` limits the size of the files it writes (as a
    full disk would: Python ignores SIGXFSZ, so SQLite gets EFBIG)."""
    def limit() -> None:
        if fsize is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    return subprocess.run([sys.executable, "-m", "relayd", "autosave", *args], input=input,
                          capture_output=True, text=True, timeout=60, preexec_fn=limit)


def record(name: str = "r:a_f1", value: object = 1.0, **changes: object) -> dict:
    item = {"name": name, "kind": "f", "count": 1, "buffer": False, "value": value,
            "ts_ns": TS}
    return {**item, **changes}


def document(*records: dict) -> str:
    return json.dumps({"format": "relayd-autosave", "version": 1, "pvs": list(records)})


def one_line(done: subprocess.CompletedProcess, *words: str) -> str:
    """The command failed (exit 1) with one line on stderr holding `words`."""
    assert done.returncode == 1, (done.returncode, done.stderr)
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    for word in words:
        assert word in done.stderr, done.stderr
    return done.stderr


def contents(path: Path) -> list[tuple]:
    db = sqlite3.connect(path)
    try:
        return db.execute("SELECT * FROM pvs ORDER BY rowid").fetchall()
    finally:
        db.close()


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """A store holding two PVs, r:a_f1 = 1.0 and r:b_f1 = 2.0."""
    path = tmp_path / "relay.sqlite"
    done = cli("import", "--autosave", str(path),
               input=document(record("r:a_f1", 1.0), record("r:b_f1", 2.0)))
    assert done.returncode == 0, done.stderr
    return path


# --- a failing import changes nothing --------------------------------------------------


def test_a_replace_that_fails_while_writing_leaves_the_store_as_it_was(store: Path) -> None:
    """The disk fills during the write: the old rows are still there (their delete was in
    the failed transaction), and SQLite's error is one line, not a traceback."""
    before = contents(store)
    big = record("r:big_f100000", [0.0] * 100_000, count=100_000)
    done = cli("import", "--replace", "--autosave", str(store), input=document(big),
               fsize=store.stat().st_size + 64 * 1024)
    assert contents(store) == before
    one_line(done, "relayd autosave import: ", str(store))
    assert cli("import", "--replace", "--autosave", str(store),
               input=document(big)).returncode == 0  # and it works with room on the disk


@pytest.mark.parametrize("bad, why", [
    (record("r:x_f1", ts_ns=10**30), "time stamp"),
    (record("r:x_f1", ts_ns=-1), "time stamp"),
    (record("r:x_f1", ts_ns="1700000000000000000"), "time stamp"),
    (record("r:x_f1", attrs={"prec": 99}), "PREC"),
    (record("r:x_f1", attrs={"hihi": "high"}), "HIHI"),
    (record("r:x_f1", attrs={"bogus": 1}), "bogus"),
    (record("r:x_f1", kind="i"), "its name does not say"),
    (record("r:x_f1", count=2), "its name does not say"),
    (record("r:x_c4", {"text": "too long"}, kind="c", count=4), "tooManyElements"),
    (record("r:x_i1", 2**40, kind="i"), "int32"),
    (record("r:x_f1", None), "without a value"),
    (record("x_f1"), "badName"),
    (record(None), "badName"),
])
def test_import_refuses_a_record_the_relay_would_refuse(store: Path, bad: dict,
                                                         why: str) -> None:
    before = contents(store)
    for replace in ([], ["--replace"]):
        done = cli("import", *replace, "--autosave", str(store),
                   input=document(record("r:c_f1"), bad))
        one_line(done, "relayd autosave import: record 2", why, "nothing imported")
    assert contents(store) == before


def test_import_refuses_a_name_given_twice(store: Path) -> None:
    done = cli("import", "--autosave", str(store),
               input=document(record("r:c_f1"), record("r:d_f1"), record("r:c_f1", 2.0)))
    one_line(done, "record 3", "r:c_f1", "also record 1")


def test_import_by_prefix_refuses_another_relays_pv(tmp_path: Path) -> None:
    env_store = tmp_path / "state" / "relayd" / "lab:bl1.sqlite"
    done = subprocess.run(
        [sys.executable, "-m", "relayd", "autosave", "import", "--prefix", "lab:bl1"],
        input=document(record("lab:bl1:a_f1"), record("lab:bl2:b_f1")), text=True,
        capture_output=True, timeout=60, env=dict(os.environ, XDG_STATE_HOME=str(tmp_path /
                                                                                "state")))
    one_line(done, "record 2", "lab:bl2:b_f1", "badName")
    assert not env_store.exists()  # nothing checked, nothing created


@pytest.mark.parametrize("text, why", [
    ("[]", "not a relayd-autosave"),
    ('"relayd-autosave"', "not a relayd-autosave"),
    ('{"format": "relayd-autosave", "version": 1}', "'pvs'"),
    ('{"format": "relayd-autosave", "version": 1, "pvs": {}}', "'pvs'"),
    ('{"format": "relayd-autosave", "version": 1, "pvs": [5]}', "record 1"),
    ("[" * 100_000, "relayd autosave import: "),
    ("\xff\xfe", "relayd autosave import: "),
])
def test_import_refuses_a_file_that_is_not_an_export(store: Path, text: str, why: str) -> None:
    before = contents(store)
    one_line(cli("import", "--replace", "--autosave", str(store), input=text), why)
    assert contents(store) == before


def test_what_import_accepts_a_relay_restores(tmp_path: Path) -> None:
    """One gate for both: every record import takes passes `rows.restore` from the store."""
    from relayd.core.names import Grammar
    from relayd.store.rows import restore

    path = tmp_path / "relay.sqlite"
    records = [record("r:a_f1", "nan"), record("r:b_i3", [1, 2, 3], kind="i", count=3),
               record("r:c_C8", {"base64": "/w=="}, kind="c", count=8, buffer=True),
               record("r:d_f1", 2.5, attrs={"egu": "K", "hihi": 2.0, "hhsv": "MAJOR"}),
               record("r:e_F4", [], count=4, buffer=True, ts_ns=0)]
    assert cli("import", "--autosave", str(path), input=document(*records)).returncode == 0
    store = Store.open(str(path))
    try:
        loaded = store.load()
    finally:
        store.close()
    assert [item.name for item in loaded] == [r["name"] for r in records]
    for item in loaded:
        restore(item, Grammar("r"))


# --- errors of SQLite and of the files --------------------------------------------------


def test_a_locked_database_is_one_line(store: Path) -> None:
    """Another program holds a write transaction (an sqlite3 shell, say): import waits
    SQLite's busy timeout, then says so in one line."""
    holder = sqlite3.connect(store, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        done = cli("import", "--autosave", str(store), input=document(record("r:c_f1")))
    finally:
        holder.close()
    one_line(done, "locked")


def test_export_of_a_store_with_bad_rows_writes_the_good_ones_and_names_the_rest(
        store: Path, tmp_path: Path) -> None:
    db = sqlite3.connect(store)
    with db:
        db.execute("INSERT INTO pvs VALUES ('r:bad_f1', 'f', 1, 0, 1.0, 'soon', '{}')")
        db.execute("INSERT INTO pvs VALUES ('r:worse_f1', 'f', 1, 0, 1.0, ?, '{not json')",
                   (TS,))
    db.close()
    out = tmp_path / "out.json"
    done = cli("export", str(out), "--autosave", str(store))
    assert done.returncode == 1 and "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    assert lines[0].startswith("relayd autosave export: left out r:bad_f1 (badValue: ")
    assert lines[1].startswith("relayd autosave export: left out r:worse_f1 (badValue: ")
    assert lines[2] == f"exported 2 PVs from {store}; 2 rows left out (see above)"
    assert [item["name"] for item in json.loads(out.read_text())["pvs"]] == ["r:a_f1",
                                                                             "r:b_f1"]


def test_a_file_of_a_newer_relayd_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "relay.sqlite"
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    for action in ("export", "import"):
        one_line(cli(action, "--autosave", str(path), input=document()), "newer relayd")


# --- a store in use by a running relay ---------------------------------------------------


def test_import_refuses_a_store_in_use_and_export_reads_it(store: Path) -> None:
    """This process holds the store as a relay's CA process does (`lock=True`)."""
    before = contents(store)
    held = Store.open(str(store), lock=True)
    try:
        for replace in ([], ["--replace"]):
            done = cli("import", *replace, "--autosave", str(store),
                       input=document(record("r:c_f1")))
            one_line(done, f"autosave file {store} is in use by a running relay "
                           f"(pid {os.getpid()})", "stop it first")
        assert contents(store) == before
        exported = cli("export", "--autosave", str(store))
        assert exported.returncode == 0, exported.stderr
        assert len(json.loads(exported.stdout)["pvs"]) == 2
    finally:
        held.close()
    assert cli("import", "--autosave", str(store),
               input=document(record("r:c_f1"))).returncode == 0
    assert not Path(f"{store}.lock").exists()  # import let go of it, and cleaned up
