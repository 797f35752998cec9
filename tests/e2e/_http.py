"""A real HTTP client for the end-to-end tests of the HTTP worker: urllib, on loopback."""

from __future__ import annotations

import json
import ssl
import time
import urllib.error
import urllib.request
from typing import Any

from tests.harness import RelayProcess, wait_for


class Answer:
    """One HTTP answer: status, headers, body (and the body as JSON, when it is JSON)."""

    def __init__(self, status: int, headers: Any, body: bytes, seconds: float):
        self.status = status
        self.headers = headers
        self.body = body
        self.seconds = seconds

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"<{self.status} {self.body[:300]!r}>"


def request(method: str, url: str, body: bytes | str | None = None,
            headers: dict[str, str] | None = None, timeout: float = 10.0,
            context: ssl.SSLContext | None = None) -> Answer:
    data = body.encode() if isinstance(body, str) else body
    made = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(made, timeout=timeout, context=context) as answer:
            return Answer(answer.status, answer.headers, answer.read(),
                          time.perf_counter() - started)
    except urllib.error.HTTPError as error:
        return Answer(error.code, error.headers, error.read(), time.perf_counter() - started)


def get(relay: RelayProcess, path: str, **kwargs: Any) -> Answer:
    return request("GET", relay.url + path, **kwargs)


def put(relay: RelayProcess, name: str, body: bytes | str, json_body: bool = False,
        **kwargs: Any) -> Answer:
    headers = {"Content-Type": "application/json"} if json_body else {}
    headers.update(kwargs.pop("headers", {}))
    return request("PUT", f"{relay.url}/api/v1/pvs/{name}", body, headers, **kwargs)


def listed(relay: RelayProcess, **query: Any) -> dict:
    text = "&".join(f"{key}={value}" for key, value in query.items())
    answer = get(relay, "/api/v1/pvs" + (f"?{text}" if text else ""))
    assert answer.status == 200, answer
    return answer.json


def wait_listed(relay: RelayProcess, name: str, condition=lambda pv: True,
                timeout: float = 10.0) -> dict:
    """The API's row of PV `name` once it is listed and meets `condition`."""
    def found() -> dict | None:
        answer = get(relay, f"/api/v1/pvs?match={name}")
        if answer.status != 200:
            return None
        rows = answer.json["pvs"]
        return rows[0] if rows and condition(rows[0]) else None

    return wait_for(found, timeout, what=f"{name} in the HTTP API")


def status_counter(relay: RelayProcess, key: str) -> Any:
    answer = get(relay, "/api/v1/status")
    return answer.json["counters"].get(key) if answer.status == 200 else None
