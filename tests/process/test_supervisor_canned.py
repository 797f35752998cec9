"""The Supervisor driven one turn at a time, with canned processes and a canned clock.

`Supervisor` takes the `popen` and the `clock` it uses. Here `popen` makes `CannedChild`
doubles (a pid, scripted exits, every signal recorded) instead of processes, and the
clock moves only when the test moves it, so that backoff delays, heartbeat timeouts and
the stop grace period are exact and take no time. What stays real: the lifelines (socket
pairs; the test speaks the child's end), the internal pipe, the selector, the signal
handlers (a test sends this process a real SIGTERM). The real processes are in
test_supervisor_process.py.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
from dataclasses import dataclass, field
from typing import Any, Iterator

import pytest

from relayd.config import Config
from relayd.supervise import supervisor as supervisor_module
from relayd.supervise.child import BOOT_FAILED
from relayd.supervise.lifecycle import (
    BACKOFF_FIRST, BACKOFF_MAX, MAX_BOOT_TRIES, STABLE, State,
)
from relayd.supervise.lifeline import Lifeline
from relayd.supervise.supervisor import ROLES, TICK, Supervisor

T0 = 5000.0
HEARTBEAT = 4.0
GRACE = 3.0
KILLED = -int(signal.SIGKILL)
OBEDIENT = {signal.SIGTERM: 0, signal.SIGKILL: KILLED}  # how a healthy child reacts


class Clock:
    """The supervisor's clock: time passes when the test says so."""

    def __init__(self, now: float = T0):
        self.now = now

    def __call__(self) -> float:
        return self.now


class CannedChild:
    """What the supervisor sees of one child process, scripted by the test.

    Stands in for `subprocess.Popen`: `pid`, `poll()` (None until the test, or a signal,
    makes it exit) and `send_signal` (recorded; `on_signal` says which signals end it
    and with what code). It keeps a duplicate of the child's end of its lifeline, so the
    test can speak as the child (`say`) and read what the supervisor told it (`heard`).
    """

    def __init__(self, command: list[str], pass_fds: list[int], pid: int, born: float,
                 on_signal: dict[int, int]):
        self.command, self.pass_fds, self.pid, self.born = command, pass_fds, pid, born
        module = command[command.index("-m") + 1]
        self.role = {module: role for role, module in ROLES.items()}[module]
        lifeline_fd = int(self.arg("--lifeline-fd"))
        self.lifeline = Lifeline(socket.socket(fileno=os.dup(lifeline_fd)))
        self.on_signal = dict(on_signal)
        self.signals: list[int] = []
        self.returncode: int | None = None

    def arg(self, option: str) -> str:
        return self.command[self.command.index(option) + 1]

    def channels(self) -> list[list]:
        """Every ``--channel ROLE,FD,...`` given, as [role, fd, ...]."""
        return [[role, *map(int, fds)] for i, word in enumerate(self.command)
                if word == "--channel"
                for role, *fds in [self.command[i + 1].split(",")]]

    def poll(self) -> int | None:
        return self.returncode

    def send_signal(self, signum: int) -> None:
        self.signals.append(signum)
        if self.returncode is None and signum in self.on_signal:
            self.exit(self.on_signal[signum])

    def exit(self, code: int) -> None:
        """The process ends: its lifeline closes, and `poll` returns `code`."""
        self.returncode = code
        self.lifeline.close()

    @property
    def alive(self) -> bool:
        return self.returncode is None

    def say(self, **message: Any) -> None:
        assert self.lifeline.send(**message)

    def heard(self) -> list[dict[str, Any]]:
        return self.lifeline.receive()


