"""End-to-end: autosave keeps every PV across restarts, kills and storage trouble.

Real relays (each with its own autosave file, see `RelayProcess.autosave_path`), real CA
clients, and the store itself opened with sqlite3 where the test must look inside.
Tests taking `client` run once with pyepics (libca) and once with caproto.

A relay is restarted with `RelayProcess.restart` (SIGTERM, then the same prefix, ports,
options and file), killed whole with `RelayProcess.kill_all`, or has its CA process
killed, which the supervisor restarts on its own. A client's own reconnection after a
restart takes several seconds (libca backs off between searches, and the relays under
test send their beacons nowhere), so tests that are not about reconnection use caproto
and give it a new context after a restart (`forget_all`): its reads then search afresh.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import resource
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from relayd.store.sqlite import Store
from relayd.client import Client
from tests.conftest import PORTS
from tests.harness import RelayProcess, unique_prefix, wait_for

SEVR_INVALID, STAT_UDF = 3, 17
SEVR_MAJOR, STAT_HIHI = 2, 3

# The fields a relay PV has (meta.FIELDS), read through CA before and after a restart.
FIELDS = ("EGU", "PREC", "DESC", "HOPR", "LOPR", "DRVH", "DRVL", "HIHI", "HIGH", "LOW",
          "LOLO", "HHSV", "HSV", "LSV", "LLSV", "HYST", "TMO", "NELM", "NORD", "SEVR", "STAT")


# --- helpers -------------------------------------------------------------------------------


def full(relay: RelayProcess, base: str) -> str:
    return f"{relay.prefix}:{base}"


def listed(reader: Any, relay: RelayProcess) -> list[str]:
    text = reader.get(full(relay, "pvlist"), as_string=True)
    return text.split(",") if text else []


def status(reader: Any, relay: RelayProcess, suffix: str) -> Any:
    pv = full(relay, f"status:{suffix}")
    return reader.get(pv, as_string=True) if suffix.endswith("lastError") else reader.get(pv)


def comparable(value: Any) -> Any:
    """A client's value as something == compares (NaN equal to NaN, arrays as lists)."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray):
        return [comparable(x) for x in value.tolist()]
    if isinstance(value, (float, np.floating)) and math.isnan(value):
        return "nan"
    if isinstance(value, np.generic):
        return value.item()
    return value


def read_pv(reader: Any, pv: str, fields: bool = False) -> dict[str, Any]:
    """Everything a client sees of `pv`: value, alarm, time stamp (and its fields)."""
    meta = reader.get_meta(pv)
    seen = {"value": comparable(meta.value), "severity": meta.severity,
            "status": meta.status, "timestamp": meta.timestamp}
    if fields:
        for name in FIELDS:
            seen[name] = comparable(reader.get(f"{pv}.{name}"))
    return seen


def push(relay: RelayProcess, *updates: tuple[str, Any, dict]) -> None:
    """Send (pv, value, keyword arguments of `Client.put`) updates over ZMQ."""
    with Client(relay.endpoint) as sender:
        for pv, value, options in updates:
            sender.put(pv, value, **options)


def integrity(path: Path) -> str:
    """SQLite's full integrity check of the store, from a connection of our own."""
    db = sqlite3.connect(path, timeout=30)
    try:
        return db.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        db.close()


def stored(path: Path) -> dict[str, Any]:
    """{name: value column} of the store, in its order."""
    db = sqlite3.connect(path, timeout=30)
    try:
        return dict(db.execute("SELECT name, value FROM pvs ORDER BY rowid").fetchall())
    finally:
        db.close()


def autosave_cli(*args: str, input: str | None = None,
                 env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "relayd", "autosave", *args], input=input,
                          capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, **(env or {})))


def new_ca_process(relay: RelayProcess, old: int) -> int:
    """Wait for the supervisor to restart the CA process after `old` died; its pid."""
    pid = wait_for(lambda: (pid := relay.child_pids().get("ca-server")) not in (None, old)
                   and pid, timeout=40, what="a new CA process")
    relay.wait_log(f"ca-server ready (pid {pid})", timeout=40)
    return pid


def restore_came_before_serving(log: str) -> bool:
    """In the log of one CA process start: restored first, then served, then ready."""
    restored, serving = log.rfind("restored "), log.rfind("serving CA on ")
    return -1 < restored < serving < log.rfind("ca-server ready")


@pytest.fixture(autouse=True)
def drop_channels(request: pytest.FixtureRequest, start_relay):
    """Give caproto a new context after each test that used it, while the test's relays
    still run (this fixture ends before `start_relay` stops them): a context left with
    channels and subscriptions to stopped relays is slow to find new names and to close."""
    yield
    if "caproto_client" in request.fixturenames:
        request.getfixturevalue("caproto_client").forget_all()


# --- clean restarts -----------------------------------------------------------------------------


