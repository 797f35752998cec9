"""Protocol version 2, the acknowledged way in (relayd.core.acks), values only: requests
read or refused with a reason, replies and errors both ways, as the relay and the client
make and read them."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relayd.core.acks import (
    MAX_ID_BYTES, BadRequest, Reply, Result, decode_reply, decode_request, encode_error,
    encode_reply, encode_request,
)
from relayd.core.errors import Reason, Refused
from relayd.core.ops import Verdict
from relayd.core.protocol import encode_update

pytestmark = pytest.mark.timeout(60)


def pack(obj: object) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def test_a_request_carries_a_version_1_body() -> None:
    single = decode_request(encode_request(7, encode_update("a_f1", 1.5)))
    assert (single.id, single.durable, single.names) == (7, False, ["a_f1"])
    assert [u.pv for u in single.decoded.updates] == ["a_f1"] and not single.decoded.batch
    batch = decode_request(encode_request("job-1", [
        encode_update("a_f1", 1.0), {"pv": 5, "value": 1}, {"value": 2},
        encode_update("b_i1", op="delete")], durable=True))
    assert (batch.id, batch.durable) == ("job-1", True)
    assert batch.names == ["a_f1", None, None, "b_i1"]
    assert [u.index for u in batch.decoded.updates] == [0, 3]
    assert [r.detail for r in batch.decoded.refused] == [
        "update #1: 'pv' is a int, not a str", "update #2: no 'pv'"]
    empty = decode_request(encode_request(1, []))
    assert empty.decoded.updates == [] and empty.names == []


@pytest.mark.parametrize("frame, request_id, text", [
    (b"\xc1", None, "not msgpack: a reserved or invalid type byte"),
    (pack([1, 2]) + b"x", None, "trailing bytes after the msgpack object"),
    (pack([{"v": 2}]), None, "a request is a msgpack map, not a array"),
    (pack({"v": 2, "updates": []}), None, "'id' must be an int, or a str of at most 256 bytes"),
    (pack({"v": 2, "id": True, "updates": []}), None, "'id' must be an int"),
    (pack({"v": 2, "id": 1.5, "updates": []}), None, "'id' must be an int"),
    (pack({"v": 2, "id": "x" * (MAX_ID_BYTES + 1), "updates": []}), None, "'id' must be"),
    (pack({"v": 1, "id": 3, "updates": []}), 3, "'v' 1 is not 2"),
    (pack({"id": 3, "updates": []}), 3, "'v' None is not 2"),
    (pack({"v": 2, "id": 3, "updates": [], "durable": 1}), 3, "'durable' must be true or false"),
    (pack({"v": 2, "id": 3, "updates": [], "reply": 1}), 3, "unknown key(s) 'reply'"),
    (pack({"v": 2, "id": 3}), 3, "no 'updates'"),
    (pack({"v": 2, "id": 3, "updates": 5}), 3, "'updates': a msgpack int where a map"),
    (pack({"v": 2, "id": 3, "updates": [{}] * 100_001}), 3,
     "'updates': a batch of 100001 updates; the limit is 100000"),
])
def test_what_is_not_a_request_is_refused_malformed(frame: bytes, request_id: object,
                                                    text: str) -> None:
    with pytest.raises(BadRequest) as bad:
        decode_request(frame)
    assert bad.value.id == request_id
    assert bad.value.refused.reason is Reason.MALFORMED
    assert bad.value.refused.detail.startswith(text), bad.value.refused.detail


def test_a_reply_says_each_updates_fate_in_order() -> None:
    refused = Refused(Reason.BAD_VALUE, "update #1: p:b_f1: text 'x' sent to a numeric PV")
    frame = encode_reply(7, [Verdict.accepted("p:a_f1"), Verdict.refused("b_f1", refused)],
                         False, "autosave is off")
    assert msgpack.unpackb(frame) == {
        "v": 2, "id": 7, "durable": False, "note": "autosave is off",
        "results": [{"ok": True, "pv": "p:a_f1"},
                    {"ok": False, "pv": "b_f1", "reason": "badValue", "text": refused.detail}]}
    assert decode_reply(frame) == Reply(7, [Result(True, "p:a_f1"),
                                            Result(False, "b_f1", "badValue", refused.detail)],
                                        False, "autosave is off")
    assert "note" not in msgpack.unpackb(encode_reply("x", [], True))
    assert decode_reply(encode_reply("x", [], True)) == Reply("x", [], True)


def test_an_error_answers_a_request_that_cannot_be_read() -> None:
    frame = encode_error(None, Refused(Reason.MALFORMED, "no 'updates'"))
    assert msgpack.unpackb(frame) == {"v": 2, "id": None, "error": {
        "reason": "malformed", "text": "no 'updates'"}}
    assert decode_reply(frame).error == Result(False, "", "malformed", "no 'updates'")


@pytest.mark.parametrize("frame", [
    pack({"v": 1, "id": 1, "results": []}), pack([2]), pack({"v": 2, "id": 1}),
    pack({"v": 2, "id": 1, "results": [1]}), pack({"v": 2, "id": 1, "error": "x"}), b"\xc1",
])
def test_what_is_not_a_reply_is_refused(frame: bytes) -> None:
    with pytest.raises((ValueError, Refused)):
        decode_reply(frame)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80))
def test_any_bytes_are_a_request_or_refused_malformed(frame: bytes) -> None:
    try:
        request = decode_request(frame)
    except BadRequest as bad:
        assert bad.refused.reason is Reason.MALFORMED
        return
    assert len(request.names) == len(request.decoded.updates) + len(request.decoded.refused)


# --- the options ---------------------------------------------------------------------------


def test_the_acknowledged_socket_options() -> None:
    from relayd.config import Config, parse

    assert Config().ack_endpoints == ("tcp://127.0.0.1:5556",)
    assert Config(no_zmq_ack=True).ack_endpoints == ()
    assert parse(["--zmq-ack-bind", "tcp://127.0.0.1:7001", "--zmq-ack-bind",
                  "ipc:///tmp/x"]).ack_endpoints == ("tcp://127.0.0.1:7001", "ipc:///tmp/x")
    assert parse(["--no-zmq-ack"]).ack_endpoints == ()
    assert Config(zmq_ack_bind=(), no_zmq_ack=True).ack_endpoints == ()
    for bad in ({"zmq_ack_bind": ()}, {"zmq_ack_bind": ("",)}, {"zmq_ack_bind": (5,)}):
        with pytest.raises(ValueError, match="zmq_ack_bind"):
            Config(**bad)
