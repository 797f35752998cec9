"""The lifecycle of one child (relayd.supervise.lifecycle), row by row, with values only."""

from __future__ import annotations

import signal

import pytest

from relayd.supervise import supervisor
from relayd.supervise.child import BOOT_FAILED
from relayd.supervise.lifecycle import (
    BACKOFF_FIRST, BACKOFF_MAX, MAX_BOOT_TRIES, STABLE, TRANSITIONS, Action, Child, Event,
    IllegalEvent, State, describe_exit, render_table,
)

T0 = 1000.0
KILLED = -int(signal.SIGKILL)


def spawn(child: Child, pid: int, now: float) -> None:
    """What the supervisor does to start a stopped child or restart a backed-off one."""
    action = child.start() if child.state is State.STOPPED else child.delay_over()
    assert action is Action.SPAWN
    assert child.state is State.STARTING
    assert child.started(pid, now) is Action.NOTHING


def running(at: float = T0, pid: int = 100) -> Child:
    child = Child("ingest")
    spawn(child, pid, at)
    assert child.ready(at + 0.1) is Action.ANNOUNCE
    return child


def in_state(state: State) -> Child:
    child = Child("ingest")
    child.state = state
    return child


# --- the table itself -----------------------------------------------------------------------


def test_the_supervisor_docstring_shows_this_table() -> None:
    assert render_table() in supervisor.__doc__


def test_the_rendered_table_has_one_line_per_row() -> None:
    rows = sum(len(row) for row in TRANSITIONS.values())
    lines = render_table().splitlines()
    assert len(lines) == rows + 4  # rule, heading, rule, rows, rule
    assert lines[3].split() == ["stopped", "relay", "starts", "starting", "spawn", "it"]


def test_every_state_event_and_action_is_used() -> None:
    assert set(TRANSITIONS) == set(State)
    events = {event for row in TRANSITIONS.values() for event in row}
    assert events == set(Event)
    actions = {step.action for row in TRANSITIONS.values() for step in row.values()}
    assert actions == set(Action)
    targets = {step.next for row in TRANSITIONS.values() for step in row.values()}
    assert targets == set(State)  # every state can be reached


PROCESS_STATES = {State.STARTING, State.RUNNING, State.STOPPING, State.KILLED}


@pytest.mark.parametrize("state", list(State))
def test_what_only_a_process_can_do_is_legal_exactly_where_there_is_one(state) -> None:
    # A process can die, beat or say ready at any moment: never an illegal event there.
    for event in (Event.EXITED, Event.BEAT, Event.READY):
        assert (event in TRANSITIONS[state]) == (state in PROCESS_STATES), (state, event)


def test_fatal_is_final() -> None:
    assert {step.next for step in TRANSITIONS[State.FATAL].values()} == {State.FATAL}


@pytest.mark.parametrize("state, event", [
    (state, event) for state in State for event in Event if event not in TRANSITIONS[state]
])
def test_an_event_without_a_row_raises_a_clear_error(state, event) -> None:
    child = in_state(state)
    with pytest.raises(IllegalEvent) as caught:
        child.handle(event)
    assert str(caught.value) == (f"ingest: event {event.name} ({event.value}) is not allowed "
                                 f"in state {state.value}")
    assert child.state is state  # left as it was


def test_illegal_through_the_event_methods() -> None:
    with pytest.raises(IllegalEvent, match="READY .* not allowed in state stopped"):
        Child("ca-server").ready(T0)
    with pytest.raises(IllegalEvent, match="DELAY_OVER .* in state running"):
        running().delay_over()
    with pytest.raises(IllegalEvent, match="STARTED .* in state stopped"):
        Child("ingest").started(5, T0)


# --- stopped --------------------------------------------------------------------------------


def test_new_child_is_stopped() -> None:
    child = Child("ca-server")
    assert (child.state, child.pid, child.restarts, child.boot_failures) == \
        (State.STOPPED, None, 0, 0)
    assert child.backoff == BACKOFF_FIRST


def test_start_spawns_and_started_starts_the_heartbeat_clock() -> None:
    child = Child("ingest")
    assert child.start() is Action.SPAWN
    assert child.state is State.STARTING
    assert child.started(123, T0) is Action.NOTHING
    assert (child.state, child.pid, child.started_at, child.last_beat) == \
        (State.STARTING, 123, T0, T0)


