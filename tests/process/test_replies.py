"""The CA process's answers to the workers (relayd.ca.replies) and the autosave
generations durable answers wait for (relayd.store.writer.Autosaver.flush_now), with a
real SQLite store, its writer thread and real down pipes."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from relayd.ca.replies import HOLD_INTERVALS, Replies
from relayd.core.errors import Reason, Refused
from relayd.core.names import Grammar
from relayd.core.ops import accepted_wire, refused_wire
from relayd.core.pvstate import PVState, new_state
from relayd.core.stats import Stats
from relayd.core.values import convert
from relayd.store.rows import from_state
from relayd.store.sqlite import Store
from relayd.store.writer import Autosaver
from relayd.supervise.messages import Verdicts, decode
from relayd.supervise.pipe import Outbox, PipeReader, socket_pair
from tests.harness import wait_for

pytestmark = pytest.mark.timeout(60)

GRAMMAR = Grammar("rp")
INTERVAL = 0.2


def state(base: str, value: float) -> PVState:
    spec = GRAMMAR.spec_for(base)
    pv = new_state(spec)
    pv.put(convert(spec, value), 1_700_000_000_000_000_000)
    return pv


class ControlledStore(Store):
    """A store whose writes wait for `gate` and fail while `failing` is set."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.gate = threading.Event()
        self.gate.set()
        self.failing = False

    def write(self, saved, deleted) -> None:
        if not self.gate.wait(10):
            raise AssertionError("the test never opened the gate")
        if self.failing:
            raise sqlite3.OperationalError("database or disk is full")
        super().write(saved, deleted)


@pytest.fixture
def saver(tmp_path: Path) -> Iterator[Autosaver]:
    autosaver = Autosaver(ControlledStore.open(str(tmp_path / "r.sqlite")), INTERVAL,
                          lambda: [])
    yield autosaver
    autosaver.store.gate.set()  # type: ignore[attr-defined]
    autosaver.store.failing = False  # type: ignore[attr-defined]
    autosaver.stop(5)


def in_file(autosaver: Autosaver) -> list:
    return Store.open(autosaver.store.path).load()


# --- generations ------------------------------------------------------------------------------


def test_a_generation_is_committed_once_its_changes_are_in_the_file(saver: Autosaver) -> None:
    store: ControlledStore = saver.store  # type: ignore[assignment]
    a = state("a_f1", 1.0)
    saver.touch(a)
    store.gate.clear()  # the write hangs, as on a slow disk
    generation = saver.flush_now()
    time.sleep(3 * INTERVAL)
    assert saver.committed < generation and in_file(saver) == []
    store.gate.set()
    wait_for(lambda: saver.committed >= generation, what="the generation committed")
    assert in_file(saver) == [from_state(a)]


def test_a_generation_with_nothing_to_write_is_committed_at_once(saver: Autosaver) -> None:
    generation = saver.flush_now()
    wait_for(lambda: saver.committed >= generation, timeout=5 * INTERVAL,
             what="an empty generation committed")
    assert saver.flush_now() == generation + 1


def test_no_generation_is_committed_while_writes_fail(saver: Autosaver) -> None:
    store: ControlledStore = saver.store  # type: ignore[assignment]
    store.failing = True
    saver.touch(state("a_f1", 1.0))
    generation = saver.flush_now()
    wait_for(lambda: saver.status.failures >= 2, what="failing writes")
    assert saver.committed < generation
    store.failing = False
    wait_for(lambda: saver.committed >= generation, what="the generation committed")
    assert [row.name for row in in_file(saver)] == ["rp:a_f1"]


# --- replies ---------------------------------------------------------------------------------


class Down:
    """Two workers' down pipes: their outboxes (the CA side) and readers (the workers')."""

    def __init__(self, limit: int = 1 << 20):
        self.ends = {role: socket_pair(1 << 16) for role in ("ingest", "http")}
        self.outboxes = {role: Outbox(writer, limit) for role, (_, writer) in self.ends.items()}
        self.readers = {role: PipeReader(reader) for role, (reader, _) in self.ends.items()}

    def received(self, role: str) -> list[Verdicts]:
        messages = []
        while (payload := self.readers[role].read()) is not None:
            messages.append(decode(payload))
        return messages

    def close(self) -> None:
        for reader, writer in self.ends.values():
            reader.close()
            writer.close()


