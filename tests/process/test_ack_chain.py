"""Acknowledged pushes through the whole chain in one process, without pcas.

The push client (``Client(..., ack=True)``, in a thread) sends over a real DEALER socket
to the ingest worker's real ROUTER socket (`workers.ingest.loop.Worker`, driven turn by
turn in the main thread: it installs a signal wake-up fd); the worker forwards over a
real up pipe to the CA process's real `PipeIngest` and `Replies`, applying to a
recording server (tests/process/test_ca_apply.py), and the verdicts come back over a
real down pipe, to the worker, to the client. Only pcas is missing: tests/e2e run the
same requests against a real relayd.
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import zmq

from relayd.ca.apply import PipeIngest
from relayd.ca.replies import Replies, outboxes
from relayd.client import BatchRefused, Client, NotDurable, RelayUnreachable, UpdateRefused
from relayd.config import Config
from relayd.core.acks import decode_reply
from relayd.core.errors import Reason
from relayd.store.sqlite import Store
from relayd.store.writer import Autosaver
from relayd.supervise.child import Channel, ChildEnv
from relayd.supervise.lifeline import Lifeline
from relayd.supervise.pipe import PipeReader, socket_pair
from relayd.supervise.signals import StopFlag
from tests.harness import free_port
from tests.process.test_ca_apply import PREFIX, RecordingServer
from workers.ingest.loop import Worker
from workers.ingest.sockets import bind

pytestmark = pytest.mark.timeout(60)


class Chain:
    """A worker and the CA process's side of its pipes, stepped in this thread."""

    def __init__(self, tmp: Path, max_pvs: int = 1000, max_bytes: int = 4 * 1024**3,
                 autosave: bool = False):
        tcp = (socket.SOCK_STREAM,)
        self.config = Config(prefix=PREFIX, max_name_length=64, max_elements=1000,
                             zmq_bind=(f"tcp://127.0.0.1:{free_port(tcp)}",),
                             zmq_ack_bind=(f"tcp://127.0.0.1:{free_port(tcp)}",),
                             no_autosave=not autosave, stop_grace=4.0)
        self.ack_endpoint = self.config.zmq_ack_bind[0]
        up, down = socket_pair(1 << 20), socket_pair(1 << 20)
        self.ends = [*up, *down]
        parent, child = Lifeline.pair()
        self.supervisor_end = Lifeline(parent)
        self.env = ChildEnv("ingest", self.config, Lifeline(child),
                            {"ingest": Channel("ingest", up[1], down[0])}, StopFlag())
        self.worker = Worker(self.env, bind(self.config))
        self.server = RecordingServer(max_pvs, max_bytes)
        self.autosaver = None
        if autosave:
            self.autosaver = Autosaver(Store.open(str(tmp / "chain.sqlite")), 0.2, lambda: [])
            self.server.autosaver = self.autosaver
        self.replies = Replies(outboxes({"ingest": down[1]}), self.server.relay.stats,
                               self.autosaver)
        self.ca = PipeIngest(self.server, {"ingest": PipeReader(up[0])},
                             self.replies.verdicts, self.replies.send)

    def step(self) -> None:
        events = dict(self.worker.poller.poll(5))
        self.worker.turn(events, lambda: False)
        self.ca.drain(2000, 0.01)
        self.replies.cycle(time.monotonic())

    def run(self, work: Callable[[Client], Any], within: float = 20.0, **options: Any) -> Any:
        """`work(client)` in a thread with an acknowledged client, stepping meanwhile;
        what it returned, or the exception it raised (returned, not raised)."""
        outcome: list = []

        def client_side() -> None:
            try:
                with Client(ack=True, ack_endpoint=self.ack_endpoint, **options) as client:
                    outcome.append(work(client))
            except Exception as error:  # noqa: BLE001 (the test looks at it)
                outcome.append(error)

        thread = threading.Thread(target=client_side, daemon=True)
        thread.start()
        deadline = time.monotonic() + within
        while thread.is_alive():
            assert time.monotonic() < deadline, "the client never finished"
            self.step()
        return outcome[0]

    def close(self) -> None:
        self.worker.close()
        if self.autosaver is not None:
            self.autosaver.stop(5)
        for end in self.ends:
            end.close()
        self.supervisor_end.close()
        self.env.lifeline.close()


@pytest.fixture
def make_chain(tmp_path: Path) -> Iterator[Callable[..., Chain]]:
    made: list[Chain] = []

    def make(**options: Any) -> Chain:
        made.append(Chain(tmp_path, **options))
        return made[-1]

    yield make
    for chain in made:
        chain.close()


@pytest.fixture
def chain(make_chain) -> Chain:
    return make_chain()


