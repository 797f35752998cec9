"""The relay-push command (relayd.client.push_cli), run as a process against a ZMQ PULL
socket (``--no-wait``: pushes), and against no relay or a silent one (waiting for a
verdict). Its verdicts and exit codes against a real relay: tests/e2e/test_acks.py."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Iterator

import pytest
import zmq

from relayd.core import protocol

from relayd.client import push_cli
from relayd.client import Client
from relayd.core.protocol import Update

REPO = Path(__file__).resolve().parents[2]
TS = 1_700_000_000.5


class Sink:
    """A PULL socket bound to a free loopback port: stands in for the relay."""

    def __init__(self, context: zmq.Context):
        self.socket = context.socket(zmq.PULL)
        self.socket.setsockopt(zmq.LINGER, 0)
        port = self.socket.bind_to_random_port("tcp://127.0.0.1")
        self.endpoint = f"tcp://127.0.0.1:{port}"

    def updates(self, timeout: float = 5.0) -> list[Update]:
        """The updates of the next message; fails the test if none arrives in time."""
        assert self.socket.poll(int(timeout * 1000)), "no message arrived"
        decoded = protocol.decode(self.socket.recv())
        assert decoded.refused == []
        return decoded.updates

    def nothing_before_marker(self) -> None:
        """Prove nothing was sent so far: the next message is a marker sent now."""
        with Client(self.endpoint) as client:
            client.put("marker_f1", 1.0)
        assert self.updates() == [Update("marker_f1", "put", 1.0, None, 0)]


@pytest.fixture
def sink() -> Iterator[Sink]:
    context = zmq.Context()
    sink = Sink(context)
    yield sink
    sink.socket.close()
    context.term()


def relay_push(*args: str, stdin: bytes = b"", wait: bool = False
               ) -> subprocess.CompletedProcess:
    """relay-push with `args`; ``--no-wait`` first unless `wait` (the sink never answers)."""
    return subprocess.run(
        [sys.executable, "-m", "relayd.client.push_cli", *([] if wait else ["--no-wait"]),
         *args],
        input=stdin, capture_output=True, timeout=60, cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def ok(*args: str, stdin: bytes = b"") -> None:
    result = relay_push(*args, stdin=stdin)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stderr == b""


@pytest.mark.parametrize(
    "name, values, expected",
    [
        ("temp_f1", ["21.5"], 21.5),
        ("temp_f1", ["-3.5"], -3.5),
        ("temp_f1", ["--", "-1e-3"], -0.001),
        ("temp_f1", ["7"], 7.0),
        ("relay:temp_f1", ["1e300"], 1e300),
        ("count_i1", ["42"], 42),
        ("count_i1", ["-7"], -7),
        ("count_i1", ["0x1f"], 31),
        ("count_i1", ["007"], 7),
        ("count_i1", ["2147483647"], 2147483647),
        ("fit_f4", ["1,2,3,4"], [1.0, 2.0, 3.0, 4.0]),
        ("fit_f4", ["1", "2", "3", "4"], [1.0, 2.0, 3.0, 4.0]),
        ("fit_f4", ["1,2", "3"], [1.0, 2.0, 3.0]),
        ("fit_f4", ["1, 2"], [1.0, 2.0]),
        ("fit_f4", ["5"], [5.0]),
        ("log_F100", ["5"], [5.0]),
        ("ids_i3", ["1,0x10,-3"], [1, 16, -3]),
        ("msg_c40", ["hello"], "hello"),
        ("msg_c40", ["The", "sun", "is", "shining,", "go"], "The sun is shining, go"),
        ("msg_c40", ["a,b  c"], "a,b  c"),
        ("msg_c40", [""], ""),
        ("msg_c5", ["héllo"[:4]], "héll"),
        ("tail_C10", ["abc"], "abc"),
    ],
)
def test_put(sink: Sink, name: str, values: list[str], expected: object) -> None:
    ok(sink.endpoint, name, *values)
    [update] = sink.updates()
    assert (update.pv, update.op, update.ts) == (name, "put", None)
    assert update.value == expected
    assert type(update.value) is type(expected)


def test_put_with_ts(sink: Sink) -> None:
    ok("--ts", str(TS), sink.endpoint, "temp_f1", "1.5")
    assert sink.updates() == [Update("temp_f1", "put", 1.5, TS, 0)]


def test_options_after_positionals(sink: Sink) -> None:
    ok(sink.endpoint, "temp_f1", "2.5", "--timeout", "3")
    assert sink.updates()[0].value == 2.5


def test_delete(sink: Sink) -> None:
    ok("--delete", sink.endpoint, "relay:temp_f1")
    assert sink.updates() == [Update("relay:temp_f1", "delete", None, None, 0)]


def test_lines(sink: Sink) -> None:
    lines = [f"line {i}: {'x' * (i % 7)}\n" for i in range(200)]
    ok("--lines", sink.endpoint, "build_log_C20000", stdin="".join(lines).encode())
    received: list[Update] = []
    while len(received) < len(lines):
        received += sink.updates()
    assert all(u.pv == "build_log_C20000" and u.op == "put" for u in received)
    assert [u.value.decode() for u in received] == lines


def test_lines_last_line_without_newline_and_bad_bytes(sink: Sink) -> None:
    stdin = b"caf\xc3\xa9\n\xff\xfe bad\na\x00b\nno newline"
    ok("--lines", sink.endpoint, "log_C100", stdin=stdin)
    received: list[Update] = []
    while len(received) < 4:
        received += sink.updates()
    assert [u.value.decode() for u in received] == [
        "café\n", "\ufffd\ufffd bad\n", "a\ufffdb\n", "no newline",
    ]


def test_lines_long_line_is_sent_in_chunks(sink: Sink) -> None:
    line = "abcdefghijklmnopqrstuvwxyz\n"
    ok("--lines", sink.endpoint, "log_C8", stdin=(line + "end\n").encode())
    received: list[Update] = []
    while len(received) < 5:
        received += sink.updates()
    pieces = [u.value for u in received]
    assert pieces == [b"abcdefgh", b"ijklmnop", b"qrstuvwx", b"yz\n", b"end\n"]


def test_lines_empty_input_sends_nothing(sink: Sink) -> None:
    ok("--lines", sink.endpoint, "log_C100", stdin=b"")
    sink.nothing_before_marker()


def test_lines_are_grouped_into_batches(sink: Sink) -> None:
    """Lines that are ready together go out as few messages, not one message per line."""
    stdin = io.BytesIO(b"".join(b"%d\n" % i for i in range(3000)))
    assert push_cli.main(["--no-wait", "--lines", sink.endpoint, "log_C100"], stdin=stdin) == 0
    messages, values = 0, []
    while len(values) < 3000:
        values += [u.value for u in sink.updates()]
        messages += 1
    assert values == [b"%d\n" % i for i in range(3000)]
    assert messages < 3000 // 10
    assert messages >= 3000 // push_cli.LINES_MAX_UPDATES


def test_lines_huge_line_is_split_across_messages(sink: Sink) -> None:
    line = bytes(range(97, 123)) * 60_000 + b"\n"  # 1.56 MB into a 1000-byte buffer
    stdin = io.BytesIO(line)
    assert push_cli.main(["--no-wait", "--lines", sink.endpoint, "log_C1000"], stdin=stdin) == 0
    pieces: list[bytes] = []
    messages = 0
    while sum(map(len, pieces)) < len(line):
        updates = sink.updates()
        assert len(updates) <= push_cli.LINES_MAX_UPDATES
        pieces += [u.value for u in updates]
        messages += 1
    assert b"".join(pieces) == line
    assert all(len(p) <= 1000 for p in pieces)
    assert messages == 2


def test_lines_are_sent_as_they_come(sink: Sink) -> None:
    """A line goes out shortly after it is read, without waiting for the end of input."""
    read_end, write_end = os.pipe()
    codes: list[int] = []
    with os.fdopen(read_end, "rb") as stdin:
        thread = threading.Thread(target=lambda: codes.append(
            push_cli.main(["--no-wait", "--lines", sink.endpoint, "log_C100"], stdin=stdin)))
        thread.start()
        with os.fdopen(write_end, "wb") as writer:
            for text in (b"first\n", b"second\n"):
                writer.write(text)
                writer.flush()
                assert [u.value for u in sink.updates()] == [text]
        thread.join(timeout=30)  # the end of input ends the command
    assert codes == [0]


def test_meta_with_a_value(sink: Sink) -> None:
    ok("--meta", "egu=K", "--meta", "hihi=300", "--meta", "hhsv=MAJOR", "--ts", str(TS),
       sink.endpoint, "temp_f1", "21.5")
    assert sink.updates() == [Update("temp_f1", "put", 21.5, TS, 0,
                                     {"egu": "K", "hihi": 300.0, "hhsv": "MAJOR"})]


def test_meta_alone(sink: Sink) -> None:
    ok("--meta", "desc=cold head", sink.endpoint, "relay:temp_f1")
    assert sink.updates() == [Update("relay:temp_f1", "put", protocol.NO_VALUE, None, 0,
                                     {"desc": "cold head"})]


@pytest.mark.parametrize("item, key, value", [
    ("egu=K", "egu", "K"),
    ("egu=deg C", "egu", "deg C"),
    ("egu=", "egu", ""),
    ("desc=a=b", "desc", "a=b"),           # split at the first '='
    ("EGU=mm", "egu", "mm"),                # field names in either case
    ("prec=3", "prec", 3),
    ("hopr=1e3", "hopr", 1000.0),
    ("lopr=-5", "lopr", -5.0),
    ("drvh=7", "drvh", 7.0),
    ("drvl=-7.5", "drvl", -7.5),
    ("hihi=300", "hihi", 300.0),
    ("high=0.5", "high", 0.5),
    ("low=-1", "low", -1.0),
    ("lolo=none", "lolo", None),            # unsets a limit
    ("hihi=None", "hihi", None),
    ("hihi=nan", "hihi", None),
    ("hihi=null", "hihi", None),
    ("hhsv=MAJOR", "hhsv", "MAJOR"),
    ("hsv=minor", "hsv", "minor"),          # the relay takes names in any case
    ("lsv=0", "lsv", 0),
    ("llsv=3", "llsv", 3),
    ("hyst=0.25", "hyst", 0.25),
    ("tmo=10", "tmo", 10.0),
])
def test_meta_values_are_typed_by_the_field(sink: Sink, item: str, key: str,
                                            value: object) -> None:
    ok("--meta", item, sink.endpoint, "temp_f1")
    [update] = sink.updates()
    assert update.meta == {key: value}
    assert type(update.meta[key]) is type(value)
    assert push_cli.parse_meta([item]) == {key: value}


@pytest.mark.parametrize("meta, message", [
    ("hhsv=LOUD", "--meta: HHSV: 'LOUD' is not one of NO_ALARM, MINOR, MAJOR, INVALID"),
    ("prec=99", "--meta: PREC: 99 is outside 0..17"),
    ("egu=" + "x" * 50, "--meta: EGU: longer than 39 bytes"),
])
def test_meta_values_are_checked_before_sending(sink: Sink, meta: str, message: str) -> None:
    """The relay's own attribute rules run here: a typo exits 2 and sends nothing."""
    result = relay_push("--meta", meta, sink.endpoint, "temp_f1")
    assert result.returncode == 2
    assert message in result.stderr.decode()
    sink.nothing_before_marker()


