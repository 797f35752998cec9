"""The CA process's ingest (relayd.ca.apply.PipeIngest) over a real pipe, without pcas.

Batches are made by the worker's own validation (`workers.ingest.validate.Ingest`) from
ZMQ message bytes, travel through a real `PipeWriter`/`PipeReader` socket pair, and are
applied to a small recording server that implements `IngestServer`: it records every
post (with what every PV held at that moment), refusal, delete and attribute change.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import pytest

from relayd.ca.apply import POSTS_PER_CYCLE, SOURCE, IngestServer, PipeIngest
from relayd.ca.pvs import DBE_ALL, DBE_PROPERTY, DBE_VALUE_LOG
from relayd.core.errors import Reason, Refused
from relayd.core.names import Grammar, NameLimits
from relayd.core.ops import Op, PipeOp
from relayd.core.protocol import dumps, encode_update
from relayd.core.registry import Registry
from relayd.core.writes import Relay
from relayd.supervise.pipe import (
    Forward, PipeReader, PipeWriter, encode_forward, packets, socket_pair,
)
from workers.ingest.validate import Ingest

pytestmark = pytest.mark.timeout(60)

PREFIX = "ap"
GRAMMAR = Grammar(PREFIX, NameLimits(max_name_length=64, max_elements=1000))
TS = 1_700_000_000.5
UNBOUNDED = 10**9  # max_updates that never stops a drain
FOREVER = 60.0  # a budget that never stops a drain


def plain(value: object) -> object:
    """A served value as plain Python, frozen at the moment it is recorded."""
    return value.tolist() if isinstance(value, np.ndarray) else value


class RecordedPV:
    def __init__(self, state: Any):
        self.state = state


@dataclass
class Post:
    name: str
    mask: int
    value: object  # what the PV served when it was posted
    everything: dict  # what every PV served at that moment


class RecordingServer:
    """An `IngestServer` that records what `PipeIngest` asks of it."""

    def __init__(self, max_pvs: int = 1000):
        self.relay: Relay[RecordedPV] = Relay(GRAMMAR, Registry(GRAMMAR, RecordedPV, max_pvs))
        self.posts: list[Post] = []
        self.refusals: list[tuple[Reason, str, str]] = []
        self.deleted: list[str] = []
        self.meta_changes: list[tuple[str, bool]] = []

    def report(self, refused: Refused, source: str) -> int:
        self.relay.stats.count_refusal(refused, source)
        self.refusals.append((refused.reason, source, refused.detail))
        return 0

    def delete(self, name: str, source: str) -> RecordedPV:
        pv = self.relay.delete(name)
        self.deleted.append(name)
        return pv

    def applied(self, pv: RecordedPV, mask: int, now: float, stamp: Any = None) -> None:
        everything = {name: plain(other.state.served())
                      for name, other in self.relay.registry.pvs.items()}
        self.posts.append(Post(pv.state.spec.name, mask, plain(pv.state.served()), everything))

    def meta_changed(self, pv: RecordedPV, alarm_changed: bool, now: float) -> None:
        self.meta_changes.append((pv.state.spec.name, alarm_changed))

    def value(self, name: str) -> object:
        return plain(self.relay.registry.pvs[f"{PREFIX}:{name}"].state.served())


class Rig:
    """A recording server and the two ends of a real pipe, with `PipeIngest` on the reader."""

    def __init__(self, server: RecordingServer, reader: PipeReader, writer: PipeWriter):
        self.server = server
        self.reader = reader
        self.writer = writer
        self.ingest = PipeIngest(server, reader)
        self.worker = Ingest(GRAMMAR)  # the worker's validation, as in the ingest worker
        self._seq = 0

    def batch(self, *updates: dict) -> list[PipeOp]:
        """The ops the worker makes of one ZMQ message holding `updates`."""
        ops = self.worker.handle(dumps(list(updates)), time.time_ns())
        assert len(ops) == len(updates), self.worker.take_counters()
        return ops

    def send(self, *batches: list, sent_ns: int | None = None) -> None:
        """Forward `batches` through the pipe as the worker does (one pipe message)."""
        self._seq += 1
        sent = time.monotonic_ns() if sent_ns is None else sent_ns
        forward = Forward(self._seq, sent, list(batches), self.worker.take_counters())
        assert self.writer.send(encode_forward(forward), 5.0)

    def drain(self, max_updates: int = UNBOUNDED, budget: float = FOREVER) -> bool:
        return self.ingest.drain(max_updates, budget)

    def drain_all(self) -> None:
        """Drain cycle after cycle until the pipe is empty, as the CA loop does."""
        for _ in range(1000):
            if self.drain():
                return
        raise AssertionError("the pipe never emptied")

    @property
    def stats(self):
        return self.server.relay.stats


def make_rig(max_pvs: int = 1000) -> Iterator[Rig]:
    reader_sock, writer_sock = socket_pair(1 << 20)
    try:
        yield Rig(RecordingServer(max_pvs), PipeReader(reader_sock), PipeWriter(writer_sock))
    finally:
        reader_sock.close()
        writer_sock.close()


@pytest.fixture
def rig() -> Iterator[Rig]:
    yield from make_rig()


@pytest.fixture
def small_rig() -> Iterator[Rig]:
    yield from make_rig(max_pvs=2)


@pytest.fixture
def records(log_records) -> list[logging.LogRecord]:
    return log_records("relayd.ca")


def update(name: str, value: object = None, **extra: Any) -> dict:
    """One update of a ZMQ message, as a client encodes it."""
    return encode_update(name, value, ts=None if extra.get("op") else TS, **extra)


# --- batches ------------------------------------------------------------------------------


def test_a_batch_is_applied_whole_before_anything_is_posted(rig: Rig) -> None:
    rig.send(rig.batch(update("a_f1", 0.0), update("b_i1", 0), update("c_c8", "-")))
    assert rig.drain()
    rig.server.posts.clear()
    rig.send(rig.batch(update("a_f1", 1.5), update("b_i1", 2), update("c_c8", "three"),
                       update("d_f3", [4.0, 5.0])))
    assert rig.drain() is True
    after = {f"{PREFIX}:a_f1": 1.5, f"{PREFIX}:b_i1": 2,
             f"{PREFIX}:c_c8": b"three\x00",  # text is served with its NUL
             f"{PREFIX}:d_f3": [4.0, 5.0]}
    assert [post.name for post in rig.server.posts] == list(after)
    # Every post, the first included, sees every update of its batch applied.
    assert [post.everything for post in rig.server.posts] == [after] * len(after)
    assert [post.value for post in rig.server.posts] == list(after.values())
    assert rig.stats.accepted == 7


def test_repeated_updates_of_a_plain_pv_post_once_with_the_last_value(rig: Rig) -> None:
    rig.send(rig.batch(*(update("x_f1", float(i)) for i in range(10)),
                       update("y_i2", [1, 2]), update("y_i2", [3, 4])))
    assert rig.drain()
    assert [(post.name, post.value) for post in rig.server.posts] == [
        (f"{PREFIX}:x_f1", 9.0), (f"{PREFIX}:y_i2", [3, 4])]
    assert rig.stats.accepted == 12


def test_a_buffer_receives_every_element_and_posts_once(rig: Rig) -> None:
    rig.send(rig.batch(update("t_F5", [1.0]), update("t_F5", [2.0, 3.0]), update("t_F5", [4.0])))
    assert rig.drain()
    assert [(post.name, post.value) for post in rig.server.posts] == [
        (f"{PREFIX}:t_F5", [1.0, 2.0, 3.0, 4.0])]
    rig.send(rig.batch(update("t_F5", [5.0, 6.0])))  # the oldest element falls out
    assert rig.drain()
    assert rig.server.posts[-1].value == [2.0, 3.0, 4.0, 5.0, 6.0]


def test_masks_say_what_changed(rig: Rig) -> None:
    rig.send(rig.batch(update("m_f1", 1.0)))  # first value: the alarm leaves UDF
    rig.send(rig.batch(update("m_f1", 2.0)))
    rig.send(rig.batch(update("m_f1", 3.0, meta={"egu": "mm"})))
    rig.send(rig.batch(update("m_f1", 4.0, meta={"hihi": 3.5})))
    rig.drain_all()
    assert [post.mask for post in rig.server.posts] == [
        DBE_ALL, DBE_VALUE_LOG, DBE_VALUE_LOG | DBE_PROPERTY, DBE_ALL | DBE_PROPERTY]


def test_deletes_and_attribute_changes_go_to_the_server(rig: Rig) -> None:
    rig.send(rig.batch(update("k_f1", 1.0), update("g_f1", 2.0)))
    rig.send(rig.batch(update("k_f1", 5.0), update("k_f1", op="delete"),
                       update("g_f1", meta={"lolo": 3.0})))
    assert rig.drain()
    assert rig.server.deleted == [f"{PREFIX}:k_f1"]
    assert rig.server.meta_changes == [(f"{PREFIX}:g_f1", True)]
    # The deleted PV is not posted after its delete, even though its batch updated it.
    assert [post.name for post in rig.server.posts] == [f"{PREFIX}:k_f1", f"{PREFIX}:g_f1"]
    assert f"{PREFIX}:k_f1" not in rig.server.relay.registry.pvs


# --- refusals and internal errors -----------------------------------------------------------


def test_one_refused_update_never_stops_the_rest(small_rig: Rig) -> None:
    rig = small_rig  # the relay holds at most 2 PVs
    rig.send(rig.batch(update("a_f1", 1.0), update("b_f1", 2.0), update("c_f1", 3.0),
                       update("nosuch_f1", op="delete"), update("nosuch_i1", meta={"egu": "V"}),
                       update("a_f1", 4.0)))
    assert rig.drain()
    assert [(reason, source) for reason, source, _ in rig.server.refusals] == [
        (Reason.PV_LIMIT, SOURCE), (Reason.NO_SUCH_PV, SOURCE), (Reason.NO_SUCH_PV, SOURCE)]
    assert [(post.name, post.value) for post in rig.server.posts] == [
        (f"{PREFIX}:a_f1", 4.0), (f"{PREFIX}:b_f1", 2.0)]
    assert (rig.stats.accepted, rig.stats.refused) == (3, 3)


BROKEN_OPS = [
    pytest.param(PipeOp(Op.PUT, f"{PREFIX}:a_f1", 1.0, 1, {"bogus": 1}), id="unknown-attribute"),
    pytest.param((7, f"{PREFIX}:a_f1", 1.0, 1, None), id="unknown-op"),
    pytest.param((Op.PUT, f"{PREFIX}:a_f1", 1.0), id="too-few-fields"),
    pytest.param(42, id="not-an-op"),
]


@pytest.mark.parametrize("broken", BROKEN_OPS)
def test_an_op_that_triggers_a_bug_is_counted_internal_and_the_rest_applied(
        rig: Rig, broken: object, records: list[logging.LogRecord]) -> None:
    good = rig.batch(update("a_f1", 5.0), update("b_f1", 6.0))
    rig.send([good[0], broken, good[1]])
    assert rig.drain()
    assert [reason for reason, _, _ in rig.server.refusals] == [Reason.INTERNAL]
    assert rig.stats.by_reason[Reason.INTERNAL] == 1
    assert (rig.server.value("a_f1"), rig.server.value("b_f1")) == (5.0, 6.0)
    errors = [record for record in records if record.levelno == logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is not None  # with its traceback


def test_internal_errors_are_logged_rate_limited(rig: Rig,
                                                 records: list[logging.LogRecord]) -> None:
    """A stream of messages that trigger a bug must not flood the log (each is counted)."""
    broken = PipeOp(Op.PUT, f"{PREFIX}:a_f1", 1.0, 1, {"bogus": 1})
    for _ in range(50):
        rig.send([broken])
    assert rig.drain()
    assert rig.stats.by_reason[Reason.INTERNAL] == 50
    errors = [record for record in records if record.levelno == logging.ERROR]
    assert 1 <= len(errors) <= 3, [record.getMessage() for record in errors]
    assert all(record.exc_info is not None for record in errors)


@pytest.mark.parametrize("payload, detail", [
    pytest.param(b"\xc1 not msgpack", "undecodable pipe message", id="not-msgpack"),
    pytest.param(b"\x93\x01\x02\x03", "undecodable pipe message", id="three-items"),
    pytest.param(b"\x94\x01\x02\x05\x80", "undecodable pipe message", id="batches-not-a-list"),
    pytest.param(b"", "undecodable pipe message", id="empty"),
    pytest.param(b"\x94\x01\x02\x91\x05\x80", "applying a batch from the pipe",
                 id="batch-not-a-list"),
])
def test_an_undecodable_pipe_message_is_counted_internal(rig: Rig, payload: bytes,
                                                         detail: str) -> None:
    assert rig.writer.send(payload, 5.0)
    rig.send(rig.batch(update("after_f1", 1.0)))
    assert rig.drain() is True
    assert [(reason, source) for reason, source, _ in rig.server.refusals] == [
        (Reason.INTERNAL, "pipe")]
    assert detail in rig.server.refusals[0][2]
    assert rig.server.value("after_f1") == 1.0  # the next message is applied


# --- bounded cycles -----------------------------------------------------------------------


def send_batches(rig: Rig, count: int, size: int) -> None:
    """`count` batches of `size` updates, each to PVs of its own, in one pipe message."""
    rig.send(*(rig.batch(*(update(f"b{batch}u{i}_f1", 1.0) for i in range(size)))
               for batch in range(count)))


def test_drain_stops_after_max_updates(rig: Rig) -> None:
    send_batches(rig, 5, 10)
    assert rig.drain(max_updates=20) is False
    assert rig.stats.accepted == 20  # whole batches: never part of one
    assert rig.drain(max_updates=20) is False
    assert rig.stats.accepted == 40
    assert rig.drain(max_updates=20) is True
    assert rig.stats.accepted == 50
    assert rig.drain(max_updates=20) is True  # nothing left


def test_drain_stops_after_its_budget(rig: Rig) -> None:
    send_batches(rig, 4, 10)
    assert rig.drain(budget=0.0) is False  # the budget is spent by the first batch
    assert rig.stats.accepted == 10
    assert rig.drain(budget=FOREVER) is True
    assert rig.stats.accepted == 40


def test_drain_stops_once_a_pv_was_posted_posts_per_cycle_times(rig: Rig) -> None:
    batches = [rig.batch(update("hot_f1", float(i)), update(f"cold{i}_f1", 1.0))
               for i in range(5)]
    rig.send(*batches)
    assert rig.drain() is False
    hot = [post.value for post in rig.server.posts if post.name == f"{PREFIX}:hot_f1"]
    assert hot == [float(i) for i in range(POSTS_PER_CYCLE)]
    assert rig.drain() is False  # a new cycle: the count starts again
    assert rig.drain() is True
    hot = [post.value for post in rig.server.posts if post.name == f"{PREFIX}:hot_f1"]
    assert hot == [0.0, 1.0, 2.0, 3.0, 4.0]  # every update reached the monitors


# --- pipe figures ---------------------------------------------------------------------------


def test_pipe_lag_is_measured_from_the_workers_send(rig: Rig) -> None:
    rig.send(rig.batch(update("l_f1", 1.0)), sent_ns=time.monotonic_ns() - 2_000_000_000)
    assert rig.drain()
    assert 2.0 <= rig.stats.pipe_lag < 30.0
    rig.send(rig.batch(update("l_f1", 2.0)))
    assert rig.drain()
    assert 0.0 <= rig.stats.pipe_lag < 2.0


def test_worker_counters_are_merged(rig: Rig) -> None:
    rig.worker.handle(dumps([update("ok_f1", 1.0), update("bad name", 1.0)]), time.time_ns())
    rig.send()
    assert rig.drain()
    assert (rig.stats.zmq_messages, rig.stats.zmq_updates) == (1, 2)
    assert rig.stats.by_reason[Reason.BAD_NAME] == 1


def test_dropped_chunks_are_counted_and_logged(rig: Rig,
                                               records: list[logging.LogRecord]) -> None:
    """Chunks of a message begun before this reader (a restarted CA process) are dropped:
    the status PV shows how many, and the log says so (rate-limited)."""
    def send_tail(message_id: int) -> None:
        for packet in list(packets(message_id, bytes(3 * 60_000)))[1:]:
            rig.writer.sock.send(packet)

    send_tail(1_000)
    rig.send(rig.batch(update("d_f1", 1.0)))
    assert rig.drain() is True
    assert rig.server.value("d_f1") == 1.0
    assert rig.stats.pipe_dropped == 2
    warnings = [record for record in records if record.levelno == logging.WARNING]
    assert len(warnings) == 1 and "dropped" in warnings[0].getMessage()
    assert "dropped 2 chunks" in warnings[0].getMessage()

    send_tail(2_000)  # dropped, and nothing whole after them
    assert rig.drain() is True
    assert rig.stats.pipe_dropped == 4
    for message_id in range(3_000, 3_010):
        send_tail(message_id)
        rig.drain()
    assert rig.stats.pipe_dropped == 24
    warnings = [record for record in records if record.levelno == logging.WARNING]
    assert 2 <= len(warnings) <= 3  # rate-limited


def test_the_ca_server_and_the_recorder_are_ingest_servers() -> None:
    """What these tests drive is what the CA process runs: both have all IngestServer asks."""
    from relayd.ca.server import CAServer

    methods = {name for name in vars(IngestServer) if not name.startswith("_")}
    assert methods == {"report", "delete", "applied", "meta_changed"}
    assert methods <= set(dir(CAServer)) and methods <= set(dir(RecordingServer))
    assert "relay" in IngestServer.__annotations__ and "relay" in vars(RecordingServer(1))
