"""The real Supervisor (relayd.supervise.supervisor) running relayd's children, without CA clients.

Each test starts ``python -m relayd`` on free loopback ports (CA and ZMQ), finds its
children through /proc (parent pid and process title; process group once the parent is
gone), signals them, and watches the exit code, the log and /proc.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

from relayd.client import Client
from tests.harness import RelayProcess, free_port, unique_prefix, wait_for

pytestmark = pytest.mark.timeout(120)

STOP_GRACE = 10.0  # Config.stop_grace default
BOOT_FAILED = 3

LOOPBACK_ENV = {
    "EPICS_CAS_INTF_ADDR_LIST": "127.0.0.1",
    "EPICS_CA_AUTO_ADDR_LIST": "NO",
    "EPICS_CA_ADDR_LIST": "127.0.0.1",
}


# --- processes in /proc ------------------------------------------------------------------------


def proc_state(pid: int) -> tuple[str, int, int, bytes] | None:
    """(state letter, parent pid, process group, cmdline) of `pid`, or None if none."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return fields[0], int(fields[1]), int(fields[2]), cmdline


def alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie (a zombie has nothing left to run)."""
    state = proc_state(pid)
    return state is not None and state[0] != "Z"


def is_relayd_child(pid: int) -> bool:
    state = proc_state(pid)
    return state is not None and state[0] != "Z" and b"relayd: " in state[3]


def relayd_children_in_group(group: int) -> list[int]:
    """Live relayd children in process group `group`, whoever their parent is now.

    Each relayd under test leads a session and process group of its own, which its
    children inherit; unlike the parent pid, that survives the supervisor's death.
    """
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != group:
            state = proc_state(int(entry.name))
            if state is not None and state[2] == group and is_relayd_child(int(entry.name)):
                found.append(int(entry.name))
    return sorted(found)


class SessionRelay(RelayProcess):
    """relayd as the leader of a new session, so its children can be found by group."""

    def start(self, wait: bool = True) -> "SessionRelay":
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, env=self.environment(),
                cwd=self.workdir, start_new_session=True,
            )
        if wait:
            self.wait_ready()
        return self


class Relays:
    """Relays started by one test; everything they ran is killed at teardown."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.started: list[SessionRelay] = []
        self.seen: set[int] = set()  # every child pid a test has looked at

    def start(self, *args: str, port: int | None = None, wait: bool = True) -> SessionRelay:
        # The supervisor's rules are the same for every worker: two children are enough
        # here (the HTTP worker's restarts and stops are tested end to end).
        relay = SessionRelay(unique_prefix(), port or free_port(), self.workdir,
                             ["--no-http", *args], dict(LOOPBACK_ENV))
        self.started.append(relay)
        relay.start(wait=wait)
        return relay

    def children(self, relay: SessionRelay) -> dict[str, int]:
        """Both children of `relay`, once both are running."""
        found = wait_for(lambda: (lambda c: len(c) == 2 and c)(relay.child_pids()),
                         10.0, what="both children of relayd")
        self.seen.update(found.values())
        return found

    def new_child(self, relay: SessionRelay, role: str, old: int, timeout: float) -> int:
        def replaced() -> int | None:
            pid = relay.child_pids().get(role)
            return pid if pid is not None and pid != old else None

        pid = wait_for(replaced, timeout, what=f"a new {role} child (old pid {old})")
        self.seen.add(pid)
        return pid

    def cleanup(self) -> None:
        for relay in self.started:
            if relay.process is None:
                continue
            if relay.process.poll() is None:
                self.seen.update(relay.child_pids().values())
                relay.process.kill()
            try:
                relay.process.wait(5.0)
            except subprocess.TimeoutExpired:
                pass
            self.seen.update(relayd_children_in_group(relay.pid))
        for pid in self.seen:
            if is_relayd_child(pid):
                for signum in (signal.SIGCONT, signal.SIGKILL):
                    try:
                        os.kill(pid, signum)
                    except ProcessLookupError:
                        pass


@pytest.fixture
def relays(tmp_path: Path) -> Iterator[Relays]:
    started = Relays(tmp_path)
    try:
        yield started
    finally:
        started.cleanup()


def wait_exit(relay: SessionRelay, timeout: float) -> tuple[int, float]:
    """Wait for relayd to exit: (exit code, seconds it took)."""
    assert relay.process is not None
    began = time.monotonic()
    try:
        code = relay.process.wait(timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"relayd still running after {timeout} s:\n{relay.log_text()}")
    return code, time.monotonic() - began


