"""End-to-end fault injection: relayd recovers by itself from crashes, hangs, a slow
consumer and a failing disk, under a steady load.

Every test runs with a background publisher pushing a counter every 5 ms (`Load`) and a
pyepics monitor open on that counter. After each fault it checks that the relay recovered
without help (new pids where a child was killed), that clients see values again, that the
status PVs tell what happened, and that nothing acknowledged was lost.
"""

from __future__ import annotations

import os
import resource
import signal
import threading
import time

import numpy as np
import pytest

from tests.e2e._faults import Load, proc_state, replaced, stopped
from tests.e2e._tools import (
    full, listed, run_snippet, status, wait_listed, wait_status,
)
from tests.harness import wait_for

AUTOSAVE_INTERVAL = 0.2
# An acknowledged put may be lost only if it is younger than one autosave interval at the
# kill; the margin allows for a loaded machine (the writer runs in a thread, a write
# takes time).
SAVE_MARGIN = 3 * AUTOSAVE_INTERVAL


def start_load(relay, monitor_client):
    """The background publisher and a monitor on its counter, once values flow."""
    load = Load(relay).__enter__()
    try:
        wait_listed(monitor_client, relay, load.name)
        monitor = monitor_client.monitor(load.name)
        monitor.wait_value(lambda v: v > 10)
    except BaseException:
        load.__exit__()
        raise
    return load, monitor


def finish_load(load, monitor, reader, relay) -> int:
    """Stop the publisher; every value it queued arrives, the last one included."""
    last = load.stop()
    wait_for(lambda: reader.get(load.name) == last, timeout=20,
             what=f"the last counter value {last} applied")
    monitor.wait_value(lambda v: v == last, timeout=20)
    return last


def test_ingest_worker_sigkilled_under_load(pyepics_client, caproto_client, start_relay):
    relay = start_relay("--status-interval", "0.2")
    reader = caproto_client
    load, monitor = start_load(relay, pyepics_client)
    try:
        old = relay.child_pids()
        before = reader.get(load.name)
        os.kill(old["ingest"], signal.SIGKILL)
        # CA keeps serving while the worker is gone: puts, reads, status.
        assert reader.put(full(relay, "during_f1"), 1.0)
        new = replaced(relay, "ingest", old["ingest"])
        assert new["ca-server"] == old["ca-server"]
        wait_status(reader, relay, "restarts:ingest", lambda n: n == 1)
        assert status(reader, relay, "restarts:ca") == 0
        monitor.wait_value(lambda v: v > before + 50)  # values flow again
        last = finish_load(load, monitor, reader, relay)
    finally:
        load.__exit__()
        monitor.close()
    assert "ingest was killed by SIGKILL; restarting" in relay.log_text()
    values = monitor.values()
    assert values == sorted(values), "the counter went backwards"
    assert monitor.connection_changes() == [True], "the CA monitor was disconnected"
    assert last > before
    assert reader.get(full(relay, "during_f1")) == 1.0


def test_ca_process_sigkilled_under_load_loses_no_acknowledged_put(pyepics_client,
                                                                    caproto_client,
                                                                    start_relay):
    relay = start_relay("--autosave-interval", str(AUTOSAVE_INTERVAL),
                        "--status-interval", "0.2")
    acked_pv = full(relay, "acked_f1")
    assert caproto_client.put(acked_pv, 0.0)
    load, monitor = start_load(relay, pyepics_client)
    acks: list[tuple[int, float]] = []  # (value, when its put completed)
    halt = threading.Event()

    def put_loop() -> None:
        for i in range(1, 1_000_000):
            if halt.is_set():
                return
            try:
                if caproto_client.put(acked_pv, float(i), timeout=2.0):
                    acks.append((i, time.time()))
            except Exception:
                return  # the server is gone

    writer = threading.Thread(target=put_loop, daemon=True)
    try:
        writer.start()
        wait_for(lambda: acks and acks[-1][1] - acks[0][1] > 1.5, timeout=20,
                 what="1.5 s of acknowledged puts")
        old = relay.child_pids()
        before = pyepics_client.get(load.name)
        killed_at = time.time()
        os.kill(old["ca-server"], signal.SIGKILL)
        halt.set()
        writer.join(10)
        assert not writer.is_alive()

        new = replaced(relay, "ca-server", old["ca-server"])
        assert new["ingest"] == old["ingest"]
        restored = pyepics_client.get(acked_pv)
        safe = [value for value, when in acks if when <= killed_at - SAVE_MARGIN]
        assert safe, "no put was acknowledged early enough to judge"
        attempted = acks[-1][0] + 1  # the put in flight may have been applied too
        assert safe[-1] <= restored <= attempted, (
            f"restored {restored}; acknowledged {safe[-1]} at least {SAVE_MARGIN} s "
            f"before the kill, {acks[-1][0]} at the last")
        assert restored == int(restored)
        wait_status(pyepics_client, relay, "restarts:ca", lambda n: n == 1)
        assert status(pyepics_client, relay, "restarts:ingest") == 0
        assert status(pyepics_client, relay, "autosave:restored") >= 2
        # The monitor was disconnected, reconnected by itself, and sees new values:
        # pushes made while the CA process was down waited in the pipe.
        monitor.wait_value(lambda v: v > before + 50, timeout=20)
        last = finish_load(load, monitor, pyepics_client, relay)
    finally:
        halt.set()
        load.__exit__()
        monitor.close()
    changes = monitor.connection_changes()
    assert changes[:2] == [True, False] and changes[-1] is True, changes
    assert "ca-server was killed by SIGKILL; restarting" in relay.log_text()
    assert last > before
    assert listed(pyepics_client, relay) == [acked_pv, load.name]