def test_parse_meta_of_nothing() -> None:
    assert push_cli.parse_meta([]) is None


def test_the_last_of_a_repeated_field_wins(sink: Sink) -> None:
    ok("--meta", "egu=mm", "--meta", "egu=cm", sink.endpoint, "temp_f1", "1")
    assert sink.updates()[0].meta == {"egu": "cm"}


@pytest.mark.parametrize(
    "args, message",
    [
        (["temp_f1", "abc"], "'abc' is not a float (NAME ends in _f...)"),
        (["temp_f1", "1,,2"], "'' is not a float (NAME ends in _f...)"),
        (["count_i1", "3.7"], "'3.7' is not an int32 integer (NAME ends in _i...)"),
        (["count_i1", "2147483648"], "'2147483648' is not an int32 integer (NAME ends in _i...)"),
        (["count_I4", "1,x"], "'x' is not an int32 integer (NAME ends in _i...)"),
        (["temp", "1"], "'temp' does not end in _<dtype><count>"),
        (["temp_x1", "1"], "'temp_x1' does not end in _<dtype><count>"),
        (["temp_F1", "1"], "'temp_F1' does not end in _<dtype><count>"),
        (["temp.EGU_f1", "1"], "'temp.EGU_f1' does not end in _<dtype><count>"),
        (["fit_f2", "1,2,3"], "3 values; the PV holds 2"),
        (["msg_c3", "toolong"], "text of 7 bytes does not fit 3 (toolong)"),
        (["msg_c4", "héllo"], "text of 6 bytes does not fit 4 (héllo)"),
        (["temp_f1"], "give a VALUE (or --delete, or --lines)"),
        (["--delete", "temp_f1", "1"], "--delete takes no VALUE"),
        (["--delete", "--ts", "1700000000", "temp_f1"], "--ts applies to a single put"),
        (["--lines", "log_c100"], "--lines needs a char buffer name ending in _C<count>"),
        (["--lines", "log_F100"], "--lines needs a char buffer name ending in _C<count>"),
        (["--lines", "log_C100", "x"], "--lines takes no VALUE"),
        (["--lines", "--ts", "1700000000", "log_C100"], "--ts applies to a single put"),
        (["--ts", "100", "temp_f1", "1"], "--ts: 'ts' 100.0 is before the EPICS epoch"),
        (["--ts", "nan", "temp_f1", "1"], "--ts: 'ts' nan is not finite"),
        (["--timeout", "-1", "temp_f1", "1"], "--timeout must be >= 0"),
        (["--meta", "units=K", "temp_f1", "1"], "--meta 'units=K': expected FIELD=VALUE with "
         "FIELD one of desc, drvh, drvl, egu, hhsv, high, hihi, hopr, hsv, hyst, llsv, lolo, "
         "lopr, low, lsv, prec, tmo"),
        (["--meta", "egu", "temp_f1"], "--meta 'egu': expected FIELD=VALUE"),
        (["--meta", "nelm=5", "temp_f1"], "--meta 'nelm=5': expected FIELD=VALUE"),
        (["--meta", "sevr=MAJOR", "temp_f1"], "--meta 'sevr=MAJOR': expected FIELD=VALUE"),
        (["--meta", "hihi=high", "temp_f1"], "--meta 'hihi=high': 'high' is not a number"),
        (["--meta", "prec=2.5", "temp_f1"], "--meta 'prec=2.5': '2.5' is not a number"),
        (["--meta", "tmo=soon", "temp_f1", "1"], "--meta 'tmo=soon': 'soon' is not a number"),
        (["--meta", "egu=K", "--delete", "temp_f1"], "--meta does not go with --delete"),
        (["--meta", "egu=K", "--lines", "log_C100"], "--meta does not go with --lines"),
        (["--meta", "egu=K", "--ts", "1700000000", "temp_f1"],
         "--ts applies to a put of a value"),
        (["--meta", "egu=K", "temp_f1", "abc"], "'abc' is not a float"),
    ],
)
def test_usage_errors_send_nothing(sink: Sink, args: list[str], message: str) -> None:
    head: list[str] = []  # the options, which come before ENDPOINT
    rest = list(args)
    while rest and rest[0].startswith("--"):
        head.append(rest.pop(0))
        if head[-1] in ("--ts", "--timeout", "--meta"):
            head.append(rest.pop(0))
    result = relay_push(*head, sink.endpoint, *rest, stdin=b"line\n")
    assert result.returncode == 2
    stderr = result.stderr.decode()
    assert stderr.count("\n") == 1, stderr
    assert stderr.startswith(f"relay-push: {message}"), stderr
    sink.nothing_before_marker()


