"""End-to-end: acknowledged pushes (protocol version 2) to a real relayd.

Requests go from `relayd.client.Client(..., ack=True)`, from bare DEALER sockets, and
from the `relay-push` command (which waits for the verdict by default) to the relay's
acknowledged ROUTER socket; what was accepted is read back over CA, and the counters
from the status PVs. Every refusal reason a ZMQ update can meet comes back to its
sender with its code and text; those a ZMQ update cannot meet (``readOnly``,
``placeholderLimit``: CA only) are not sent, and ``authDenied`` refuses the connection,
so its sender gets no answer at all.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from typing import Iterator

import msgpack
import pytest
import zmq

from relayd.client import (
    BatchRefused, Client, NotDurable, RelayUnreachable, UpdateRefused,
)
from tests.conftest import PORTS
from tests.e2e._tools import full, status, wait_status
from tests.e2e.test_security import Keys, keys  # noqa: F401 (the module's key pairs)
from tests.harness import RelayProcess, unique_prefix, wait_for

pytestmark = pytest.mark.timeout(120)

LIMITS = ["--max-name-length", "48", "--max-elements", "500"]


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    """One relay for the module's tests that add no PV limit of their own."""
    process = RelayProcess(unique_prefix(), PORTS.take(), tmp_path_factory.mktemp("acks"),
                           list(LIMITS))
    process.start()
    yield process
    code = process.stop()
    PORTS.give_back(process.port)
    assert code == 0, process.log_text()


def acked(relay: RelayProcess, **options) -> Client:
    return Client(relay.endpoint, ack=True, ack_endpoint=relay.ack_endpoint, linger=0,
                  **options)


def refusal(relay: RelayProcess, call) -> UpdateRefused:
    with acked(relay) as client, pytest.raises(UpdateRefused) as raised:
        call(client)
    return raised.value


# --- every refusal, answered ---------------------------------------------------------------


REFUSALS = [
    ("badName", lambda c: c.put("no suffix", 1.0), "no suffix", "is not <prefix>:<name>_"),
    ("nameTooLong", lambda c: c.put("n" * 50 + "_f1", 1.0), "n" * 50 + "_f1", "limit 48"),
    ("countLimit", lambda c: c.put("wide_f501", [1.0]), "wide_f501", "501 elements, limit 500"),
    ("badValue", lambda c: c.put("num_f1", "text"), "num_f1", "text 'text' sent to a numeric PV"),
    ("tooManyElements", lambda c: c.put("pair_f2", [1.0, 2.0, 3.0]), "pair_f2",
     "3 elements, the PV holds 2"),
    ("noSuchPV", lambda c: c.delete("ghost_f1"), "ghost_f1", "no such PV"),
]


@pytest.mark.parametrize("reason, call, pv, text", REFUSALS, ids=[r[0] for r in REFUSALS])
def test_each_refusal_comes_back_with_the_update_reason_and_text(
        caproto_client, relay: RelayProcess, reason: str, call, pv: str, text: str) -> None:
    before = status(caproto_client, relay, "refused:zmq")
    problem = refusal(relay, call)
    assert (problem.pv, problem.reason) == (pv, reason)
    assert text in problem.text, problem.text
    wait_status(caproto_client, relay, "refused:zmq", lambda value: value >= before + 1)
    assert reason in status(caproto_client, relay, "lastRefusal")


def test_attributes_alone_for_no_pv_are_refused_no_such_pv(relay: RelayProcess) -> None:
    problem = refusal(relay, lambda c: c.set_meta("ghost_i1", egu="V"))
    assert (problem.pv, problem.reason) == ("ghost_i1", "noSuchPV")


def test_accepted_updates_answer_their_full_names_and_are_served(
        client, relay: RelayProcess, name) -> None:
    temp, fit = name("temp_f1"), name("fit_f4")
    with acked(relay) as pusher:
        assert pusher.put(temp, 21.5) == full(relay, temp)
        assert pusher.put_many({fit: [1.0, 2.0], f"{relay.prefix}:{temp}": 22.5}) == [
            full(relay, fit), full(relay, temp)]
        # Answered means applied: readable at once.
        assert client.get(full(relay, temp)) == 22.5
        assert list(client.get(full(relay, fit))) == [1.0, 2.0]


def test_the_relay_full_is_answered_pv_limit_and_bytes_limit(caproto_client, start_relay
                                                               ) -> None:
    relay = start_relay("--max-pvs", "2", "--max-total-bytes", "2000")
    with acked(relay) as client:
        assert client.put("a_f100", [1.0]) == full(relay, "a_f100")  # 800 bytes
        with pytest.raises(UpdateRefused) as raised:
            client.put("b_f200", [1.0])  # 1600 more: beyond 2000
        assert raised.value.reason == "bytesLimit"
        assert client.put("c_f1", 1.0) == full(relay, "c_f1")
        with pytest.raises(UpdateRefused) as raised:
            client.put("d_f1", 1.0)
    assert (raised.value.pv, raised.value.reason) == ("d_f1", "pvLimit")
    assert "holds 2 PVs already" in raised.value.text