def test_stop_before_start() -> None:
    child = Child("ingest")
    assert child.stop() is Action.NOTHING
    assert child.state is State.STOPPED


# --- starting -------------------------------------------------------------------------------


def test_ready_makes_it_running_and_resets_boot_failures() -> None:
    child = Child("ingest")
    now = T0
    for _ in range(MAX_BOOT_TRIES - 1):
        spawn(child, 1, now)
        assert child.exited(1, now + 1) is Action.RESTART
        now = child.restart_at
    assert child.boot_failures == MAX_BOOT_TRIES - 1
    spawn(child, 2, now)
    assert child.ready(now + 0.5) is Action.ANNOUNCE
    assert child.state is State.RUNNING
    assert child.boot_failures == 0
    assert child.last_beat == now + 0.5
    # With the count reset, it may again fail to boot MAX_BOOT_TRIES - 1 times.
    assert child.exited(KILLED, now + 1) is Action.RESTART
    for _ in range(MAX_BOOT_TRIES - 1):
        spawn(child, 3, child.restart_at)
        assert child.exited(1, child.restart_at + 0.1) is Action.RESTART
    spawn(child, 4, child.restart_at)
    assert child.exited(1, child.restart_at + 0.1) is Action.GIVE_UP


def test_beats_while_starting() -> None:
    child = Child("ca-server")
    spawn(child, 1, T0)
    assert child.beat(T0 + 3) is Action.NOTHING
    assert (child.state, child.last_beat) == (State.STARTING, T0 + 3)


def test_ready_again_while_running_only_counts_as_a_beat() -> None:
    child = running()
    assert child.ready(T0 + 5) is Action.NOTHING
    assert child.state is State.RUNNING and child.last_beat == T0 + 5


def test_boot_failed_before_ready_is_fatal() -> None:
    child = Child("ca-server")
    spawn(child, 7, T0)
    child.fatal_reason = "cannot use CA port 127.0.0.1:5064: in use"  # from the lifeline
    assert child.exit_event(BOOT_FAILED) is Event.BOOT_FAILED
    assert child.exited(BOOT_FAILED, T0 + 1) is Action.GIVE_UP
    assert child.state is State.FATAL
    assert child.pid is None
    assert child.last_exit == BOOT_FAILED
    assert child.restarts == 0
    assert child.fatal_reason == "cannot use CA port 127.0.0.1:5064: in use"  # kept


def test_boot_failed_on_the_first_try_is_fatal_without_a_reason_message() -> None:
    child = Child("ingest")
    spawn(child, 7, T0)
    assert child.exited(BOOT_FAILED, T0 + 1) is Action.GIVE_UP
    assert child.fatal_reason == ""  # the supervisor then falls back on describe_exit


@pytest.mark.parametrize("code", [1, 0, KILLED, -int(signal.SIGSEGV)])
def test_other_deaths_before_ready_restart_until_max_boot_tries(code: int) -> None:
    child = Child("ca-server")
    now = T0
    for attempt in range(1, MAX_BOOT_TRIES):
        spawn(child, attempt, now)
        assert child.exit_event(code) is Event.EXITED
        assert child.exited(code, now + 0.2) is Action.RESTART, attempt
        assert child.state is State.BACKOFF
        assert child.boot_failures == attempt
        assert child.restarts == attempt
        now = child.restart_at
    spawn(child, 99, now)
    assert child.exit_event(code) is Event.OUT_OF_TRIES
    assert child.exited(code, now + 0.2) is Action.GIVE_UP
    assert child.state is State.FATAL
    assert child.restarts == MAX_BOOT_TRIES - 1
    assert f"{MAX_BOOT_TRIES} times" in child.fatal_reason
    assert describe_exit(code) in child.fatal_reason


def test_fatal_reason_text() -> None:
    child = Child("ingest")
    now = T0
    for _ in range(MAX_BOOT_TRIES - 1):
        spawn(child, 1, now)
        child.exited(1, now)
        now = child.restart_at
    spawn(child, 1, now)
    child.exited(KILLED, now)
    assert child.fatal_reason == (
        f"died {MAX_BOOT_TRIES} times before it was ready (last: was killed by SIGKILL)"
    )


