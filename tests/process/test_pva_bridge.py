"""relayd.pva: the provider and the bridge with a real p4p server and client, without pcas.

The host is a small stand-in for the CA server (`PVAHost`): a real `Relay` and registry,
PV objects with the attributes the CA server's PVs have, and a record of refusals and
posts. This test's main thread plays the CA loop: it drains the bridge while p4p's
client, in a worker thread, waits for its answers. Races that a real relay meets only by
chance (a client back before its disconnection was handled, a put to a channel closed
meanwhile) are driven here directly.
"""

from __future__ import annotations

import socket
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Iterator

import pytest

from relayd.config import Config
from relayd.core.errors import Reason, Refused
from relayd.core.names import Grammar
from relayd.core.registry import Registry
from relayd.core.writes import Relay
from relayd.pva import serve
from relayd.pva.bridge import DBE_VALUE, PVABridge
from relayd.pva.provider import PUT, RELEASED, Request
from tests.harness import free_port, wait_for

pytestmark = pytest.mark.timeout(60)

PREFIX = "pb"


class PV:
    def __init__(self, state: Any):
        self.state = state
        self.pva: Any = None
        self.ca_attached = False
        self.access_group = ""


class Control:
    by_name: dict = {}
    delpv = None

    def get(self, name: str) -> None:
        return None


class Host:
    """What the bridge needs of the CA server, recording what it is asked."""

    def __init__(self, max_placeholders: int = 10):
        grammar = Grammar(PREFIX)
        self.relay: Relay[PV] = Relay(grammar, Registry(grammar, PV, 100, max_placeholders))
        self.control = Control()
        self.refusals: list[tuple[Reason, str]] = []
        self.pva: PVABridge | None = None

    def report(self, refused: Refused, source: str, way: str = "ca") -> int:
        self.refusals.append((refused.reason, source))
        return 0

    def client_put(self, spec, raw, ts_ns=None, meta=None, writer="", way="ca") -> PV:
        pv, _ = self.relay.put_spec(spec, raw, ts_ns or time.time_ns(), time.monotonic(), meta,
                                    writer, way)
        if pv.pva is not None:
            self.pva.update(pv, DBE_VALUE)
        return pv

    def meta_changed(self, pv: PV, alarm_changed: bool, now: float) -> None:
        pass


@pytest.fixture
def served(monkeypatch) -> Iterator[tuple[Host, PVABridge, Any, ThreadPoolExecutor]]:
    search = free_port((socket.SOCK_DGRAM,))
    environ = {"EPICS_PVAS_INTF_ADDR_LIST": "127.0.0.1", "EPICS_PVAS_BROADCAST_PORT": str(search),
               "EPICS_PVAS_SERVER_PORT": "0", "EPICS_PVAS_AUTO_BEACON_ADDR_LIST": "NO",
               "EPICS_PVAS_BEACON_ADDR_LIST": "127.0.0.1"}
    for key, value in environ.items():
        monkeypatch.setenv(key, value)
    host = Host(max_placeholders=1)
    bridge = serve.start(Config(prefix=PREFIX), host, environ=environ)
    host.pva = bridge
    from p4p.client.thread import Context

    client = Context("pva", conf={"EPICS_PVA_ADDR_LIST": f"127.0.0.1:{search}",
                                  "EPICS_PVA_AUTO_ADDR_LIST": "NO"}, useenv=False, nt=False)
    pool = ThreadPoolExecutor(4)
    yield host, bridge, client, pool
    pool.shutdown(wait=False, cancel_futures=True)
    client.close()
    bridge.stop()


def settle(bridge: PVABridge, future: Future, timeout: float = 10.0) -> Any:
    """Play the CA loop until the client's call returns; its result (or exception)."""
    wait_for(lambda: bridge.drain(100, 0.01) and future.done(), timeout, interval=0.005,
             what="the client's call")
    return future.exception() or future.result()


def test_a_put_creates_the_pv_and_a_get_reads_it(served):
    host, bridge, client, pool = served
    settle(bridge, pool.submit(client.put, f"{PREFIX}:x_f1", {"value": 2.5}, timeout=5))
    got = settle(bridge, pool.submit(client.get, f"{PREFIX}:x_f1", timeout=5))
    assert got["value"] == 2.5
    assert bridge.status.accepted == 1 and bridge.status.requests >= 2


def test_a_second_placeholder_beyond_the_limit_is_refused(served):
    host, bridge, client, pool = served
    first = pool.submit(client.get, f"{PREFIX}:one_f1", timeout=5)
    assert settle(bridge, first)["alarm.message"] == "UDF"
    second = pool.submit(client.get, f"{PREFIX}:two_f1", timeout=2)
    assert isinstance(settle(bridge, second), TimeoutError)
    assert (Reason.PLACEHOLDER_LIMIT, ) == tuple({r for r, _ in host.refusals})
    assert len(host.relay.registry.placeholders) == 1


def test_a_client_back_before_its_disconnection_is_handled_keeps_the_channel(served):
    host, bridge, client, pool = served
    name = f"{PREFIX}:kept_f1"
    settle(bridge, pool.submit(client.get, name, timeout=5))
    channel = bridge.provider.channels[name]
    assert channel.events.connected
    # The last disconnection was queued, but the client came back meanwhile.
    bridge._released(Request(RELEASED, channel, None, time.monotonic()))
    assert bridge.provider.channels[name] is channel and channel.pv.pva is channel
    # Once it is really gone, the channel closes and the placeholder is forgotten.
    channel.events.connected = False
    bridge._released(Request(RELEASED, channel, None, time.monotonic()))
    assert name not in bridge.provider.channels
    assert name not in host.relay.registry.placeholders


def test_a_put_to_a_channel_closed_meanwhile_is_refused_as_deleted(served):
    host, bridge, client, pool = served
    name = f"{PREFIX}:gone_f1"
    settle(bridge, pool.submit(client.put, name, {"value": 1.0}, timeout=5))
    channel = bridge.provider.channels[name]
    bridge.deleted(channel.pv)

    class Op:
        error = "unanswered"

        def account(self):
            return "someone"

        def roles(self):
            return set()

        def peer(self):
            return "127.0.0.1:5000"

        def done(self, error=None):
            self.error = error

    op = Op()
    bridge._put(Request(PUT, channel, (name, op), time.monotonic()))
    assert op.error == f"noSuchPV: {name} was deleted"
    assert host.refusals[-1] == (Reason.NO_SUCH_PV, "PVA put from someone@127.0.0.1")
