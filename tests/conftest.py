"""Fixtures: relayd processes on loopback, the two CA clients and the two PVA clients.

The EPICS environment is set here, at import, before pyepics, caproto, p4p or pvapy is
imported anywhere, because pyepics (libca) and pvapy read it only once per process. As
for CA, the ports of every relay's pvAccess server are reserved up front: UDP search
ports (`PVA_PORTS`, listed in EPICS_PVA_ADDR_LIST: p4p searches them) and TCP ports
(`PVA_TCP_PORTS`, listed in EPICS_PVA_NAME_SERVERS: pvAccessCPP, under pvapy, keeps only
one port per host of an address list, so pvapy finds the relays by TCP name search). PVA
servers send their beacons to 127.0.0.1 only.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Callable, Iterator

import pytest

from tests.harness import (
    CaprotoClient, PortPool, PyepicsClient, RelayProcess, free_port, unique_prefix,
)
from tests.pva_harness import P4PClient, PvapyClient

PORT_POOL_SIZE = 16
PORTS = PortPool(PORT_POOL_SIZE)
PVA_PORTS = PortPool(PORT_POOL_SIZE, kinds=(socket.SOCK_DGRAM,))
PVA_TCP_PORTS = PortPool(PORT_POOL_SIZE, kinds=(socket.SOCK_STREAM,))

# Beacons from every relay under test go to this socket, which nobody reads: without a
# listener the CA server library logs "Connection refused" for every beacon.
_BEACON_SINK = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
_BEACON_SINK.bind(("127.0.0.1", 0))

os.environ.update(
    EPICS_CA_ADDR_LIST=PORTS.addr_list(),
    EPICS_CA_AUTO_ADDR_LIST="NO",
    EPICS_CAS_INTF_ADDR_LIST="127.0.0.1",
    EPICS_CAS_BEACON_ADDR_LIST="127.0.0.1",
    EPICS_CAS_AUTO_BEACON_ADDR_LIST="NO",
    EPICS_CAS_BEACON_PORT=str(_BEACON_SINK.getsockname()[1]),
    EPICS_CA_REPEATER_PORT=str(free_port()),
    EPICS_CA_CONN_TMO="5",
    EPICS_CA_MAX_ARRAY_BYTES=str(20_000_000),
    EPICS_PVA_ADDR_LIST=PVA_PORTS.addr_list(),
    EPICS_PVA_AUTO_ADDR_LIST="NO",
    EPICS_PVA_NAME_SERVERS=PVA_TCP_PORTS.addr_list(),
    EPICS_PVAS_INTF_ADDR_LIST="127.0.0.1",
    EPICS_PVAS_BEACON_ADDR_LIST="127.0.0.1",
    EPICS_PVAS_AUTO_BEACON_ADDR_LIST="NO",
    EPICS_PVA_CONN_TMO="5",
)


@pytest.fixture(scope="session")
def session_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("relayd")


@pytest.fixture(scope="session")
def pyepics_client() -> PyepicsClient:
    return PyepicsClient()


@pytest.fixture(scope="session")
def caproto_client() -> Iterator[CaprotoClient]:
    client = CaprotoClient()
    yield client
    client.context.disconnect()
    # The context leaves its broadcaster (UDP search socket and retry thread) running: a
    # retry after the socket closed raised in a thread during whichever test ran next.
    client.context.broadcaster.disconnect()


@pytest.fixture(params=["pyepics", "caproto"])
def client(request: pytest.FixtureRequest) -> PyepicsClient | CaprotoClient:
    """Each end-to-end test that takes `client` runs once with each CA client."""
    return request.getfixturevalue(f"{request.param}_client")


@pytest.fixture(scope="session")
def p4p_client() -> Iterator[P4PClient]:
    client = P4PClient()
    yield client
    client.close()


@pytest.fixture(scope="session")
def pvapy_client() -> PvapyClient:
    return PvapyClient()


@pytest.fixture(params=["p4p", "pvapy"])
def pva(request: pytest.FixtureRequest) -> P4PClient | PvapyClient:
    """Each end-to-end test that takes `pva` runs once with each PVA client: p4p (pvxs)
    and pvapy (pvAccessCPP, EPICS base's own C++ implementation)."""
    return request.getfixturevalue(f"{request.param}_client")


@pytest.fixture
def start_relay(session_dir: Path) -> Iterator[Callable[..., RelayProcess]]:
    """Start relayd processes for one test; each is stopped (and checked) afterwards."""
    started: list[RelayProcess] = []

    def start(*args: str, prefix: str | None = None, wait: bool = True,
              env: dict[str, str] | None = None, expect_exit: int = 0) -> RelayProcess:
        """Start relayd; at teardown it must exit with `expect_exit` (0: a clean stop)."""
        relay = RelayProcess(prefix or unique_prefix(), PORTS.take(), session_dir,
                             list(args), dict(env or {}), pva_search_port=PVA_PORTS.take(),
                             pva_port=PVA_TCP_PORTS.take())
        started.append((relay, expect_exit))
        return relay.start(wait=wait)

    yield start
    failures = []
    for relay, expected in started:
        code = relay.stop()
        PORTS.give_back(relay.port)
        PVA_PORTS.give_back(relay.pva_search_port)
        PVA_TCP_PORTS.give_back(relay.pva_port)
        if code != expected:
            failures.append(f"relayd {relay.prefix} exited with {code}, not {expected}:\n"
                            f"{relay.log_text()}")
    assert not failures, "\n".join(failures)


@pytest.fixture(scope="module")
def shared_relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    """One relay for a whole test module; tests use names of their own on it."""
    relay = RelayProcess(unique_prefix(), PORTS.take(), tmp_path_factory.mktemp("shared"),
                         pva_search_port=PVA_PORTS.take(), pva_port=PVA_TCP_PORTS.take())
    relay.start()
    yield relay
    code = relay.stop()
    PORTS.give_back(relay.port)
    PVA_PORTS.give_back(relay.pva_search_port)
    PVA_TCP_PORTS.give_back(relay.pva_port)
    assert code == 0, relay.log_text()


_counter = iter(range(1_000_000))


@pytest.fixture
def name() -> Callable[[str], str]:
    """Make PV base names unique to this test: name("x_f1") -> "x<n>_f1"."""
    serial = next(_counter)

    def make(base_with_suffix: str) -> str:
        base, _, suffix = base_with_suffix.rpartition("_")
        return f"{base}{serial}_{suffix}"

    return make
