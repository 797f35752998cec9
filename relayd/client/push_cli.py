"""The ``relay-push`` command: put one value, delete a PV, or stream lines, from a shell.

Values are typed by the name's suffix, so a typo is caught here, before anything is
sent, instead of being refused silently on the relay (a push gets no reply). Exit codes:
0 sent, 1 the relay could not be reached within ``--timeout``, 2 a usage error.
"""

from __future__ import annotations

import argparse
import queue
import sys
import threading
import time
from typing import BinaryIO, Callable, Iterator, Sequence

from relayd.core import protocol
from relayd.client.push import Client, RelayError
from relayd.core.errors import Refused
from relayd.core.meta import FIELDS, META_KEYS, check_changes
from relayd.core.names import Grammar, Kind, NameLimits, PVSpec

PROG = "relay-push"

# --lines: lines read within this many seconds of the first one go out as one message,
# and a message is sent early once it holds this many updates or bytes.
LINES_WINDOW = 0.05
LINES_MAX_UPDATES = 1000
LINES_MAX_BYTES = 4 * 1024 * 1024

_EOF = None

# An i PV holds int32 (relayd.values has the same bounds, but imports numpy).
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1

DESCRIPTION = """\
Push a value to an EPICS relay (relayd) over ZeroMQ.

VALUE is read by the dtype letter of NAME's suffix (<name>_<dtype><count>):
  f, F  floats: 1.5, -2, 1e-4, nan, inf
  i, I  int32 integers: decimal (leading zeros allowed), or 0x1f, 0o17, 0b101; a
        float such as 3.7 is an error here (the relay would truncate it)
  c, C  text: every VALUE joined by single spaces, sent as UTF-8
Several VALUEs, or one VALUE with commas, make an array of numbers. A single VALUE for
a one-element name (x_f1) is sent as a scalar. A VALUE that does not parse, or more
values than the name's count, is an error and nothing is sent.

NAME may carry the relay's prefix or not (relay:temp_f1 and temp_f1 are the same PV).
Put "--" before values that start with "-" and are not plain numbers (-- -1e-3).
"""

EPILOG = """\
examples:
  relay-push tcp://relayhost:5555 temperature_lab_f1 21.2
  relay-push tcp://relayhost:5555 relay:fit_results_f4 23.0,0.1,3231.123,1e-4
  relay-push tcp://relayhost:5555 fit_results_f4 23.0 0.1 3231.123 1e-4
  relay-push tcp://relayhost:5555 cupsofcoffeetoday_i1 0x2
  relay-push tcp://relayhost:5555 motd_c100 The sun is shining, go outside!
  relay-push --ts 1700000000.5 tcp://relayhost:5555 temperature_lab_f1 21.2
  relay-push --delete tcp://relayhost:5555 temperature_lab_f1
  make 2>&1 | relay-push --lines tcp://relayhost:5555 build_log_C20000

--lines reads standard input as UTF-8 (undecodable bytes become U+FFFD, as do NUL
characters, which would end the text on the relay) and appends every line, with its
newline, to the char buffer NAME (_C<count>). A line longer than the buffer is sent in
chunks of at most <count> bytes, so the buffer ends with the line's tail. Lines that
arrive within 50 ms go out as one message, so fast output keeps up. It stops at the end
of input after sending everything.

exit status: 0 sent (queued for the relay: a push gets no reply, so refusals show on
the relay's status PVs and log), 1 no relay reachable at ENDPOINT within --timeout
(one line on stderr), 2 usage error (nothing sent).
"""


class UsageError(Exception):
    """A bad command line: reported in one line, exit status 2, nothing sent."""


# --- parsing ------------------------------------------------------------------------------


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("endpoint", metavar="ENDPOINT",
                        help="the relay's ZeroMQ address, e.g. tcp://relayhost:5555")
    parser.add_argument("name", metavar="NAME", help="the PV name, e.g. temperature_lab_f1")
    parser.add_argument("values", metavar="VALUE", nargs="*", help="the value(s) to put")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--delete", action="store_true", help="delete NAME instead of putting")
    mode.add_argument("--lines", action="store_true",
                      help="append each line of standard input to the char buffer NAME")
    parser.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS",
                        help="give up (exit 1) when no relay takes the message within "
                             "this time; also the most time spent flushing at exit "
                             "(default 5)")
    parser.add_argument("--ts", type=float, metavar="SECONDS",
                        help="source time stamp of a single put, POSIX seconds "
                             "(default: the relay's clock when it receives the value)")
    parser.add_argument("--curve-secret-key", metavar="FILE",
                        help="this publisher's CurveZMQ secret key (NAME.key_secret), for "
                             "a relay with CURVE on")
    parser.add_argument("--curve-server-key", metavar="FILE",
                        help="the relay's public key (NAME.key), with --curve-secret-key")
    parser.add_argument("--meta", action="append", default=[], metavar="FIELD=VALUE",
                        help="set a PV attribute with the value, or alone when no VALUE "
                             "is given; repeatable. FIELD is a lower-case field name: "
                             "egu, prec, desc, hopr, lopr, drvh, drvl, hihi, high, low, "
                             "lolo, hhsv, hsv, lsv, llsv, hyst, tmo (e.g. --meta egu=K "
                             "--meta hihi=300 --meta hhsv=MAJOR; hihi=none unsets a limit)")
    return parser


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