def test_a_restart_restores_every_pv(client, start_relay):
    """Every dtype, arrays, buffers in order, attributes, alarm state and time stamps
    come back exactly as clients saw them, in the same pvlist order. With an interval of
    60 s nothing is saved before the stop: the clean stop writes it all."""
    relay = start_relay("--autosave-interval", "60")
    by_ca = {
        "temp_f1": [21.2], "tiny_f1": [5e-324], "inf_f1": [-math.inf],
        "cups_i1": [-(2**31)], "flag_c1": ["x"], "motd_c40": ["The sun is shining"],
        "fit_f4": [[23.0, 0.1, 3231.123, 1e-4]], "short_f10": [[1.0, 2.0, 3.0]],
        "nonfinite_f3": [[math.nan, math.inf, -math.inf]],
        "extremes_i3": [[2**31 - 1, -(2**31), 0]],
        "trace_F5": [[1.0], [2.0, 3.0, 4.0], [5.0, 6.0]],
        "counts_I3": [[1], [2], [3], [4]],
        "log_C16": ["first\n", "second\n", "third\n"],
    }
    for base, puts in by_ca.items():
        for value in puts:
            assert client.put(full(relay, base), value), base
    attrs = {"egu": "mbar", "prec": 3, "desc": "chamber", "hopr": 1000.0, "lopr": -1.0,
             "drvh": 900.0, "drvl": 0.5, "hihi": 100.0, "high": 50.0, "low": 1e-6,
             "lolo": 1e-8, "hhsv": "MAJOR", "hsv": "MINOR", "lsv": "NO_ALARM",
             "llsv": "INVALID", "hyst": 0.5, "tmo": 3600.0}
    by_zmq = [
        (full(relay, "pressure_f1"), 150.0, {"ts": 1700000000.123456, "meta": attrs}),
        (full(relay, "stamped_F4"), [1.0, 2.0], {"ts": 1650000000.000001,
                                                  "meta": {"egu": "V", "hihi": 1.5}}),
        (full(relay, "stamped_c20"), "stamped text", {"ts": 1234567890.5}),
        (full(relay, "epoch_i1"), 7, {"ts": 631152000}),  # the EPICS epoch itself
    ]
    push(relay, *by_zmq)
    names = [full(relay, base) for base in by_ca] + [pv for pv, _, _ in by_zmq]
    wait_for(lambda: listed(client, relay) == names, what="every PV listed")
    with_fields = {full(relay, "pressure_f1"), full(relay, "stamped_F4"), full(relay, "temp_f1")}
    before = {pv: read_pv(client, pv, pv in with_fields) for pv in names}
    assert before[full(relay, "pressure_f1")]["EGU"] == "mbar"
    assert before[full(relay, "pressure_f1")]["LLSV"] == 3
    assert (before[full(relay, "pressure_f1")]["severity"],
            before[full(relay, "pressure_f1")]["status"]) == (SEVR_MAJOR, STAT_HIHI)
    assert before[full(relay, "stamped_F4")]["severity"] == SEVR_MAJOR  # newest 2.0 > 1.5
    watched = client.monitor(full(relay, "trace_F5"))
    watched.wait_value(lambda v: list(v) == [2.0, 3.0, 4.0, 5.0, 6.0])

    relay.restart()

    assert restore_came_before_serving(relay.log_since_start())
    assert f"restored {len(names)} PVs" in relay.log_since_start()
    wait_for(lambda: listed(client, relay) == names, timeout=30, what="the PVs listed again")
    assert status(client, relay, "autosave:restored") == len(names)
    assert status(client, relay, "pvs") == len(names)
    after = {pv: read_pv(client, pv, pv in with_fields) for pv in names}
    for pv in names:
        assert after[pv] == before[pv], pv
    for pv, _, options in by_zmq:  # the source time stamps, to the microsecond
        assert abs(after[pv]["timestamp"] - options["ts"]) < 0.5e-6, pv
    # The monitor reconnected by itself, to the value it saw last, time stamp and all.
    wait_for(lambda: watched.connection_changes()[-1:] == [True]
             and len(watched.connection_changes()) >= 3, timeout=30,
             what="the monitor reconnected")
    last = watched.value_events()[-1]
    assert comparable(last.value) == before[full(relay, "trace_F5")]["value"]
    assert last.timestamp == before[full(relay, "trace_F5")]["timestamp"]
    watched.close()
    # Restored buffers go on appending where they were.
    assert client.put(full(relay, "trace_F5"), [7.0])
    assert list(client.get(full(relay, "trace_F5"))) == [3.0, 4.0, 5.0, 6.0, 7.0]


def test_a_delete_persists(caproto_client, start_relay):
    client = caproto_client
    relay = start_relay("--autosave-interval", "60")  # the clean stop writes everything
    keep, gone, last = (full(relay, base) for base in ("keep_f1", "gone_i1", "last_c10"))
    for pv, value in ((keep, 1.0), (gone, 2), (last, "three")):
        assert client.put(pv, value)
    assert client.put(full(relay, "delpv"), gone)
    assert listed(client, relay) == [keep, last]
    watched = full(relay, "only_watched_f1")
    assert client.get_meta(watched).severity == SEVR_INVALID  # a placeholder: not saved
    relay.restart()
    client.forget_all()
    assert listed(client, relay) == [keep, last]
    assert list(stored(relay.autosave_path)) == [keep, last]  # no gone, no placeholder
    assert status(client, relay, "autosave:restored") == 2
    meta = client.get_meta(gone)  # a placeholder: never put since the delete
    assert (meta.severity, meta.status) == (SEVR_INVALID, STAT_UDF)
    assert client.get(last, as_string=True) == "three"


def test_a_nan_scalar_is_restored(caproto_client, start_relay):
    relay = start_relay()
    pv = full(relay, "nan_f1")
    assert caproto_client.put(pv, math.nan)
    relay.restart()
    caproto_client.forget_all()
    assert listed(caproto_client, relay) == [pv]