@dataclass
class Launcher:
    """The `popen` given to the supervisor: a `CannedChild` per spawn, in order."""

    clock: Clock
    spawned: list[CannedChild] = field(default_factory=list)
    on_signal: dict[str, dict[int, int]] = field(default_factory=dict)  # by role
    refuse: dict[str, int] = field(default_factory=dict)  # spawns of a role the OS refuses
    refused: list[str] = field(default_factory=list)  # the roles refused, in order

    def __call__(self, command: list[str], pass_fds: list[int]) -> CannedChild:
        role = {module: role for role, module in ROLES.items()}[command[2]]
        if self.refuse.get(role, 0) > 0:  # as subprocess.Popen raises when fork fails
            self.refuse[role] -= 1
            self.refused.append(role)
            raise OSError(12, "Cannot allocate memory")
        child = CannedChild(command, pass_fds, 1000 + len(self.spawned), self.clock(),
                            OBEDIENT)
        child.on_signal = dict(self.on_signal.get(child.role, OBEDIENT))
        self.spawned.append(child)
        return child

    def of(self, role: str) -> list[CannedChild]:
        return [child for child in self.spawned if child.role == role]

    def latest(self, role: str) -> CannedChild:
        return self.of(role)[-1]


@dataclass
class Rig:
    supervisor: Supervisor
    clock: Clock
    launcher: Launcher
    caplog: pytest.LogCaptureFixture
    closed: bool = False  # the supervisor closed itself (run)

    def start(self, ready: bool = True) -> "Rig":
        self.supervisor.start()
        if ready:
            for role in self.supervisor.roles:
                self.launcher.latest(role).say(ready=True)
            self.turn()
        return self

    def turn(self) -> None:
        self.supervisor.turn(0)

    def advance(self, seconds: float, beating: tuple[str, ...] = tuple(ROLES)) -> None:
        """Let `seconds` pass in turns TICK apart; the children of `beating` beat."""
        end = self.clock.now + seconds
        while self.clock.now < end - 1e-9:
            self.clock.now = min(self.clock.now + TICK, end)
            for child in self.launcher.spawned:
                if child.alive and child.role in beating:
                    child.say(beat=True)
            self.turn()

    def state(self, role: str) -> State:
        return self.supervisor.children[role].state

    def logged(self, text: str, level: int | None = None) -> list[str]:
        return [record.getMessage() for record in self.caplog.records
                if text in record.getMessage() and level in (None, record.levelno)]

    def log_index(self, text: str) -> int:
        messages = [record.getMessage() for record in self.caplog.records]
        return next(i for i, message in enumerate(messages) if text in message)


def make_rig(caplog: pytest.LogCaptureFixture, **config: Any) -> Iterator[Rig]:
    caplog.set_level(logging.DEBUG, logger="relayd.supervisor")
    clock = Clock()
    launcher = Launcher(clock)
    # Two children unless a test asks for the HTTP worker: the rules are the same for all.
    options = {"heartbeat_timeout": HEARTBEAT, "stop_grace": GRACE, "no_http": True, **config}
    supervisor = Supervisor(Config(**options), popen=launcher, clock=clock)
    rig = Rig(supervisor, clock, launcher, caplog)
    try:
        yield rig
    finally:
        if hasattr(supervisor, "selector") and not rig.closed:  # started, still open
            supervisor.close()
        for child in launcher.spawned:
            child.lifeline.close()


@pytest.fixture
def rig(caplog: pytest.LogCaptureFixture) -> Iterator[Rig]:
    yield from make_rig(caplog)


def stop_by_signal(rig: Rig) -> None:
    """A real SIGTERM to this process: the supervisor's handler only enqueues it."""
    os.kill(os.getpid(), signal.SIGTERM)
    rig.turn()


# --- start ------------------------------------------------------------------------------------


def test_spawns_every_role_in_order_with_its_fds(rig: Rig) -> None:
    rig.start(ready=False)
    assert [child.role for child in rig.launcher.spawned] == ["ca-server", "ingest"]
    ca, ingest = rig.launcher.spawned
    for child, module in ((ca, "relayd.ca"), (ingest, "workers.ingest")):
        assert child.command[:3] == [sys.executable, "-m", module]
        assert int(child.arg("--parent-pid")) == os.getpid()
        assert Config.from_json(child.arg("--config-json")).heartbeat_timeout == HEARTBEAT
        assert int(child.arg("--lifeline-fd")) in child.pass_fds
        assert all(fd in child.pass_fds for channel in child.channels() for fd in channel[1:])
        assert rig.state(child.role) is State.STARTING
        assert rig.supervisor.children[child.role].pid == child.pid
    # The worker writes to its up pipe and reads its down pipe; the CA server has the
    # other ends (and the up pipe's writer end, for its backlog figure).
    pipes = rig.supervisor.pipes["ingest"]
    assert ingest.channels() == [["ingest", pipes.up_writer.fileno(),
                                  pipes.down_reader.fileno()]]
    assert ca.channels() == [["ingest", pipes.up_reader.fileno(), pipes.down_writer.fileno(),
                              pipes.up_writer.fileno()]]


