"""The acknowledged way in, protocol version 2: requests and their replies. Pure: no I/O.

Version 1 (`relayd.core.protocol`) is fire-and-forget over PUSH/PULL. Version 2 adds an
answer: a client sends a request over a DEALER (or REQ) socket to the relay's ROUTER
socket, and gets one reply per request once the CA process has applied it (or, when the
request asks for it, once autosave has committed it). docs/PROTOCOL.md is the spec.

A request is one frame holding one msgpack map::

    {"v": 2, "id": 17, "updates": <a version 1 message body: a map or an array of maps>,
     "durable": false}

``id`` is the client's (an int, or a str of at most MAX_ID_BYTES bytes) and comes back in
the reply; ``durable`` is optional. The reply::

    {"v": 2, "id": 17, "durable": false,
     "results": [{"ok": true, "pv": "relay:temp_f1"},
                 {"ok": false, "pv": "t_f2", "reason": "badValue", "text": "..."}]}

one result per update, in order; ``note`` (a str) is added when ``durable`` is false
although the request asked for it, saying why. A request that cannot be read as one is
answered ``{"v": 2, "id": <id or nil>, "error": {"reason": "malformed", "text": "..."}}``.
The reason codes are the status PVs' (`relayd.core.errors.Reason`).

Both ends share this module: the relay decodes requests and encodes replies, the push
client (`relayd.client`) the other way round.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from relayd.core.errors import Reason, Refused
from relayd.core.ops import Verdict
from relayd.core.packed import type_name
from relayd.core.protocol import Decoded, decode_object, dumps, short, unpack

VERSION = 2
DEFAULT_ENDPOINT = "tcp://127.0.0.1:5556"
MAX_ID_BYTES = 256
REQUEST_KEYS = frozenset({"v", "id", "updates", "durable"})


class Request(NamedTuple):
    """One well-formed request: its updates decoded as a version 1 body."""

    id: int | str
    decoded: Decoded
    names: list[str | None]  # each update's ``pv`` as sent (None if it has none), in order
    durable: bool


class BadRequest(Exception):
    """A request answered with an error: `refused` says why, `id` is its id if readable."""

    def __init__(self, request_id: int | str | None, refused: Refused):
        super().__init__(str(refused))
        self.id = request_id
        self.refused = refused


def _malformed(request_id: int | str | None, text: str) -> BadRequest:
    return BadRequest(request_id, Refused(Reason.MALFORMED, text))


def _good_id(value: object) -> bool:
    if type(value) is int:
        return True
    return type(value) is str and len(value.encode("utf-8", "replace")) <= MAX_ID_BYTES


def decode_request(frame: bytes, max_updates: int = 100_000) -> Request:
    """The request in `frame`; `BadRequest` if it is not one (see the module doc)."""
    try:
        obj = unpack(frame)
    except Refused as refused:
        raise BadRequest(None, refused) from None
    if type(obj) is not dict:
        raise _malformed(None, f"a request is a msgpack map, not a {type_name(obj)}")
    request_id = obj.get("id")
    if not _good_id(request_id):
        raise _malformed(None, "'id' must be an int, or a str of at most "
                               f"{MAX_ID_BYTES} bytes")
    version = obj.get("v")
    if type(version) is not int or version != VERSION:
        raise _malformed(request_id, f"'v' {short(version)} is not {VERSION} "
                                     "(a request of the acknowledged protocol, version 2)")
    unknown = sorted(short(key, 40) for key in obj if key not in REQUEST_KEYS)
    if unknown:
        raise _malformed(request_id, f"unknown key(s) {', '.join(unknown)} (keys are v, "
                                     "id, updates, durable)")
    durable = obj.get("durable", False)
    if type(durable) is not bool:
        raise _malformed(request_id, "'durable' must be true or false")
    if "updates" not in obj:
        raise _malformed(request_id, "no 'updates'")
    try:
        decoded = decode_object(obj["updates"], max_updates)
    except Refused as refused:
        raise BadRequest(request_id, Refused(refused.reason, f"'updates': {refused.detail}"))
    items = obj["updates"] if decoded.batch else [obj["updates"]]
    names = [item.get("pv") if type(item) is dict and type(item.get("pv")) is str else None
             for item in items]
    return Request(request_id, decoded, names, durable)


def _result(verdict: Verdict) -> dict:
    if verdict.reason is None:
        return {"ok": True, "pv": verdict.pv}
    return {"ok": False, "pv": verdict.pv, "reason": verdict.reason.code,
            "text": verdict.detail}


def encode_reply(request_id: int | str, verdicts: list[Verdict], durable: bool,
                 note: str = "") -> bytes:
    """The reply to request `request_id`: one result per update, in order."""
    reply: dict[str, Any] = {"v": VERSION, "id": request_id,
                             "results": [_result(verdict) for verdict in verdicts],
                             "durable": durable}
    if note:
        reply["note"] = note
    return dumps(reply)


def encode_error(request_id: int | str | None, refused: Refused) -> bytes:
    """The answer to a request that cannot be read as one."""
    return dumps({"v": VERSION, "id": request_id,
                  "error": {"reason": refused.reason.code, "text": refused.detail}})


# --- the client's side -----------------------------------------------------------------


def encode_request(request_id: int | str, updates: dict | list, durable: bool = False
                   ) -> bytes:
    """A request carrying `updates` (what `protocol.encode_update` makes, or a list)."""
    request: dict[str, Any] = {"v": VERSION, "id": request_id, "updates": updates}
    if durable:
        request["durable"] = True
    return dumps(request)


class Result(NamedTuple):
    """What the relay says of one update: accepted into `pv`, or refused (`reason`)."""

    ok: bool
    pv: str  # the full name when accepted; the name as sent when refused
    reason: str | None = None  # a reason code (`Reason`'s value) when refused
    text: str = ""


class Reply(NamedTuple):
    """A decoded reply: per-update `results`, or an `error` for the whole request."""

    id: Any
    results: list[Result]
    durable: bool
    note: str = ""
    error: Result | None = None


def decode_reply(frame: bytes) -> Reply:
    """The reply in `frame`; ValueError if it is not a version 2 reply."""
    obj = unpack(frame)
    if type(obj) is not dict or obj.get("v") != VERSION:
        raise ValueError("not a version 2 reply")
    request_id = obj.get("id")
    error = obj.get("error")
    if error is not None:
        if type(error) is not dict:
            raise ValueError("'error' is not a map")
        reason = str(error.get("reason", ""))
        return Reply(request_id, [], False, "", Result(False, "", reason,
                                                       str(error.get("text", ""))))
    results = obj.get("results")
    if type(results) is not list or not all(type(item) is dict for item in results):
        raise ValueError("'results' is not an array of maps")
    return Reply(request_id, [_decode_result(item) for item in results],
                 obj.get("durable") is True, str(obj.get("note", "")))


def _decode_result(item: dict) -> Result:
    pv = item.get("pv")
    pv = pv if type(pv) is str else ""
    if item.get("ok") is True:
        return Result(True, pv)
    return Result(False, pv, str(item.get("reason", "")), str(item.get("text", "")))