def insert_rows(path: Path, *rows: tuple) -> None:
    """Rows written into the store by raw sqlite3, as another tool (or a bug) could."""
    db = sqlite3.connect(path)
    try:
        with db:
            db.executemany("INSERT INTO pvs (name, kind, count, buffer, value, ts_ns, attrs) "
                           "VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
    finally:
        db.close()


def test_rows_that_are_not_this_relays_pvs_are_not_restored(caproto_client, start_relay,
                                                            tmp_path):
    """A store may hold such rows: an import of another relay's export (import cannot
    know which relay will use the file, nor its limits), or a row written by hand."""
    prefix = unique_prefix()
    source = start_relay("--autosave", str(tmp_path / "source.sqlite"), "--max-elements", "20")
    for base, value in (("x_f1", 1.5), ("wide_f20", [1.0] * 20)):
        assert caproto_client.put(full(source, base), value)
    source.stop()
    exported = tmp_path / "rows.json"
    assert autosave_cli("export", str(exported), "--autosave",
                        str(tmp_path / "source.sqlite")).returncode == 0
    data = json.loads(exported.read_text())
    data["pvs"] = [*data["pvs"], dict(data["pvs"][1], name=f"{prefix}:wide_f20")]
    exported.write_text(json.dumps(data))
    target = tmp_path / "target.sqlite"
    assert autosave_cli("import", str(exported), "--autosave", str(target)).returncode == 0
    insert_rows(target, (f"{prefix}:mismatch_f1", "i", 5, 0, b"\0" * 20, 1, "{}"))
    relay = start_relay("--autosave", str(target), "--max-elements", "10", prefix=prefix)
    assert listed(caproto_client, relay) == []
    log = relay.log_text()
    assert f"cannot restore {source.prefix}:x_f1 (badName: " in log
    assert f"cannot restore {prefix}:wide_f20 (countLimit: " in log
    assert f"cannot restore {prefix}:mismatch_f1 (badValue: " in log


TS_NS = 1_700_000_000_000_000_000


def test_bad_rows_are_logged_and_left_out_and_the_rest_restored(caproto_client, start_relay,
                                                                tmp_path):
    """Rows of every kind of damage, written with raw sqlite3 between good ones: the relay
    starts, names each bad row in the log, restores the good ones and serves them."""
    prefix = unique_prefix()
    path = tmp_path / "relay.sqlite"
    Store.open(str(path)).close()
    bad = {
        "attrs": (f"{prefix}:attrs_f1", "f", 1, 0, 1.0, TS_NS, "{not json"),
        "ts text": (f"{prefix}:ts_f1", "f", 1, 0, 1.0, "soon", "{}"),
        "ts range": (f"{prefix}:late_f1", "f", 1, 0, 1.0, 2**63 - 1, "{}"),
        "value": (f"{prefix}:value_f1", "f", 1, 0, "1.5", TS_NS, "{}"),
        "kind": (f"{prefix}:kind_f1", "i", 1, 0, 1, TS_NS, "{}"),
        "count": (f"{prefix}:count_f2", "f", "two", 0, b"", TS_NS, "{}"),
        "buffer": (f"{prefix}:buffer_F2", "f", 2, 7, b"", TS_NS, "{}"),
        "long": (f"{prefix}:long_c4", "c", 4, 0, b"too long", TS_NS, "{}"),
        "meta": (f"{prefix}:meta_f1", "f", 1, 0, 2.0, 1, '{"prec": 99}'),
        "no name": (None, "f", 1, 0, 1.0, TS_NS, "{}"),
    }
    insert_rows(path, (f"{prefix}:good_f1", "f", 1, 0, 1.5, TS_NS, '{"egu": "K"}'),
                *bad.values(),
                (f"{prefix}:also_good_i1", "i", 1, 0, 3, TS_NS, "{}"),
                (f"{prefix}:text_c20", "c", 20, 0, b"kept", TS_NS, "{}"))
    relay = start_relay("--autosave", str(path), prefix=prefix)
    good = [full(relay, "good_f1"), full(relay, "also_good_i1"), full(relay, "text_c20")]
    assert listed(caproto_client, relay) == good
    assert status(caproto_client, relay, "autosave:restored") == 3
    meta = caproto_client.get_meta(good[0])  # time stamp and all: reads work
    assert (meta.value, meta.timestamp) == (1.5, TS_NS / 1e9)
    assert comparable(caproto_client.get(f"{good[0]}.EGU")) == "K"
    assert caproto_client.get(good[2], as_string=True) == "kept"
    log = relay.log_text()
    for row in bad.values():
        name = row[0] if row[0] is not None else "a row named None"
        assert f"autosave: cannot restore {name} (" in log and "; left out" in log, name
    assert "restored 3 PVs" in log and "restarting" not in log
    assert status(caproto_client, relay, "autosave:leftOut") == len(bad)
    assert (f"autosave: {len(bad)} saved rows left out; they stay in the file until a PV of "
            "their name is made again") in log
    # A bad row's name is a name like any other: a put makes it a good PV again.
    assert caproto_client.put(full(relay, "ts_f1"), 4.0)
    relay.restart()
    caproto_client.forget_all()
    assert listed(caproto_client, relay) == [*good, full(relay, "ts_f1")]
    assert caproto_client.get(full(relay, "ts_f1")) == 4.0


def test_many_bad_rows_are_counted_and_logged_in_a_few_lines(caproto_client, start_relay,
                                                             tmp_path):
    """Issue 11: one ERROR line per bad row, without a limit, and no count in the status."""
    prefix = unique_prefix()
    path = tmp_path / "relay.sqlite"
    Store.open(str(path)).close()
    insert_rows(path, (f"{prefix}:good_f1", "f", 1, 0, 1.5, TS_NS, "{}"),
                *((f"{prefix}:bad{i}_f1", "f", 1, 0, 1.0, "soon", "{}") for i in range(500)))
    relay = start_relay("--autosave", str(path), prefix=prefix)
    assert listed(caproto_client, relay) == [full(relay, "good_f1")]
    assert status(caproto_client, relay, "autosave:leftOut") == 500
    assert status(caproto_client, relay, "autosave:restored") == 1
    log = relay.log_text()
    assert log.count("autosave: cannot restore ") == 10
    assert ("autosave: 500 saved rows left out (the first 10 named above); they stay in the "
            "file until a PV of their name is made again (relayd autosave export names every "
            "one)") in log


# --- kills ------------------------------------------------------------------------------------------

INTERVAL = 0.2  # --autosave-interval of the kill tests
MARGIN = 3 * INTERVAL


def stream_until_killed(writer: Any, pv: str, kill: Any, after: float) -> tuple[list, float]:
    """Put 1, 2, 3... to `pv`, each acknowledged before the next, and `kill()` right after
    the first acknowledgement `after` seconds in. Returns ([(value, monotonic time its put
    was acknowledged)], monotonic time of the kill).

    The kill is made from this thread, between two puts: a put sent after the kill would
    not fail but wait for the restarted CA process and overwrite the restored value
    (pyepics waits for the channel to reconnect), and the test could not tell what was
    restored.
    """
    acknowledged: list[tuple[int, float]] = []
    deadline = time.monotonic() + after
    value = 0
    while True:
        value += 1
        assert writer.put(pv, value, timeout=3.0), f"put {value} failed before the kill"
        acknowledged.append((value, time.monotonic()))
        if acknowledged[-1][1] >= deadline:
            killed = time.monotonic()
            kill()
            return acknowledged, killed


def check_loss(restored: int, acknowledged: list[tuple[int, float]], killed: float) -> None:
    """The restored value is no older than what was acknowledged MARGIN before the kill.

    A put acknowledged at time t marks its PV dirty in the same CA cycle; the CA loop
    hands the dirty PVs to the writer thread at most one interval later, and the writer
    commits them within a few milliseconds. So whatever was acknowledged one interval
    (plus a write) before the kill is on disk. MARGIN (three intervals) leaves room for a
    slow writer or a busy machine; the bound is measured from the recorded times of the
    acknowledgements and of the kill, not from sleeps.
    """
    durable = [value for value, at in acknowledged if at <= killed - MARGIN]
    assert durable, "the stream was too short before the kill"
    sent = acknowledged[-1][0]  # the kill came after this answer, with no put in flight
    lost = [(value, round(killed - at, 3)) for value, at in acknowledged if value > restored]
    assert durable[-1] <= restored <= sent, (
        f"restored {restored}; acknowledged {len(acknowledged)} puts, the last at "
        f"{killed - acknowledged[-1][1]:.3f} s before the kill; lost (value, age): "
        f"{lost[:3]}...{lost[-3:]}")


def test_sigkill_of_the_ca_process_loses_at_most_one_interval(client, start_relay):
    """A stream of acknowledged CA puts, the CA process killed in the middle of it: the
    supervisor restarts it, it restores the counter (see `check_loss` for the bound) and
    the clients, the monitor included, come back to it by themselves."""
    relay = start_relay("--autosave-interval", str(INTERVAL))
    counter, static = full(relay, "counter_i1"), full(relay, "static_f3")
    assert client.put(static, [1.0, 2.0, 3.0])
    assert client.put(counter, 0)
    monitor = client.monitor(counter)
    monitor.wait_count(1)
    old = relay.ca_pid()
    acknowledged, killed = stream_until_killed(
        client, counter, lambda: os.kill(old, signal.SIGKILL), random.uniform(1.5, 2.5))
    new_ca_process(relay, old)
    assert restore_came_before_serving(relay.log_text())
    restored = wait_for(lambda: [client.get(counter)], timeout=40,
                        what="the counter readable again")[0]
    check_loss(restored, acknowledged, killed)
    assert status(client, relay, "autosave:restored") == 2
    assert status(client, relay, "restarts:ca") == 1
    assert listed(client, relay) == [static, counter]
    assert list(client.get(static)) == [1.0, 2.0, 3.0]
    # The monitor reconnected by itself and its first value since is the restored one:
    # the new CA process answered no search before the PVs were back.
    wait_for(lambda: monitor.connection_changes()[-1:] == [True]
             and False in monitor.connection_changes(), timeout=40,
             what="the monitor reconnected")

    def since_reconnection() -> list:
        events = list(monitor.events)
        gone = max(i for i, e in enumerate(events) if e.connected is False)
        return [e for e in events[gone:] if e.connected is None]

    wait_for(since_reconnection, timeout=20, what="an event since the reconnection")
    assert [(e.value, e.severity) for e in since_reconnection()] == [(restored, 0)]
    monitor.close()


def test_sigkill_of_the_whole_daemon_loses_at_most_one_interval(client, start_relay):
    """As above with supervisor and children killed at once; the store passes SQLite's
    integrity check before relayd is started again on it."""
    relay = start_relay("--autosave-interval", str(INTERVAL))
    counter, static = full(relay, "counter_i1"), full(relay, "static_c20")
    assert client.put(static, "kept")
    children = relay.child_pids()
    acknowledged, killed = stream_until_killed(client, counter,
                                               lambda: relay.kill_all(children),
                                               random.uniform(1.5, 2.5))
    assert relay.process.returncode == -signal.SIGKILL
    assert integrity(relay.autosave_path) == "ok"
    relay.start()
    assert restore_came_before_serving(relay.log_since_start())
    restored = wait_for(lambda: [client.get(counter)], timeout=40,
                        what="the counter readable again")[0]
    check_loss(restored, acknowledged, killed)
    assert listed(client, relay) == [static, counter]
    assert client.get(static, as_string=True) == "kept"
    assert status(client, relay, "autosave:restored") == 2


LARGE_PUSHER = """
    import itertools, sys, threading
    import numpy as np
    from relayd.client import Client

    endpoint, count = sys.argv[1], int(sys.argv[2])
    done = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
    # Blocks (never raises) while the CA process restarts and the queues are full.
    with Client(endpoint, send_timeout=120, queue_size=20) as relay:
        for round in itertools.count(1):
            for i in range(count):
                relay.put(f"big{i}_f100000", np.full(100_000, float(round)))
            if done.wait(0.05) or round > 100_000:
                break
    print(round)
"""


def test_a_kill_during_a_save_leaves_a_readable_store(caproto_client, start_relay):
    """20 PVs of 100,000 doubles rewritten all the time, saved every 0.05 s: the writer
    is nearly always inside a 16 MB transaction when the CA process is killed."""
    count = 20
    relay = start_relay("--autosave-interval", "0.05", "--zmq-rcvhwm", "20")
    names = [full(relay, f"big{i}_f100000") for i in range(count)]
    pusher = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(LARGE_PUSHER), relay.endpoint, str(count)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    rounds: list[float] = []
    try:
        wait_for(lambda: len(stored(relay.autosave_path)) == count, timeout=60,
                 what="every PV saved once")
        for kill in range(3):
            time.sleep(random.uniform(0.2, 1.0))  # a random moment, not a measurement
            old = relay.ca_pid()
            os.kill(old, signal.SIGKILL)
            assert integrity(relay.autosave_path) == "ok", f"kill {kill + 1}"
            rows = stored(relay.autosave_path)
            assert list(rows) == names, f"kill {kill + 1}"
            for name, value in rows.items():
                data = np.frombuffer(value, dtype="<f8")
                assert len(data) == 100_000 and (data == data[0]).all(), name  # never torn
                rounds.append(data[0])
            new_ca_process(relay, old)
            caproto_client.forget_all()
            assert status(caproto_client, relay, "autosave:restored") == count
            assert f"restored {count} PVs" in relay.log_text().rsplit("ca-server ready", 2)[-2]
        assert listed(caproto_client, relay) == names
        assert "cannot restore" not in relay.log_text()
        assert "made it again" not in relay.log_text()  # busy files are no deleted files
    finally:
        output, errors = pusher.communicate(timeout=120)
    assert pusher.returncode == 0, errors
    assert max(rounds) > 1  # the store followed the pushes between kills


# --- trouble -------------------------------------------------------------------------------------

GARBAGE = b"this is not an SQLite database\n" * 100


def boot_failure(relay: RelayProcess) -> str:
    """Wait for a relay that cannot start to exit; the one line that says why (it was
    not restarted: a boot failure stops relayd at once)."""
    try:
        relay.process.wait(30)  # type: ignore[union-attr]
    except subprocess.TimeoutExpired:
        raise AssertionError(f"relayd did not give up:\n{relay.log_text()}") from None
    log = relay.log_text()
    reasons = [line for line in log.splitlines() if "relayd cannot start" in line]
    assert len(reasons) == 1, log
    assert "restarting" not in log
    return reasons[0]


def test_a_corrupt_file_stops_relayd_with_one_line(start_relay, tmp_path):
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(GARBAGE)
    started = time.monotonic()
    relay = start_relay("--autosave", str(bad), wait=False, expect_exit=3)
    reason = boot_failure(relay)
    assert time.monotonic() - started < 10
    assert reason.endswith(f"relayd cannot start: ca-server: autosave file {bad} is "
                           f"unusable: file is not a database"), reason
    assert bad.read_bytes() == GARBAGE  # untouched, nothing moved aside
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.sqlite"]


def test_autosave_reset_moves_a_corrupt_file_aside_and_starts_empty(caproto_client,
                                                                     start_relay, tmp_path):
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(GARBAGE)
    relay = start_relay("--autosave", str(bad), "--autosave-reset")
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("bad.sqlite.corrupt-")]
    assert len(aside) == 1 and aside[0].read_bytes() == GARBAGE
    assert re.fullmatch(r"bad\.sqlite\.corrupt-\d{8}T\d{6}", aside[0].name)
    assert "moved to " + str(aside[0]) in relay.log_text()
    assert listed(caproto_client, relay) == []
    assert status(caproto_client, relay, "autosave:restored") == 0
    pv = full(relay, "fresh_f1")
    assert caproto_client.put(pv, 4.0)
    relay.restart()  # the new file is sound: restored, nothing more moved aside
    caproto_client.forget_all()
    assert listed(caproto_client, relay) == [pv]
    assert caproto_client.get(pv) == 4.0
    assert len([p for p in tmp_path.iterdir() if ".corrupt-" in p.name]) == 1