def line_index(log: str, text: str) -> int:
    index = log.find(text)
    assert index >= 0, f"{text!r} not in the log:\n{log}"
    return index


# --- stopping ---------------------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_ingest_then_ca_server(relays: Relays, signum: int) -> None:
    relay = relays.start()
    children = relays.children(relay)
    relay.process.send_signal(signum)
    code, took = wait_exit(relay, STOP_GRACE + 5)
    log = relay.log_text()
    assert code == 0, log
    assert took < STOP_GRACE, f"took {took:.1f} s:\n{log}"
    assert "did not stop" not in log
    assert f"{signal.Signals(signum).name} received: stopping" in log
    # The ingest worker is stopped first; the CA process only after it has gone.
    assert line_index(log, "ingest stopped") < line_index(log, "ca-server stopped"), log
    assert line_index(log, "relayd.supervisor: ingest stopped (exited with code 0)") < \
        line_index(log, "relayd.supervisor: ca-server stopped (exited with code 0)")
    assert "relayd stopped" in log
    for pid in children.values():
        assert not alive(pid), f"child {pid} left running"
    assert relayd_children_in_group(relay.pid) == []


# --- restarts -----------------------------------------------------------------------------------


def test_killed_ingest_is_restarted(relays: Relays) -> None:
    relay = relays.start()
    children = relays.children(relay)
    os.kill(children["ingest"], signal.SIGKILL)
    new = relays.new_child(relay, "ingest", children["ingest"], 10.0)
    relay.wait_log("ingest was killed by SIGKILL; restarting")
    wait_for(lambda: relay.log_text().count("ingest ready") == 2, 10.0,
             what="the new ingest child ready")
    assert relay.child_pids().get("ca-server") == children["ca-server"]  # left alone
    assert not alive(children["ingest"])
    assert alive(new)
    assert relay.process.poll() is None
    relay.process.send_signal(signal.SIGTERM)
    code, _ = wait_exit(relay, STOP_GRACE + 5)
    assert code == 0, relay.log_text()


def test_hung_ingest_is_killed_and_restarted(relays: Relays) -> None:
    relay = relays.start("--heartbeat-timeout", "2")
    children = relays.children(relay)
    stopped = children["ingest"]
    os.kill(stopped, signal.SIGSTOP)
    relays.new_child(relay, "ingest", stopped, 15.0)
    log = relay.wait_log("ingest was killed by SIGKILL; restarting")
    assert "ingest (pid %d) sent no heartbeat for 2 s: killing it" % stopped in log
    wait_for(lambda: not alive(stopped), 5.0, what="the stopped ingest child gone")
    members = relayd_children_in_group(relay.pid)
    assert [pid for pid in members if (proc_state(pid) or "?")[0] == "T"] == []  # none stopped
    assert len(members) == 2
    assert relay.child_pids().get("ca-server") == children["ca-server"]
    relay.process.send_signal(signal.SIGTERM)
    code, _ = wait_exit(relay, STOP_GRACE + 5)
    assert code == 0, relay.log_text()


def test_killed_ca_server_is_restarted(relays: Relays) -> None:
    relay = relays.start()
    children = relays.children(relay)
    os.kill(children["ca-server"], signal.SIGKILL)
    relays.new_child(relay, "ca-server", children["ca-server"], 10.0)
    relay.wait_log("ca-server was killed by SIGKILL; restarting")
    wait_for(lambda: relay.log_text().count("ca-server ready") == 2, 10.0,
             what="the new ca-server child ready")
    assert relay.child_pids().get("ingest") == children["ingest"]  # left alone
    relay.process.send_signal(signal.SIGTERM)
    code, _ = wait_exit(relay, STOP_GRACE + 5)
    assert code == 0, relay.log_text()


def test_child_that_ignores_sigterm_is_killed_after_stop_grace(relays: Relays) -> None:
    relay = relays.start("--stop-grace", "2")
    children = relays.children(relay)
    os.kill(children["ca-server"], signal.SIGSTOP)  # a stopped process cannot act on SIGTERM
    relay.process.send_signal(signal.SIGTERM)
    _, took = wait_exit(relay, 10.0)
    log = relay.log_text()
    assert 1.5 < took < 5.0, f"took {took:.1f} s:\n{log}"
    assert "ingest stopped (exited with code 0)" in log
    assert "ca-server did not stop within 2 s: killing it" in log
    assert "ca-server stopped (was killed by SIGKILL)" in log
    assert not alive(children["ca-server"])
    assert relayd_children_in_group(relay.pid) == []