@pytest.mark.parametrize("role", ["ingest", "ca-server"])
def test_child_stopped_then_continued_and_killed_when_stopped_too_long(
        pyepics_client, caproto_client, start_relay, role):
    timeout = 2.5
    relay = start_relay("--heartbeat-timeout", str(timeout), "--status-interval", "0.2",
                        "--autosave-interval", str(AUTOSAVE_INTERVAL))
    restarts = "restarts:ingest" if role == "ingest" else "restarts:ca"
    load, monitor = start_load(relay, pyepics_client)
    try:
        # A short stop (well within the heartbeat timeout): the child just carries on.
        old = relay.child_pids()
        with stopped(old[role]):
            if role == "ingest":  # CA is served meanwhile
                assert caproto_client.get(full(relay, "status:uptime")) > 0
            time.sleep(timeout / 4)  # let time pass while it is stopped
        seen = pyepics_client.get(load.name)
        monitor.wait_value(lambda v: v > seen + 20)
        assert relay.child_pids() == old
        assert status(pyepics_client, relay, restarts) == 0

        # A stop longer than the timeout: the supervisor kills it and starts another;
        # a CA put acknowledged more than an autosave interval before survives that.
        acked = full(relay, "acked_f1")
        assert pyepics_client.put(acked, 2.5)
        time.sleep(SAVE_MARGIN)  # let it age past the autosave interval
        victim = old[role]
        with stopped(victim):
            new = replaced(relay, role, victim, timeout=timeout + 15)
        assert proc_state(victim) == ""
        other = "ca-server" if role == "ingest" else "ingest"
        assert new[other] == old[other]
        assert f"{role} (pid {victim}) sent no heartbeat" in relay.log_text()
        wait_status(pyepics_client, relay, restarts, lambda n: n == 1, timeout=20)
        assert pyepics_client.get(acked) == 2.5
        seen = pyepics_client.get(load.name)
        monitor.wait_value(lambda v: v > seen + 20, timeout=20)
        last = finish_load(load, monitor, pyepics_client, relay)
    finally:
        load.__exit__()
        monitor.close()
    values = [v for v in monitor.values() if v is not None]
    assert last in values
    if role == "ingest":
        assert monitor.connection_changes() == [True]


FLOOD = """
    # Batches of 500 updates, as fast as they go, until the relay stops taking them.
    names = [f"flood{i}_f1" for i in range(500)]
    relay = Client(endpoint, send_timeout=1.0, queue_size=20, linger=0)
    sent = 0
    try:
        for batch in range(1, 100_000):
            relay.put_many([(pv, float(batch)) for pv in names])
            sent = batch
    except RelayUnreachable as error:
        print("unreachable after", sent, "batches:", error)
    relay.close()
"""