@pytest.fixture
def down() -> Iterator[Down]:
    pipes = Down()
    yield pipes
    pipes.close()


REFUSED = refused_wire("rp:b_f1", Refused(Reason.BAD_VALUE, "text sent to a numeric PV"))
MIXED = [accepted_wire("rp:a_f1"), REFUSED]


def cycle_until(replies: Replies, down: Down, role: str, what: str, timeout: float = 5.0
                ) -> list[Verdicts]:
    got: list[Verdicts] = []

    def arrived() -> bool:
        replies.cycle(time.monotonic())
        got.extend(down.received(role))
        return bool(got)

    wait_for(arrived, timeout, interval=0.005, what=what)
    return got


def test_verdicts_not_asked_durable_go_down_at_once_to_their_worker(down: Down) -> None:
    replies = Replies(down.outboxes, Stats(), None)
    replies.verdicts("http", 5, MIXED, False)
    replies.cycle(time.monotonic())
    assert down.received("ingest") == []
    (message,) = down.received("http")
    assert (message.request_id, message.durable, message.note) == (5, False, "")
    assert [tuple(item) for item in message.verdicts] == MIXED


def test_durable_without_autosave_is_answered_at_once_and_says_so(down: Down) -> None:
    replies = Replies(down.outboxes, Stats(), None)
    replies.verdicts("ingest", 1, MIXED, True)
    replies.cycle(time.monotonic())
    (message,) = down.received("ingest")
    assert not message.durable
    assert message.note == "autosave is off: the updates were applied, not saved"


def test_durable_verdicts_wait_for_the_commit(down: Down, saver: Autosaver) -> None:
    store: ControlledStore = saver.store  # type: ignore[assignment]
    replies = Replies(down.outboxes, Stats(), saver)
    a = state("a_f1", 1.0)
    saver.touch(a)  # what applying the batch did
    store.gate.clear()
    replies.verdicts("ingest", 9, MIXED, True)
    for _ in range(5):
        replies.cycle(time.monotonic())
        time.sleep(0.02)
    assert down.received("ingest") == [] and replies.pending() == 1
    store.gate.set()
    (message,) = cycle_until(replies, down, "ingest", "the durable answer")
    assert (message.request_id, message.durable, message.note) == (9, True, "")
    assert in_file(saver) == [from_state(a)]  # in the file before the answer went


def test_a_request_that_changed_nothing_is_durable_at_once(down: Down, saver: Autosaver
                                                           ) -> None:
    saver.store.gate.clear()  # type: ignore[attr-defined]
    replies = Replies(down.outboxes, Stats(), saver)
    replies.verdicts("ingest", 3, [REFUSED], True)
    replies.cycle(time.monotonic())
    (message,) = down.received("ingest")
    assert message.durable and replies.pending() == 0


def test_durable_verdicts_are_released_not_durable_when_writes_fail(down: Down,
                                                                    saver: Autosaver) -> None:
    saver.store.failing = True  # type: ignore[attr-defined]
    replies = Replies(down.outboxes, Stats(), saver)
    saver.touch(state("a_f1", 1.0))
    started = time.monotonic()
    replies.verdicts("ingest", 4, MIXED, True)
    (message,) = cycle_until(replies, down, "ingest", "the answer, not durable",
                             timeout=HOLD_INTERVALS * INTERVAL + 5)
    assert time.monotonic() - started >= HOLD_INTERVALS * INTERVAL
    assert not message.durable
    assert message.note == (f"autosave did not commit within {HOLD_INTERVALS} intervals: "
                            "OperationalError: database or disk is full")
    assert [tuple(item) for item in message.verdicts] == MIXED  # applied all the same


def test_an_answer_with_no_room_is_dropped_counted_and_logged(log_records) -> None:
    records = log_records("relayd.ca")
    pipes = Down(limit=2000)
    try:
        stats = Stats()
        replies = Replies(pipes.outboxes, stats, None)
        many = [accepted_wire(f"rp:pv{i}_f1") for i in range(300)]  # > 2000 bytes
        replies.verdicts("ingest", 1, many, False)
        replies.verdicts("ingest", 2, MIXED, False)  # a small one still fits
        replies.cycle(time.monotonic())
        assert [message.request_id for message in pipes.received("ingest")] == [2]
        assert stats.reply_dropped == 1
        warnings = [r.getMessage() for r in records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "outbox is full" in warnings[0]
    finally:
        pipes.close()
