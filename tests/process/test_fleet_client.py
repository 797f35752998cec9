"""The fleet client (relayd.client.fleet) against real ZMQ PULL sockets on loopback, one
per relay: which relay each update reaches, how batches split, and every refusal."""

from __future__ import annotations

from typing import Iterator

import pytest
import zmq

from relayd.client import Client, RelayError, RelayUnreachable
from relayd.client.fleet import Fleet, FleetSendError, UnknownPrefix, heads
from relayd.core.protocol import Update
from tests.process.test_client import Sink, unused_endpoint

PREFIXES = ("lab", "beam:relay", "vac")


@pytest.fixture
def sinks() -> Iterator[dict[str, Sink]]:
    """One stand-in relay (a PULL socket) per prefix."""
    context = zmq.Context()
    sinks = {prefix: Sink(context) for prefix in PREFIXES}
    yield sinks
    for sink in sinks.values():
        sink.socket.close()
    context.term()


@pytest.fixture
def fleet(sinks: dict[str, Sink]) -> Iterator[Fleet]:
    with Fleet({prefix: sink.endpoint for prefix, sink in sinks.items()}) as fleet:
        yield fleet


def nothing_more(*sinks: Sink) -> bool:
    """True when no further message waits at any of `sinks` (after a short grace)."""
    return not any(sink.socket.poll(200) for sink in sinks)


def test_heads_are_the_prefixes_a_name_could_be_under() -> None:
    assert list(heads("a:b:c_f1")) == ["a", "a:b"]
    assert list(heads("c_f1")) == []
    assert list(heads(":x_f1")) == []


def test_each_update_goes_to_the_relay_of_its_prefix(sinks: dict[str, Sink],
                                                     fleet: Fleet) -> None:
    fleet.put("lab:t_f1", 21.5)
    fleet.put("beam:relay:current:avg_f1", 0.25, ts=1_700_000_000.5)
    fleet.put("lab:beam:relay:x_f1", 1.0)  # under "lab": a prefix ends at a ':'
    fleet.set_meta("vac:p_f1", egu="mbar")
    fleet.delete("beam:relay:old_f1")
    assert sinks["lab"].updates() == [Update("lab:t_f1", "put", 21.5, None, 0)]
    assert sinks["lab"].updates()[0].pv == "lab:beam:relay:x_f1"
    assert sinks["beam:relay"].updates() == [
        Update("beam:relay:current:avg_f1", "put", 0.25, 1_700_000_000.5, 0)]
    assert [(u.pv, u.op) for u in sinks["beam:relay"].updates()] == [
        ("beam:relay:old_f1", "delete")]
    assert sinks["vac"].updates()[0].meta == {"egu": "mbar"}
    assert nothing_more(*sinks.values())
    assert fleet.prefixes == list(PREFIXES)
    assert fleet.prefix_of("beam:relay:x_f1") == "beam:relay"


def test_a_batch_is_one_message_per_relay_in_order(sinks: dict[str, Sink],
                                                   fleet: Fleet) -> None:
    fleet.put_many([("lab:a_f1", 1.0), ("vac:a_f1", 2.0), ("lab:b_f1", 3.0),
                    ("lab:a_f1", 4.0), ("vac:b_i1", 5)])
    lab = sinks["lab"].receive()
    vac = sinks["vac"].receive()
    assert lab.batch and vac.batch
    assert [(u.pv, u.value) for u in lab.updates] == [
        ("lab:a_f1", 1.0), ("lab:b_f1", 3.0), ("lab:a_f1", 4.0)]
    assert [(u.pv, u.value) for u in vac.updates] == [("vac:a_f1", 2.0), ("vac:b_i1", 5)]
    with fleet.batch() as batch:
        batch.put("beam:relay:x_f1", 1.0, meta={"egu": "mA"})
        batch.set_meta("vac:a_f1", prec=3)
        batch.delete("beam:relay:y_f1")
        assert len(batch) == 3
    assert [(u.pv, u.op) for u in sinks["beam:relay"].updates()] == [
        ("beam:relay:x_f1", "put"), ("beam:relay:y_f1", "delete")]
    assert sinks["vac"].updates()[0].meta == {"prec": 3}
    assert nothing_more(*sinks.values())


@pytest.mark.parametrize("name", ["elsewhere:x_f1", "x_f1", "labx:y_f1", "lab", "beam:x_f1"])
def test_a_name_under_no_prefix_raises_and_nothing_is_sent(sinks: dict[str, Sink],
                                                           fleet: Fleet, name: str) -> None:
    with pytest.raises(UnknownPrefix, match="under none of this fleet's prefixes") as info:
        fleet.put(name, 1.0)
    assert "'lab', 'beam:relay', 'vac'" in str(info.value)
    assert isinstance(info.value, ValueError)
    with pytest.raises(UnknownPrefix):
        fleet.put_many({"lab:ok_f1": 1.0, name: 2.0, "vac:ok_f1": 3.0})
    with pytest.raises(UnknownPrefix):
        with fleet.batch() as batch:
            batch.put("vac:ok_f1", 1.0)
            batch.delete(name)
    with pytest.raises(TypeError, match="a PV name is a str"):
        fleet.put(7, 1.0)  # type: ignore[arg-type]
    assert nothing_more(*sinks.values())


