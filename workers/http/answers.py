"""What the HTTP API answers: PV rows as JSON, and verdicts as HTTP statuses. No I/O.

A verdict is the relay's answer to one update, the same on every way in: accepted, with
the PV's full name, or refused, with the reason code and text (`relayd.core.errors`).
Over HTTP it is a JSON object, as the acknowledged ZMQ path sends it,
``{"ok": true, "pv": "relay:t_f1"}`` or
``{"ok": false, "pv": "t_f1", "reason": "badValue", "text": "..."}``, and an HTTP status
(`STATUS`): the one table of which refusal is which HTTP error, in docs/HTTP.md too.
"""

from __future__ import annotations

from typing import Any

from relayd.core import menus
from relayd.core.errors import Reason
from relayd.core.feed import attributes, json_safe
from relayd.core.meta import STATUS_MENU
from relayd.core.names import Grammar, PVSpec
from workers.http.mirror import Entry

# The HTTP status of each refusal reason.
STATUS: dict[Reason, int] = {
    Reason.BAD_NAME: 400,
    Reason.WRONG_PREFIX: 400,
    Reason.NAME_TOO_LONG: 400,
    Reason.COUNT_LIMIT: 400,
    Reason.BAD_VALUE: 400,
    Reason.TOO_MANY_ELEMENTS: 400,
    Reason.MALFORMED: 400,
    Reason.NO_SUCH_PV: 404,
    Reason.READ_ONLY: 403,
    Reason.AUTH_DENIED: 403,
    Reason.PV_LIMIT: 507,
    Reason.BYTES_LIMIT: 507,
    Reason.PLACEHOLDER_LIMIT: 507,
    Reason.INTERNAL: 500,
}
# Answers that are not a refusal of the update itself (no reason of the relay's).
TOO_LARGE = 413  # the body is larger than --http-max-body
UNAUTHORISED = 401  # a token is needed and was missing or wrong
NO_ANSWER = 504  # the CA process did not answer in time: the update may or may not apply
UNAVAILABLE = 503  # the CA process cannot be reached (yet): nothing was sent
PARTLY = 422  # a batch in which some updates were refused (the others were applied)


def accepted(pv: str) -> dict[str, Any]:
    return {"ok": True, "pv": pv}


def refused(pv: str, reason: str, text: str) -> dict[str, Any]:
    return {"ok": False, "pv": pv, "reason": reason, "text": text}


def status_of(result: dict[str, Any]) -> int:
    """The HTTP status of one verdict (`accepted` or `refused`)."""
    if result["ok"]:
        return 200
    try:
        return STATUS[Reason(result["reason"])]
    except ValueError:
        return 500


def batch_status(results: list[dict[str, Any]]) -> int:
    """200 when every update of a batch was accepted, else PARTLY."""
    return 200 if all(result["ok"] for result in results) else PARTLY


def severity_name(code: int) -> str:
    names = menus.SEVERITY_NAMES
    return names[code] if 0 <= code < len(names) else str(code)


def status_name(code: int) -> str:
    return STATUS_MENU[code] if 0 <= code < len(STATUS_MENU) else str(code)


def describe(spec: PVSpec) -> dict[str, Any]:
    """What the name says about a PV: its type letter, element count, buffer or not."""
    return {"name": spec.name, "dtype": spec.kind.value, "count": spec.count,
            "buffer": spec.buffer}


def pv_json(entry: Entry, grammar: Grammar, now: float, value: Any = None,
            whole: bool = False) -> dict[str, Any]:
    """One PV as the API shows it; `value` (with `whole`) replaces the row's preview."""
    row = entry.row
    spec = grammar.parse(row.name)
    shown = value if whole else row.value
    answer = describe(spec) if spec is not None else {"name": row.name}
    answer.update({
        "value": json_safe(shown),
        "elements": row.elements,
        "truncated": not whole and _cut(row.value, row.elements),
        "severity": severity_name(row.severity),
        "status": status_name(row.status),
        "ts": row.ts_ns / 1e9 if row.ts_ns else None,
        "attributes": {key: json_safe(item) for key, item in attributes(row.meta).items()},
        "writer": row.writer,
        "updates": row.updates,
        "updates_per_minute": round(entry.per_minute(now), 2),
    })
    return answer


def _cut(value: Any, elements: int) -> bool:
    """Whether a row's value is a preview of more elements than it shows."""
    if isinstance(value, str):
        return len(value.encode("utf-8", "replace")) < elements
    return isinstance(value, list) and len(value) < elements


def table_row(entry: Entry, now: float) -> list[Any]:
    """One PV as the web page's table takes it: a compact array, its order in app.js."""
    row = entry.row
    meta = row.meta or {}
    return [row.name, json_safe(row.value), row.elements, row.severity, row.status,
            row.ts_ns // 1_000_000, meta.get("egu", ""), meta.get("prec"), row.writer,
            row.updates, round(entry.per_minute(now), 1)]
