"""Helpers shared by the security, live-fuzz and fault-injection end-to-end tests.

Everything here talks to real relayd processes on loopback: the ZMQ pushes go through
real sockets (from this process, or from a Python subprocess where a test needs an
independent publisher), the reads through the harness's real CA clients.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import msgpack
import zmq

from tests.harness import RelayProcess, free_port, unique_prefix, wait_for

# Prepended to every snippet `run_snippet` and `start_snippet` run: the endpoint is
# argv[1], further arguments follow it.
PREAMBLE = '''\
import array, itertools, math, sys, time, threading
import msgpack, numpy as np, zmq
from relayd.client import Client, RelayUnreachable

endpoint = sys.argv[1]

'''


def full(relay: RelayProcess, base: str) -> str:
    return f"{relay.prefix}:{base}"


def zmq_port() -> int:
    return free_port((socket.SOCK_STREAM,))


# --- status PVs -------------------------------------------------------------------------


def status(reader: Any, relay: RelayProcess, suffix: str) -> Any:
    """The status PV ``<prefix>:status:<suffix>`` (text PVs as str)."""
    text = suffix in ("lastRefusal", "autosave:lastError")
    return reader.get(full(relay, f"status:{suffix}"), as_string=text)


def wait_status(reader: Any, relay: RelayProcess, suffix: str,
                condition: Callable[[Any], bool], timeout: float = 10.0,
                what: str = "") -> Any:
    """Poll a status PV until `condition(value)`; return that value."""
    seen: list[Any] = []

    def reached() -> bool:
        seen.append(status(reader, relay, suffix))
        return bool(condition(seen[-1]))

    try:
        wait_for(reached, timeout, what=what or f"status:{suffix} on {relay.prefix}")
    except AssertionError as error:
        raise AssertionError(f"{error}; last read {seen[-1:]}") from None
    return seen[-1]


def wait_status_is(reader: Any, relay: RelayProcess, suffix: str, expected: Any) -> None:
    """Poll a status PV until it equals `expected`."""
    wait_status(reader, relay, suffix, lambda value: value == expected,
                what=f"status:{suffix} == {expected} on {relay.prefix}")


def listed(reader: Any, relay: RelayProcess) -> list[str]:
    text = reader.get(full(relay, "pvlist"), as_string=True)
    return text.split(",") if text else []


def wait_listed(reader: Any, relay: RelayProcess, *pvs: str, timeout: float = 10.0) -> None:
    wait_for(lambda: set(pvs) <= set(listed(reader, relay)), timeout,
             what=f"{', '.join(pvs)} in the pvlist of {relay.prefix}")


# --- pushing ---------------------------------------------------------------------------------


def send_raw(endpoint: str, *messages: bytes, curve: dict | None = None,
             linger: float = 5.0) -> None:
    """Send each bytes object as one message from a bare PUSH socket, then flush."""
    context = zmq.Context()
    sock = context.socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, int(linger * 1000))
    sock.setsockopt(zmq.SNDHWM, 100_000)
    for option, value in (curve or {}).items():
        setattr(sock, option, value)
    sock.connect(endpoint)
    try:
        for message in messages:
            sock.send(message)
    finally:
        sock.close()
        context.term()


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def snippet_command(endpoint: str, body: str, *args: str) -> list[str]:
    return [sys.executable, "-c", PREAMBLE + textwrap.dedent(body), endpoint, *args]


def run_snippet(endpoint: str, body: str, *args: str) -> str:
    """Run `body` (after PREAMBLE) in a new Python process; return what it printed."""
    done = subprocess.run(snippet_command(endpoint, body, *args), capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, f"the pusher failed ({done.returncode}):\n{done.stderr}"
    return done.stdout


def relay_push(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess:
    """relay-push pushing (``--no-wait``); waiting for verdicts: tests/e2e/test_acks.py."""
    return subprocess.run([sys.executable, "-m", "relayd.client.push_cli", "--no-wait", *args],
                          capture_output=True, text=True, timeout=timeout)


# --- relays that must not start ---------------------------------------------------------


def wait_boot_failure(relay: RelayProcess, timeout: float = 15.0) -> str:
    """Wait for a relay started with ``wait=False`` to give up; return its one reason.

    It must exit with 3 within `timeout` seconds, log exactly one ``relayd cannot
    start`` line, and never restart a child on the way.
    """
    started = time.monotonic()
    try:
        code = relay.process.wait(timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"relayd did not give up within {timeout} s:\n"
                             f"{relay.log_text()}") from None
    log = relay.log_text()
    assert code == 3, f"relayd exited with {code}, not 3:\n{log}"
    assert time.monotonic() - started < timeout
    reasons = [line for line in log.splitlines() if "relayd cannot start" in line]
    assert len(reasons) == 1, log
    assert "restarting" not in log and "Traceback" not in log, log
    return reasons[0]


def write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@contextmanager
def own_relay(workdir: Path, *args: str) -> Iterator[RelayProcess]:
    """A relay outside `start_relay`, for tests that cannot say up front how it ends.

    It is stopped (or killed) when the block ends, whatever happened.
    """
    from tests.conftest import PORTS

    relay = RelayProcess(unique_prefix(), PORTS.take(), workdir, list(args))
    try:
        yield relay
    finally:
        try:
            if relay.process is not None and relay.process.poll() is None:
                relay.stop()
        finally:
            if relay.process is not None and relay.process.poll() is None:
                relay.process.kill()
                relay.process.wait()
            PORTS.give_back(relay.port)
