"""The lifecycle table of one child (relayd.supervise.supervisor.Child), row by row, with values only."""

from __future__ import annotations

import signal

import pytest

from relayd.supervise.child import BOOT_FAILED
from relayd.supervise.supervisor import (
    BACKOFF_FIRST, BACKOFF_MAX, MAX_BOOT_TRIES, STABLE, Child, describe_exit,
)

T0 = 1000.0
KILLED = -int(signal.SIGKILL)


def running(at: float = T0, pid: int = 100) -> Child:
    child = Child("ingest")
    child.started(pid, at)
    child.ready(at + 0.1)
    return child


def test_new_child_is_stopped() -> None:
    child = Child("ca-server")
    assert (child.state, child.pid, child.restarts, child.boot_failures) == ("stopped", None, 0, 0)
    assert child.backoff == BACKOFF_FIRST


def test_started() -> None:
    child = Child("ingest")
    child.started(123, T0)
    assert (child.state, child.pid, child.started_at, child.last_beat) == ("starting", 123, T0, T0)


# --- starting -------------------------------------------------------------------------------


def test_ready_makes_it_running_and_resets_boot_failures() -> None:
    child = Child("ingest")
    now = T0
    for _ in range(MAX_BOOT_TRIES - 1):
        child.started(1, now)
        assert child.exited(1, now + 1) == "restart"
        now = child.restart_at
    assert child.boot_failures == MAX_BOOT_TRIES - 1
    child.started(2, now)
    child.ready(now + 0.5)
    assert child.state == "running"
    assert child.boot_failures == 0
    assert child.last_beat == now + 0.5
    # With the count reset, it may again fail to boot MAX_BOOT_TRIES - 1 times.
    assert child.exited(KILLED, now + 1) == "restart"
    for _ in range(MAX_BOOT_TRIES - 1):
        child.started(3, child.restart_at)
        assert child.exited(1, child.restart_at + 0.1) == "restart"
    child.started(4, child.restart_at)
    assert child.exited(1, child.restart_at + 0.1) == "fatal"


def test_ready_again_while_running_only_counts_as_a_beat() -> None:
    child = running()
    child.ready(T0 + 5)
    assert child.state == "running" and child.last_beat == T0 + 5


def test_boot_failed_before_ready_is_fatal() -> None:
    child = Child("ca-server")
    child.started(7, T0)
    child.fatal_reason = "cannot use CA port 127.0.0.1:5064: in use"  # from the lifeline
    assert child.exited(BOOT_FAILED, T0 + 1) == "fatal"
    assert child.state == "fatal"
    assert child.pid is None
    assert child.restarts == 0
    assert child.fatal_reason == "cannot use CA port 127.0.0.1:5064: in use"  # kept


def test_boot_failed_on_the_first_try_is_fatal_without_a_reason_message() -> None:
    child = Child("ingest")
    child.started(7, T0)
    assert child.exited(BOOT_FAILED, T0 + 1) == "fatal"
    assert child.fatal_reason == ""  # the supervisor then falls back on describe_exit


@pytest.mark.parametrize("code", [1, 0, KILLED, -int(signal.SIGSEGV)])
def test_other_deaths_before_ready_restart_until_max_boot_tries(code: int) -> None:
    child = Child("ca-server")
    now = T0
    for attempt in range(1, MAX_BOOT_TRIES):
        child.started(attempt, now)
        assert child.exited(code, now + 0.2) == "restart", attempt
        assert child.state == "backoff"
        assert child.boot_failures == attempt
        assert child.restarts == attempt
        now = child.restart_at
    child.started(99, now)
    assert child.exited(code, now + 0.2) == "fatal"
    assert child.state == "fatal"
    assert child.restarts == MAX_BOOT_TRIES - 1
    assert f"{MAX_BOOT_TRIES} times" in child.fatal_reason
    assert describe_exit(code) in child.fatal_reason


