"""Starting pvAccess in the CA process: the p4p server, its environment, its port.

The server is p4p's (pvxs), configured by the standard ``EPICS_PVAS_*`` environment
(falling back to ``EPICS_PVA_*``, as every pvxs server does): interfaces, TCP port, UDP
search port, beacons. pvxs, like pcas, serves on another TCP port when its own is
taken; relayd follows the CA rule for that: one WARNING naming both ports and what it
means, and a boot failure only when the operator asked for strict ports.
"""

from __future__ import annotations

import logging
import os
from typing import Mapping

from p4p.server import DynamicProvider, Server

from relayd.config import Config
from relayd.core.errors import BootError
from relayd.logs import serving
from relayd.pva.bridge import MayPut, PVABridge, PVAHost
from relayd.pva.provider import Provider, Requests

log = logging.getLogger("relayd.pva")

DEFAULT_PORT = 5075  # pvAccess's TCP port


def wanted_port(environ: Mapping[str, str]) -> int:
    """The TCP port the environment asks for (EPICS_PVAS_SERVER_PORT wins)."""
    text = environ.get("EPICS_PVAS_SERVER_PORT") or environ.get("EPICS_PVA_SERVER_PORT")
    try:
        return int(text) if text else DEFAULT_PORT
    except ValueError:
        return DEFAULT_PORT  # pvxs ignores it too, and uses the default


def port_problem(wanted: int, served: int) -> str | None:
    """What an operator must know when pvAccess is not served on the port asked for."""
    if wanted in (0, served):
        return None
    return (f"pvAccess TCP port {wanted} is taken by another program; serving on port "
            f"{served} instead. Clients that find the relay by searching (UDP) still reach "
            f"it; clients configured with host:{wanted} (EPICS_PVA_NAME_SERVERS, gateways) "
            "reach the other program")


def interface_host(entry: str) -> str:
    """One entry of pvxs's effective ``EPICS_PVAS_INTF_ADDR_LIST`` without the TCP port
    pvxs writes into it (``127.0.0.1:5075``), so that the start-up line names each port
    once; an IPv6 address keeps its colons (``::1``, ``[::1]:5075`` gives ``[::1]``)."""
    host, colon, port = entry.rpartition(":")
    if colon and port.isdigit() and (":" not in host or host.endswith("]")):
        return host
    return entry


def start(config: Config, host: PVAHost, may_put: MayPut | None = None,
          environ: Mapping[str, str] = os.environ) -> PVABridge | None:
    """Serve the relay's PVs over pvAccess; None with --no-pva. `BootError` if it cannot."""
    if config.no_pva:
        log.info("pvAccess is off (--no-pva)")
        return None
    registry = host.relay.registry
    requests = Requests()
    most = registry.max_pvs + registry.max_placeholders + len(host.control.by_name)
    provider = Provider(host.relay.grammar, registry.pvs, host.control.by_name, most,
                        requests)
    # p4p keeps only a weak reference to its providers: the bridge holds this one.
    dynamic = DynamicProvider(f"relayd-{config.prefix}", provider)
    try:
        server = Server(providers=[dynamic])
    except Exception as error:  # pvxs reports what it could not bind as a RuntimeError
        requests.close()
        raise BootError(f"cannot serve pvAccess: {error}") from None
    conf = server.conf()
    served = int(conf["EPICS_PVAS_SERVER_PORT"])
    problem = port_problem(wanted_port(environ), served)
    if problem and config.strict_port:
        server.stop()
        requests.close()
        raise BootError(problem + " (--strict-port)")
    if problem:
        log.warning("%s", problem)
    bridge = PVABridge(host, provider, requests, may_put)
    bridge.server, bridge.dynamic = server, dynamic
    bridge.status.port = served
    interfaces = [interface_host(entry) for entry in conf["EPICS_PVAS_INTF_ADDR_LIST"].split()
                  ] or ["0.0.0.0"]
    log.info("%s", serving(
        "PVA", [f"TCP {host}:{served}" for host in interfaces]
        + [f"UDP {host}:{conf['EPICS_PVAS_BROADCAST_PORT']}" for host in interfaces],
        f"PVs {config.prefix}:<name>_<dtype><count>"))
    return bridge