def test_an_accepted_put_answers_its_full_name(chain: Chain) -> None:
    assert chain.run(lambda c: c.put("temp_f1", 21.5)) == f"{PREFIX}:temp_f1"
    state = chain.server.relay.registry.pvs[f"{PREFIX}:temp_f1"].state
    assert state.value == 21.5
    assert (state.writer, state.updates) == ("zmq 127.0.0.1", 1)
    assert chain.server.relay.stats.accepted_by_way["zmq"] == 1


@pytest.mark.parametrize("call, reason, pv, text", [
    (lambda c: c.put("nope", 1.0), "badName", "nope", "'nope' is not <prefix>:<name>_"),
    (lambda c: c.put("x" * 70 + "_f1", 1.0), "nameTooLong", "x" * 70 + "_f1", ""),
    (lambda c: c.put("big_f5000", [1.0]), "countLimit", "big_f5000", ""),
    (lambda c: c.put("t_f1", "text"), "badValue", "t_f1", "text 'text' sent to a numeric PV"),
    (lambda c: c.put("t_f2", [1.0, 2.0, 3.0]), "tooManyElements", "t_f2", ""),
    (lambda c: c.put("t_c8", 5.0), "badValue", "t_c8", ""),
    (lambda c: c.delete("ghost_f1"), "noSuchPV", "ghost_f1", "no such PV"),
    (lambda c: c.set_meta("ghost_i1", egu="V"), "noSuchPV", "ghost_i1",
     "attributes for a PV that does not exist"),
])
def test_each_refusal_raises_update_refused_naming_the_update_and_reason(
        chain: Chain, call: Callable, reason: str, pv: str, text: str) -> None:
    problem = chain.run(call)
    assert isinstance(problem, UpdateRefused), problem
    assert (problem.pv, problem.reason) == (pv, reason)
    assert text in problem.text
    assert chain.server.relay.registry.pvs == {}
    assert chain.server.relay.stats.refused_by_way["zmq"] == 1


def test_the_relay_full_is_refused_through_the_ack(make_chain) -> None:
    chain = make_chain(max_pvs=1, max_bytes=100)
    assert chain.run(lambda c: c.put("a_f1", 1.0)) == f"{PREFIX}:a_f1"
    problem = chain.run(lambda c: c.put("b_f1", 1.0))
    assert (problem.reason, problem.pv) == ("pvLimit", "b_f1")  # the name as sent
    assert "the relay holds 1 PVs already" in problem.text
    chain.server.relay.registry.max_pvs = 10
    problem = chain.run(lambda c: c.put("c_f50", [1.0]))
    assert problem.reason == "bytesLimit"


def test_a_batch_says_each_updates_fate_and_applies_the_good_ones(chain: Chain) -> None:
    problem = chain.run(lambda c: c.put_many([("a_f1", 1.0), ("nope", 2.0), ("b_i1", "x"),
                                              ("c_c8", "ok")]))
    assert isinstance(problem, BatchRefused)
    assert [(r.ok, r.pv, r.reason) for r in problem.results] == [
        (True, f"{PREFIX}:a_f1", None), (False, "nope", "badName"),
        (False, "b_i1", "badValue"), (True, f"{PREFIX}:c_c8", None)]
    assert [p.pv for p in problem.refused] == ["nope", "b_i1"]
    assert problem.refused[0].text.startswith("update #1: ")
    assert sorted(chain.server.relay.registry.pvs) == [f"{PREFIX}:a_f1", f"{PREFIX}:c_c8"]
    names = chain.run(lambda c: c.put_many({"a_f1": 2.0, "d_f1": 3.0}))
    assert names == [f"{PREFIX}:a_f1", f"{PREFIX}:d_f1"]

    def in_a_batch(client: Client) -> list:
        with client.batch() as batch:
            batch.put("e_f1", 1.0)
            batch.delete("e_f1")
        return batch.names

    assert chain.run(in_a_batch) == [f"{PREFIX}:e_f1", f"{PREFIX}:e_f1"]


def test_many_requests_in_flight_are_each_answered(chain: Chain) -> None:
    def window(client: Client) -> list:
        for i in range(300):
            client.put_async(f"w{i % 7}_F1000", [float(i)])
        client.put_async("nope", 1.0)
        try:
            client.flush()
        except BatchRefused as problem:
            return [problem.results, problem.refused]
        return []

    results, refused = chain.run(window, window=16)
    assert len(results) == 301 and [p.pv for p in refused] == ["nope"]
    held = chain.server.relay.registry.pvs[f"{PREFIX}:w0_F1000"].state.served().tolist()
    assert held == [float(i) for i in range(0, 300, 7)]  # every one, in order
    assert chain.run(lambda c: (c.put_async("x_f1", 1.0), c.flush())[1]) == [f"{PREFIX}:x_f1"]


