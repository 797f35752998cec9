"""The supervisor: relayd's parent process, which runs and watches its children.

It creates the internal pipes (two per worker: up to the CA server, down from it), starts
the CA server process and the workers (``python -m MODULE``, each role's module in
`ROLES`, but those an option turns off, as ``--no-http`` does), restarts a child
that dies, and stops them all cleanly: every worker first, the CA server last.
Modelled on gunicorn's arbiter: signal handlers only enqueue the signal; one loop waits
for signals, child messages (lifelines) and timers, and handles each in turn. `run` is
that loop over `start`, `turn` and `close`; a test drives the same turns one at a time,
with its own `popen` and `clock`.

Life of one child: the table is `relayd.supervise.lifecycle.TRANSITIONS` (each row
commented there; a unit test keeps this copy the same), applied by `Child`, which holds
no I/O. The supervisor turns what it sees into the event and carries out the action:

========  ============================  ========  ==============================
state     event                         next      what the supervisor does
========  ============================  ========  ==============================
stopped   relay starts                  starting  spawn it
stopped   relay stops                   stopped   -
starting  process spawned               starting  -
starting  says ready                    running   log ready, tell restarts
starting  beats                         starting  -
starting  dies                          backoff   log why, spawn after backoff
starting  exits with BOOT_FAILED        fatal     log reason, stop relay, exit 3
starting  cannot be spawned             backoff   log why, spawn after backoff
starting  fails MAX_BOOT_TRIES-th time  fatal     log reason, stop relay, exit 3
starting  heartbeat missed              starting  SIGKILL
starting  relay stops                   stopping  SIGTERM (workers first)
running   says ready                    running   -
running   beats                         running   -
running   dies                          backoff   log why, spawn after backoff
running   heartbeat missed              running   SIGKILL
running   relay stops                   stopping  SIGTERM (workers first)
backoff   backoff delay over            starting  spawn it
backoff   relay stops                   stopped   -
stopping  says ready                    stopping  -
stopping  beats                         stopping  -
stopping  dies                          stopped   log that it stopped
stopping  stop grace over               killed    SIGKILL
killed    says ready                    killed    -
killed    beats                         killed    -
killed    dies                          stopped   log that it stopped
killed    stop grace over               killed    -
fatal     relay stops                   fatal     -
========  ============================  ========  ==============================

The backoff delay doubles from BACKOFF_FIRST up to BACKOFF_MAX, and starts over once a
child has run for STABLE seconds. Restart counts go to the CA server for its status PVs.
The children die with the supervisor (Linux parent death signal, and EOF on their
lifeline), so killing it leaves no orphans.
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

from relayd.config import Config
from relayd.supervise.child import BOOT_FAILED, Channel
from relayd.supervise.lifecycle import Action, Child, describe_exit
from relayd.supervise.lifeline import Lifeline
from relayd.supervise.pipe import WorkerPipes

log = logging.getLogger("relayd.supervisor")

# Each role and the module that runs it (``python -m MODULE``), in start order. Named,
# not imported: the supervisor never loads a child's code. This is the one list of roles.
ROLES = {"ca-server": "relayd.ca", "ingest": "workers.ingest", "http": "workers.http"}
OPTIONAL = {"http": "no_http"}  # roles an option (a `Config` field) turns off
# The role that serves CA and reads the internal pipes; every other role is a worker,
# with an up pipe it writes to and a down pipe it reads the CA server's answers from.
# Workers stop first, so that the CA server can drain their pipes.
CA_SERVER = "ca-server"
SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD)
TICK = 0.5  # seconds a turn waits for a signal or a message
PAUSE = 4 * TICK  # a turn this late after the last one: the supervisor itself was paused


def workers(running: dict[str, str] = ROLES) -> list[str]:
    """Every role of `running` but the CA server, in start order (and stop order)."""
    return [role for role in running if role != CA_SERVER]


@dataclass
class Running:
    """The OS side of a child that has a process: its Popen and its lifeline."""

    process: subprocess.Popen
    lifeline: Lifeline
    watched: bool = True  # lifeline registered with the selector


@dataclass
class Supervisor:
    """Runs the relay's children until told to stop; `run` returns the exit code."""

    config: Config
    popen: Callable[..., subprocess.Popen] = subprocess.Popen
    clock: Callable[[], float] = time.monotonic
    children: dict[str, Child] = field(default_factory=dict)
    running: dict[str, Running] = field(default_factory=dict)
    pipes: dict[str, WorkerPipes] = field(default_factory=dict)  # by worker role
    roles: dict[str, str] = field(default_factory=dict)  # the roles run (set by `start`)
    exit_code: int = 0
    _signals: list[int] = field(default_factory=list)
    _stop_deadline: float | None = None
    _terminate: list[str] = field(default_factory=list)  # SIGTERM due, in stop order
    _last_turn: float = 0.0

    def run(self) -> int:
        """The whole life of the relay: start, turns until every child has stopped."""
        self.start()
        try:
            while not self.done:
                self.turn(TICK)
        finally:
            self.close()
        return self.exit_code

    @property
    def done(self) -> bool:
        return self._stop_deadline is not None and not self.running

    def start(self) -> None:
        """Set up the pipes, the selector and the signal handlers; spawn every role."""
        self.roles = {role: module for role, module in ROLES.items()  # but those turned off
                      if not (role in OPTIONAL and getattr(self.config, OPTIONAL[role]))}
        self.children = {role: Child(role) for role in self.roles}
        self.pipes = {role: WorkerPipes.make(self.config.pipe_buffer) for role in self.roles
                      if role != CA_SERVER}
        self.selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()
        for fd in (self._wake_r, self._wake_w):
            os.set_blocking(fd, False)
        self.selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._old_wakeup_fd = signal.set_wakeup_fd(self._wake_w)
        self._old_handlers = {signum: signal.signal(signum, self._enqueue)
                              for signum in SIGNALS}
        self._last_turn = self.clock()
        for role in self.roles:
            self._act(role, self.children[role].start())

    def turn(self, timeout: float) -> None:
        """Wait up to `timeout` for a signal or a message, then handle what there is."""
        self._wait(timeout)
        self._notice_pause(self.clock())
        self._listen(list(self.running))
        self._handle_signals()
        self._reap()
        self._timers(self.clock())

    def close(self) -> None:
        """Give back what `start` took: signal handlers, file descriptors."""
        signal.set_wakeup_fd(self._old_wakeup_fd)
        for signum, handler in self._old_handlers.items():
            signal.signal(signum, handler)
        for role in list(self.running):
            self._forget(role)
        self.selector.close()
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)
        for pipes in self.pipes.values():
            pipes.close()

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

    def _wait(self, timeout: float) -> None:
        """Sleep until a signal, a lifeline message or `timeout`. The lifelines are read
        afterwards (`_listen`), all of them, whatever woke the loop."""
        for key, _ in self.selector.select(timeout):
            if key.data is None:
                try:
                    while os.read(self._wake_r, 512):
                        pass
                except BlockingIOError:
                    pass

    def _notice_pause(self, now: float) -> None:
        """After a pause of its own (SIGSTOP, a debugger, a suspended VM), the silence of
        the children was the supervisor's deafness: their heartbeat clocks start over,
        instead of both healthy children being killed at the first turn (#11)."""
        paused, self._last_turn = now - self._last_turn, now
        if paused > PAUSE:
            log.warning("the supervisor was paused for %.1f s (SIGSTOP, a debugger, a "
                        "suspended VM?); its children's heartbeat clocks start over", paused)
            for child in self.children.values():
                child.excuse_silence(now)

    # --- the actions of the lifecycle table ------------------------------------------------

    def _act(self, role: str, action: Action) -> None:
        """Carry out what the lifecycle table decided for `role`."""
        ACTIONS[action](self, role)

    def _nothing(self, role: str) -> None:
        pass

    def _announce(self, role: str) -> None:
        log.info("%s ready (pid %d)", role, self.children[role].pid)
        self._tell_restarts()

    def _restart(self, role: str) -> None:
        child = self.children[role]
        log.warning("%s %s; restarting in %.1f s (restart %d)", role, child.why(),
                    child.restart_at - self.clock(), child.restarts)
        self._tell_restarts()

    def _give_up(self, role: str) -> None:
        child = self.children[role]
        log.error("relayd cannot start: %s: %s", role, child.fatal_reason or child.why())
        self.exit_code = BOOT_FAILED
        self.stop()

    def _queue_terminate(self, role: str) -> None:
        self._terminate.append(role)  # sent in stop order by `_terminate_in_order`

    def _kill(self, role: str) -> None:
        if role in self._terminate:
            self._terminate.remove(role)
        self._signal(role, signal.SIGKILL)

    def _report(self, role: str) -> None:
        log.info("%s stopped (%s)", role, describe_exit(self.children[role].last_exit))

    def _spawn(self, role: str) -> None:
        parent_end, child_end = Lifeline.pair()
        command = [
            sys.executable, "-m", ROLES[role],
            "--config-json", self.config.to_json(),
            "--parent-pid", str(os.getpid()),
            "--lifeline-fd", str(child_end.fileno()),
        ]
        fds = [child_end.fileno()]
        for worker in workers(self.roles) if role == CA_SERVER else [role]:
            pipes = self.pipes[worker]
            ends = pipes.ca_ends() if role == CA_SERVER else pipes.worker_ends()
            command += ["--channel", Channel.argument(worker, *ends)]
            fds += [end.fileno() for end in ends]
        try:
            process = self.popen(command, pass_fds=fds)
        except OSError as error:  # fork or exec refused: a boot failure, never a crash
            parent_end.close()
            self._act(role, self.children[role].spawn_failed(str(error), self.clock()))
            return
        finally:
            child_end.close()
        lifeline = Lifeline(parent_end)
        self.running[role] = Running(process, lifeline)
        self.selector.register(lifeline.fileno(), selectors.EVENT_READ, role)
        self.children[role].started(process.pid, self.clock())
        log.debug("started %s (pid %d)", role, process.pid)

    def _signal(self, role: str, signum: int) -> None:
        running = self.running.get(role)
        if running is not None:
            try:
                running.process.send_signal(signum)
            except ProcessLookupError:
                pass

    def _tell_restarts(self) -> None:
        counts = {role: child.restarts for role, child in self.children.items()}
        running = self.running.get(CA_SERVER)
        if running is not None:
            running.lifeline.send(restarts=counts)

    # --- what the children say, and their exits ----------------------------------------------

    def _listen(self, roles: list[str]) -> None:
        """Read what every child in `roles` said, then act on it.

        Everything is read before anything is acted on: acting may send to a child (the
        restart counts), and a send that meets a dead child's socket marks its lifeline
        closed, which would hide the last words (a boot failure's reason) still queued.
        """
        said = [(role, message) for role in roles if role in self.running
                for message in self.running[role].lifeline.receive()]
        now = self.clock()
        for role, message in said:
            child = self.children[role]
            if message.get("ready"):
                self._act(role, child.ready(now))
            elif "fatal" in message:
                child.fatal_reason = str(message["fatal"])
            else:
                child.beat(now)
                if message.get("stopping") and role == CA_SERVER and not self._stopping:
                    self._tell_stop()  # a stop signal to the CA server alone
        for role in roles:
            running = self.running.get(role)
            if running is not None and running.lifeline.closed:
                self._unwatch(running)  # the child has gone; its exit is reaped below

    def _reap(self) -> None:
        for role in list(self.running):
            code = self.running[role].process.poll()
            if code is None:
                continue
            self._listen([role])  # what it said last (a fatal reason) before it died
            self._forget(role)
            self._act(role, self.children[role].exited(code, self.clock()))

    def _unwatch(self, running: Running) -> None:
        if running.watched:
            self.selector.unregister(running.lifeline.fileno())
            running.watched = False

    def _forget(self, role: str) -> Running:
        running = self.running.pop(role)
        self._unwatch(running)
        running.lifeline.close()
        return running

    # --- timers --------------------------------------------------------------------------------

    def _timers(self, now: float) -> None:
        if self._stop_deadline is not None:
            self._terminate_in_order()
            if now >= self._stop_deadline:
                for role in list(self.running):
                    action = self.children[role].grace_over()
                    if action is Action.KILL:
                        log.warning("%s did not stop within %.0f s: killing it", role,
                                    self.config.stop_grace)
                    self._act(role, action)
        for role, child in self.children.items():
            if child.due(now):
                self._act(role, child.delay_over())
            elif child.hung(now, self.config.heartbeat_timeout):
                log.error("%s (pid %d) sent no heartbeat for %.0f s: killing it", role,
                          child.pid, self.config.heartbeat_timeout)
                self._act(role, child.silent(now))

    def _terminate_in_order(self) -> None:
        """SIGTERM to every worker at once; to the CA server once every worker is gone,
        with a lifeline message saying so (it may have had a SIGTERM of its own)."""
        workers_left = any(role in self.running for role in workers(self.roles))
        for role in list(self._terminate):
            if role != CA_SERVER or not workers_left:
                self._terminate.remove(role)
                if role == CA_SERVER:
                    self._tell_stop()
                self._signal(role, signal.SIGTERM)

    @property
    def _stopping(self) -> bool:
        """The relay stops, or a stop signal is queued: a signal to the whole process
        group (stopasgroup, Ctrl-C) is queued before the CA server can say it got one."""
        return self._stop_deadline is not None or any(
            signum in (signal.SIGTERM, signal.SIGINT) for signum in self._signals)

    def _tell_stop(self) -> None:
        """Tell the CA server that it may stop: no worker will forward more. After a stop
        signal it asks (``stopping``) and applies on until told (`relayd.ca.process`)."""
        running = self.running.get(CA_SERVER)
        if running is not None:
            running.lifeline.send(stop=True)

    # --- stopping ----------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop the relay: every worker first, then the CA server (which drains the pipe);
        whatever has not stopped after the grace period is killed."""
        if self._stop_deadline is not None:
            return
        self._stop_deadline = self.clock() + self.config.stop_grace
        for role in workers(self.roles) + [CA_SERVER]:
            self._act(role, self.children[role].stop())


ACTIONS: dict[Action, Callable[[Supervisor, str], None]] = {
    Action.NOTHING: Supervisor._nothing,
    Action.SPAWN: Supervisor._spawn,
    Action.ANNOUNCE: Supervisor._announce,
    Action.RESTART: Supervisor._restart,
    Action.GIVE_UP: Supervisor._give_up,
    Action.TERMINATE: Supervisor._queue_terminate,
    Action.KILL: Supervisor._kill,
    Action.REPORT: Supervisor._report,
}
