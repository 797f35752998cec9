"""The life of one child process, as data: its states, the events that move it, and
what the supervisor does at each step.

Everything that changes a child's lifecycle state lives here, in one table
(`TRANSITIONS`: state -> event -> (next state, action)), as h11's ``_state.py`` and
caproto's ``_state.py`` keep theirs. `Child` applies the table to one child and keeps
its figures (pid, restarts, backoff delay, heartbeat clock); it does no I/O and is handed
the time, so it is tested with values alone. The supervisor turns what it sees (a
process spawned, a lifeline message, an exit code, a timer) into an `Event`, and carries
out the `Action` the table returns: the table decides, the supervisor acts.

An event the table has no row for is a bug in the supervisor, not a condition to carry
on from: it raises `IllegalEvent`. `render_table` prints the table for the supervisor's
docstring (a unit test keeps the two the same).
"""

from __future__ import annotations

import signal
from dataclasses import dataclass
from enum import Enum
from typing import NamedTuple

from relayd.supervise.child import BOOT_FAILED

BACKOFF_FIRST = 0.5  # seconds before the first restart; doubles with each restart...
BACKOFF_MAX = 30.0  # ...up to this,
STABLE = 60.0  # and starts over once a child has run this long.
MAX_BOOT_TRIES = 5  # deaths in a row before ready after which the relay gives up


class State(Enum):
    STOPPED = "stopped"  # no process, none wanted
    STARTING = "starting"  # spawned, not yet ready: a death counts as a boot failure
    RUNNING = "running"  # said ready
    BACKOFF = "backoff"  # died; to be spawned again at `restart_at`
    STOPPING = "stopping"  # the relay stops: SIGTERM sent (or due), waiting for the exit
    KILLED = "killed"  # stopping, and SIGKILL sent after the grace period: waiting for it
    FATAL = "fatal"  # cannot boot: the relay stops and exits with BOOT_FAILED


class Event(Enum):
    START = "relay starts"
    STARTED = "process spawned"
    READY = "says ready"
    BEAT = "beats"
    EXITED = "dies"
    BOOT_FAILED = "exits with BOOT_FAILED"  # only before ready; after, it is a crash (EXITED)
    SPAWN_FAILED = "cannot be spawned"  # the OS refused the process (fork: ENOMEM, EAGAIN...)
    OUT_OF_TRIES = "fails MAX_BOOT_TRIES-th time"  # dies or not spawned, before ready, in a row
    SILENT = "heartbeat missed"  # no message for heartbeat_timeout seconds
    DELAY_OVER = "backoff delay over"
    STOP = "relay stops"
    GRACE_OVER = "stop grace over"


class Action(Enum):
    """What the supervisor does on a transition (the value says it for the docs)."""

    NOTHING = "-"
    SPAWN = "spawn it"
    ANNOUNCE = "log ready, tell restarts"  # to the CA server, for the status PVs
    RESTART = "log why, spawn after backoff"
    GIVE_UP = "log reason, stop relay, exit 3"
    TERMINATE = "SIGTERM (workers first)"  # the CA server once every worker is gone
    KILL = "SIGKILL"
    REPORT = "log that it stopped"


class Transition(NamedTuple):
    next: State
    action: Action


def _row(next_state: State, action: Action = Action.NOTHING) -> Transition:
    return Transition(next_state, action)


S, E, A = State, Event, Action

