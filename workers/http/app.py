"""The HTTP worker's ASGI application: routes, static files, and who may use them.

Starlette (routing, requests, responses) under uvicorn (the server, h11, TLS): both
well kept, small, and without a build step; the worker adds no HTTP of its own. Every
request passes `Guard` first, which applies the read and write rules
(`workers.http.access`) before any route runs: GET and HEAD are reads, every other
method a write. A refused request is counted (reason ``authDenied``, way in ``http``),
logged (rate-limited) and answered 401 or 403 with the same JSON as every refusal.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from workers.http import api, live, metrics
from workers.http.service import Service

STATIC = Path(__file__).parent / "static"
READS = ("GET", "HEAD")


async def index(request: Request) -> FileResponse:
    return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


async def metrics_page(request: Request) -> Response:
    return Response(metrics.render(request.app.state.metrics),
                    media_type=metrics.CONTENT_TYPE)


class Guard:
    """ASGI middleware: the access rules, before anything else sees the request."""

    def __init__(self, app: Any, service: Service):
        self.app = app
        self.service = service

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        host = scope["client"][0] if scope.get("client") else None
        headers = dict(scope.get("headers") or [])
        authorization = headers.get(b"authorization", b"").decode("latin-1") or None
        write = scope["method"] not in READS
        verdict = self.service.access.check(host, authorization, write)
        if verdict is None:
            await self.app(scope, receive, send)
            return
        status, refused = verdict
        body = {**self.service.refuse(refused, f"http {host}"), "pv": ""}
        extra = {"WWW-Authenticate": 'Bearer realm="relayd"'} if status == 401 else {}
        await JSONResponse(body, status, headers=extra)(scope, receive, send)


def build(service: Service, stopping: asyncio.Event, parent_pid: int) -> Guard:
    """The whole application for one worker."""
    routes = [
        Route("/", index),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
        Route("/api/v1/pvs", api.list_pvs),
        Route("/api/v1/pvs/{name}", api.one_pv, methods=["GET", "PUT", "DELETE"]),
        Route("/api/v1/batch", api.batch, methods=["POST"]),
        Route("/api/v1/status", api.status),
        Route("/api/v1/live", live.live),
        Route("/metrics", metrics_page),
    ]
    app = Starlette(routes=routes)
    app.state.service = service
    app.state.stopping = stopping
    app.state.metrics = metrics.registry(service.mirror, parent_pid)
    return Guard(app, service)
