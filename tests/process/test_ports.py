"""relayd.ca.ports with real sockets: the start-up search, the sockets /proc shows.

The server that answers here is a few lines of UDP in a thread, answering as pcas does
(tests/e2e/test_ports.py has real relays answer).
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from typing import Iterator

import pytest

from relayd.ca.ports import (
    SEARCH_WAIT, CAEnv, bound_sockets, check_udp_port, find_server, search_answers,
    search_request,
)
from relayd.core.errors import BootError


@pytest.fixture
def answering() -> Iterator[tuple[socket.socket, list[bytes]]]:
    """A UDP 'server' on loopback that answers every search with TCP port 41234."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.05)
    seen: list[bytes] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                data, sender = sock.recvfrom(4096)
            except socket.timeout:
                continue
            seen.append(data)
            search_id = struct.unpack_from(">I", data, 16 + 12)[0]
            sock.sendto(struct.pack(">HHHHII", 6, 8, 41234, 0, 0xFFFFFFFF, search_id)
                        + b"\0\x0d" + b"\0" * 6, sender)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield sock, seen
    stop.set()
    thread.join()
    sock.close()


def test_a_server_that_answers_is_found(answering) -> None:
    sock, seen = answering
    assert find_server("p:pvlist", [sock.getsockname()]) == "127.0.0.1:41234"
    assert b"p:pvlist\0" in seen[0]


def test_our_own_search_coming_back_is_not_an_answer() -> None:
    """CI: the search socket got the CA server port's number, the search sent to this
    host at that port came back to it, and was read as "a relay at 82.69.76.89:5"."""
    assert search_answers(search_request("p:pvlist"), "127.0.0.1") == []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as echo:
        echo.bind(("127.0.0.1", 0))
        stop = threading.Event()

        def reflect() -> None:  # sends every datagram back where it came from
            echo.settimeout(0.05)
            while not stop.is_set():
                try:
                    datagram, sender = echo.recvfrom(4096)
                except socket.timeout:
                    continue
                echo.sendto(datagram, sender)

        thread = threading.Thread(target=reflect, daemon=True)
        thread.start()
        try:
            assert find_server("p:pvlist", [echo.getsockname()]) is None
        finally:
            stop.set()
            thread.join()


def test_silence_is_no_server_after_the_wait() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        started = time.monotonic()
        assert find_server("p:pvlist", [silent.getsockname()]) is None
        assert SEARCH_WAIT <= time.monotonic() - started < SEARCH_WAIT + 0.5
        silent.settimeout(0)
        assert silent.recv(4096) and silent.recv(4096) and silent.recv(4096)  # asked 3 times


def test_an_address_that_cannot_be_sent_to_is_logged_and_skipped(answering, caplog) -> None:
    sock, _ = answering
    with caplog.at_level("WARNING", logger="relayd.ca"):
        assert find_server("p:pvlist", [("127.0.0.1", 0), sock.getsockname()]) == (
            "127.0.0.1:41234")
    assert "CA search for p:pvlist cannot be sent to 127.0.0.1:0: Invalid argument" in (
        caplog.text)


def test_bound_sockets_are_this_processes_tcp_listeners_and_udp_sockets() -> None:
    before = bound_sockets()
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    unlistened = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    unlistened.bind(("127.0.0.1", 0))
    udp = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    udp.bind(("::1", 0))
    try:
        new = bound_sockets() - before
        assert new == {("TCP", "127.0.0.1", listener.getsockname()[1]),
                       ("UDP", "::1", udp.getsockname()[1])}
    finally:
        for sock in (listener, unlistened, udp):
            sock.close()


def test_a_udp_port_held_without_sharing_is_a_boot_error() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        env = CAEnv.read({"EPICS_CA_SERVER_PORT": str(port),
                          "EPICS_CAS_INTF_ADDR_LIST": "127.0.0.1"})
        with pytest.raises(BootError, match=f"cannot use CA port 127.0.0.1:{port}: Address "
                                            "already in use by a program that does not share"):
            check_udp_port(env)
