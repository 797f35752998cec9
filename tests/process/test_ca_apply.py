"""The CA process's ingest (relayd.ca.apply.PipeIngest) over real pipes, without pcas.

Batches are made by the worker's own validation (`workers.ingest.validate.Ingest`) from
ZMQ message bytes, travel through a real `PipeWriter`/`PipeReader` socket pair, and are
applied to a small recording server that implements `IngestServer`: it records every
post (with what every PV held at that moment), refusal, delete and attribute change. The
verdicts and query results `PipeIngest` hands back are recorded too.
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
from relayd.core.intake import Intake
from relayd.core.names import Grammar, NameLimits
from relayd.core.ops import Batch, Op, PipeOp, Verdict, Way
from relayd.core.protocol import dumps, encode_update
from relayd.core.registry import Registry
from relayd.core.writes import Relay
from relayd.supervise.messages import Forward, Query, QueryResult, encode
from relayd.supervise.pipe import PipeReader, PipeWriter, packets, socket_pair
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

    def report(self, refused: Refused, source: str, way: str = Way.CA.value) -> int:
        self.relay.stats.count_refusal(refused, source, way)
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
    """A recording server and real pipes, with `PipeIngest` on their reading ends.

    `send` forwards through the first worker's pipe ("ingest"); `answers` and `results`
    record the verdicts and query results `PipeIngest` hands back, by worker role.
    """

    def __init__(self, server: RecordingServer, pipes: dict[str, tuple[PipeReader, PipeWriter]]):
        self.server = server
        self.pipes = pipes
        self.reader, self.writer = pipes["ingest"]
        self.answers: list[tuple[str, int, list[Verdict], bool]] = []
        self.results: list[tuple[str, QueryResult]] = []
        self.ingest = PipeIngest(server, {role: reader for role, (reader, _) in pipes.items()},
                                 self._answer, lambda role, result: self.results.append(
                                     (role, result)))
        # The worker's validation, as in the ingest worker
        self.worker = Ingest(Intake(GRAMMAR, 1000))
        self._seq = 0

    def _answer(self, role: str, request_id: int, verdicts: list, durable: bool) -> None:
        self.answers.append((role, request_id, [Verdict.from_wire(v) for v in verdicts],
                             durable))

    def batch(self, *updates: dict) -> list[PipeOp]:
        """The ops the worker makes of one ZMQ message holding `updates`."""
        ops = self.worker.handle(dumps(list(updates)), time.time_ns())
        assert len(ops) == len(updates), self.worker.take_counters()
        return ops

    def send(self, *batches: list | Batch, sent_ns: int | None = None,
             role: str = "ingest") -> None:
        """Forward `batches` (lists of ops are pushed ones) through the pipe of `role` as
        the worker does (one pipe message)."""
        self._seq += 1
        sent = time.monotonic_ns() if sent_ns is None else sent_ns
        wrapped = [b if isinstance(b, Batch) else Batch(b, Way.ZMQ, "zmq") for b in batches]
        forward = Forward(self._seq, sent, wrapped, self.worker.take_counters())
        assert self.pipes[role][1].send(encode(forward), 5.0)

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


def make_rig(max_pvs: int = 1000, roles: tuple[str, ...] = ("ingest",)) -> Iterator[Rig]:
    ends = {role: socket_pair(1 << 20) for role in roles}
    try:
        yield Rig(RecordingServer(max_pvs), {role: (PipeReader(reader), PipeWriter(writer))
                                             for role, (reader, writer) in ends.items()})
    finally:
        for reader, writer in ends.values():
            reader.close()
            writer.close()


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
    pytest.param(b"\x95\x01\x01\x02\x05\x80", "undecodable pipe message",
                 id="batches-not-a-list"),
    pytest.param(b"", "undecodable pipe message", id="empty"),
    pytest.param(b"\x95\x01\x01\x02\x91\x05\x80", "applying a batch from the pipe",
                 id="batch-not-a-list"),
    pytest.param(encode(QueryResult(1, None, "")), "a QueryResult on an up pipe",
                 id="a-down-message-up"),
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


# --- verdicts, writers, ways in, channels, queries ---------------------------------------------


def test_a_batch_that_asks_gets_one_verdict_per_op_in_order(small_rig: Rig) -> None:
    rig = small_rig  # the relay holds at most 2 PVs
    ops = rig.batch(update("a_f1", 1.0), update("b_f1", 2.0), update("c_f1", 3.0),
                    update("nosuch_f1", op="delete"), update("a_f1", meta={"egu": "V"}),
                    update("b_f1", op="delete"))
    rig.send(Batch(ops, Way.ZMQ, "zmq 10.0.0.5", 77, True))
    assert rig.drain()
    refused = {reason: detail for reason, _, detail in rig.server.refusals}
    assert rig.answers == [("ingest", 77, [
        Verdict.accepted(f"{PREFIX}:a_f1"), Verdict.accepted(f"{PREFIX}:b_f1"),
        Verdict(f"{PREFIX}:c_f1", Reason.PV_LIMIT, refused[Reason.PV_LIMIT]),
        Verdict(f"{PREFIX}:nosuch_f1", Reason.NO_SUCH_PV, refused[Reason.NO_SUCH_PV]),
        Verdict.accepted(f"{PREFIX}:a_f1"), Verdict.accepted(f"{PREFIX}:b_f1"),
    ], True)]


def test_pushed_batches_get_no_verdicts(rig: Rig) -> None:
    rig.send(rig.batch(update("a_f1", 1.0)), Batch(rig.batch(update("b_f1", 1.0)), Way.ZMQ,
                                                   "zmq", None, True))
    assert rig.drain()
    assert rig.answers == [] and rig.server.value("b_f1") == 1.0


def test_an_op_that_triggers_a_bug_gets_an_internal_verdict(rig: Rig) -> None:
    good = rig.batch(update("a_f1", 5.0))
    rig.send(Batch([good[0], (7, f"{PREFIX}:a_f1", 1.0, 1, None)], Way.ZMQ, "zmq", 1))
    assert rig.drain()
    (_, _, verdicts, _), = rig.answers
    assert [verdict.reason for verdict in verdicts] == [None, Reason.INTERNAL]


def test_each_pv_keeps_its_last_writer_and_its_count_of_values(rig: Rig) -> None:
    rig.send(Batch(rig.batch(update("w_f1", 1.0), update("w_f1", 2.0)), Way.ZMQ,
                   "zmq 10.0.0.5"))
    rig.send(Batch(rig.batch(update("w_f1", 3.0), update("w_f1", meta={"egu": "V"})),
                   Way.HTTP, "http 127.0.0.1"))
    rig.drain_all()
    state = rig.server.relay.registry.pvs[f"{PREFIX}:w_f1"].state
    assert (state.writer, state.updates) == ("http 127.0.0.1", 3)  # attributes are no value


def test_accepted_and_refused_are_counted_by_way_in(small_rig: Rig) -> None:
    rig = small_rig
    rig.send(rig.batch(update("a_f1", 1.0), update("a_f1", op="delete")))
    rig.send(Batch(rig.batch(update("b_f1", 1.0), update("c_f1", 1.0), update("d_f1", 1.0)),
                   Way.HTTP, "http 127.0.0.1"))
    rig.worker.handle(dumps(update("bad name", 1.0)), time.time_ns())  # the worker refuses
    rig.send()
    assert rig.drain()
    stats = rig.stats
    assert dict(stats.accepted_by_way) == {"zmq": 1, "http": 2}  # a delete is no update
    assert dict(stats.refused_by_way) == {"http": 1, "zmq": 1}
    assert stats.accepted == sum(stats.accepted_by_way.values())
    assert stats.refused == sum(stats.refused_by_way.values())
    assert stats.refused_by_way[Way.HTTP] == 1  # a Way finds its value's entry


@pytest.fixture
def two_rig() -> Iterator[Rig]:
    yield from make_rig(roles=("ingest", "http"))


def test_every_workers_pipe_is_read_in_turn_and_answered_on_its_own(two_rig: Rig) -> None:
    rig = two_rig
    for i in range(3):
        rig.send(Batch(rig.batch(update(f"i{i}_f1", 1.0)), Way.ZMQ, "zmq", 100 + i))
        rig.send(Batch(rig.batch(update(f"h{i}_f1", 1.0)), Way.HTTP, "http", 200 + i),
                 role="http")
    assert rig.drain()
    assert [(role, request) for role, request, _, _ in rig.answers] == [
        ("ingest", 100), ("http", 200), ("ingest", 101), ("http", 201), ("ingest", 102),
        ("http", 202)]
    assert len(rig.server.relay.registry.pvs) == 6


def test_queries_are_answered_by_the_handler_of_their_kind(two_rig: Rig, records) -> None:
    rig = two_rig
    rig.ingest.queries["echo"] = lambda args: {"got": args}
    rig.ingest.queries["boom"] = lambda args: 1 / 0
    for request, kind in enumerate(("echo", "nosuch", "boom")):
        assert rig.pipes["http"][1].send(encode(Query(request, kind, [1, "a"])), 5.0)
    assert rig.drain()
    assert rig.results == [
        ("http", QueryResult(0, {"got": [1, "a"]}, "")),
        ("http", QueryResult(1, None, "unknown query 'nosuch'")),
        ("http", QueryResult(2, None, "internal error: ZeroDivisionError('division by zero')")),
    ]
    assert rig.stats.by_reason[Reason.INTERNAL] == 1