def test_a_request_that_cannot_be_read_is_answered_with_an_error(chain: Chain) -> None:
    context = zmq.Context()
    dealer = context.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(chain.ack_endpoint)
    try:
        dealer.send(b"\x81\xa1v\x02")  # {"v": 2}
        deadline = time.monotonic() + 10
        while not dealer.poll(0):
            assert time.monotonic() < deadline
            chain.step()
        reply = decode_reply(dealer.recv())
    finally:
        dealer.close()
        context.term()
    assert reply.id is None and reply.error is not None
    assert (reply.error.reason, reply.error.text) == (
        "malformed", "'id' must be an int, or a str of at most 256 bytes")
    chain.worker.forward([], lambda: False)  # the worker's counts travel with a forward
    chain.step()
    assert chain.server.relay.stats.by_reason[Reason.MALFORMED] == 1
    assert chain.server.relay.stats.refused_by_way["zmq"] == 1


def test_durable_without_autosave_raises_not_durable_but_applies(chain: Chain) -> None:
    problem = chain.run(lambda c: c.put("d_f1", 1.0), durable=True)
    assert isinstance(problem, NotDurable)
    assert problem.note == "autosave is off: the updates were applied, not saved"
    assert chain.server.value("d_f1") == 1.0


def test_durable_with_autosave_answers_once_saved(make_chain) -> None:
    chain = make_chain(autosave=True)
    assert chain.run(lambda c: c.put("d_f1", 2.5), durable=True) == f"{PREFIX}:d_f1"
    saved = Store.open(chain.autosaver.store.path).load()
    assert [(row.name, row.value) for row in saved] == [(f"{PREFIX}:d_f1", 2.5)]


def test_no_answer_in_time_raises_relay_unreachable(chain: Chain) -> None:
    def unanswered(client: Client) -> object:
        client.put("q_f1", 1.0)  # answered: the chain is stepped
        chain.paused = True
        return client.put("q_f1", 2.0)

    chain.paused = False
    original = chain.step
    chain.step = lambda: None if chain.paused else original()  # the relay stops answering
    problem = chain.run(unanswered, timeout=1.0)
    assert isinstance(problem, RelayUnreachable)
    assert str(problem).startswith(f"no answer from {chain.ack_endpoint} within 1 s")


def test_at_stop_what_was_received_is_forwarded_and_answered(chain: Chain) -> None:
    """The worker's stop takes in the requests ZMQ holds, forwards them, and answers them
    as their verdicts come (here the CA side is stepped from another thread)."""
    outcome: list = []
    sent = threading.Event()

    def client_side() -> None:
        with Client(ack=True, ack_endpoint=chain.ack_endpoint, timeout=10) as client:
            tickets = [client.put_async(f"s{i}_f1", float(i)) for i in range(20)]
            sent.set()
            outcome.extend(ticket.result()[0] for ticket in tickets)

    thread = threading.Thread(target=client_side, daemon=True)
    thread.start()
    assert sent.wait(10)
    time.sleep(0.2)  # in the ROUTER's queue, not read yet: the worker was not stepped
    stop_ca = threading.Event()

    def ca_side() -> None:
        while not stop_ca.is_set():
            chain.ca.drain(2000, 0.01)
            chain.replies.cycle(time.monotonic())
            time.sleep(0.002)

    ca = threading.Thread(target=ca_side, daemon=True)
    ca.start()
    try:
        chain.worker.stop()
        thread.join(10)
    finally:
        stop_ca.set()
        ca.join(5)
    assert outcome == [f"{PREFIX}:s{i}_f1" for i in range(20)]
    assert len(chain.server.relay.registry.pvs) == 20


def test_a_req_socket_is_answered_too_and_an_extra_frame_is_malformed(chain: Chain) -> None:
    """REQ adds an empty delimiter frame, and gets it back; a DEALER sending two frames
    sends a request the worker cannot read as one."""
    from relayd.core.acks import encode_request

    context = zmq.Context()
    req = context.socket(zmq.REQ)
    dealer = context.socket(zmq.DEALER)
    for sock in (req, dealer):
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(chain.ack_endpoint)
    try:
        req.send(encode_request(1, {"pv": "req_f1", "value": 1.0}))
        dealer.send_multipart([b"extra", encode_request(2, {"pv": "x_f1", "value": 1.0})])
        replies = {}
        deadline = time.monotonic() + 10
        while len(replies) < 2:
            assert time.monotonic() < deadline
            chain.step()
            for name, sock in (("req", req), ("dealer", dealer)):
                if sock.poll(0):
                    replies[name] = decode_reply(sock.recv_multipart()[-1])
    finally:
        req.close()
        dealer.close()
        context.term()
    assert [result.pv for result in replies["req"].results] == [f"{PREFIX}:req_f1"]
    assert replies["dealer"].error.reason == "malformed"
    assert "a request is one frame (DEALER)" in replies["dealer"].error.text
    assert f"{PREFIX}:x_f1" not in chain.server.relay.registry.pvs
