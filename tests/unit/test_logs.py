"""Rate-limited logging (relayd.logs.RateLimitedLog) with an injected clock."""

from __future__ import annotations

import logging

import pytest

from relayd.logs import RateLimitedLog


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    @property
    def messages(self) -> list[str]:
        return [record.getMessage() for record in self.records]


@pytest.fixture
def capture(request: pytest.FixtureRequest):
    logger = logging.getLogger(f"test_logs.{request.node.name}")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    handler = Capture()
    logger.addHandler(handler)
    yield logger, handler
    logger.removeHandler(handler)


def test_burst_per_key_then_suppressed(capture) -> None:
    logger, handler = capture
    clock = Clock()
    log = RateLimitedLog(logger, burst=3, period=10.0, clock=clock)
    results = [log.warning("badValue", f"message {i}") for i in range(5)]
    assert results == [True, True, True, False, False]
    assert handler.messages == ["message 0", "message 1", "message 2"]
    assert all(record.levelno == logging.WARNING for record in handler.records)


def test_suppressed_count_is_reported_on_the_next_emitted_record(capture) -> None:
    logger, handler = capture
    clock = Clock()
    log = RateLimitedLog(logger, burst=2, period=10.0, clock=clock)
    for i in range(6):
        log.warning("k", f"m{i}")
    clock.now += 5.0
    assert log.warning("k", "still inside the window") is False
    clock.now += 5.0  # exactly one period after the window opened
    assert log.warning("k", "next") is True
    assert handler.messages == ["m0", "m1", "next (5 similar messages suppressed)"]
    # Reported once: the following record in the new window carries no count.
    assert log.warning("k", "after") is True
    assert handler.messages[-1] == "after"
    assert log.warning("k", "over") is False


def test_no_suppression_note_when_nothing_was_held_back(capture) -> None:
    logger, handler = capture
    clock = Clock()
    log = RateLimitedLog(logger, burst=2, period=10.0, clock=clock)
    log.warning("k", "a")
    clock.now += 30.0
    log.warning("k", "b")
    assert handler.messages == ["a", "b"]


def test_count_reported_however_long_the_gap(capture) -> None:
    logger, handler = capture
    clock = Clock()
    log = RateLimitedLog(logger, burst=1, period=10.0, clock=clock)
    log.warning("k", "a")
    log.warning("k", "b")
    log.warning("k", "c")
    clock.now += 3600.0
    log.warning("k", "d")
    assert handler.messages == ["a", "d (2 similar messages suppressed)"]


def test_window_just_before_the_period_is_still_limited(capture) -> None:
    logger, handler = capture
    clock = Clock()
    log = RateLimitedLog(logger, burst=1, period=10.0, clock=clock)
    assert log.warning("k", "a") is True
    clock.now += 9.999
    assert log.warning("k", "b") is False
    assert handler.messages == ["a"]


def test_keys_are_independent(capture) -> None:
    logger, handler = capture
    clock = Clock()
    log = RateLimitedLog(logger, burst=2, period=10.0, clock=clock)
    for i in range(4):
        log.warning("noisy", f"noisy {i}")
    assert log.warning("other", "other 0") is True
    assert log.warning("other", "other 1") is True
    assert log.warning("other", "other 2") is False
    assert handler.messages == ["noisy 0", "noisy 1", "other 0", "other 1"]
    clock.now += 10.0
    log.warning("other", "other 3")
    log.warning("noisy", "noisy 4")
    assert handler.messages[-2:] == [
        "other 3 (1 similar messages suppressed)",
        "noisy 4 (2 similar messages suppressed)",
    ]


def test_args_and_level_are_passed_through(capture) -> None:
    logger, handler = capture
    log = RateLimitedLog(logger, burst=1, period=10.0, clock=Clock())
    assert log.log(logging.ERROR, "k", "value %s of %d", "x", 3) is True
    assert handler.messages == ["value x of 3"]
    assert handler.records[0].levelno == logging.ERROR


def test_suppression_note_with_format_args(capture) -> None:
    logger, handler = capture
    clock = Clock()
    log = RateLimitedLog(logger, burst=1, period=10.0, clock=clock)
    log.warning("k", "refused %s", "a")
    log.warning("k", "refused %s", "b")
    clock.now += 10.0
    log.warning("k", "refused %s", "c")
    assert handler.messages == ["refused a", "refused c (1 similar messages suppressed)"]


def test_default_budget_is_five_per_ten_seconds(capture) -> None:
    logger, handler = capture
    clock = Clock()
    log = RateLimitedLog(logger, clock=clock)
    assert [log.warning("k", "m") for _ in range(6)] == [True] * 5 + [False]
    clock.now = 1009.5
    assert log.warning("k", "m") is False
    clock.now = 1010.0
    assert log.warning("k", "m") is True
