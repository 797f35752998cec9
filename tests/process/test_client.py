"""The push client (relayd.client) against a real ZMQ PULL socket on loopback."""

from __future__ import annotations

import array
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import zmq

from relayd.core import protocol
from relayd.client import Batch, Client, RelayError, RelayUnreachable
from relayd.core.protocol import Decoded, Update

TS = 1_700_000_000.5
REPO = Path(__file__).resolve().parents[2]


class Sink:
    """A PULL socket bound to a free loopback port: stands in for the relay."""

    def __init__(self, context: zmq.Context):
        self.socket = context.socket(zmq.PULL)
        self.socket.setsockopt(zmq.LINGER, 0)
        port = self.socket.bind_to_random_port("tcp://127.0.0.1")
        self.endpoint = f"tcp://127.0.0.1:{port}"

    def receive(self, timeout: float = 5.0) -> Decoded:
        """The next message, decoded; fails the test if none arrives within `timeout`."""
        assert self.socket.poll(int(timeout * 1000)), "no message arrived"
        return protocol.decode(self.socket.recv())

    def updates(self) -> list[Update]:
        decoded = self.receive()
        assert decoded.refused == []
        return decoded.updates


@pytest.fixture
def sink() -> Iterator[Sink]:
    context = zmq.Context()
    sink = Sink(context)
    yield sink
    sink.socket.close()
    context.term()


@pytest.fixture
def client(sink: Sink) -> Iterator[Client]:
    with Client(sink.endpoint, send_timeout=5.0) as client:
        yield client