TRANSITIONS: dict[State, dict[Event, Transition]] = {
    S.STOPPED: {
        E.START: _row(S.STARTING, A.SPAWN),  # the relay starts its children
        E.STOP: _row(S.STOPPED),  # never started: nothing to stop
    },
    S.STARTING: {
        E.STARTED: _row(S.STARTING),  # the process exists: its heartbeat clock starts now
        E.READY: _row(S.RUNNING, A.ANNOUNCE),  # booted: its boot failures are forgotten
        E.BEAT: _row(S.STARTING),  # alive, still booting (a long autosave restore beats)
        E.EXITED: _row(S.BACKOFF, A.RESTART),  # died booting: perhaps a passing cause, retry
        E.BOOT_FAILED: _row(S.FATAL, A.GIVE_UP),  # said it cannot boot: retrying cannot help
        E.SPAWN_FAILED: _row(S.BACKOFF, A.RESTART),  # no process: perhaps passing, retry
        E.OUT_OF_TRIES: _row(S.FATAL, A.GIVE_UP),  # died booting too often: not passing
        E.SILENT: _row(S.STARTING, A.KILL),  # hung booting: its death then restarts it
        E.STOP: _row(S.STOPPING, A.TERMINATE),  # stopped before it was ready
    },
    S.RUNNING: {
        E.READY: _row(S.RUNNING),  # said again: only a beat
        E.BEAT: _row(S.RUNNING),  # healthy
        E.EXITED: _row(S.BACKOFF, A.RESTART),  # crashed (whatever its exit code): restart
        E.SILENT: _row(S.RUNNING, A.KILL),  # hung: its death then restarts it
        E.STOP: _row(S.STOPPING, A.TERMINATE),  # the relay stops
    },
    S.BACKOFF: {
        E.DELAY_OVER: _row(S.STARTING, A.SPAWN),  # waited long enough: try again
        E.STOP: _row(S.STOPPED),  # no process: it is not spawned again
    },
    S.STOPPING: {
        E.READY: _row(S.STOPPING),  # late news: it is stopping anyway
        E.BEAT: _row(S.STOPPING),  # still draining
        E.EXITED: _row(S.STOPPED, A.REPORT),  # stopped, whatever its exit code
        E.GRACE_OVER: _row(S.KILLED, A.KILL),  # did not stop in time
    },
    S.KILLED: {
        E.READY: _row(S.KILLED),  # said before it was killed
        E.BEAT: _row(S.KILLED),  # said before it was killed
        E.EXITED: _row(S.STOPPED, A.REPORT),  # the kill took
        E.GRACE_OVER: _row(S.KILLED),  # killed once: a kill can take a while (D state)
    },
    S.FATAL: {
        E.STOP: _row(S.FATAL),  # already gone; the relay stops because of it
    },
}


class IllegalEvent(RuntimeError):
    """An event the lifecycle table has no row for: a bug in the supervisor."""

    def __init__(self, role: str, state: State, event: Event):
        super().__init__(f"{role}: event {event.name} ({event.value}) is not allowed in "
                         f"state {state.value}")
        self.role, self.state, self.event = role, state, event