def test_ready_is_logged_and_the_ca_server_hears_the_restart_counts(rig: Rig) -> None:
    rig.start(ready=False)
    ca, ingest = rig.launcher.spawned
    ca.say(ready=True)
    rig.turn()
    assert rig.state("ca-server") is State.RUNNING
    assert rig.state("ingest") is State.STARTING
    assert rig.logged(f"ca-server ready (pid {ca.pid})", logging.INFO)
    assert ca.heard() == [{"restarts": {"ca-server": 0, "ingest": 0}}]
    ingest.say(ready=True)
    rig.turn()
    assert rig.state("ingest") is State.RUNNING
    assert rig.logged(f"ingest ready (pid {ingest.pid})", logging.INFO)
    assert ca.heard() == [{"restarts": {"ca-server": 0, "ingest": 0}}]
    assert ingest.heard() == []  # only the CA server keeps the counts


def test_healthy_children_are_left_alone(rig: Rig) -> None:
    rig.start()
    rig.advance(10 * HEARTBEAT)
    assert [child.signals for child in rig.launcher.spawned] == [[], []]
    assert len(rig.launcher.spawned) == 2
    assert rig.state("ca-server") is rig.state("ingest") is State.RUNNING


# --- restarts -----------------------------------------------------------------------------------


def spawned_after_death(rig: Rig, role: str, code: int) -> tuple[float, CannedChild]:
    """Make the latest `role` child exit with `code`; (restart delay, the new child)."""
    old = rig.launcher.latest(role)
    old.exit(code)
    died = rig.clock.now
    rig.turn()
    while rig.launcher.latest(role) is old:
        rig.advance(TICK / 5)
        assert rig.clock.now - died < BACKOFF_MAX + 1, "never restarted"
    new = rig.launcher.latest(role)
    return new.born - died, new


def test_a_dead_child_is_restarted_after_a_doubling_delay_reset_once_stable(rig: Rig) -> None:
    rig.start()
    delays = []
    for _ in range(4):
        delay, new = spawned_after_death(rig, "ingest", KILLED)
        delays.append(delay)
        new.say(ready=True)
        rig.advance(1.0)
    assert delays == pytest.approx([BACKOFF_FIRST * 2**n for n in range(4)], abs=TICK / 5)
    assert rig.logged("ingest was killed by SIGKILL; restarting in 0.5 s (restart 1)",
                      logging.WARNING)
    assert rig.logged("ingest was killed by SIGKILL; restarting in 4.0 s (restart 4)")
    # Healthy for STABLE seconds, then dies: the first delay again.
    rig.advance(STABLE)
    delay, _ = spawned_after_death(rig, "ingest", 1)
    assert delay == pytest.approx(BACKOFF_FIRST, abs=TICK / 5)
    assert rig.logged("ingest exited with code 1; restarting in 0.5 s (restart 5)")
    # The CA server was left alone throughout.
    assert len(rig.launcher.of("ca-server")) == 1
    assert rig.launcher.latest("ca-server").signals == []


def test_restarts_are_told_to_the_ca_server(rig: Rig) -> None:
    rig.start()
    ca = rig.launcher.latest("ca-server")
    ca.heard()
    _, ingest = spawned_after_death(rig, "ingest", KILLED)
    assert ca.heard() == [{"restarts": {"ca-server": 0, "ingest": 1}}]
    ingest.say(ready=True)
    rig.turn()
    assert ca.heard() == [{"restarts": {"ca-server": 0, "ingest": 1}}]
    # A restarted CA server hears the counts too once it is ready.
    _, new_ca = spawned_after_death(rig, "ca-server", -int(signal.SIGSEGV))
    assert rig.logged("ca-server was killed by SIGSEGV; restarting")
    new_ca.say(ready=True)
    rig.turn()
    assert new_ca.heard() == [{"restarts": {"ca-server": 1, "ingest": 1}}]
    assert len(rig.launcher.of("ingest")) == 2  # left alone


