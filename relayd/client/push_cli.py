"""The ``relay-push`` command: put one value, delete a PV, or stream lines, from a shell.

Values are typed by the name's suffix, so a typo is caught here, before anything is
sent. By default it waits for the relay's verdict (protocol version 2, through the
relay's acknowledged socket) and says what the relay said; ``--no-wait`` pushes and
leaves (version 1). Exit codes: 0 accepted (or, with ``--no-wait``, queued), 1 no answer
from the relay within ``--timeout``, 2 a usage error, 3 refused by the relay (its reason
on stderr), 4 applied but not saved although ``--durable`` asked.
"""

from __future__ import annotations

import argparse
import queue
import sys
import threading
import time
from typing import BinaryIO, Iterator, Sequence

from relayd.core import protocol
from relayd.client.acked import ack_endpoint_for
from relayd.client.errors import (
    BatchRefused, NotDurable, RelayError, UpdateRefused,
)
from relayd.client.push import Client
from relayd.client.words import (  # noqa: F401 (chunks, parse_meta: tests use them here)
    UsageError, chunks, clean_line, parse_meta, parse_spec, parse_value,
)
from relayd.core.names import Kind

PROG = "relay-push"

# --lines: lines read within this many seconds of the first one go out as one message,
# and a message is sent early once it holds this many updates or bytes.
LINES_WINDOW = 0.05
LINES_MAX_UPDATES = 1000
LINES_MAX_BYTES = 4 * 1024 * 1024

_EOF = None

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

It waits for the relay's verdict: through the relay's acknowledged socket, by default
ENDPOINT's host at port 5556 (the default of relayd's --zmq-ack-bind; --ack-endpoint to
give another). --no-wait only pushes to ENDPOINT, as fast as it goes, with no answer.
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
  relay-push --no-wait tcp://relayhost:5555 temperature_lab_f1 21.2
  relay-push --durable --ack-endpoint tcp://relayhost:6556 tcp://relayhost:5555 runs_i1 7

--lines reads standard input as UTF-8 (undecodable bytes become U+FFFD, as do NUL
characters, which would end the text on the relay) and appends every line, with its
newline, to the char buffer NAME (_C<count>). A line longer than the buffer is sent in
chunks of at most <count> bytes, so the buffer ends with the line's tail. Lines that
arrive within 50 ms go out as one message, so fast output keeps up. It stops at the end
of input after sending everything.

--lines waits for the verdict of each group of lines; a refused line is reported on
stderr and the tail goes on (exit status 3 at the end).

exit status: 0 accepted by the relay (with --no-wait: queued for it; a push gets no
reply, so refusals show only on the relay's status PVs and log), 1 no answer from the
relay within --timeout (one line on stderr; the update may or may not have been
applied), 2 usage error (nothing sent), 3 refused by the relay (its reason code and text
on stderr: "relay-push: NAME: REASON: TEXT"), 4 applied but not saved to the relay's
autosave file although --durable asked (why, on stderr).
"""


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
                        help="give up (exit 1) when no relay answers (with --no-wait: "
                             "takes the message) within this time; also the most time "
                             "spent flushing at exit (default 5)")
    parser.add_argument("--no-wait", action="store_true",
                        help="push without waiting for the relay's verdict (protocol "
                             "version 1: no answer, refusals only on the relay)")
    parser.add_argument("--ack-endpoint", metavar="ENDPOINT",
                        help="the relay's acknowledged socket (default: ENDPOINT's host, "
                             "port 5556)")
    parser.add_argument("--durable", action="store_true",
                        help="wait until the relay has saved the update to its autosave "
                             "file (exit 4 if it could not)")
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


# --- running ------------------------------------------------------------------------------


def _connect(args: argparse.Namespace) -> Client:
    # immediate: a one-shot command must fail when no relay is there (or none accepts
    # our key), not queue and exit 0.
    if args.no_wait and (args.durable or args.ack_endpoint):
        raise UsageError("--no-wait gets no answer: --durable and --ack-endpoint need one")
    try:
        ack_endpoint = None
        if not args.no_wait:
            ack_endpoint = args.ack_endpoint or ack_endpoint_for(args.endpoint)
        return Client(args.endpoint, send_timeout=args.timeout, linger=args.timeout,
                      immediate=True, curve_secret_key=args.curve_secret_key,
                      curve_server_key=args.curve_server_key, ack=not args.no_wait,
                      ack_endpoint=ack_endpoint, timeout=args.timeout, durable=args.durable)
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


def push_lines(args: argparse.Namespace, stdin: BinaryIO) -> int:
    """Append each line of `stdin` to the char buffer NAME, grouped into batches; the
    number of lines (or pieces of lines) the relay refused, each reported on stderr."""
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
    refused = 0
    with _connect(args) as client:
        for group in windows(lines):
            batch, size = [], 0
            for line in group:
                for piece in chunks(clean_line(line), piece_size):
                    batch.append((args.name, piece))
                    size += len(piece)
                    if len(batch) >= LINES_MAX_UPDATES or size >= LINES_MAX_BYTES:
                        refused += _put_lines(client, batch)
                        batch, size = [], 0
            refused += _put_lines(client, batch)  # sends nothing when empty
    return refused


def _put_lines(client: Client, batch: list) -> int:
    """Send one group of lines; report its refusals on stderr and go on. How many."""
    try:
        client.put_many(batch)
    except BatchRefused as refusal:
        for problem in refusal.refused:
            print(f"{PROG}: {problem}", file=sys.stderr)
        return len(refusal.refused)
    return 0


def main(argv: Sequence[str] | None = None, stdin: BinaryIO | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # exits 2 with argparse's message on a bad option
    try:
        if args.timeout < 0:
            raise UsageError("--timeout must be >= 0")
        if args.lines:
            if push_lines(args, stdin if stdin is not None else sys.stdin.buffer):
                return 3  # refused lines, each reported on stderr as it came
        else:
            push_one(args)
    except UsageError as error:
        print(f"{PROG}: {error}", file=sys.stderr)
        return 2
    except RelayError as error:
        return _failed(error)
    except KeyboardInterrupt:
        return 130
    return 0


def _failed(error: RelayError) -> int:
    """Say what the relay said (or that it said nothing); the exit status for it."""
    if isinstance(error, BatchRefused):
        for problem in error.refused:
            print(f"{PROG}: {problem}", file=sys.stderr)
        return 3
    print(f"{PROG}: {error}", file=sys.stderr)
    if isinstance(error, UpdateRefused):
        return 3
    return 4 if isinstance(error, NotDurable) else 1


if __name__ == "__main__":
    sys.exit(main())