def test_boot_failures_back_off_too() -> None:
    child = Child("ingest")
    spawn(child, 1, T0)
    assert child.exited(1, T0 + 1) is Action.RESTART
    assert child.restart_at == T0 + 1 + BACKOFF_FIRST
    spawn(child, 2, child.restart_at)
    assert child.exited(1, T0 + 3) is Action.RESTART
    assert child.restart_at == T0 + 3 + 2 * BACKOFF_FIRST


def test_fatal_child_stays_fatal_when_the_relay_stops() -> None:
    child = Child("ingest")
    spawn(child, 1, T0)
    child.exited(BOOT_FAILED, T0 + 1)
    assert child.stop() is Action.NOTHING
    assert child.state is State.FATAL


# --- running --------------------------------------------------------------------------------


def test_death_while_running_restarts_after_backoff() -> None:
    child = running()
    assert child.exited(KILLED, T0 + 5) is Action.RESTART
    assert child.state is State.BACKOFF
    assert child.pid is None
    assert child.restart_at == T0 + 5 + BACKOFF_FIRST
    assert child.restarts == 1
    assert child.boot_failures == 0


def test_boot_failed_code_while_running_is_only_a_crash() -> None:
    child = running()
    assert child.exit_event(BOOT_FAILED) is Event.EXITED
    assert child.exited(BOOT_FAILED, T0 + 5) is Action.RESTART
    assert child.state is State.BACKOFF


def test_backoff_is_due_at_restart_at() -> None:
    child = running()
    child.exited(1, T0 + 5)
    assert not child.due(child.restart_at - 0.01)
    assert child.due(child.restart_at)
    assert child.delay_over() is Action.SPAWN
    assert child.state is State.STARTING
    assert not child.due(child.restart_at + 100)  # only in backoff


def test_backoff_doubles_up_to_max() -> None:
    child = running()
    now = T0 + 1
    delays = []
    for restart in range(1, 12):
        assert child.exited(1, now) is Action.RESTART
        delays.append(child.restart_at - now)
        assert child.restarts == restart
        now = child.restart_at
        spawn(child, restart, now)
        child.ready(now)
        now += 1  # dies again soon: never stable
    expected = [min(BACKOFF_FIRST * 2**n, BACKOFF_MAX) for n in range(11)]
    assert delays == pytest.approx(expected)
    assert delays[-1] == BACKOFF_MAX and delays[-2] == BACKOFF_MAX


def test_backoff_starts_over_after_stable_running() -> None:
    child = running()
    now = T0 + 1
    for _ in range(4):  # backoff grows to 8 * BACKOFF_FIRST
        child.exited(1, now)
        now = child.restart_at
        spawn(child, 5, now)
        child.ready(now)
        now += 1
    assert child.backoff == 16 * BACKOFF_FIRST
    # Runs STABLE seconds, then dies: the delay is the first one again.
    died = child.started_at + STABLE
    assert child.exited(KILLED, died) is Action.RESTART
    assert child.restart_at == died + BACKOFF_FIRST
    assert child.backoff == 2 * BACKOFF_FIRST


def test_backoff_not_reset_just_before_stable() -> None:
    child = running()
    child.exited(1, T0 + 1)
    spawn(child, 5, child.restart_at)
    child.ready(child.restart_at)
    died = child.started_at + STABLE - 0.01
    child.exited(1, died)
    assert child.restart_at == pytest.approx(died + 2 * BACKOFF_FIRST)


def test_restarts_are_counted_across_kinds_of_death() -> None:
    child = running()
    child.exited(KILLED, T0 + 1)
    spawn(child, 2, child.restart_at)
    child.exited(1, child.restart_at + 0.1)  # a boot failure, also restarted
    spawn(child, 3, child.restart_at)
    child.ready(child.restart_at)
    child.exited(-int(signal.SIGSEGV), child.restart_at + 10)
    assert child.restarts == 3


# --- heartbeats -----------------------------------------------------------------------------


def test_hung_after_heartbeat_timeout_without_beats() -> None:
    child = running(T0)
    beat = child.last_beat
    assert not child.hung(beat + 20, 20)  # exactly the timeout: not yet
    assert child.hung(beat + 20.01, 20)
    child.beat(beat + 15)
    assert not child.hung(beat + 30, 20)
    assert child.hung(beat + 35.5, 20)