def test_bad_endpoint_is_a_usage_error() -> None:
    result = relay_push("nonsense", "temp_f1", "1")
    assert result.returncode == 2
    assert result.stderr.decode().startswith("relay-push: cannot connect to 'nonsense'")
    assert result.stderr.count(b"\n") == 1


def test_argparse_errors_exit_2() -> None:
    assert relay_push(wait=True).returncode == 2
    assert relay_push("--delete", "--lines", "tcp://127.0.0.1:1", "log_C10").returncode == 2
    assert relay_push("--timeout", "soon", "tcp://127.0.0.1:1", "temp_f1", "1").returncode == 2


def _unused_endpoint() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{probe.getsockname()[1]}"


@pytest.mark.parametrize("mode", [["temp_f1", "1.5"], ["--delete", "temp_f1"],
                                  ["--lines", "log_C100"]])
def test_unreachable_exits_1(mode: list[str]) -> None:
    endpoint = _unused_endpoint()
    options = [m for m in mode if m.startswith("--")]
    positionals = [m for m in mode if not m.startswith("--")]
    result = relay_push("--timeout", "1", *options, endpoint, *positionals, stdin=b"a line\n")
    assert result.returncode == 1
    stderr = result.stderr.decode()
    assert stderr.count("\n") == 1, stderr
    assert stderr.startswith(f"relay-push: no connection to a relay at {endpoint} within 1 s")