def unused_endpoint() -> str:
    """A loopback TCP endpoint where nothing listens (a port just freed by the OS)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"tcp://127.0.0.1:{port}"


def test_put(sink: Sink, client: Client) -> None:
    client.put("temp_f1", 21.5)
    client.put("relay:count_i1", 3, ts=TS)
    first = sink.receive()
    assert first == Decoded([Update("temp_f1", "put", 21.5, None, 0)], [], False)
    assert sink.updates() == [Update("relay:count_i1", "put", 3, TS, 0)]


def test_put_text_and_bytes(sink: Sink, client: Client) -> None:
    client.put("msg_c20", "héllo")
    client.put("raw_c20", b"\x01\x02")
    assert sink.updates()[0].value == "héllo"
    assert sink.updates()[0].value == b"\x01\x02"


def test_put_many_mapping_is_one_batch(sink: Sink, client: Client) -> None:
    client.put_many({"a_f1": 1.0, "b_i1": 2, "c_f3": [1, 2, 3]})
    decoded = sink.receive()
    assert decoded.batch is True
    assert decoded.updates == [
        Update("a_f1", "put", 1.0, None, 0),
        Update("b_i1", "put", 2, None, 1),
        Update("c_f3", "put", [1, 2, 3], None, 2),
    ]


def test_put_many_pairs_keep_order_and_repeats(sink: Sink, client: Client) -> None:
    client.put_many(iter([("a_F4", [1]), ("a_F4", [2]), ("b_f1", 0.5)]))
    assert [(u.pv, u.value) for u in sink.updates()] == [
        ("a_F4", [1]), ("a_F4", [2]), ("b_f1", 0.5),
    ]


def test_empty_put_many_sends_nothing(sink: Sink, client: Client) -> None:
    client.put_many({})
    client.put_many([])
    client.put("marker_f1", 1)
    assert sink.updates()[0].pv == "marker_f1"


def test_delete(sink: Sink, client: Client) -> None:
    client.delete("temp_f1")
    assert sink.updates() == [Update("temp_f1", "delete", None, None, 0)]


def test_batch_is_one_message(sink: Sink, client: Client) -> None:
    with client.batch() as batch:
        assert isinstance(batch, Batch)
        batch.put("a_f1", 1.0, ts=TS)
        batch.delete("b_f1")
        batch.put("a_f1", 2.0)
        assert len(batch) == 3
    decoded = sink.receive()
    assert decoded.batch is True
    assert decoded.updates == [
        Update("a_f1", "put", 1.0, TS, 0),
        Update("b_f1", "delete", None, None, 1),
        Update("a_f1", "put", 2.0, None, 2),
    ]


def test_batch_sends_nothing_when_the_block_raises(sink: Sink, client: Client) -> None:
    with pytest.raises(KeyError):
        with client.batch() as batch:
            batch.put("a_f1", 1.0)
            raise KeyError("boom")
    with client.batch():
        pass  # empty: nothing either
    client.put("marker_f1", 1)
    assert sink.updates() == [Update("marker_f1", "put", 1, None, 0)]


def test_bad_update_raises_at_its_line(client: Client) -> None:
    with pytest.raises(ValueError, match="needs a value"):
        client.put("a_f1", None)
    with pytest.raises(ValueError, match="before the EPICS epoch"):
        client.put("a_f1", 1, ts=1.0)
    with pytest.raises(TypeError):
        client.put_many({"a_f1": object()})
    with client.batch() as batch, pytest.raises(ValueError):
        batch.put("a_f1", 1, ts=float("nan"))


def test_put_with_meta(sink: Sink, client: Client) -> None:
    meta = {"egu": "K", "prec": 2, "hihi": 300.0, "hhsv": "MAJOR", "low": None, "tmo": 10}
    client.put("temp_f1", 21.5, ts=TS, meta=meta)
    assert sink.updates() == [Update("temp_f1", "put", 21.5, TS, 0, meta)]


def test_set_meta_sends_attributes_alone(sink: Sink, client: Client) -> None:
    client.set_meta("relay:temp_f1", egu="K", hihi=300, hhsv="MAJOR")
    [update] = sink.updates()
    assert update == Update("relay:temp_f1", "put", protocol.NO_VALUE, None, 0,
                            {"egu": "K", "hihi": 300, "hhsv": "MAJOR"})


def test_set_meta_none_unsets(sink: Sink, client: Client) -> None:
    client.set_meta("temp_f1", hihi=None)
    assert sink.updates()[0].meta == {"hihi": None}


def test_batch_with_meta(sink: Sink, client: Client) -> None:
    with client.batch() as batch:
        batch.put("a_f1", 1.0, meta={"egu": "V"}, ts=TS)
        batch.set_meta("b_f1", desc="second", tmo=5)
        batch.put("c_f1", 3.0)
        assert len(batch) == 3
    decoded = sink.receive()
    assert decoded.batch is True
    assert decoded.updates == [
        Update("a_f1", "put", 1.0, TS, 0, {"egu": "V"}),
        Update("b_f1", "put", protocol.NO_VALUE, None, 1, {"desc": "second", "tmo": 5}),
        Update("c_f1", "put", 3.0, None, 2),
    ]


def test_bad_meta_raises_at_its_line(client: Client) -> None:
    """The relay's own attribute rules run in the client, so a mistake raises at the
    line that made it (a PUSH socket gets no reply)."""
    with pytest.raises(ValueError, match="a_f1: 'meta' must be a map, not list"):
        client.put("a_f1", 1.0, meta=[("egu", "V")])  # type: ignore[arg-type]
    with client.batch() as batch, pytest.raises(ValueError, match="'meta' must be a map"):
        batch.put("a_f1", 1.0, meta="egu=V")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs a value, a meta dict, or both"):
        client.put("a_f1", None)
    with pytest.raises(ValueError, match="EGU: <object object at .*> is not text"):
        client.set_meta("a_f1", egu=object())
    with pytest.raises(ValueError, match="a_f1: HHSV: 'LOUD' is not one of"):
        client.set_meta("a_f1", hhsv="LOUD")
    with pytest.raises(ValueError, match="unknown attribute 'units'"):
        client.put("a_f1", 1.0, meta={"units": "V"})


def test_numpy_arrays_arrive_packed_and_exact(sink: Sink, client: Client) -> None:
    sent = {
        "a_f3": np.array([1.5, -np.inf, 1e-300]),
        "b_F3": np.array([1.5, 2.5, 3.5], dtype=">f4"),
        "c_i3": np.array([-(2**31), 0, 2**31 - 1], dtype=np.int32),
        "d_I2": np.array([2**64 - 1, 7], dtype=">u8"),
    }
    client.put_many(sent)
    for (pv, array_sent), update in zip(sent.items(), sink.updates()):
        assert update.pv == pv
        assert isinstance(update.value, np.ndarray)
        assert update.value.dtype == array_sent.dtype
        assert update.value.tobytes() == array_sent.tobytes()


def test_numpy_scalar_arrives_as_number(sink: Sink, client: Client) -> None:
    client.put("a_i1", np.int32(5))
    assert sink.updates()[0].value == 5


def test_array_array_arrives_packed(sink: Sink, client: Client) -> None:
    client.put("a_f3", array.array("d", [0.25, 0.5, 1e10]))
    client.put("b_i2", array.array("i", [-1, 1]))
    value = sink.updates()[0].value
    assert isinstance(value, np.ndarray)
    assert value.dtype == np.float64
    assert value.tolist() == [0.25, 0.5, 1e10]
    assert sink.updates()[0].value.tolist() == [-1, 1]


def test_close_flushes_queued_messages(sink: Sink) -> None:
    client = Client(sink.endpoint, linger=5.0)
    for i in range(100):
        client.put("a_f1", float(i))
    client.close()
    received = [sink.updates()[0].value for _ in range(100)]
    assert received == [float(i) for i in range(100)]


def test_messages_queue_until_the_relay_starts() -> None:
    """IMMEDIATE is off: what is sent while nobody listens arrives once the relay binds."""
    endpoint = unused_endpoint()
    with Client(endpoint, linger=5.0) as client:
        client.put("early_f1", 1.0)
        context = zmq.Context()
        pull = context.socket(zmq.PULL)
        pull.setsockopt(zmq.LINGER, 0)
        try:
            pull.bind(endpoint)
            assert pull.poll(10_000), "the queued message never arrived"
            assert protocol.decode(pull.recv()).updates[0].pv == "early_f1"
        finally:
            pull.close()
            context.term()


def test_closed_client_refuses_to_send(sink: Sink) -> None:
    client = Client(sink.endpoint)
    client.close()
    client.close()  # twice is fine
    with pytest.raises(RelayError, match="closed"):
        client.put("a_f1", 1.0)
    assert "closed" in repr(client)


def test_shared_context_is_left_running(sink: Sink) -> None:
    context = zmq.Context()
    try:
        with Client(sink.endpoint, context=context) as client:
            client.put("a_f1", 1.0)
        assert not context.closed
        assert sink.updates()[0].pv == "a_f1"
    finally:
        context.term()


def test_too_long_message_is_refused_before_sending(sink: Sink) -> None:
    with Client(sink.endpoint, max_message_size=100) as client:
        with pytest.raises(ValueError, match="longer than the relay accepts"):
            client.put("a_c200", "x" * 200)
        client.put("marker_f1", 1)
    assert sink.updates()[0].pv == "marker_f1"


@pytest.mark.parametrize("endpoint", ["not an endpoint", "tcp://", "foo://127.0.0.1:1"])
def test_bad_endpoint(endpoint: str) -> None:
    with pytest.raises(ValueError, match="cannot connect"):
        Client(endpoint)


@pytest.mark.parametrize("kwargs", [{"send_timeout": -1}, {"linger": -1}, {"queue_size": 0},
                                    {"timeout": -1}, {"ack": True, "window": 0}])
def test_bad_options(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        Client(unused_endpoint(), **kwargs)


def test_unreachable_when_the_queue_is_full() -> None:
    endpoint = unused_endpoint()
    send_timeout = 0.3
    with Client(endpoint, send_timeout=send_timeout, queue_size=5, linger=0) as client:
        sent = 0
        with pytest.raises(RelayUnreachable) as info:
            for sent in range(1000):
                started = time.monotonic()
                try:
                    client.put("a_f1", float(sent))
                finally:
                    assert time.monotonic() - started < send_timeout + 5
    assert 5 <= sent < 1000
    text = str(info.value)
    assert endpoint in text
    assert "0.3 s" in text
    assert "queue of 5 messages is full" in text


def test_unreachable_at_once_with_immediate() -> None:
    endpoint = unused_endpoint()
    with Client(endpoint, send_timeout=0.2, linger=0, immediate=True) as client:
        started = time.monotonic()
        with pytest.raises(RelayUnreachable, match="no connection to a relay at") as info:
            client.put("a_f1", 1.0)
        assert time.monotonic() - started < 0.2 + 5
    assert endpoint in str(info.value)
    assert isinstance(info.value, RelayError)


BLOCKED_IMPORT = textwrap.dedent("""
    import array, sys

    class Block:
        '''Make numpy and pcaspy look uninstalled.'''
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in ("numpy", "pcaspy"):
                raise ImportError(f"{name} is blocked in this test")
            return None

    sys.meta_path.insert(0, Block())
    from relayd.client import Client
    import relayd.client.push_cli
    with Client(sys.argv[1]) as client:
        client.put("a_f2", array.array("d", [1.5, 2.5]))
        client.put_many({"b_i1": 3, "c_c9": "text"})
    assert not [m for m in sys.modules if m.partition(".")[0] in ("numpy", "pcaspy")]
    print("ok")
