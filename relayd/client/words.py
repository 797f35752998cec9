"""What ``relay-push`` makes of its words: a name's spec, values, attributes, lines.

Pure, and only what the command line needs: values are typed by the name's suffix, so
that a typo is caught before anything is sent (`UsageError`, exit status 2).
"""

from __future__ import annotations

import sys
from typing import Callable, Sequence

from relayd.core.errors import Refused
from relayd.core.meta import FIELDS, META_KEYS, check_changes
from relayd.core.names import Grammar, Kind, NameLimits, PVSpec

# An i PV holds int32 (relayd.values has the same bounds, but imports numpy).
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


class UsageError(Exception):
    """A bad command line: reported in one line, exit status 2, nothing sent."""


def parse_spec(name: str) -> PVSpec:
    """The spec that NAME's suffix gives, with or without the relay's prefix."""
    # The prefix is the relay's business; parse under a throw-away one, without limits.
    grammar = Grammar("_", NameLimits(max_name_length=sys.maxsize, max_elements=sys.maxsize))
    try:
        spec = grammar.parse("_:" + name)
    except Refused:
        spec = None
    if spec is None:
        raise UsageError(
            f"{name!r} does not end in _<dtype><count> (dtype f, i or c, or F, I, C for "
            "a buffer of count >= 2; name of letters, digits, '_', '-', ':')"
        )
    return spec


def parse_int(text: str) -> int:
    """An int32 in decimal (leading zeros allowed) or with a 0x/0o/0b prefix."""
    try:
        number = int(text, 0)
    except ValueError:
        number = int(text, 10)
    if not INT32_MIN <= number <= INT32_MAX:
        raise ValueError(f"{text} is outside the int32 range")
    return number


_NUMBER: dict[Kind, tuple[Callable[[str], object], str]] = {
    Kind.FLOAT: (float, "a float"),
    Kind.INT: (parse_int, "an int32 integer"),
}


def parse_value(spec: PVSpec, words: Sequence[str]) -> object:
    """The value to send to `spec` for the VALUE arguments `words`."""
    if not words:
        raise UsageError("give a VALUE (or --delete, or --lines)")
    if spec.kind is Kind.CHAR:
        # Arguments that were not UTF-8 arrive with surrogate escapes; make them U+FFFD.
        data = " ".join(words).encode("utf-8", errors="surrogateescape")
        text = data.decode("utf-8", errors="replace")
        size = len(text.encode("utf-8"))
        if size > spec.count:
            raise UsageError(f"text of {size} bytes does not fit {spec.count} ({_short(text)})")
        return text
    convert, what = _NUMBER[spec.kind]
    tokens = [token.strip() for word in words for token in word.split(",")]
    numbers = []
    for token in tokens:
        try:
            numbers.append(convert(token))
        except ValueError:
            raise UsageError(
                f"{token!r} is not {what} (NAME ends in _{spec.kind.value}...)"
            ) from None
    if len(numbers) > spec.count:
        raise UsageError(f"{len(numbers)} values; the PV holds {spec.count}")
    if len(numbers) == 1 and spec.is_scalar and not spec.buffer:
        return numbers[0]
    return numbers


def _short(text: str) -> str:
    return text if len(text) <= 40 else text[:37] + "..."



def parse_meta(items: list[str]) -> dict | None:
    """``--meta FIELD=VALUE`` options as the attribute map (typed by the field table)."""
    if not items:
        return None
    meta: dict[str, object] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip().lower()
        field = FIELDS.get(key.upper())
        if not sep or field is None or not field.writable:
            raise UsageError(f"--meta {item!r}: expected FIELD=VALUE with FIELD one of "
                             f"{', '.join(sorted(META_KEYS))}")
        meta[key] = _meta_value(field.ca_type, text, item)
    try:
        check_changes(meta)  # the relay's own rules: a typo is caught before sending
    except Refused as refused:
        raise UsageError(f"--meta: {refused.detail}") from None
    return meta


def _meta_value(ca_type: str, text: str, item: str) -> object:
    if ca_type == "string":
        return text
    if ca_type == "enum" and not text.strip().lstrip("-").isdigit():
        return text.strip()
    if ca_type == "double" and text.strip().lower() in ("none", "null", "nan", ""):
        return None
    try:
        return int(text) if ca_type in ("short", "enum") else float(text)
    except ValueError:
        raise UsageError(f"--meta {item!r}: {text!r} is not a number") from None



def chunks(line: bytes, size: int) -> list[bytes]:
    """`line` cut into pieces of at most `size` bytes, in order."""
    return [line[start:start + size] for start in range(0, len(line), size)] or [line]


def clean_line(raw: bytes) -> bytes:
    """A line of input as valid UTF-8 without NULs (a NUL would end the text on the relay)."""
    return raw.decode("utf-8", errors="replace").replace("\0", "\ufffd").encode("utf-8")
