"""The ingest worker's receive loop (workers.ingest.loop.gather) on a real ZMQ socket."""

from __future__ import annotations

import logging
from typing import Iterator

import pytest
import zmq

from relayd.core.names import Grammar
from relayd.core.ops import Op
from relayd.core.protocol import dumps, encode_update
from tests.harness import wait_for
from workers.ingest.loop import gather
from relayd.core.intake import Intake
from workers.ingest.validate import Ingest

pytestmark = pytest.mark.timeout(60)

BOOM = b"boom"


class BuggyIngest(Ingest):
    """The worker's validation with a bug: it raises on one message (`BOOM`).

    No message can make the real `Ingest.handle` raise (the fuzz tests hunt for one), so
    the bug is planted here, to see what the loop makes of it.
    """

    def handle(self, message: bytes, arrival_ns: int, source: str = "ZMQ update") -> list:
        if message == BOOM:
            raise RuntimeError("planted bug")
        return super().handle(message, arrival_ns, source)


@pytest.fixture
def sockets() -> Iterator[tuple[zmq.Socket, zmq.Socket]]:
    context = zmq.Context()
    pull = context.socket(zmq.PULL)
    push = context.socket(zmq.PUSH)
    for sock in (pull, push):
        sock.setsockopt(zmq.LINGER, 0)
    pull.bind("inproc://ingest-loop")
    push.connect("inproc://ingest-loop")
    try:
        yield push, pull
    finally:
        push.close()
        pull.close()
        context.term()


@pytest.fixture
def records(log_records) -> list[logging.LogRecord]:
    return log_records("relayd.ingest")


def test_a_message_that_triggers_a_bug_is_dropped_counted_and_the_rest_handled(
        sockets, records: list[logging.LogRecord]) -> None:
    push, pull = sockets
    ingest = BuggyIngest(Intake(Grammar("lp"), 100))
    push.send(dumps(encode_update("a_f1", 1.0)))
    push.send(BOOM)
    push.send(dumps(encode_update("b_f1", 2.0)))
    batches: list[list] = []
    refused: dict = {}

    def handled() -> bool:
        batches.extend(gather(pull, ingest))
        counters = ingest.take_counters()
        for code, count in counters.get("refused", {}).items():
            refused[code] = refused.get(code, 0) + count
        return len(batches) == 2 and refused.get("internal") == 1

    wait_for(handled, 10.0, interval=0.005, what="both good messages and the bad one")
    assert [(op.op, op.name) for batch in batches for op in batch[0]] == [
        (Op.PUT, "lp:a_f1"), (Op.PUT, "lp:b_f1")]
    assert refused == {"internal": 1}
    errors = [record for record in records if record.levelno == logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is not None  # with its traceback
    assert "planted bug" in str(errors[0].exc_info[1])


def test_internal_errors_are_logged_rate_limited(sockets,
                                                 records: list[logging.LogRecord]) -> None:
    """A stream of messages that trigger a bug must not flood the log (each is counted)."""
    push, pull = sockets
    ingest = BuggyIngest(Intake(Grammar("lp"), 100))
    for _ in range(50):
        push.send(BOOM)
    refused = 0

    def handled() -> bool:
        nonlocal refused
        gather(pull, ingest)
        refused += ingest.take_counters().get("refused", {}).get("internal", 0)
        return refused >= 50

    wait_for(handled, 10.0, interval=0.005, what="50 bad messages counted")
    assert refused == 50
    errors = [record for record in records if record.levelno == logging.ERROR]
    assert 1 <= len(errors) <= 3, [record.getMessage() for record in errors]
    assert all(record.exc_info is not None for record in errors)