def test_dying_before_ready_max_boot_tries_times_stops_the_relay_with_exit_3(rig: Rig) -> None:
    rig.start(ready=False)
    rig.launcher.latest("ca-server").say(ready=True)
    for _ in range(MAX_BOOT_TRIES - 1):
        spawned_after_death(rig, "ingest", 1)
    assert len(rig.launcher.of("ingest")) == MAX_BOOT_TRIES
    assert not rig.supervisor.done
    rig.launcher.latest("ingest").exit(1)
    rig.turn()
    assert rig.state("ingest") is State.FATAL
    assert rig.logged(f"relayd cannot start: ingest: died {MAX_BOOT_TRIES} times before it "
                      "was ready (last: exited with code 1)", logging.ERROR)
    ca = rig.launcher.latest("ca-server")
    assert ca.signals == [signal.SIGTERM]  # the relay stops
    rig.turn()
    assert rig.supervisor.done
    assert rig.supervisor.exit_code == BOOT_FAILED
    assert len(rig.launcher.of("ingest")) == MAX_BOOT_TRIES  # no more tries
    rig.advance(BACKOFF_MAX)
    assert len(rig.launcher.spawned) == MAX_BOOT_TRIES + 1


def test_a_spawn_the_os_refuses_is_retried_after_the_backoff_not_a_crash(rig: Rig) -> None:
    rig.launcher.refuse["ingest"] = 2
    rig.start(ready=False)
    assert rig.launcher.refused == ["ingest"]
    assert rig.state("ingest") is State.BACKOFF
    assert rig.logged("ingest could not be spawned ([Errno 12] Cannot allocate memory); "
                      "restarting in", logging.WARNING)
    rig.launcher.latest("ca-server").say(ready=True)
    while len(rig.launcher.of("ingest")) == 0:
        rig.advance(TICK / 5)
        assert rig.clock.now - T0 < 3 * BACKOFF_MAX, "never spawned"
    assert rig.launcher.refused == ["ingest", "ingest"]
    rig.launcher.latest("ingest").say(ready=True)
    rig.turn()
    assert rig.state("ingest") is State.RUNNING
    assert not rig.supervisor.done


def test_a_spawn_refused_max_boot_tries_times_stops_the_relay_with_exit_3(rig: Rig) -> None:
    rig.launcher.refuse["ingest"] = MAX_BOOT_TRIES
    rig.start(ready=False)
    rig.launcher.latest("ca-server").say(ready=True)
    while not rig.supervisor.done:
        rig.advance(TICK)
        assert rig.clock.now - T0 < MAX_BOOT_TRIES * BACKOFF_MAX, "never gave up"
    assert rig.launcher.refused == ["ingest"] * MAX_BOOT_TRIES
    assert rig.state("ingest") is State.FATAL
    assert rig.logged(f"relayd cannot start: ingest: could not be spawned {MAX_BOOT_TRIES} "
                      "times in a row (last: [Errno 12] Cannot allocate memory)", logging.ERROR)
    assert rig.supervisor.exit_code == BOOT_FAILED
    assert rig.launcher.latest("ca-server").signals == [signal.SIGTERM]


def test_boot_failed_stops_the_relay_at_once_with_the_childs_reason(rig: Rig) -> None:
    rig.start(ready=False)
    ca, ingest = rig.launcher.spawned
    ca.say(fatal="cannot use CA port 127.0.0.1:5064: in use")
    ca.exit(BOOT_FAILED)
    rig.turn()
    assert rig.logged("relayd cannot start: ca-server: cannot use CA port 127.0.0.1:5064: "
                      "in use", logging.ERROR)
    assert ingest.signals == [signal.SIGTERM]
    rig.turn()
    assert rig.supervisor.done
    assert rig.supervisor.exit_code == BOOT_FAILED
    assert not rig.logged("restarting")
    rig.advance(BACKOFF_MAX)
    assert len(rig.launcher.spawned) == 2