def test_help_documents_everything() -> None:
    result = relay_push("--help")
    assert result.returncode == 0
    text = result.stdout.decode()
    for word in ("--delete", "--lines", "--timeout", "--ts", "--meta", "FIELD=VALUE",
                 "--no-wait", "--ack-endpoint", "--durable", "port 5556",
                 "hihi=none", "exit status", "examples:",
                 "0x1f", "fit_results_f4 23.0,0.1", "build_log_C20000"):
        assert word in text, word


def test_chunks() -> None:
    assert push_cli.chunks(b"abcdefg", 3) == [b"abc", b"def", b"g"]
    assert push_cli.chunks(b"abc", 3) == [b"abc"]
    assert push_cli.chunks(b"a", 100) == [b"a"]


# --- waiting for the verdict (the default) ------------------------------------------------------


def test_ack_endpoint_defaults_to_the_same_host_at_port_5556() -> None:
    from relayd.client.acked import ack_endpoint_for

    assert ack_endpoint_for("tcp://relayhost:5555") == "tcp://relayhost:5556"
    assert ack_endpoint_for("tcp://10.0.0.5:7000") == "tcp://10.0.0.5:5556"
    assert ack_endpoint_for("tcp://[::1]:5555") == "tcp://[::1]:5556"
    with pytest.raises(ValueError, match="give the acknowledged endpoint"):
        ack_endpoint_for("ipc:///tmp/relay")


