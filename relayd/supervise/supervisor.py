"""The supervisor: relayd's parent process, which runs and watches its two children.

It creates the internal pipe, starts the CA server process and the ingest worker
(``python -m MODULE``, the role's module in `ROLES`), restarts a child that dies, and
stops both cleanly.
Modelled on gunicorn's arbiter: signal handlers only enqueue the signal; one loop waits
for signals, child messages (lifelines), and timers, and handles each in turn.

Life of one child (`Child` holds it; no I/O there, so it is tested with values alone):

====================  =================================  =========  =========================
state                 event                              next       what the supervisor does
====================  =================================  =========  =========================
starting              lifeline says ready                running    boot-failure count reset
starting              exits with BOOT_FAILED             fatal      the relay stops, exit 3
starting              dies, fewer than MAX_BOOT_TRIES    backoff    restarts after the delay
starting              dies the MAX_BOOT_TRIES-th time    fatal      the relay stops, exit 3
running               dies                               backoff    logs why, restarts later
running               silent for heartbeat_timeout       running    SIGKILL (then: dies)
backoff               delay over                         starting   spawned again
starting/running      relay stops                        stopping   SIGTERM (ingest first)
stopping              dies                               stopped
stopping              grace period over                  stopping   SIGKILL
====================  =================================  =========  =========================

The backoff delay doubles from BACKOFF_FIRST up to BACKOFF_MAX, and starts over once a
child has run for STABLE seconds. The children die with the supervisor (Linux parent
death signal, and EOF on their lifeline), so killing it leaves no orphans.
"""

from __future__ import annotations

import logging
import os
import selectors
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

from relayd.supervise.child import BOOT_FAILED
from relayd.config import Config
from relayd.supervise.lifeline import Lifeline
from relayd.supervise.pipe import socket_pair

log = logging.getLogger("relayd.supervisor")

# Each role and the module that runs it (``python -m MODULE``), in start order; the stop
# order is the reverse. Named, not imported: the supervisor never loads a child's code.
ROLES = {"ca-server": "relayd.ca", "ingest": "workers.ingest"}
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0
STABLE = 60.0
MAX_BOOT_TRIES = 5
TICK = 0.5


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    if code == BOOT_FAILED:
        return "could not boot"
    return f"exited with code {code}"


@dataclass
class Child:
    """The lifecycle of one child process (pure: times are passed in)."""

    role: str
    state: str = "stopped"
    pid: int | None = None
    restarts: int = 0
    boot_failures: int = 0
    backoff: float = BACKOFF_FIRST
    started_at: float = 0.0
    last_beat: float = 0.0
    restart_at: float = 0.0
    fatal_reason: str = ""

    def started(self, pid: int, now: float) -> None:
        self.state, self.pid, self.started_at, self.last_beat = "starting", pid, now, now

    def ready(self, now: float) -> None:
        if self.state == "starting":
            self.state = "running"
            self.boot_failures = 0
        self.last_beat = now

    def beat(self, now: float) -> None:
        self.last_beat = now

    def hung(self, now: float, timeout: float) -> bool:
        return self.state in ("starting", "running") and now - self.last_beat > timeout

    def exited(self, code: int, now: float) -> str:
        """Record the exit; return what to do: "stopped", "restart" or "fatal"."""
        self.pid = None
        if self.state == "stopping":
            self.state = "stopped"
            return "stopped"
        if self.state == "starting":
            self.boot_failures += 1
            if code == BOOT_FAILED or self.boot_failures >= MAX_BOOT_TRIES:
                self.state = "fatal"
                if code != BOOT_FAILED:
                    self.fatal_reason = (
                        f"died {self.boot_failures} times before it was ready "
                        f"(last: {describe_exit(code)})"
                    )
                return "fatal"
        if now - self.started_at >= STABLE:
            self.backoff = BACKOFF_FIRST
        self.state = "backoff"
        self.restart_at = now + self.backoff
        self.backoff = min(self.backoff * 2, BACKOFF_MAX)
        self.restarts += 1
        return "restart"

    def stopping(self) -> None:
        self.state = "stopping" if self.pid is not None else "stopped"


@dataclass
class Running:
    """The OS side of a child that has a process: its Popen and its lifeline."""

    process: subprocess.Popen
    lifeline: Lifeline
    watched: bool = True  # lifeline registered with the selector
    terminated: bool = False  # SIGTERM sent