def test_a_boot_failure_reason_is_kept_when_another_child_is_ready_in_the_same_turn(
        rig: Rig) -> None:
    """The worker's ready makes the supervisor send the restart counts to the CA server.
    If the CA server has just failed to boot, that send meets its closed socket: the
    reason it sent before it exited, already queued, must still be read."""
    rig.start(ready=False)
    ca, ingest = rig.launcher.spawned
    ingest.say(ready=True)
    ca.say(fatal="cannot use CA port 127.0.0.1:5064: in use")
    ca.exit(BOOT_FAILED)
    rig.turn()
    assert rig.logged("relayd cannot start: ca-server: cannot use CA port 127.0.0.1:5064: "
                      "in use", logging.ERROR)


def test_boot_failed_without_a_reason_says_could_not_boot(rig: Rig) -> None:
    rig.start(ready=False)
    rig.launcher.latest("ingest").exit(BOOT_FAILED)
    rig.turn()
    assert rig.logged("relayd cannot start: ingest: could not boot", logging.ERROR)
    assert rig.supervisor.exit_code == BOOT_FAILED


def test_boot_failed_exit_after_ready_is_only_a_crash(rig: Rig) -> None:
    rig.start()
    delay, _ = spawned_after_death(rig, "ingest", BOOT_FAILED)
    assert delay == pytest.approx(BACKOFF_FIRST, abs=TICK / 5)
    assert rig.logged("ingest could not boot; restarting in 0.5 s (restart 1)")
    assert rig.supervisor.exit_code == 0


# --- heartbeats ---------------------------------------------------------------------------------


def test_a_silent_child_is_killed_after_the_heartbeat_timeout_and_restarted(rig: Rig) -> None:
    rig.start()
    ingest = rig.launcher.latest("ingest")
    rig.advance(HEARTBEAT, beating=("ca-server",))  # exactly the timeout: not yet
    assert ingest.signals == []
    rig.advance(TICK, beating=("ca-server",))
    assert ingest.signals == [signal.SIGKILL]
    assert rig.logged(f"ingest (pid {ingest.pid}) sent no heartbeat for 4 s: killing it",
                      logging.ERROR)
    rig.turn()
    assert rig.logged("ingest was killed by SIGKILL; restarting in 0.5 s (restart 1)")
    rig.advance(BACKOFF_FIRST)
    assert rig.launcher.latest("ingest") is not ingest
    assert rig.launcher.latest("ca-server").signals == []


def test_a_silent_child_that_does_not_die_is_killed_once_per_timeout(rig: Rig) -> None:
    rig.launcher.on_signal["ingest"] = {}  # SIGKILL takes a while (a process in D state)
    rig.start()
    ingest = rig.launcher.latest("ingest")
    rig.advance(HEARTBEAT + TICK, beating=("ca-server",))
    assert ingest.signals == [signal.SIGKILL]
    rig.advance(HEARTBEAT, beating=("ca-server",))
    assert ingest.signals == [signal.SIGKILL]
    rig.advance(TICK, beating=("ca-server",))
    assert ingest.signals == [signal.SIGKILL] * 2
    assert len(rig.logged("sent no heartbeat")) == 2


def test_a_pause_of_the_supervisor_is_not_the_childrens_silence(rig: Rig) -> None:
    """The whole machine was paused (a suspended VM), or the supervisor was stopped and
    the children's beats meanwhile were lost: a turn that comes far later than TICK
    after the previous one tells the supervisor that it was the one not listening (#11).
    """
    rig.start()
    rig.advance(HEARTBEAT)
    rig.clock.now += 3 * HEARTBEAT  # nobody ran, nobody beat
    rig.turn()
    assert [child.signals for child in rig.launcher.spawned] == [[], []]
    assert rig.logged("the supervisor was paused for 12.0 s", logging.WARNING) == [
        "the supervisor was paused for 12.0 s (SIGSTOP, a debugger, a suspended VM?); "
        "its children's heartbeat clocks start over"]
    rig.advance(2 * HEARTBEAT)
    assert [child.signals for child in rig.launcher.spawned] == [[], []]
    assert len(rig.launcher.spawned) == 2
    assert len(rig.logged("was paused")) == 1
    # Heartbeats are still judged: a child that then goes silent is killed as before.
    rig.advance(HEARTBEAT + TICK, beating=("ca-server",))
    assert rig.launcher.latest("ingest").signals == [signal.SIGKILL]