# --- running ------------------------------------------------------------------------------


def _connect(args: argparse.Namespace) -> Client:
    # immediate: a one-shot command must fail when no relay is there (or none accepts
    # our key), not queue and exit 0.
    try:
        return Client(args.endpoint, send_timeout=args.timeout, linger=args.timeout,
                      immediate=True, curve_secret_key=args.curve_secret_key,
                      curve_server_key=args.curve_server_key)
    except ValueError as error:
        raise UsageError(str(error)) from None


def push_one(args: argparse.Namespace) -> None:
    """A single put or delete."""
    spec = parse_spec(args.name)
    if args.delete:
        if args.values:
            raise UsageError("--delete takes no VALUE")
        if args.ts is not None:
            raise UsageError("--ts applies to a single put")
        if args.meta:
            raise UsageError("--meta does not go with --delete")
        with _connect(args) as client:
            client.delete(args.name)
        return
    meta = parse_meta(args.meta)
    if meta is not None and not args.values:
        if args.ts is not None:
            raise UsageError("--ts applies to a put of a value")
        with _connect(args) as client:
            client.set_meta(args.name, **meta)
        return
    value = parse_value(spec, args.values)
    if args.ts is not None:
        problem = protocol.ts_problem(args.ts)
        if problem:
            raise UsageError(f"--ts: {problem}")
    with _connect(args) as client:
        client.put(args.name, value, ts=args.ts, meta=meta)


def chunks(line: bytes, size: int) -> list[bytes]:
    """`line` cut into pieces of at most `size` bytes, in order."""
    return [line[start:start + size] for start in range(0, len(line), size)] or [line]


def clean_line(raw: bytes) -> bytes:
    """A line of input as valid UTF-8 without NULs (a NUL would end the text on the relay)."""
    return raw.decode("utf-8", errors="replace").replace("\0", "\ufffd").encode("utf-8")


def _read_lines(stream: BinaryIO, lines: queue.Queue) -> None:
    try:
        for raw in iter(stream.readline, b""):
            lines.put(raw)
    finally:
        lines.put(_EOF)  # also when reading fails: the sender flushes and stops


def windows(lines: queue.Queue) -> Iterator[list[bytes]]:
    """Lines from `lines` in groups: those that arrive within LINES_WINDOW of a group's
    first line, up to LINES_MAX_UPDATES lines or LINES_MAX_BYTES bytes. Ends at `_EOF`."""
    while True:
        line = lines.get()
        if line is _EOF:
            return
        group, size = [line], len(line)
        deadline = time.monotonic() + LINES_WINDOW
        while len(group) < LINES_MAX_UPDATES and size < LINES_MAX_BYTES:
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is _EOF:
                yield group
                return
            group.append(line)
            size += len(line)
        yield group


def push_lines(args: argparse.Namespace, stdin: BinaryIO) -> None:
    """Append each line of `stdin` to the char buffer NAME, grouped into batches."""
    spec = parse_spec(args.name)
    if not (spec.kind is Kind.CHAR and spec.buffer):
        raise UsageError(f"--lines needs a char buffer name ending in _C<count>, not {args.name!r}")
    if args.values:
        raise UsageError("--lines takes no VALUE: the lines come from standard input")
    if args.ts is not None:
        raise UsageError("--ts applies to a single put")
    if args.meta:
        raise UsageError("--meta does not go with --lines")
    # Pieces no longer than the buffer, so the buffer ends with a long line's tail, and
    # no longer than a message should be.
    piece_size = min(spec.count, LINES_MAX_BYTES)
    # A reader thread lets the sender wait for input with a timeout on any platform; the
    # bounded queue makes a fast writer wait when the relay is slower, instead of memory.
    lines: queue.Queue = queue.Queue(maxsize=LINES_MAX_UPDATES * 10)
    threading.Thread(target=_read_lines, args=(stdin, lines), daemon=True).start()
    with _connect(args) as client:
        for group in windows(lines):
            batch, size = [], 0
            for line in group:
                for piece in chunks(clean_line(line), piece_size):
                    batch.append((args.name, piece))
                    size += len(piece)
                    if len(batch) >= LINES_MAX_UPDATES or size >= LINES_MAX_BYTES:
                        client.put_many(batch)
                        batch, size = [], 0
            client.put_many(batch)  # sends nothing when empty


def main(argv: Sequence[str] | None = None, stdin: BinaryIO | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # exits 2 with argparse's message on a bad option
    try:
        if args.timeout < 0:
            raise UsageError("--timeout must be >= 0")
        if args.lines:
            push_lines(args, stdin if stdin is not None else sys.stdin.buffer)
        else:
            push_one(args)
    except UsageError as error:
        print(f"{PROG}: {error}", file=sys.stderr)
        return 2
    except RelayError as error:  # RelayUnreachable, the one a send raises
        print(f"{PROG}: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