@pytest.mark.parametrize("mode", [["temp_f1", "1.5"], ["--delete", "temp_f1"],
                                  ["--lines", "log_C100"]])
def test_no_relay_answering_exits_1(mode: list[str]) -> None:
    endpoint, ack = _unused_endpoint(), _unused_endpoint()
    options = [m for m in mode if m.startswith("--")]
    positionals = [m for m in mode if not m.startswith("--")]
    result = relay_push("--timeout", "1", "--ack-endpoint", ack, *options, endpoint,
                        *positionals, stdin=b"a line\n", wait=True)
    assert result.returncode == 1
    stderr = result.stderr.decode()
    assert stderr.count("\n") == 1, stderr
    assert stderr.startswith(f"relay-push: no answer from {ack} within 1 s"), stderr


def test_a_relay_that_takes_the_request_and_never_answers_exits_1() -> None:
    context = zmq.Context()
    silent = context.socket(zmq.ROUTER)
    silent.setsockopt(zmq.LINGER, 0)
    port = silent.bind_to_random_port("tcp://127.0.0.1")
    try:
        result = relay_push("--timeout", "1", "--ack-endpoint", f"tcp://127.0.0.1:{port}",
                            _unused_endpoint(), "temp_f1", "1.5", wait=True)
        assert silent.poll(0), "the request never arrived"
    finally:
        silent.close()
        context.term()
    assert result.returncode == 1
    assert result.stderr.decode().startswith(
        f"relay-push: no answer from tcp://127.0.0.1:{port} within 1 s; is relayd running")


def test_the_ack_endpoint_is_derived_from_endpoint_by_default() -> None:
    """Without --ack-endpoint the verdict is asked of ENDPOINT's host at port 5556."""
    result = relay_push("--timeout", "0.5", "tcp://127.0.0.2:5555", "temp_f1", "1",
                        wait=True)
    assert result.returncode == 1
    assert "no answer from tcp://127.0.0.2:5556 within 0.5 s" in result.stderr.decode()


@pytest.mark.parametrize("args, message", [
    (["--no-wait", "--durable"], "--no-wait gets no answer"),
    (["--no-wait", "--ack-endpoint", "tcp://127.0.0.1:1"], "--no-wait gets no answer"),
])
def test_waiting_options_without_waiting_are_usage_errors(args: list[str], message: str
                                                          ) -> None:
    result = relay_push(*args, "tcp://127.0.0.1:1", "temp_f1", "1", wait=True)
    assert result.returncode == 2
    assert result.stderr.decode().startswith(f"relay-push: {message}")


def test_no_default_ack_endpoint_beside_ipc_is_a_usage_error() -> None:
    result = relay_push("ipc:///tmp/nowhere", "temp_f1", "1", wait=True)
    assert result.returncode == 2
    assert "give the acknowledged endpoint" in result.stderr.decode()