""")


def test_client_works_without_numpy_and_pcaspy(sink: Sink) -> None:
    result = subprocess.run(
        [sys.executable, "-c", BLOCKED_IMPORT, sink.endpoint],
        capture_output=True, text=True, timeout=60, cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
    value = sink.updates()[0].value
    assert value.tolist() == [1.5, 2.5]
    assert [(u.pv, u.value) for u in sink.updates()] == [("b_i1", 3), ("c_c9", "text")]


# --- acknowledged (ack=True): what a silent relay does to it; a real one: tests/e2e ---------


@pytest.fixture
def silent() -> Iterator[tuple[zmq.Socket, str]]:
    """A ROUTER socket that takes requests and never answers."""
    context = zmq.Context()
    sock = context.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    yield sock, f"tcp://127.0.0.1:{port}"
    sock.close()
    context.term()


def received(sock: zmq.Socket) -> list[list[bytes]]:
    frames = []
    while sock.poll(200):
        frames.append(sock.recv_multipart())
    return frames


def test_no_verdict_within_the_timeout_is_relay_unreachable(silent) -> None:
    sock, endpoint = silent
    with Client(ack=True, ack_endpoint=endpoint, timeout=0.5, linger=0) as client:
        started = time.monotonic()
        with pytest.raises(RelayUnreachable) as info:
            client.put("a_f1", 1.0)
        assert 0.5 <= time.monotonic() - started < 5
    assert str(info.value).startswith(f"no answer from {endpoint} within 0.5 s")
    assert "may or may not have been applied" in str(info.value)
    (request,) = received(sock)
    assert len(request) == 2  # the DEALER's identity (added by the ROUTER) and one frame


def test_no_relay_at_all_is_relay_unreachable_with_immediate() -> None:
    endpoint = unused_endpoint()
    with Client(ack=True, ack_endpoint=endpoint, timeout=0.3, immediate=True,
                linger=0) as client:
        with pytest.raises(RelayUnreachable, match=f"no answer from {endpoint} within 0.3 s"):
            client.put("a_f1", 1.0)


def test_the_window_bounds_the_requests_in_flight(silent) -> None:
    sock, endpoint = silent
    with Client(ack=True, ack_endpoint=endpoint, timeout=1.0, window=3, linger=0) as client:
        tickets = [client.put_async(f"w{i}_f1", 1.0) for i in range(3)]
        assert len(received(sock)) == 3 and not any(ticket.done for ticket in tickets)
        started = time.monotonic()
        fourth = client.put_async("w3_f1", 1.0)  # waits for room: the others expire first
        assert time.monotonic() - started >= 0.5
        assert all(ticket.done for ticket in tickets)
        with pytest.raises(RelayUnreachable):
            tickets[0].result()
        with pytest.raises(RelayUnreachable):
            client.flush()  # every ticket is waited for; no answer is the first problem
        assert fourth.done


def test_async_needs_ack_and_flush_of_pushes_is_empty(sink: Sink, client: Client) -> None:
    with pytest.raises(ValueError, match="ack=True"):
        client.put_async("a_f1", 1.0)
    assert client.flush() == []


def test_the_ack_endpoint_is_the_relays_host_at_port_5556_unless_given() -> None:
    with Client("tcp://127.0.0.1:7000", ack=True, linger=0) as client:
        assert client.ack_endpoint == "tcp://127.0.0.1:5556"
        assert repr(client) == ("<Client tcp://127.0.0.1:7000 (acknowledged: "
                                "tcp://127.0.0.1:5556) open>")
    with pytest.raises(ValueError, match="give the acknowledged endpoint"):
        Client("ipc:///tmp/relay", ack=True)