def test_a_slow_turn_is_not_a_pause(rig: Rig) -> None:
    rig.start()
    rig.clock.now += supervisor_module.PAUSE
    rig.turn()
    assert not rig.logged("was paused")


def test_a_child_silent_while_starting_is_killed_too(rig: Rig) -> None:
    rig.start(ready=False)
    rig.advance(HEARTBEAT + TICK, beating=("ingest",))
    assert rig.launcher.latest("ca-server").signals == [signal.SIGKILL]
    assert rig.launcher.latest("ingest").signals == []


# --- stopping -----------------------------------------------------------------------------------


def test_stop_terminates_the_workers_first_then_the_ca_server(rig: Rig) -> None:
    rig.launcher.on_signal["ingest"] = {}  # exits when the test says
    rig.start()
    ca, ingest = rig.launcher.spawned
    stop_by_signal(rig)
    assert rig.logged("SIGTERM received: stopping", logging.INFO)
    assert ingest.signals == [signal.SIGTERM]
    rig.advance(GRACE / 2)
    assert ca.signals == []  # not while a worker runs
    assert not rig.supervisor.done
    ingest.exit(0)
    rig.turn()
    assert ca.signals == [signal.SIGTERM]
    rig.turn()
    assert rig.supervisor.done
    assert rig.supervisor.exit_code == 0
    assert rig.log_index("ingest stopped (exited with code 0)") < \
        rig.log_index("ca-server stopped (exited with code 0)")
    assert not rig.logged("did not stop")
    assert rig.state("ingest") is rig.state("ca-server") is State.STOPPED


@pytest.fixture
def http_rig(caplog: pytest.LogCaptureFixture) -> Iterator[Rig]:
    """A rig whose relay runs the HTTP worker too: a third role."""
    yield from make_rig(caplog, no_http=False)


def test_every_worker_stops_before_the_ca_server(http_rig: Rig) -> None:
    rig = http_rig
    for role in ("ingest", "http"):
        rig.launcher.on_signal[role] = {}
    rig.start()
    ca, ingest, http = rig.launcher.spawned
    assert [ca.role, ingest.role, http.role] == ["ca-server", "ingest", "http"]
    assert [channel[0] for channel in ca.channels()] == ["ingest", "http"]
    assert [channel[0] for channel in http.channels()] == ["http"]
    rig.supervisor.stop()
    rig.turn()
    assert ingest.signals == http.signals == [signal.SIGTERM]
    ingest.exit(0)
    rig.turn()
    assert ca.signals == []
    http.exit(0)
    rig.turn()
    assert ca.signals == [signal.SIGTERM]
    rig.turn()
    assert rig.supervisor.done


def test_stop_while_a_child_is_backing_off_does_not_spawn_it_again(rig: Rig) -> None:
    rig.start()
    rig.launcher.latest("ingest").exit(KILLED)
    rig.turn()
    assert rig.state("ingest") is State.BACKOFF
    stop_by_signal(rig)
    assert rig.state("ingest") is State.STOPPED
    assert rig.launcher.latest("ca-server").signals == [signal.SIGTERM]  # no worker left
    rig.advance(BACKOFF_MAX)
    assert len(rig.launcher.spawned) == 2
    assert rig.supervisor.done


def test_a_child_that_ignores_sigterm_is_killed_after_the_grace_period(rig: Rig) -> None:
    rig.launcher.on_signal["ca-server"] = {signal.SIGKILL: KILLED}
    rig.start()
    ca = rig.launcher.latest("ca-server")
    rig.supervisor.stop()
    rig.advance(GRACE - TICK)
    assert ca.signals == [signal.SIGTERM]
    assert not rig.logged("did not stop")
    rig.advance(TICK)
    assert ca.signals == [signal.SIGTERM, signal.SIGKILL]
    assert rig.logged("ca-server did not stop within 3 s: killing it", logging.WARNING)
    rig.turn()
    assert rig.logged("ca-server stopped (was killed by SIGKILL)", logging.INFO)
    assert rig.supervisor.done
    assert rig.supervisor.exit_code == 0


