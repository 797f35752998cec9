"""The JSON API under ``/api/v1``: the routes, each a thin turn of HTTP into the service.

=======  ========================  ================================================
method   path                      what
=======  ========================  ================================================
GET      /api/v1/pvs               PVs in name order: ``match`` (glob), ``limit``,
                                   ``after`` (the ``next`` of the previous page)
GET      /api/v1/pvs/NAME          one PV in full (its whole array or buffer)
PUT      /api/v1/pvs/NAME          put: JSON or plain text; the answer is the verdict
DELETE   /api/v1/pvs/NAME          delete the PV
POST     /api/v1/batch             a JSON array of updates, applied at once
GET      /api/v1/status            processes, counters, autosave, endpoints
=======  ========================  ================================================

Writes take ``?durable=1``: the answer then waits until autosave has written the change
(``"durable"`` in the answer says whether it did). docs/HTTP.md is the full reference.
"""

from __future__ import annotations

import os
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from relayd.core import protocol
from relayd.core.errors import Reason, Refused
from relayd.core.feed import Row
from workers.http import answers, bodies
from workers.http.link import NoAnswer, Unavailable
from workers.http.metrics import relayd_processes, rss_bytes
from workers.http.mirror import MAX_LIMIT, PAGE_LIMIT, Entry
from workers.http.service import Item, Service


def service_of(request: Request) -> Service:
    return request.app.state.service


def source_of(request: Request) -> str:
    """Who sent a request, as a PV's last writer shows it."""
    return f"http {request.client.host if request.client else '?'}"


def refusal(service: Service, request: Request, refused: Refused, status: int | None = None,
            name: str = "") -> JSONResponse:
    """Count and log a refusal the worker made itself; its JSON answer."""
    body = {**service.refuse(refused, source_of(request)), "pv": name}
    return JSONResponse(body, status or answers.status_of(body))


def not_synced() -> JSONResponse:
    return JSONResponse({"ok": False, "reason": "unavailable",
                         "text": "the HTTP worker is not in step with the CA process yet; "
                                 "try again in a moment"}, answers.UNAVAILABLE)


def _limit(text: str | None) -> int:
    if text is None:
        return PAGE_LIMIT
    if not text.isdigit() or not 1 <= int(text) <= MAX_LIMIT:
        raise Refused(Reason.MALFORMED, f"limit {text[:20]!r} is not a number from 1 to "
                      f"{MAX_LIMIT}")
    return int(text)


async def list_pvs(request: Request) -> JSONResponse:
    service = service_of(request)
    query = request.query_params
    try:
        limit = _limit(query.get("limit"))
    except Refused as refused:
        return refusal(service, request, refused)
    mirror = service.mirror
    if not mirror.synced:
        return not_synced()
    match = query.get("match") or None
    entries, after = mirror.page(match, limit, query.get("after") or None)
    now = time.monotonic()
    return JSONResponse({
        "pvs": [answers.pv_json(entry, service.grammar, now) for entry in entries],
        "next": after,
        "total": mirror.count(match),
    })