def test_full_pipe_slow_consumer_recovers_and_drains(pyepics_client, caproto_client,
                                                     start_relay):
    relay = start_relay("--pipe-buffer", "65536", "--zmq-rcvhwm", "10",
                        "--status-interval", "0.2")
    backlog = pyepics_client.monitor(full(relay, "status:pipe:backlog"))
    backlog.wait_count(1)
    load, monitor = start_load(relay, pyepics_client)
    ca_pid = relay.child_pids()["ca-server"]
    try:
        with stopped(ca_pid):  # the CA process stops consuming the pipe
            output = run_snippet(relay.endpoint, FLOOD)
            assert output.startswith("unreachable after"), output
            assert relay.endpoint in output
        # Once it runs again the relay recovers by itself: the backlog it reports grows,
        # then drains to zero, and what was queued arrives.
        wait_for(lambda: max(backlog.values()) > 0, what="a pipe backlog reported")
        wait_status(caproto_client, relay, "pipe:backlog", lambda n: n == 0, timeout=20)
        wait_listed(caproto_client, relay, full(relay, "flood0_f1"), full(relay, "flood499_f1"))
        seen = pyepics_client.get(load.name)
        monitor.wait_value(lambda v: v > seen + 20, timeout=20)
        last = finish_load(load, monitor, pyepics_client, relay)
        # A later push arrives at once.
        run_snippet(relay.endpoint, "with Client(endpoint) as r: r.put('later_f1', 7.5)")
        wait_for(lambda: caproto_client.get(full(relay, "later_f1")) == 7.5,
                 what="a push after the recovery")
    finally:
        load.__exit__()
        monitor.close()
        backlog.close()
    assert relay.child_pids()["ca-server"] == ca_pid
    assert status(caproto_client, relay, "restarts:ca") == 0
    assert status(caproto_client, relay, "restarts:ingest") == 0
    assert last > 0


def test_autosave_write_failures_are_reported_and_recovered(pyepics_client, caproto_client,
                                                            start_relay):
    relay = start_relay("--autosave-interval", str(AUTOSAVE_INTERVAL),
                        "--status-interval", "0.2")
    ca = caproto_client
    load, monitor = start_load(relay, pyepics_client)
    ca_pid = relay.child_pids()["ca-server"]
    big = full(relay, "big_f500000")
    data = np.random.default_rng(11).normal(size=500_000)
    limited = False
    try:
        wait_status(ca, relay, "autosave:lastSave", lambda t: t > 0)
        assert status(ca, relay, "autosave:enabled") == 1
        # Files the CA process writes may not grow past 1 MiB more than its log has
        # now (root ignores permissions; Python ignores SIGXFSZ): its log lines still
        # fit, a 4 MB row of the autosave file does not.
        limit = relay.log_path.stat().st_size + 1024 * 1024
        _, hard = resource.prlimit(ca_pid, resource.RLIMIT_FSIZE)
        resource.prlimit(ca_pid, resource.RLIMIT_FSIZE, (limit, hard))  # the soft limit
        limited = True
        # libca for the 4 MB put: caproto's threading client writes with sendall on a
        # non-blocking socket, which fails (EAGAIN) when the busy server reads slowly.
        assert pyepics_client.put(big, data)
        assert ca.put(full(relay, "acked_f1"), 1.5)  # acknowledged while saving fails
        failures = wait_status(ca, relay, "autosave:failures", lambda n: n >= 2)
        assert status(ca, relay, "autosave:lastError") != ""
        assert status(ca, relay, "autosave:pending") >= 1
        assert "autosave to" in relay.log_text() and "failed" in relay.log_text()
        # The relay keeps serving meanwhile.
        seen = pyepics_client.get(load.name)
        monitor.wait_value(lambda v: v > seen + 20)
        assert np.array_equal(ca.get(big), data)

        # The disk works again: the pending changes are written, the errors clear.
        resource.prlimit(ca_pid, resource.RLIMIT_FSIZE, (hard, hard))
        limited = False
        wait_status(ca, relay, "autosave:lastError", lambda text: text == "")
        wait_status(ca, relay, "autosave:pending", lambda n: n == 0)
        assert status(ca, relay, "autosave:failures") >= failures
        assert "works again" in relay.log_text()
        saved_at = time.time()
        wait_status(ca, relay, "autosave:lastSave", lambda t: t > saved_at)

        # Nothing acknowledged was lost: a kill now restores it all.
        os.kill(ca_pid, signal.SIGKILL)
        replaced(relay, "ca-server", ca_pid)
        assert pyepics_client.get(full(relay, "acked_f1")) == 1.5
        assert np.array_equal(pyepics_client.get(big), data)
        seen = pyepics_client.get(load.name)
        monitor.wait_value(lambda v: v > seen + 20, timeout=20)
        finish_load(load, monitor, pyepics_client, relay)
    finally:
        if limited and proc_state(ca_pid):
            resource.prlimit(ca_pid, resource.RLIMIT_FSIZE, (hard, hard))
        load.__exit__()
        monitor.close()