def test_after_the_grace_period_a_child_is_killed_once_and_warned_about_once(rig: Rig) -> None:
    """A child that takes a while to die even from SIGKILL (in D state: a hung NFS read,
    a slow core dump) gets one SIGKILL and one warning, not one per turn (#10)."""
    rig.launcher.on_signal["ca-server"] = {}
    rig.start()
    ca = rig.launcher.latest("ca-server")
    rig.supervisor.stop()
    rig.advance(GRACE + 10 * TICK)
    assert ca.signals == [signal.SIGTERM, signal.SIGKILL]
    assert len(rig.logged("did not stop within")) == 1
    assert rig.state("ca-server") is State.KILLED
    assert not rig.supervisor.done
    ca.exit(KILLED)
    rig.turn()
    assert rig.logged("ca-server stopped (was killed by SIGKILL)", logging.INFO)
    assert rig.supervisor.done
    assert ca.signals == [signal.SIGTERM, signal.SIGKILL]


# --- run ----------------------------------------------------------------------------------------


def test_run_is_start_turns_and_close(rig: Rig) -> None:
    """A CA server that cannot boot: run() returns 3 and gives back its signal handlers."""
    before = {signum: signal.getsignal(signum) for signum in supervisor_module.SIGNALS}
    launch = rig.launcher.__call__

    def launch_and_fail(command: list[str], pass_fds: list[int]) -> CannedChild:
        child = launch(command, pass_fds)
        if child.role == "ca-server":
            child.exit(BOOT_FAILED)
        return child

    rig.supervisor.popen = launch_and_fail
    rig.closed = True
    assert rig.supervisor.run() == BOOT_FAILED
    assert [child.role for child in rig.launcher.spawned] == ["ca-server", "ingest"]
    assert rig.launcher.latest("ingest").signals == [signal.SIGTERM]
    assert {signum: signal.getsignal(signum) for signum in supervisor_module.SIGNALS} == before


# --- the CA server's stop signal: it stops once the workers have -----------------------------


def test_a_stop_signal_to_the_ca_server_alone_is_answered_stop_at_once(rig: Rig) -> None:
    rig.start()
    ca = rig.launcher.latest("ca-server")
    ca.heard()
    ca.say(stopping=True)  # a SIGTERM to the CA process only: it will be restarted
    rig.turn()
    assert ca.heard() == [{"stop": True}]


def test_while_the_relay_stops_the_ca_server_is_told_once_every_worker_has_gone(
        rig: Rig) -> None:
    rig.launcher.on_signal["ingest"] = {}  # the worker takes its time to stop
    rig.launcher.on_signal["ca-server"] = {}  # (and the CA server: to read what it heard)
    rig.start()
    ca, ingest = rig.launcher.latest("ca-server"), rig.launcher.latest("ingest")
    ca.heard()
    stop_by_signal(rig)
    ca.say(stopping=True)  # supervisord's stopasgroup: the CA server got it too
    rig.turn()
    assert ca.heard() == [] and ca.signals == []  # the worker is still forwarding
    ingest.exit(0)
    rig.turn()
    assert ca.heard() == [{"stop": True}] and ca.signals == [signal.SIGTERM]


def test_a_group_signal_queued_in_the_same_turn_is_not_taken_for_a_lone_one(
        rig: Rig) -> None:
    """The group's SIGTERM is queued by the supervisor's handler before the CA server
    can say it got one: the turn that reads ``stopping`` must not answer ``stop``."""
    rig.start()
    ca = rig.launcher.latest("ca-server")
    ca.heard()
    ca.say(stopping=True)
    os.kill(os.getpid(), signal.SIGTERM)  # queued, handled after the lifelines are read
    rig.turn()
    assert {"stop": True} not in ca.heard()
    assert rig.launcher.latest("ingest").signals == [signal.SIGTERM]