async def read_body(request: Request, limit: int) -> bytes:
    """The request's body; `Refused` (MALFORMED, answered 413) beyond `limit` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(int(declared), limit)
    parts, size = [], 0
    async for part in request.stream():
        size += len(part)
        if size > limit:
            raise _too_large(size, limit)
        parts.append(part)
    return b"".join(parts)


def _too_large(size: int, limit: int) -> Refused:
    refused = Refused(Reason.MALFORMED, f"a body of {size} bytes or more; the limit is "
                      f"{limit} (--http-max-body)")
    refused.status = answers.TOO_LARGE  # type: ignore[attr-defined]
    return refused


def _durable(request: Request) -> bool:
    return request.query_params.get("durable", "").lower() in ("1", "true", "yes")


async def _answer(service: Service, request: Request, items: list[Item],
                  batch: bool) -> JSONResponse:
    outcome = await service.write(items, source_of(request), _durable(request), batch)
    return JSONResponse(outcome.body, outcome.status)


async def one_pv(request: Request) -> JSONResponse:
    """GET, PUT or DELETE of ``/api/v1/pvs/NAME``."""
    service = service_of(request)
    name = request.path_params["name"]
    if request.method == "GET":
        return await get_pv(service, request, name)
    if request.method == "DELETE":
        item: Any = protocol.Update(name, protocol.DELETE, None, None, 0)
        return await _answer(service, request, [(name, item)], batch=False)
    try:
        body = await read_body(request, service.config.http_max_body)
    except Refused as refused:
        return refusal(service, request, refused, getattr(refused, "status", None), name)
    try:
        spec = service.grammar.spec_for(name)
        item = bodies.put_update(name, spec, body, request.headers.get("content-type"))
    except Refused as refused:
        item = refused
    return await _answer(service, request, [(name, item)], batch=False)


async def get_pv(service: Service, request: Request, name: str) -> JSONResponse:
    """One PV in full, asked of the CA process (the mirror holds previews only)."""
    try:
        full = service.grammar.spec_for(name).name
    except Refused as refused:
        return refusal(service, request, refused, name=name)
    try:
        result = await service.query("pv", full)
    except (NoAnswer, Unavailable) as error:
        status = answers.NO_ANSWER if isinstance(error, NoAnswer) else answers.UNAVAILABLE
        return JSONResponse({"ok": False, "reason": "noAnswer", "text": str(error)}, status)
    if result.error or result.payload is None:
        body = answers.refused(name, Reason.NO_SUCH_PV.code, result.error or f"{full}: no "
                               "such PV")
        return JSONResponse(body, 404)
    row, value = result.payload
    entry = service.mirror.get(full) or Entry(Row(*row), time.monotonic())
    entry = _with_row(entry, Row(*row))
    return JSONResponse(answers.pv_json(entry, service.grammar, time.monotonic(), value,
                                        whole=True))


def _with_row(entry: Entry, row: Row) -> Entry:
    """`entry`'s rate with the CA process's current row (a copy: the mirror's stays)."""
    copy = Entry(row, 0.0)
    copy.mark_t, copy.mark_n, copy.prev_t, copy.prev_n = (
        entry.mark_t, entry.mark_n, entry.prev_t, entry.prev_n)
    return copy


async def batch(request: Request) -> JSONResponse:
    """``POST /api/v1/batch``: updates applied at once, a verdict for each."""
    service = service_of(request)
    try:
        body = await read_body(request, service.config.http_max_body)
        objects = bodies.batch_items(body)
    except Refused as refused:
        return refusal(service, request, refused, getattr(refused, "status", None))
    items: list[Item] = []
    for index, obj in enumerate(objects):
        name = obj.get("pv", "") if isinstance(obj, dict) else ""
        try:
            items.append((str(name), protocol.check_update(obj, index)))
        except Refused as refused:
            items.append((str(name), Refused(refused.reason,
                                             f"update #{index}: {refused.detail}")))
    return await _answer(service, request, items, batch=True)


async def status(request: Request) -> JSONResponse:
    """``GET /api/v1/status``: what the status PVs say, and more."""
    service = service_of(request)
    return JSONResponse(status_json(service))


def status_json(service: Service, max_age: float = 0.0) -> dict[str, Any]:
    """The relay's state for people and tools: processes, counters, autosave, endpoints.

    Made again when older than `max_age` seconds (the live streams share one, so that
    many open pages do not each scan /proc for the processes every second).
    """
    made, answer = service.status_made
    if answer is not None and time.monotonic() - made < max_age:
        return answer
    answer = _status(service)
    service.status_made = (time.monotonic(), answer)
    return answer


def _status(service: Service) -> dict[str, Any]:
    config = service.config
    counters = {suffix.removeprefix("status:"): value
                for suffix, value in service.mirror.status.items()}
    restarts = {"ca-server": counters.get("restarts:ca", 0)}
    restarts.update({key.split(":", 1)[1]: value for key, value in counters.items()
                     if key.startswith("restarts:") and key != "restarts:ca"})
    processes = [{"role": role, "pid": pid, "rss_bytes": rss_bytes(pid),
                  "restarts": restarts.get(role)}
                  for role, pid in relayd_processes(os.getppid())]
    return {
        "prefix": config.prefix,
        "time": round(time.time(), 3),  # the relay host's clock, for ages shown elsewhere
        "synced": service.mirror.synced,
        "uptime": counters.get("uptime", 0.0),
        "processes": processes,
        "counters": {key: value for key, value in counters.items()
                     if not key.startswith("autosave:")},
        "autosave": {key.split(":", 1)[1]: value for key, value in counters.items()
                     if key.startswith("autosave:")} | {"path": config.autosave_path},
        "severities": {answers.severity_name(code): count
                       for code, count in sorted(service.mirror.severities().items())},
        "endpoints": {
            "ca_port": int(os.environ.get("EPICS_CA_SERVER_PORT") or 5064),
            "zmq": list(config.zmq_bind),
            "http": list(config.http_bind),
        },
    }