def test_starting_child_can_hang_too() -> None:
    child = Child("ca-server")
    spawn(child, 1, T0)
    assert not child.hung(T0 + 2, 2)
    assert child.hung(T0 + 2.5, 2)
    child.beat(T0 + 2.4)
    assert not child.hung(T0 + 2.5, 2)


@pytest.mark.parametrize("state", [State.STOPPED, State.BACKOFF, State.STOPPING, State.KILLED,
                                   State.FATAL])
def test_only_live_states_hang(state: State) -> None:
    child = running()
    child.state = state
    assert not child.hung(T0 + 10_000, 1)


@pytest.mark.parametrize("booted", [False, True])
def test_silent_kills_once_per_timeout(booted: bool) -> None:
    child = running() if booted else Child("ca-server")
    if not booted:
        spawn(child, 1, T0)
    state = child.state
    assert child.silent(T0 + 30) is Action.KILL
    assert child.state is state  # its death, when reaped, decides what follows
    assert child.last_beat == T0 + 30
    assert not child.hung(T0 + 30 + 20, 20)
    assert child.hung(T0 + 30 + 20.5, 20)


def test_excused_silence_starts_the_heartbeat_clock_over() -> None:
    child = running(T0)
    assert child.hung(T0 + 50, 20)
    child.excuse_silence(T0 + 50)
    assert child.state is State.RUNNING
    assert not child.hung(T0 + 70, 20)
    assert child.hung(T0 + 70.5, 20)


# --- stopping -------------------------------------------------------------------------------


@pytest.mark.parametrize("code", [0, KILLED, -int(signal.SIGTERM), 1, BOOT_FAILED])
def test_stopping_then_death_is_stopped(code: int) -> None:
    child = running()
    assert child.stop() is Action.TERMINATE
    assert child.state is State.STOPPING
    assert child.exited(code, T0 + 5) is Action.REPORT
    assert child.state is State.STOPPED
    assert child.pid is None
    assert child.restarts == 0


def test_stopping_a_starting_child() -> None:
    child = Child("ingest")
    spawn(child, 1, T0)
    assert child.stop() is Action.TERMINATE
    assert child.ready(T0 + 0.5) is Action.NOTHING  # late news
    assert child.exited(BOOT_FAILED, T0 + 1) is Action.REPORT
    assert child.boot_failures == 0


def test_beats_while_stopping_are_no_news() -> None:
    child = running()
    child.stop()
    assert child.beat(T0 + 3) is Action.NOTHING
    assert child.state is State.STOPPING
    assert not child.hung(T0 + 10_000, 1)


def test_stopping_without_a_process_is_stopped_at_once() -> None:
    child = running()
    child.exited(1, T0 + 1)
    assert child.state is State.BACKOFF
    assert child.stop() is Action.NOTHING
    assert child.state is State.STOPPED
    assert not child.due(child.restart_at)  # and is not spawned again


def test_grace_over_kills_once() -> None:
    child = running()
    child.stop()
    assert child.grace_over() is Action.KILL
    assert child.state is State.KILLED
    for _ in range(3):  # the supervisor's next turns, before the kill has taken
        assert child.grace_over() is Action.NOTHING
    assert child.beat(T0 + 19) is Action.NOTHING  # said before the kill
    assert not child.hung(T0 + 10_000, 1)
    assert child.exited(KILLED, T0 + 20) is Action.REPORT
    assert child.state is State.STOPPED


# --- describe_exit ---------------------------------------------------------------------------


@pytest.mark.parametrize("code, text", [
    (-int(signal.SIGKILL), "was killed by SIGKILL"),
    (-int(signal.SIGTERM), "was killed by SIGTERM"),
    (-int(signal.SIGSEGV), "was killed by SIGSEGV"),
    (-int(signal.SIGABRT), "was killed by SIGABRT"),
    (-200, "was killed by signal 200"),
    (0, "exited with code 0"),
    (1, "exited with code 1"),
    (BOOT_FAILED, "could not boot"),
    (255, "exited with code 255"),
])
def test_describe_exit(code: int, text: str) -> None:
    assert describe_exit(code) == text
