"""``/api/v1/live``: the web page's live view, as server-sent events, throttled per client.

A page opens one event stream for what it shows:

* ``?view=table&match=GLOB&sort=KEY&desc=1&offset=N&limit=N``: the rows of one page of
  the table (event ``table``), sent again whenever the mirror changed, at most every
  PERIOD seconds, and only when what the client would see differs from what it has;
* ``?view=pv&name=NAME``: one PV's row (event ``pv``, or ``gone`` once deleted), likewise.

Both streams carry the status panel's figures (event ``status``) every STATUS_PERIOD
seconds when they changed. A page changing its filter, sort or page simply opens a new
stream. Everything comes from the mirror: an open page costs the CA process nothing.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, AsyncIterator, Callable

from starlette.requests import Request
from starlette.responses import StreamingResponse

from workers.http import answers
from workers.http.api import service_of, status_json
from workers.http.mirror import MAX_LIMIT, SORT_KEYS
from workers.http.service import Service

PERIOD = 0.25  # seconds between two table or PV events to one client, at least
STATUS_PERIOD = 1.0  # seconds between two status events to one client, at least
KEEPALIVE = 15.0  # seconds after which a comment line keeps proxies from closing
SORTS = ("name", *SORT_KEYS)


def event(kind: str, data: Any) -> str:
    return f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def _number(text: str | None, default: int, highest: int) -> int:
    return min(int(text), highest) if text and text.isdigit() else default


def table_view(service: Service, query: Any) -> Callable[[float], tuple[str, Any]]:
    """What a table stream sends: the rows of its page, as `answers.table_row`s."""
    match = (query.get("match") or "").strip() or None
    sort = query.get("sort") if query.get("sort") in SORTS else "name"
    descending = query.get("desc") in ("1", "true")
    offset = _number(query.get("offset"), 0, 10**9)
    limit = _number(query.get("limit"), 50, MAX_LIMIT)

    def render(now: float) -> tuple[str, Any]:
        mirror = service.mirror
        entries, total = mirror.view(match, sort, descending, offset, limit, now)
        return "table", {"total": total, "offset": offset, "all": len(mirror),
                         "synced": mirror.synced,
                         "rows": [answers.table_row(entry, now) for entry in entries]}
    return render


def pv_view(service: Service, query: Any) -> Callable[[float], tuple[str, Any]]:
    """What a PV stream sends: its row as the API shows it, or ``gone``."""
    name = query.get("name") or ""

    def render(now: float) -> tuple[str, Any]:
        entry = service.mirror.get(name)
        if entry is None:
            return "gone", {"name": name, "synced": service.mirror.synced}
        return "pv", answers.pv_json(entry, service.grammar, now)
    return render


async def stream(service: Service, render: Callable[[float], tuple[str, Any]],
                 request: Request, stopping: asyncio.Event) -> AsyncIterator[str]:
    """Events for one client until it goes away or the worker stops."""
    sent_version = -1
    last: dict[str, str] = {}  # the last text sent of the view and of the status
    next_status = next_keepalive = 0.0
    yield "retry: 2000\n\n"
    while not stopping.is_set():
        now = time.monotonic()
        due = []
        if service.mirror.version != sent_version:
            sent_version = service.mirror.version
            due.append(("view", event(*render(now))))
        if now >= next_status:
            next_status = now + STATUS_PERIOD
            due.append(("status", event("status", status_json(service, STATUS_PERIOD / 2))))
        for key, text in due:
            if last.get(key) != text:
                last[key] = text
                next_keepalive = now + KEEPALIVE
                yield text
        if now >= next_keepalive:
            next_keepalive = now + KEEPALIVE
            yield ": keepalive\n\n"
        if await request.is_disconnected():
            return
        try:
            await asyncio.wait_for(stopping.wait(), PERIOD)
        except asyncio.TimeoutError:
            pass


async def live(request: Request) -> StreamingResponse:
    service = service_of(request)
    query = request.query_params
    view = pv_view if query.get("view") == "pv" else table_view
    events = stream(service, view(service, query), request, request.app.state.stopping)
    return StreamingResponse(events, media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