# --- boot failures ------------------------------------------------------------------------------


def test_zmq_port_in_use_stops_relayd(relays: Relays) -> None:
    zmq_port = free_port((socket.SOCK_STREAM,))
    endpoint = f"tcp://127.0.0.1:{zmq_port}"
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", zmq_port))
        holder.listen()
        relay = relays.start("--zmq-bind", endpoint, wait=False)
        code, took = wait_exit(relay, 15.0)
    log = relay.log_text()
    assert code == BOOT_FAILED, log
    assert took < 10.0, log
    lines = [line for line in log.splitlines() if "cannot start" in line and endpoint in line]
    assert lines, log
    # The supervisor's own line carries the reason the child sent on its lifeline.
    assert f"relayd cannot start: ingest: cannot bind ZMQ endpoint {endpoint}" in log, log
    assert "restarting" not in log
    assert relayd_children_in_group(relay.pid) == []


def test_ca_port_in_use_stops_relayd(relays: Relays) -> None:
    port = free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:  # no SO_REUSEADDR
        holder.bind(("127.0.0.1", port))
        relay = relays.start(port=port, wait=False)
        code, took = wait_exit(relay, 15.0)
    log = relay.log_text()
    assert code == BOOT_FAILED, log
    assert took < 10.0, log
    assert f"cannot use CA port 127.0.0.1:{port}" in log
    assert "relayd cannot start: ca-server" in log
    assert "restarting" not in log
    assert relayd_children_in_group(relay.pid) == []


# --- the supervisor paused -----------------------------------------------------------------------


def saved_values(relay: SessionRelay) -> dict[str, object]:
    """The relay's PVs as its autosave store holds them (``relayd autosave export``)."""
    done = subprocess.run(
        [sys.executable, "-m", "relayd", "autosave", "export", "--autosave",
         str(relay.autosave_path)], capture_output=True, timeout=30, check=True)
    return {pv["name"]: pv["value"] for pv in json.loads(done.stdout)["pvs"]}


def answers(relay: SessionRelay, name: str, value: float) -> None:
    """Push `value` to `name` over ZMQ and wait until the CA process has saved it: the
    ingest worker, the pipe and the CA process all work."""
    with Client(relay.endpoint) as client:
        client.put(name, value)
    wait_for(lambda: saved_values(relay).get(f"{relay.prefix}:{name}") == value, 15.0,
             what=f"{name} = {value} pushed and saved")


def holds_for(condition: Callable[[], bool], seconds: float, what: str) -> None:
    """Fail as soon as `condition` is false within the next `seconds`."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        assert condition(), what
        time.sleep(0.05)


def test_a_paused_supervisor_keeps_its_healthy_children(relays: Relays) -> None:
    """The supervisor stopped (SIGSTOP, as a debugger or a paused VM would) for twice the
    heartbeat timeout: its children beat all along, and must not pay for its pause."""
    relay = relays.start("--heartbeat-timeout", "2")
    children = relays.children(relay)
    answers(relay, "before_f1", 1.0)
    os.kill(relay.pid, signal.SIGSTOP)
    try:
        time.sleep(4.0)  # the pause under test
    finally:
        os.kill(relay.pid, signal.SIGCONT)
    answers(relay, "after_f1", 2.0)
    holds_for(lambda: relay.child_pids() == children, 3.0,  # more than the timeout
              what=f"children replaced after the pause:\n{relay.log_text()}")
    log = relay.log_text()
    assert "sent no heartbeat" not in log, log
    assert "restarting" not in log, log
    paused = [line for line in log.splitlines() if "the supervisor was paused for" in line]
    assert len(paused) == 1 and "WARNING" in paused[0], log
    assert 3.5 < float(paused[0].split("paused for ")[1].split(" s")[0]) < 6.0, paused
    relay.process.send_signal(signal.SIGTERM)
    code, _ = wait_exit(relay, STOP_GRACE + 5)
    assert code == 0, relay.log_text()


# --- the supervisor dies ------------------------------------------------------------------------


def test_children_die_with_a_killed_supervisor(relays: Relays) -> None:
    relay = relays.start()
    children = relays.children(relay)
    assert relayd_children_in_group(relay.pid) == sorted(children.values())
    relay.process.kill()
    relay.process.wait(5.0)
    wait_for(lambda: not any(alive(pid) for pid in children.values()), 5.0,
             what=f"children {children} gone after the supervisor was killed")
    assert relayd_children_in_group(relay.pid) == []