def test_a_batch_answers_each_update_and_applies_the_good_ones(
        caproto_client, relay: RelayProcess, name) -> None:
    good, other = name("good_f1"), name("other_i1")
    with acked(relay) as client, pytest.raises(BatchRefused) as raised:
        client.put_many([(good, 1.0), ("bad name", 2.0), (other, 3), (good, "x")])
    results = raised.value.results
    assert [(r.ok, r.reason) for r in results] == [
        (True, None), (False, "badName"), (True, None), (False, "badValue")]
    assert [p.pv for p in raised.value.refused] == ["bad name", good]
    assert raised.value.refused[1].text.startswith("update #3: ")
    assert caproto_client.get(full(relay, good)) == 1.0
    assert caproto_client.get(full(relay, other)) == 3


def raw_request(relay: RelayProcess, frame: bytes) -> dict:
    context = zmq.Context()
    dealer = context.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(relay.ack_endpoint)
    try:
        dealer.send(frame)
        assert dealer.poll(10_000), "no reply"
        return msgpack.unpackb(dealer.recv())
    finally:
        dealer.close()
        context.term()


def test_malformed_requests_and_updates_are_answered(caproto_client, relay: RelayProcess,
                                                     name) -> None:
    assert raw_request(relay, b"\xc1") == {"v": 2, "id": None, "error": {
        "reason": "malformed", "text": "not msgpack: a reserved or invalid type byte"}}
    reply = raw_request(relay, msgpack.packb({"v": 2, "id": "r1", "updates": 7}))
    assert reply["id"] == "r1" and reply["error"]["reason"] == "malformed"
    fine = name("fine_f1")
    reply = raw_request(relay, msgpack.packb({"v": 2, "id": 9, "updates": [
        {"pv": fine, "value": 1.0}, {"pv": fine, "valeu": 2.0}]}))
    assert reply == {"v": 2, "id": 9, "durable": False, "results": [
        {"ok": True, "pv": full(relay, fine)},
        {"ok": False, "pv": fine, "reason": "malformed",
         "text": "update #1: unknown key 'valeu' (keys are pv, op, value, ts, meta, v)"}]}


def test_counters_by_way_in(caproto_client, relay: RelayProcess, name) -> None:
    before = {suffix: status(caproto_client, relay, suffix) for suffix in (
        "accepted:zmq", "refused:zmq", "accepted:ca", "refused:ca")}
    with acked(relay) as client:
        client.put(name("way_f1"), 1.0)
        with pytest.raises(UpdateRefused):
            client.put(name("way_f1"), "text")
    assert caproto_client.put(full(relay, name("way_f1")), 2.0)
    wait_status(caproto_client, relay, "accepted:zmq", lambda v: v == before["accepted:zmq"] + 1)
    wait_status(caproto_client, relay, "refused:zmq", lambda v: v == before["refused:zmq"] + 1)
    wait_status(caproto_client, relay, "accepted:ca", lambda v: v == before["accepted:ca"] + 1)
    assert status(caproto_client, relay, "refused:ca") == before["refused:ca"]
    assert status(caproto_client, relay, "pipe:replyDropped") == 0


def test_a_window_of_requests_is_each_answered_in_order_of_sending(
        caproto_client, relay: RelayProcess, name) -> None:
    trace = name("trace_F500")
    with acked(relay, window=32) as client:
        for i in range(400):
            client.put_async(trace, [float(i)])
        assert client.flush() == [full(relay, trace)] * 400
    assert list(caproto_client.get(full(relay, trace))) == [float(i) for i in range(400)][-400:]


# --- durable ----------------------------------------------------------------------------------


def test_durable_answers_once_the_value_is_in_the_autosave_file(relay: RelayProcess,
                                                                name) -> None:
    pv = name("saved_f1")
    with acked(relay, durable=True) as client:
        for value in (1.5, 2.5, 3.5):
            assert client.put(pv, value) == full(relay, pv)
            with sqlite3.connect(relay.autosave_path) as db:  # at the moment of the answer
                rows = db.execute("SELECT value FROM pvs WHERE name = ?",
                                  (full(relay, pv),)).fetchall()
            assert rows == [(value,)]


def test_durable_without_autosave_is_applied_and_says_not_durable(caproto_client,
                                                                  start_relay) -> None:
    relay = start_relay("--no-autosave")
    with acked(relay, durable=True) as client, pytest.raises(NotDurable) as raised:
        client.put("kept_f1", 4.0)
    assert raised.value.note == "autosave is off: the updates were applied, not saved"
    assert caproto_client.get(full(relay, "kept_f1")) == 4.0


# --- relay-push ---------------------------------------------------------------------------------


def relay_push(relay: RelayProcess, *args: str, stdin: bytes = b"", ack: bool = True
               ) -> subprocess.CompletedProcess:
    options = ["--ack-endpoint", relay.ack_endpoint] if ack else []
    return subprocess.run([sys.executable, "-m", "relayd.client.push_cli", "--timeout", "5",
                           *options, relay.endpoint, *args],
                          input=stdin, capture_output=True, timeout=60)