def describe_exit(code: int) -> str:
    """An exit code as the log says it: "was killed by SIGKILL", "could not boot"..."""
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
    """The lifecycle of one child process (pure: times are passed in).

    Each event method moves the state through `TRANSITIONS` and returns the action the
    supervisor must carry out; the figures kept beside the state follow the same step.
    """

    role: str
    state: State = State.STOPPED
    pid: int | None = None
    restarts: int = 0
    boot_failures: int = 0  # deaths before ready, in a row
    backoff: float = BACKOFF_FIRST  # the delay before the next restart
    started_at: float = 0.0
    last_beat: float = 0.0  # the heartbeat clock: when it was last heard from
    restart_at: float = 0.0
    fatal_reason: str = ""  # why it cannot boot, when it said so (lifeline)
    last_exit: int | None = None  # the exit code of its last process
    spawn_error: str = ""  # why its last spawn failed ("" once a process ran)

    def handle(self, event: Event) -> Action:
        """Move to the state the table gives for `event`; the action to carry out."""
        try:
            self.state, action = TRANSITIONS[self.state][event]
        except KeyError:
            raise IllegalEvent(self.role, self.state, event) from None
        return action

    def allows(self, event: Event) -> bool:
        return event in TRANSITIONS[self.state]

    def start(self) -> Action:
        return self.handle(Event.START)

    def started(self, pid: int, now: float) -> Action:
        action = self.handle(Event.STARTED)
        self.pid, self.started_at, self.last_beat = pid, now, now
        return action

    def ready(self, now: float) -> Action:
        action = self.handle(Event.READY)
        if action is Action.ANNOUNCE:
            self.boot_failures = 0
        self.last_beat = now
        return action

    def beat(self, now: float) -> Action:
        action = self.handle(Event.BEAT)
        self.last_beat = now
        return action

    def exit_event(self, code: int) -> Event:
        """What an exit with `code` means in the current state."""
        if self.state is not State.STARTING:
            return Event.EXITED
        if code == BOOT_FAILED:
            return Event.BOOT_FAILED
        if self.boot_failures + 1 >= MAX_BOOT_TRIES:
            return Event.OUT_OF_TRIES
        return Event.EXITED

    def exited(self, code: int, now: float) -> Action:
        """Record the exit (reaped with `code`); the action: RESTART, GIVE_UP or REPORT."""
        booting = self.state is State.STARTING
        event = self.exit_event(code)
        action = self.handle(event)
        self.pid, self.last_exit, self.spawn_error = None, code, ""
        if booting:
            self.boot_failures += 1
        if event is Event.OUT_OF_TRIES:
            self.fatal_reason = (f"died {self.boot_failures} times before it was ready "
                                 f"(last: {describe_exit(code)})")
        if action is Action.RESTART:
            self._schedule_restart(now)
        return action

    def spawn_failed(self, error: str, now: float) -> Action:
        """The OS would not start its process (`error`): retried like a death while
        booting, with the same backoff and the same limit (then GIVE_UP)."""
        last_try = self.boot_failures + 1 >= MAX_BOOT_TRIES
        action = self.handle(Event.OUT_OF_TRIES if last_try else Event.SPAWN_FAILED)
        self.pid, self.spawn_error, self.started_at = None, error, now
        self.boot_failures += 1
        if last_try:
            self.fatal_reason = (f"could not be spawned {self.boot_failures} times in a row "
                                 f"(last: {error})")
        if action is Action.RESTART:
            self._schedule_restart(now)
        return action

    def why(self) -> str:
        """What happened to its last process, as the log says it."""
        if self.spawn_error:
            return f"could not be spawned ({self.spawn_error})"
        return describe_exit(self.last_exit if self.last_exit is not None else 0)

    def _schedule_restart(self, now: float) -> None:
        if now - self.started_at >= STABLE:
            self.backoff = BACKOFF_FIRST
        self.restart_at = now + self.backoff
        self.backoff = min(self.backoff * 2, BACKOFF_MAX)
        self.restarts += 1

    def hung(self, now: float, timeout: float) -> bool:
        """Silent for longer than `timeout`, in a state where that matters."""
        return self.allows(Event.SILENT) and now - self.last_beat > timeout

    def silent(self, now: float) -> Action:
        """Judged hung (see `hung`): KILL, and the heartbeat clock starts over, so that a
        child that takes a while to die is killed once per timeout, not once per turn."""
        action = self.handle(Event.SILENT)
        self.last_beat = now
        return action

    def due(self, now: float) -> bool:
        """The backoff delay is over: time to spawn it again."""
        return self.allows(Event.DELAY_OVER) and now >= self.restart_at

    def delay_over(self) -> Action:
        return self.handle(Event.DELAY_OVER)

    def stop(self) -> Action:
        return self.handle(Event.STOP)

    def grace_over(self) -> Action:
        return self.handle(Event.GRACE_OVER)

    def excuse_silence(self, now: float) -> None:
        """Start the heartbeat clock over: the silence was the supervisor's, not the
        child's (the supervisor itself was paused and could not listen)."""
        self.last_beat = now


def render_table() -> str:
    """`TRANSITIONS` as the reStructuredText table in the supervisor's docstring."""
    head = ("state", "event", "next", "what the supervisor does")
    rows = [(state.value, event.value, step.next.value, step.action.value)
            for state, row in TRANSITIONS.items() for event, step in row.items()]
    widths = [max(len(line[i]) for line in [head, *rows]) for i in range(len(head))]
    rule = "  ".join("=" * width for width in widths)

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(cell.ljust(width) for cell, width in zip(cells, widths)).rstrip()

    return "\n".join([rule, line(head), rule, *map(line, rows), rule])