def test_a_batch_whose_block_raises_sends_nothing(sinks: dict[str, Sink], fleet: Fleet) -> None:
    with pytest.raises(RuntimeError):
        with fleet.batch() as batch:
            batch.put("lab:a_f1", 1.0)
            batch.put("vac:a_f1", 1.0)
            raise RuntimeError("the script failed half-way")
    with pytest.raises(ValueError, match="PREC"):
        with fleet.batch() as batch:
            batch.put("lab:a_f1", 1.0)
            batch.set_meta("vac:a_f1", prec=-1)  # refused at its line, by the relay's rules
    assert nothing_more(*sinks.values())


@pytest.mark.parametrize("outer, inner", [("lab", "lab:sub"), ("a:b", "a:b:c:d")])
def test_prefixes_that_nest_are_refused(outer: str, inner: str) -> None:
    with pytest.raises(ValueError, match="overlap") as info:
        Fleet({inner: unused_endpoint(), outer: unused_endpoint()})
    assert f"relay {outer!r} would also answer CA searches for names under {inner + ':'!r}" \
        in str(info.value)


def test_prefixes_that_share_only_letters_are_fine() -> None:
    with Fleet({"lab": unused_endpoint(), "laboratory": unused_endpoint(),
                "lab2:x": unused_endpoint()}, linger=0) as fleet:
        assert fleet.prefix_of("laboratory:t_f1") == "laboratory"
        assert fleet.prefix_of("lab2:x:t_f1") == "lab2:x"


def test_one_endpoint_for_two_prefixes_is_refused() -> None:
    endpoint = unused_endpoint()
    with pytest.raises(ValueError, match="is given for both 'lab' and 'vac'"):
        Fleet({"lab": endpoint, "vac": endpoint})
    client = Client(endpoint, linger=0)
    try:
        with pytest.raises(ValueError, match="is given for both"):
            Fleet({"lab": endpoint, "vac": client})
    finally:
        client.close()


@pytest.mark.parametrize("routes, text", [
    ({}, "at least one"), ({"lab:": "tcp://127.0.0.1:1"}, "trailing ':'"),
    ({"a lab": "tcp://127.0.0.1:1"}, "letters, digits"),
    ({"lab": "not an endpoint"}, "cannot connect"),
])
def test_bad_routes_are_refused(routes: dict, text: str) -> None:
    with pytest.raises(ValueError, match=text):
        Fleet(routes)


def test_a_relay_that_cannot_take_its_part_does_not_stop_the_others(
        sinks: dict[str, Sink]) -> None:
    down = Client(unused_endpoint(), immediate=True, send_timeout=0.2, linger=0)
    routes = {"lab": sinks["lab"].endpoint, "down": down, "vac": sinks["vac"].endpoint}
    with Fleet(routes, max_message_size=200) as fleet:
        with pytest.raises(FleetSendError) as info:
            fleet.put_many({"lab:a_f1": 1.0, "down:a_f1": 2.0, "vac:a_f1": 3.0})
        assert info.value.sent == ["lab", "vac"]
        assert list(info.value.failed) == ["down"]
        assert isinstance(info.value.failed["down"], RelayUnreachable)
        assert "1 of 3 relays did not take their part" in str(info.value)
        assert sinks["lab"].updates()[0].pv == "lab:a_f1"
        assert sinks["vac"].updates()[0].pv == "vac:a_f1"
        with pytest.raises(FleetSendError) as info:  # the fleet's options reach its clients
            fleet.put_many({"lab:a_c500": "x" * 400, "vac:b_f1": 1.0})
        assert info.value.sent == ["vac"]
        assert "longer than the relay accepts" in str(info.value.failed["lab"])
        assert isinstance(info.value, RelayError)
    assert nothing_more(sinks["lab"])


def test_close_flushes_every_relay_and_closes_every_client(sinks: dict[str, Sink]) -> None:
    given = Client(sinks["vac"].endpoint, linger=5.0)
    fleet = Fleet({"lab": sinks["lab"].endpoint, "vac": given}, linger=5.0)
    for i in range(50):
        fleet.put_many({"lab:a_f1": float(i), "vac:a_f1": float(i)})
    fleet.close()
    fleet.close()  # twice is fine
    for prefix in ("lab", "vac"):
        assert [sinks[prefix].updates()[0].value for _ in range(50)] == [
            float(i) for i in range(50)]
    with pytest.raises(RelayError, match="closed"):
        fleet.put("lab:a_f1", 1.0)
    with pytest.raises(RelayError, match="closed"):
        given.put("vac:a_f1", 1.0)
    assert "closed" in repr(fleet) and "lab=tcp://127.0.0.1:" in repr(fleet)