def test_relay_push_exit_codes_say_what_the_relay_did(caproto_client, relay: RelayProcess,
                                                      name) -> None:
    good = name("cli_f1")
    done = relay_push(relay, good, "2.5")
    assert (done.returncode, done.stderr) == (0, b"")
    assert caproto_client.get(full(relay, good)) == 2.5
    done = relay_push(relay, "--meta", "egu=mm", good)
    assert (done.returncode, done.stderr) == (0, b"")
    done = relay_push(relay, "--delete", name("never_f1"))
    assert done.returncode == 3
    assert done.stderr.decode() == (
        f"relay-push: {name('never_f1')}: noSuchPV: {full(relay, name('never_f1'))}: "
        "no such PV\n")
    done = relay_push(relay, "n" * 50 + "_f1", "1")
    assert done.returncode == 3 and ": nameTooLong: " in done.stderr.decode()
    done = relay_push(relay, "--durable", good, "3.5")
    assert (done.returncode, done.stderr) == (0, b"")


def test_relay_push_lines_reports_refusals_and_goes_on(caproto_client, start_relay) -> None:
    relay = start_relay("--max-total-bytes", "150")
    # A first buffer of 100 bytes fits; the second (100 more) does not: its lines are
    # refused, the first one's go on landing.
    lines = b"".join(b"line %d\n" % i for i in range(5))
    done = relay_push(relay, "--lines", "log_C100", stdin=lines)
    assert (done.returncode, done.stderr) == (0, b"")
    done = relay_push(relay, "--lines", "other_C100", stdin=b"refused\n")
    assert done.returncode == 3
    assert ": bytesLimit: " in done.stderr.decode()
    done = relay_push(relay, "--lines", "log_C100", stdin=b"more\n")
    assert (done.returncode, done.stderr) == (0, b"")
    text = caproto_client.get(full(relay, "log_C100"), as_string=True)
    assert text.endswith("line 4\nmore\n"), text


def test_relay_push_durable_without_autosave_exits_4(start_relay) -> None:
    relay = start_relay("--no-autosave")
    done = relay_push(relay, "--durable", "x_f1", "1")
    assert done.returncode == 4
    assert done.stderr.decode() == ("relay-push: applied but not durable: autosave is off: "
                                    "the updates were applied, not saved\n")


def test_relay_push_with_no_relay_says_no_answer_and_exits_1(start_relay) -> None:
    relay = start_relay()
    relay.stop()
    done = relay_push(relay, "gone_f1", "1")
    assert done.returncode == 1
    assert done.stderr.decode().startswith(
        f"relay-push: no answer from {relay.ack_endpoint} within 5 s")
    done = relay_push(relay, "--no-wait", "gone_f1", "1", ack=False)  # pushes: told so too
    assert done.returncode == 1 and "no connection to a relay" in done.stderr.decode()


# --- security: exactly as PULL --------------------------------------------------------------


def test_curve_guards_the_acknowledged_socket(caproto_client, start_relay, keys: Keys  # noqa: F811
                                              ) -> None:
    relay = start_relay(*keys.relay_args())
    with acked(relay, **keys.client()) as client:
        assert client.put("sealed_f1", 1.0) == full(relay, "sealed_f1")
    before = status(caproto_client, relay, "refused:authDenied")
    for secret, server in ((None, None), ("stranger", "relay"), ("daq1", "impostor")):
        curve = {} if secret is None else keys.client(secret, server)
        with acked(relay, timeout=1.0, **curve) as client:
            with pytest.raises(RelayUnreachable, match="no answer from"):
                client.put("intruder_f1", 1.0)
    wait_status(caproto_client, relay, "refused:authDenied", lambda value: value >= before + 3)
    assert f"{relay.prefix}:intruder_f1" not in caproto_client.get(
        full(relay, "pvlist"), as_string=True)


def test_the_allow_list_guards_the_acknowledged_socket(caproto_client, start_relay) -> None:
    relay = start_relay("--zmq-allow", "127.0.0.2")  # not us
    with acked(relay, timeout=1.0) as client, pytest.raises(RelayUnreachable):
        client.put("outsider_f1", 1.0)
    wait_status(caproto_client, relay, "refused:authDenied", lambda value: value >= 1)


def test_an_acknowledged_socket_beyond_loopback_without_curve_cannot_boot(start_relay
                                                                         ) -> None:
    relay = start_relay("--zmq-ack-bind", "tcp://0.0.0.0:0", wait=False, expect_exit=3)
    wait_for(lambda: relay.process.poll() is not None, 30, what="relayd to exit")
    assert "ZMQ endpoint tcp://0.0.0.0:0 is beyond loopback and CURVE is off" in \
        relay.log_text()


def test_no_zmq_ack_opens_no_acknowledged_socket(start_relay) -> None:
    relay = start_relay("--no-zmq-ack")
    assert "serving ZMQ-ack on nothing (--no-zmq-ack)" in relay.log_text()
    with acked(relay, timeout=0.5, immediate=True) as client:
        with pytest.raises(RelayUnreachable):
            client.put("x_f1", 1.0)
    with Client(relay.endpoint, linger=5) as pusher:  # pushes as ever
        pusher.put("x_f1", 1.0)