@dataclass
class Supervisor:
    """Runs the relay's children until told to stop; `run` returns the exit code."""

    config: Config
    popen: Callable[..., subprocess.Popen] = subprocess.Popen
    clock: Callable[[], float] = time.monotonic
    children: dict[str, Child] = field(default_factory=dict)
    running: dict[str, Running] = field(default_factory=dict)
    exit_code: int = 0
    _signals: list[int] = field(default_factory=list)
    _stop_deadline: float | None = None

    def run(self) -> int:
        self.children = {role: Child(role) for role in ROLES}
        self.reader, self.writer = socket_pair(self.config.pipe_buffer)
        self.selector = selectors.DefaultSelector()
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        self.selector.register(wake_r, selectors.EVENT_READ, None)
        signal.set_wakeup_fd(wake_w)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
            signal.signal(signum, self._enqueue)
        for role in ROLES:
            self.spawn(role)
        try:
            while not self._done():
                self._wait(wake_r)
                self._handle_signals()
                self._reap()
                self._timers()
        finally:
            signal.set_wakeup_fd(-1)
            os.close(wake_r)
            os.close(wake_w)
        return self.exit_code

    # --- signals: the handler only enqueues ------------------------------------------

    def _enqueue(self, signum: int, frame: object) -> None:
        self._signals.append(signum)

    def _handle_signals(self) -> None:
        while self._signals:
            signum = self._signals.pop(0)
            if signum in (signal.SIGTERM, signal.SIGINT):
                if self._stop_deadline is None:
                    log.info("%s received: stopping", signal.Signals(signum).name)
                self.stop()

    # --- children ------------------------------------------------------------------------

    def spawn(self, role: str) -> None:
        parent_end, child_end = Lifeline.pair()
        pipe_end = self.reader if role == "ca-server" else self.writer
        command = [
            sys.executable, "-m", ROLES[role],
            "--config-json", self.config.to_json(),
            "--parent-pid", str(os.getpid()),
            "--lifeline-fd", str(child_end.fileno()),
            "--pipe-fd", str(pipe_end.fileno()),
        ]
        fds = [child_end.fileno(), pipe_end.fileno()]
        if role == "ca-server":
            command += ["--pipe-writer-fd", str(self.writer.fileno())]
            fds.append(self.writer.fileno())
        process = self.popen(command, pass_fds=fds)
        child_end.close()
        lifeline = Lifeline(parent_end)
        self.running[role] = Running(process, lifeline)
        self.selector.register(lifeline.fileno(), selectors.EVENT_READ, role)
        self.children[role].started(process.pid, self.clock())
        log.debug("started %s (pid %d)", role, process.pid)

    def _unwatch(self, running: Running) -> None:
        if running.watched:
            self.selector.unregister(running.lifeline.fileno())
            running.watched = False

    def _forget(self, role: str) -> Running:
        running = self.running.pop(role)
        self._unwatch(running)
        running.lifeline.close()
        return running

    def _wait(self, wake_r: int) -> None:
        for key, _ in self.selector.select(TICK):
            if key.data is None:
                try:
                    while os.read(wake_r, 512):
                        pass
                except BlockingIOError:
                    pass
                continue
            self._messages(key.data)

    def _messages(self, role: str) -> None:
        running = self.running.get(role)
        if running is None:
            return
        child = self.children[role]
        now = self.clock()
        for message in running.lifeline.receive():
            if message.get("ready"):
                child.ready(now)
                log.info("%s ready (pid %d)", role, running.process.pid)
                self._tell_restarts()
            elif "fatal" in message:
                child.fatal_reason = str(message["fatal"])
            else:
                child.beat(now)
        if running.lifeline.closed:
            self._unwatch(running)  # the child has gone; its exit is reaped below

    def _reap(self) -> None:
        for role in list(self.running):
            code = self.running[role].process.poll()
            if code is None:
                continue
            self._messages(role)  # what it said last (a fatal reason) before it died
            self._forget(role)
            child = self.children[role]
            action = child.exited(code, self.clock())
            if action == "stopped":
                log.info("%s stopped (%s)", role, describe_exit(code))
            elif action == "restart":
                log.warning("%s %s; restarting in %.1f s (restart %d)", role,
                            describe_exit(code), child.restart_at - self.clock(), child.restarts)
                self._tell_restarts()
            else:
                reason = child.fatal_reason or describe_exit(code)
                log.error("relayd cannot start: %s: %s", role, reason)
                self.exit_code = BOOT_FAILED
                self.stop()

    def _timers(self) -> None:
        now = self.clock()
        if self._stop_deadline is not None:
            if "ingest" not in self.running and "ca-server" in self.running:
                self._signal("ca-server", signal.SIGTERM, once=True)
            if now >= self._stop_deadline:
                for role in list(self.running):
                    log.warning("%s did not stop within %.0f s: killing it", role,
                                self.config.stop_grace)
                    self._signal(role, signal.SIGKILL)
            return
        for role, child in self.children.items():
            if child.state == "backoff" and now >= child.restart_at:
                self.spawn(role)
            elif child.hung(now, self.config.heartbeat_timeout) and role in self.running:
                log.error("%s (pid %d) sent no heartbeat for %.0f s: killing it", role,
                          child.pid, self.config.heartbeat_timeout)
                self._signal(role, signal.SIGKILL)
                child.last_beat = now  # one kill per timeout

    def _signal(self, role: str, signum: int, once: bool = False) -> None:
        running = self.running.get(role)
        if running is None:
            return
        if once:
            if running.terminated:
                return
            running.terminated = True
        try:
            running.process.send_signal(signum)
        except ProcessLookupError:
            pass

    def _tell_restarts(self) -> None:
        counts = {role: child.restarts for role, child in self.children.items()}
        running = self.running.get("ca-server")
        if running is not None:
            running.lifeline.send(restarts=counts)

    # --- stopping ----------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop the ingest worker first, then the CA process (which drains the pipe)."""
        if self._stop_deadline is not None:
            return
        self._stop_deadline = self.clock() + self.config.stop_grace
        for child in self.children.values():
            child.stopping()
        self._signal("ingest", signal.SIGTERM, once=True)

    def _done(self) -> bool:
        return self._stop_deadline is not None and not self.running
