"""HTTP request bodies as the relay's updates: plain text, a JSON update, a JSON batch.

Every way in speaks the same updates (`relayd.core.protocol.Update`), checked by the
same code: a JSON object is checked key by key exactly as a ZMQ update map
(`protocol.check_update`), and what passes goes through the shared intake. This module
only turns a body into updates; it decides nothing about names or values beyond the
shape. No I/O.

``PUT /api/v1/pvs/NAME`` takes

* ``Content-Type: application/json``: an object with ``value``, ``ts``, ``meta`` (the keys
  of a ZMQ update but ``pv`` and ``op``: the name is the URL's, the op the method's), or
  any other JSON value, which is the value itself (``[1, 2, 3]``, ``21.2``, ``"text"``);
* anything else (``curl --data 21.2``) as text: the text itself for a text PV
  (``_c``/``_C``), else numbers separated by commas or white space (``1.5``,
  ``1 2 3``, ``[1, 2, 3]``, ``nan``), one number for a scalar.

``POST /api/v1/batch`` takes a JSON array of update objects, each with its ``pv``, as a
ZMQ batch holds them (``op`` may be ``"delete"``).
"""

from __future__ import annotations

import json
import re
from typing import Any

from relayd.core import protocol
from relayd.core.errors import Reason, Refused
from relayd.core.names import Kind, PVSpec

JSON_TYPES = ("application/json",)
_SEPARATORS = re.compile(r"[\s,]+")
_INT = re.compile(r"[+-]?\d+")


def malformed(detail: str) -> Refused:
    return Refused(Reason.MALFORMED, detail)


def is_json(content_type: str | None) -> bool:
    return (content_type or "").split(";")[0].strip().lower() in JSON_TYPES


def load_json(body: bytes) -> Any:
    """The JSON document in `body`; `Refused` (MALFORMED) if it is not one.

    NaN and Infinity are taken, as Python writes them: a double PV may hold them.
    """
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as error:
        raise malformed(f"the body is not JSON: {str(error)[:120]}") from None


def _number(token: str, spec: PVSpec) -> int | float:
    if _INT.fullmatch(token):
        return int(token)
    try:
        return float(token)
    except ValueError:
        raise Refused(Reason.BAD_VALUE,
                      f"{spec.name}: {token[:40]!r} is not a number") from None


def text_value(body: bytes, spec: PVSpec) -> Any:
    """The value a plain-text body gives a PV of `spec`."""
    if spec.kind is Kind.CHAR:
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError:
            return body  # stored as the bytes sent, as a CA put of bytes would be
    try:
        text = body.decode("ascii").strip()
    except UnicodeDecodeError:
        raise Refused(Reason.BAD_VALUE, f"{spec.name}: the body is not numbers") from None
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    tokens = [token for token in _SEPARATORS.split(text) if token]
    if not tokens:
        raise Refused(Reason.BAD_VALUE, f"{spec.name}: no value in the body")
    numbers = [_number(token, spec) for token in tokens]
    return numbers[0] if len(numbers) == 1 and spec.is_scalar else numbers


def put_update(name: str, spec: PVSpec, body: bytes, content_type: str | None
               ) -> protocol.Update:
    """The update a PUT to `name` (parsed as `spec`) asks for."""
    if not is_json(content_type):
        return protocol.Update(name, protocol.PUT, text_value(body, spec), None, 0)
    document = load_json(body)
    if isinstance(document, dict):
        if "pv" in document or "op" in document:
            raise malformed("'pv' and 'op' come from the URL and the method, not the body")
        return protocol.check_update({**document, "pv": name}, 0)
    return protocol.check_update({"pv": name, "value": document}, 0)


def batch_items(body: bytes, max_updates: int = 100_000) -> list[Any]:
    """The update objects of a batch body (checked one by one later)."""
    document = load_json(body)
    if not isinstance(document, list):
        raise malformed("a batch is a JSON array of update objects "
                        '([{"pv": "name_f1", "value": 1.5}, ...])')
    if len(document) > max_updates:
        raise malformed(f"a batch of {len(document)} updates; the limit is {max_updates}")
    return document