def file_sizes(relay: RelayProcess) -> int:
    """The largest file the CA process writes: the store, its WAL, the log."""
    path = relay.autosave_path
    files = [path, Path(f"{path}-wal"), relay.log_path]
    return max(f.stat().st_size for f in files if f.exists())


def test_a_full_disk_keeps_the_relay_serving(caproto_client, start_relay):
    """A file size limit on the CA process (RLIMIT_FSIZE: Python ignores SIGXFSZ, so
    SQLite gets EFBIG, as on a full disk; file permissions would not stop root)."""
    client = caproto_client
    relay = start_relay("--autosave-interval", "0.2", "--status-interval", "0.2")
    small, big = full(relay, "small_f1"), full(relay, "big_f100000")
    assert client.put(small, 0.0)
    wait_for(lambda: status(client, relay, "autosave:lastSave") > 0, what="a first save")
    ca = relay.ca_pid()
    limit = file_sizes(relay) + 256 * 1024  # room for the log, not for a big row
    resource.prlimit(ca, resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
    try:
        for i in range(1, 4):
            assert client.put(big, np.full(100_000, float(i)))
            assert client.put(small, float(i))
        wait_for(lambda: status(client, relay, "autosave:failures") >= 3, timeout=20,
                 what="failed saves counted")
        assert status(client, relay, "autosave:lastError") != ""
        assert status(client, relay, "autosave:pending") == 2
        # Still serving: reads, puts with completion, new PVs, monitors.
        monitor = client.monitor(small)
        monitor.wait_value(lambda v: v == 3.0)
        for i in range(4, 8):
            assert client.put(small, float(i))
            assert client.put(big, np.full(100_000, float(i)))
        assert client.put(full(relay, "during_i1"), 5)
        monitor.wait_value(lambda v: v == 7.0)
        monitor.close()
        assert client.get(big)[-1] == 7.0
        assert status(client, relay, "autosave:pending") >= 2
        failures = status(client, relay, "autosave:failures")
        lines = [line for line in relay.log_text().splitlines()
                 if "autosave to " in line and " failed (" in line]
        assert 1 <= len(lines) < failures, "failed saves are logged, rate-limited"
        assert f"autosave to {relay.autosave_path} failed (" in lines[0]
        assert "2 changes kept, retrying every 0.2 s" in lines[0]
        assert relay.ca_pid() == ca  # nothing crashed
    finally:
        resource.prlimit(ca, resource.RLIMIT_FSIZE,
                         (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    wait_for(lambda: status(client, relay, "autosave:pending") == 0, timeout=20,
             what="the kept changes written")
    assert status(client, relay, "autosave:lastError") == ""
    relay.wait_log("works again")
    relay.restart()
    client.forget_all()
    assert listed(client, relay) == [small, big, full(relay, "during_i1")]
    assert client.get(small) == 7.0
    assert client.get(big)[0] == 7.0
    assert client.get(full(relay, "during_i1")) == 5


def test_a_stop_while_saves_fail_says_what_is_lost(caproto_client, start_relay):
    relay = start_relay("--autosave-interval", "0.2")
    pv = full(relay, "big_f100000")
    assert caproto_client.put(pv, np.full(100_000, 1.0))
    wait_for(lambda: status(caproto_client, relay, "autosave:lastSave") > 0, what="a save")
    ca = relay.ca_pid()
    limit = file_sizes(relay) + 256 * 1024
    resource.prlimit(ca, resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
    assert caproto_client.put(pv, np.full(100_000, 2.0))
    wait_for(lambda: status(caproto_client, relay, "autosave:failures") >= 1,
             what="a failed save")
    relay.restart()  # SIGTERM: the last try fails too; relayd still stops cleanly
    assert "autosave: changes could not be written to " + str(relay.autosave_path) in \
        relay.log_text()
    caproto_client.forget_all()
    assert caproto_client.get(pv)[0] == 1.0  # what was saved before the failures


def read_only(path: Path) -> dict[str, Any] | None:
    """{name: value} of the store if its file exists, opened read-only: a test must
    never create the file it waits for."""
    if not path.exists():
        return None
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    except sqlite3.Error:
        return None
    try:
        return dict(db.execute("SELECT name, value FROM pvs ORDER BY rowid").fetchall())
    except sqlite3.Error:
        return None
    finally:
        db.close()


def test_a_second_relay_on_the_same_store_exits_3_naming_it_and_the_holder(
        caproto_client, start_relay):
    first = start_relay("--autosave-interval", "0.2")
    path = first.autosave_path
    pv = full(first, "x_f1")
    assert caproto_client.put(pv, 1.0)
    holder = first.ca_pid()
    assert Path(f"{path}.lock").read_text().split() == [str(holder)]
    second = start_relay("--autosave", str(path), wait=False, expect_exit=3)
    reason = boot_failure(second)
    assert reason.endswith(f"relayd cannot start: ca-server: autosave file {path} is in "
                           f"use by another relay (pid {holder})"), reason
    # The first one never noticed: it serves and saves as before.
    assert caproto_client.put(pv, 2.0)
    wait_for(lambda: stored(path).get(pv) == 2.0, what="the first relay saving")
    # Import refuses to write under it; export reads it.
    done = autosave_cli("import", "--autosave", str(path), input=json.dumps(
        {"format": "relayd-autosave", "version": 1, "pvs": []}))
    assert done.returncode == 1
    assert done.stderr.strip() == (f"relayd autosave import: autosave file {path} is in use "
                                   f"by a running relay (pid {holder}); stop it first")
    exported = autosave_cli("export", "--autosave", str(path))
    assert exported.returncode == 0 and "x_f1" in exported.stdout
    # Its own CA process, killed and restarted by its supervisor, gets the store again.
    os.kill(holder, signal.SIGKILL)
    new = new_ca_process(first, holder)
    assert Path(f"{path}.lock").read_text().split() == [str(new)]
    caproto_client.forget_all()
    assert caproto_client.get(pv) == 2.0
    first.stop()
    assert not Path(f"{path}.lock").exists()  # a clean stop lets go of it


def test_a_deleted_file_is_made_again_with_every_pv(caproto_client, start_relay):
    """The file and its -wal and -shm deleted under a running relay: within an interval
    it is there again, with every PV (not only those changed since), it is written on,
    and a kill of the CA process restores everything from it."""
    client = caproto_client
    relay = start_relay("--autosave-interval", "0.2")
    path = relay.autosave_path
    values = {"a_f1": 1.5, "b_i1": 7, "c_c20": "text", "d_F4": [1.0, 2.0], "e_f3": [1.0] * 3}
    names = [full(relay, base) for base in values]
    for base, value in values.items():
        assert client.put(full(relay, base), value)
    push(relay, (full(relay, "a_f1"), 2.5, {"meta": {"egu": "K", "hihi": 2.0}}))
    wait_for(lambda: comparable(client.get(f"{full(relay, 'a_f1')}.EGU")) == "K",
             what="the push applied")
    wait_for(lambda: list(read_only(path) or {}) == names, what="every PV saved")
    before = {pv: read_pv(client, pv) for pv in names}
    for suffix in ("", "-wal", "-shm"):
        os.unlink(f"{path}{suffix}")
    wait_for(lambda: list(read_only(path) or {}) == names, timeout=20,
             what="the file made again with every PV")
    warnings = [line for line in relay.log_text().splitlines()
                if "WARNING" in line and str(path) in line]
    assert len(warnings) == 1, warnings
    assert "was deleted" in warnings[0] and "every PV" in warnings[0]
    assert client.put(full(relay, "after_f1"), 3.0)  # later changes go to the new file
    wait_for(lambda: list(read_only(path) or {}) == [*names, full(relay, "after_f1")],
             what="a later change saved in the new file")
    old = relay.ca_pid()
    os.kill(old, signal.SIGKILL)
    new_ca_process(relay, old)
    client.forget_all()
    assert listed(client, relay) == [*names, full(relay, "after_f1")]
    for pv in names:
        assert read_pv(client, pv) == before[pv], pv
    assert comparable(client.get(f"{full(relay, 'a_f1')}.EGU")) == "K"
    assert status(client, relay, "autosave:restored") == len(names) + 1


# --- export and import ------------------------------------------------------------------------------


def test_export_and_import(caproto_client, start_relay, tmp_path):
    relay = start_relay()
    values = {"temp_f1": 21.5, "fit_f4": [23.0, 0.1, 3231.123, 1e-4], "ring_I3": [1, 2, 3],
              "motd_c40": "hello", "nan_f2": [math.nan, -math.inf]}
    for base, value in values.items():
        assert caproto_client.put(full(relay, base), value)
    assert caproto_client.put(full(relay, "ring_I3"), [4])
    push(relay, (full(relay, "stamped_f1"), 2.5,
                 {"ts": 1700000000.5, "meta": {"egu": "K", "hihi": 2.0}}))
    names = [full(relay, base) for base in [*values, "stamped_f1"]]
    wait_for(lambda: listed(caproto_client, relay) == names, what="every PV listed")
    before = {pv: read_pv(caproto_client, pv) for pv in names}

    # Export while relayd runs: it shows what has been saved so far, soon everything.
    exported = tmp_path / "export.json"

    def exported_all() -> bool:
        done = autosave_cli("export", str(exported), "--autosave", str(relay.autosave_path))
        assert done.returncode == 0, done.stderr
        return [item["name"] for item in json.loads(exported.read_text())["pvs"]] == names

    wait_for(exported_all, what="an export of every PV")
    assert "made it again" not in relay.log_text()  # a reader beside it is no replacement
    data = json.loads(exported.read_text())
    assert (data["format"], data["version"]) == ("relayd-autosave", 1)
    by_name = {item["name"]: item for item in data["pvs"]}
    assert by_name[full(relay, "motd_c40")]["value"] == {"text": "hello"}
    assert by_name[full(relay, "nan_f2")]["value"] == ["nan", "-inf"]
    assert by_name[full(relay, "ring_I3")]["value"] == [2, 3, 4]
    assert by_name[full(relay, "stamped_f1")]["attrs"] == {"egu": "K", "hihi": 2.0}
    to_stdout = autosave_cli("export", "--autosave", str(relay.autosave_path))
    assert to_stdout.returncode == 0 and json.loads(to_stdout.stdout) == data
    assert to_stdout.stderr.strip() == f"exported {len(names)} PVs from {relay.autosave_path}"

    # Import into another file that holds a PV of its own: --replace drops it.
    target = tmp_path / "migrated" / "relay.sqlite"
    assert autosave_cli("import", "--autosave", str(target), input=json.dumps({
        "format": "relayd-autosave", "version": 1,
        "pvs": [{"name": full(relay, "stale_f1"), "kind": "f", "count": 1, "buffer": False,
                 "value": 1.0, "ts_ns": 0}]})).returncode == 0
    done = autosave_cli("import", str(exported), "--replace", "--autosave", str(target))
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == f"imported {len(names)} PVs into {target}"
    assert integrity(target) == "ok"
    relay.stop()
    migrated = start_relay("--autosave", str(target), prefix=relay.prefix)
    caproto_client.forget_all()
    assert listed(caproto_client, migrated) == names
    for pv in names:
        assert read_pv(caproto_client, pv) == before[pv], pv


def test_import_without_replace_adds_and_updates(tmp_path):
    target = str(tmp_path / "relay.sqlite")

    def record(name: str, value: float) -> dict:
        return {"name": name, "kind": "f", "count": 1, "buffer": False, "value": value,
                "ts_ns": 1}

    def load(*pvs: dict) -> subprocess.CompletedProcess:
        return autosave_cli("import", "--autosave", target, input=json.dumps(
            {"format": "relayd-autosave", "version": 1, "pvs": list(pvs)}))

    assert load(record("r:a_f1", 1.0), record("r:b_f1", 2.0)).returncode == 0
    assert load(record("r:b_f1", 3.0), record("r:c_f1", 4.0)).returncode == 0
    exported = json.loads(autosave_cli("export", "--autosave", target).stdout)
    assert [(item["name"], item["value"]) for item in exported["pvs"]] == [
        ("r:a_f1", 1.0), ("r:b_f1", 3.0), ("r:c_f1", 4.0)]


@pytest.mark.parametrize("args, text, why", [
    (["import"], '{"format": "something else", "pvs": []}', "not a relayd-autosave"),
    (["import"], "not json", "relayd autosave import: "),
    (["import"], '{"format": "relayd-autosave", "version": 1, "pvs": [{"name": "r:x_f1"}]}',
     "relayd autosave import: "),
])
def test_import_refuses_a_bad_file_and_changes_nothing(tmp_path, args, text, why):
    target = str(tmp_path / "relay.sqlite")
    good = {"format": "relayd-autosave", "version": 1, "pvs": [
        {"name": "r:a_f1", "kind": "f", "count": 1, "buffer": False, "value": 1.0,
         "ts_ns": 1}]}
    assert autosave_cli("import", "--autosave", target, input=json.dumps(good)).returncode == 0
    done = autosave_cli(*args, "--replace", "--autosave", target, input=text)
    assert done.returncode == 1
    assert why in done.stderr and done.stderr.count("\n") == 1, done.stderr
    after = json.loads(autosave_cli("export", "--autosave", target).stdout)["pvs"]
    assert [(item["name"], item["value"]) for item in after] == [("r:a_f1", 1.0)]


@pytest.mark.parametrize("action", ["export", "import"])
def test_the_file_may_follow_the_options(tmp_path, action):
    store, file = str(tmp_path / "relay.sqlite"), tmp_path / "relay.json"
    if action == "import":
        file.write_text('{"format": "relayd-autosave", "version": 1, "pvs": []}')
    else:
        Store.open(store).close()  # export needs a store to read
    done = autosave_cli(action, "--autosave", store, str(file))
    assert done.returncode == 0, done.stderr


def test_export_of_a_corrupt_file_fails_with_one_line(tmp_path):
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(GARBAGE)
    done = autosave_cli("export", "--autosave", str(bad))
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and str(bad) in done.stderr
    assert bad.read_bytes() == GARBAGE  # not repaired, not replaced


# --- where the file is, and no file at all ------------------------------------------------------


def own_relay(session_dir: Path, *args: str, env: dict[str, str]) -> RelayProcess:
    """A relay without the harness's own autosave file: it uses relayd's default path."""
    relay = RelayProcess(unique_prefix() + ":bl1", PORTS.take(), session_dir, list(args), env)
    relay.own_autosave = False
    return relay


def test_the_default_file_is_under_xdg_state_home(caproto_client, session_dir, tmp_path):
    relay = own_relay(session_dir, env={"XDG_STATE_HOME": str(tmp_path)})
    try:
        relay.start()
        pv = full(relay, "x_f1")
        assert caproto_client.put(pv, 1.0)
        relay.restart()
        caproto_client.forget_all()
        assert listed(caproto_client, relay) == [pv]
    finally:
        code = relay.stop()
        PORTS.give_back(relay.port)
    assert code == 0, relay.log_text()
    default = tmp_path / "relayd" / f"{relay.prefix}.sqlite"
    assert f"autosave: {default}, written every 1.0 s" in relay.log_text()
    assert list(stored(default)) == [pv]
    # The commands find it by prefix, and use prefix "relay" when given neither.
    env = {"XDG_STATE_HOME": str(tmp_path)}
    done = autosave_cli("export", "--prefix", relay.prefix, env=env)
    assert [item["name"] for item in json.loads(done.stdout)["pvs"]] == [pv]
    done = autosave_cli("export", env=env)  # no relay "relay" ever ran: nothing to export
    assert done.returncode == 1
    assert done.stderr.strip() == f"relayd autosave: no autosave file at {tmp_path}/relayd/relay.sqlite"


def test_no_autosave_writes_nothing_and_restores_nothing(caproto_client, start_relay,
                                                         tmp_path):
    relay = start_relay("--no-autosave", env={"XDG_STATE_HOME": str(tmp_path)})
    pv = full(relay, "x_f1")
    assert caproto_client.put(pv, 1.0)
    assert status(caproto_client, relay, "autosave:enabled") == 0
    assert "autosave is off" in relay.log_text()
    relay.restart()
    caproto_client.forget_all()
    assert listed(caproto_client, relay) == []
    assert status(caproto_client, relay, "autosave:restored") == 0
    assert status(caproto_client, relay, "autosave:lastSave") == 0
    assert list(tmp_path.iterdir()) == []
    assert not relay.autosave_path.exists()


def test_autosave_status_pvs(caproto_client, start_relay):
    relay = start_relay("--autosave-interval", "0.2")
    assert status(caproto_client, relay, "autosave:enabled") == 1
    assert status(caproto_client, relay, "autosave:lastSave") == 0  # nothing to save yet
    before = time.time()
    assert caproto_client.put(full(relay, "x_f1"), 1.0)
    wait_for(lambda: status(caproto_client, relay, "autosave:lastSave") >= before,
             what="a save after the put")
    assert status(caproto_client, relay, "autosave:lastSave") <= time.time()
    assert status(caproto_client, relay, "autosave:pending") == 0
    assert status(caproto_client, relay, "autosave:failures") == 0
    assert status(caproto_client, relay, "autosave:lastError") == ""
    assert status(caproto_client, relay, "autosave:restored") == 0
    assert not caproto_client.put(full(relay, "status:autosave:failures"), 0)  # read-only