def test_fatal_reason_text() -> None:
    child = Child("ingest")
    now = T0
    for _ in range(MAX_BOOT_TRIES - 1):
        child.started(1, now)
        child.exited(1, now)
        now = child.restart_at
    child.started(1, now)
    child.exited(KILLED, now)
    assert child.fatal_reason == (
        f"died {MAX_BOOT_TRIES} times before it was ready (last: was killed by SIGKILL)"
    )


def test_boot_failures_back_off_too() -> None:
    child = Child("ingest")
    child.started(1, T0)
    assert child.exited(1, T0 + 1) == "restart"
    assert child.restart_at == T0 + 1 + BACKOFF_FIRST
    child.started(2, child.restart_at)
    assert child.exited(1, T0 + 3) == "restart"
    assert child.restart_at == T0 + 3 + 2 * BACKOFF_FIRST


# --- running --------------------------------------------------------------------------------


def test_death_while_running_restarts_after_backoff() -> None:
    child = running()
    assert child.exited(KILLED, T0 + 5) == "restart"
    assert child.state == "backoff"
    assert child.pid is None
    assert child.restart_at == T0 + 5 + BACKOFF_FIRST
    assert child.restarts == 1
    assert child.boot_failures == 0


def test_boot_failed_code_while_running_is_only_a_crash() -> None:
    child = running()
    assert child.exited(BOOT_FAILED, T0 + 5) == "restart"
    assert child.state == "backoff"


def test_backoff_doubles_up_to_max() -> None:
    child = running()
    now = T0 + 1
    delays = []
    for restart in range(1, 12):
        assert child.exited(1, now) == "restart"
        delays.append(child.restart_at - now)
        assert child.restarts == restart
        now = child.restart_at
        child.started(restart, now)
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
        child.started(5, now)
        child.ready(now)
        now += 1
    assert child.backoff == 16 * BACKOFF_FIRST
    # Runs STABLE seconds, then dies: the delay is the first one again.
    died = child.started_at + STABLE
    assert child.exited(KILLED, died) == "restart"
    assert child.restart_at == died + BACKOFF_FIRST
    assert child.backoff == 2 * BACKOFF_FIRST


def test_backoff_not_reset_just_before_stable() -> None:
    child = running()
    child.exited(1, T0 + 1)
    child.started(5, child.restart_at)
    child.ready(child.restart_at)
    died = child.started_at + STABLE - 0.01
    child.exited(1, died)
    assert child.restart_at == pytest.approx(died + 2 * BACKOFF_FIRST)


def test_restarts_are_counted_across_kinds_of_death() -> None:
    child = running()
    child.exited(KILLED, T0 + 1)
    child.started(2, child.restart_at)
    child.exited(1, child.restart_at + 0.1)  # a boot failure, also restarted
    child.started(3, child.restart_at)
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
    child.started(1, T0)
    assert not child.hung(T0 + 2, 2)
    assert child.hung(T0 + 2.5, 2)
    child.beat(T0 + 2.4)
    assert not child.hung(T0 + 2.5, 2)


@pytest.mark.parametrize("state", ["stopped", "backoff", "stopping", "fatal"])
def test_only_live_states_hang(state: str) -> None:
    child = running()
    child.state = state
    assert not child.hung(T0 + 10_000, 1)


# --- stopping -------------------------------------------------------------------------------


@pytest.mark.parametrize("code", [0, KILLED, -int(signal.SIGTERM), 1, BOOT_FAILED])
def test_stopping_then_death_is_stopped(code: int) -> None:
    child = running()
    child.stopping()
    assert child.state == "stopping"
    assert child.exited(code, T0 + 5) == "stopped"
    assert child.state == "stopped"
    assert child.pid is None
    assert child.restarts == 0


def test_stopping_a_starting_child() -> None:
    child = Child("ingest")
    child.started(1, T0)
    child.stopping()
    assert child.exited(BOOT_FAILED, T0 + 1) == "stopped"
    assert child.boot_failures == 0


def test_stopping_without_a_process_is_stopped_at_once() -> None:
    child = running()
    child.exited(1, T0 + 1)
    assert child.state == "backoff"
    child.stopping()
    assert child.state == "stopped"


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
