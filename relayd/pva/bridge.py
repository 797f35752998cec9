"""The CA loop's side of pvAccess: applies what p4p's threads queued, posts every change.

`PVABridge` runs only on the CA process's main thread, between CA turns, so it may use
the registry and the core like the CA server does. Per cycle it takes the requests that
p4p's threads queued (`provider.Requests`): a new channel is attached to its PV (made a
placeholder if the name holds none, within the same limits as a CA connection) and its
SharedPV opened with the PV's state; a put goes through the same core path as a CA put
(`PVAHost.client_put`), under the same access security rules, and its verdict completes
the client's operation (an error carries the refusal's reason and text); a channel whose
last client has gone is closed, and a placeholder that no CA client holds is forgotten.

Posting: the CA server calls `update` wherever it posts to CA, only for PVs that have a
PVA channel (``pv.pva``): one attribute test per post for every other PV. The update is
a delta: value and time stamp, the alarm when it changed, everything when the
attributes changed.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

from relayd.core.errors import Reason, Refused
from relayd.core.ops import Way
from relayd.core.writes import Relay
from relayd.logs import RateLimitedLog
from relayd.pva import nt
from relayd.pva.provider import (
    ATTACH, LATE, PUT, REFUSED, REJECT, RELEASED, Channel, Provider, Request, Requests,
)

log = logging.getLogger("relayd.pva")

# EPICS event mask bits (caeventmask.h), as the CA server passes them to `update`.
DBE_VALUE, DBE_LOG, DBE_ALARM, DBE_PROPERTY = 1, 2, 4, 8
# A closed channel is kept this long, so that a client attaching to it in the instant it
# was closed can be disconnected too (see `Events.onFirstConnect`).
CLOSED_KEPT = 5.0

MayPut = Callable[[str, Sequence[str], str], bool]  # (access group, credentials, host)


class PVAHost(Protocol):
    """What the bridge needs of the CA server (`relayd.ca.server.CAServer`)."""

    relay: Relay[Any]
    control: Any  # `relayd.ca.control.ControlPVs`: get(name), delpv, delete_named()

    def report(self, refused: Refused, source: str, way: str = Way.CA.value) -> int:
        """Count (by way in) and log a refusal."""

    def client_put(self, spec: Any, raw: object, ts_ns: int | None = None,
                   meta: dict | None = None, writer: str = "",
                   way: str = Way.CA.value) -> Any:
        """A client's put: convert, make the PV if needed, apply, post; `Refused` if not."""

    def meta_changed(self, pv: Any, alarm_changed: bool, now: float) -> None:
        """`pv`'s attributes alone changed: post and save them."""


@dataclass
class PVAStatus:
    """What the status PVs show of pvAccess (`status:pva:*`)."""

    port: int = 0  # the TCP port served
    channels: int = 0  # names with a channel (refreshed with the status PVs)
    accepted: int = 0  # puts accepted over PVA
    refused: int = 0  # puts refused over PVA
    requests: int = 0  # requests from p4p's threads handled
    lag: float = 0.0  # longest wait of a request for the CA loop, last status interval


def credentials(op: Any) -> tuple[list[str], str]:
    """Who a put is from, for the access rules, as QSRV asks them of EPICS asLib.

    The account the client names (its part after a last '/'), one ``role/<group>`` per
    group the server finds it in, and the host as the peer's IP address, without port.
    """
    account = op.account().rpartition("/")[2]
    roles = sorted(op.roles())
    return [account, *(f"role/{role}" for role in roles)], peer_host(op.peer())


def peer_host(peer: str) -> str:
    """``10.0.0.5`` of ``10.0.0.5:40312``; an IPv4-mapped IPv6 peer as its IPv4 address."""
    host = peer.rpartition(":")[0] if ":" in peer else peer
    host = host.strip("[]")
    return host[7:] if host.startswith("::ffff:") else host


class PVABridge:
    """pvAccess for one relay: its provider's requests applied, its channels posted to."""

    def __init__(self, host: PVAHost, provider: Provider, requests: Requests,
                 may_put: MayPut | None = None):
        self.host = host
        self.relay = host.relay
        self.provider = provider
        self.requests = requests
        self.may_put = may_put
        self.server: Any = None  # the p4p Server and its provider, once `serve.start` made them
        self.dynamic: Any = None
        self.status = PVAStatus()
        self._lag = 0.0
        self._closed: list[tuple[float, Channel]] = []
        self._control: set[Channel] = set()  # channels of the relay's own PVs
        self._log = RateLimitedLog(log, burst=3, period=60.0)
        self._handlers: dict[str, Callable[[Request], None]] = {
            ATTACH: self._attach, REJECT: self._reject, PUT: self._put,
            RELEASED: self._released, LATE: self._late, REFUSED: self._refused,
        }

    def fileno(self) -> int:
        return self.requests.fileno()

    # --- requests from p4p's threads --------------------------------------------------

    def drain(self, most: int, budget: float) -> bool:
        """Handle waiting requests, for at most `most` of them or `budget` seconds;
        True once none is left."""
        deadline = time.perf_counter() + budget
        while True:
            batch = self.requests.take(min(most, 100))
            if not batch:
                return True
            now = time.monotonic()
            for request in batch:
                self._lag = max(self._lag, now - request.queued)
                self._handle(request)
            self.status.requests += len(batch)
            most -= len(batch)
            if most <= 0 or time.perf_counter() > deadline:
                return False

    def _handle(self, request: Request) -> None:
        try:
            self._handlers[request.kind](request)
        except Exception:  # a bug: keep serving, say so, fail the client's put if any
            self._log.log(logging.ERROR, "internal", "internal error handling a pvAccess "
                          "%s request", request.kind, exc_info=True)
            self.host.report(Refused(Reason.INTERNAL, f"a pvAccess {request.kind}"), "PVA",
                             Way.PVA.value)
            if request.kind == PUT:
                request.item[1].done(error="internal error in relayd (logged)")

    def _attach(self, request: Request) -> None:
        channel = request.channel
        if channel is None or channel.events.dead:
            return
        name = channel.name
        pv = self.host.control.get(name)
        if pv is None:
            pv = self.relay.registry.lookup(name)
        try:
            if pv is None:
                pv = self.relay.registry.attach(name)
        except Refused as refused:
            self.host.report(refused, f"PVA connect from {request.item}", Way.PVA.value)
            self.provider.full = True
            self._forget(channel)
            return
        if pv is None:  # not a relay name after all: the provider answered wrongly
            self._forget(channel)
            return
        if pv.pva is not None:  # cannot happen: one channel per name
            self._forget(pv.pva)
        if pv is self.host.control.get(name):  # the relay's own PVs: posted by `refresh`
            refresh = getattr(pv, "refresh", None)  # computed ones are made current first
            if refresh is not None:
                refresh(time.time_ns())
            self._control.add(channel)
        channel.pv, pv.pva = pv, channel
        channel.scratch = nt.scratch(nt.shape(pv.state.spec))
        channel.posted_ns = pv.state.ts_ns
        channel.shared.open(nt.full(pv.state))

    def _reject(self, request: Request) -> None:
        channel = request.channel
        channel.events.dead = True
        self.host.report(Refused(Reason.PLACEHOLDER_LIMIT, (
            f"{channel.name}: {self.provider.most} names have a pvAccess channel already "
            "(--max-pvs + --max-placeholders)")), f"PVA connect from {request.item}",
            Way.PVA.value)
        self._close(channel)

    def _released(self, request: Request) -> None:
        channel = request.channel
        if channel is not None and self.provider.drop(channel, only_if_unused=True):
            self._detach(channel)

    def _late(self, request: Request) -> None:
        if request.channel is not None:
            request.channel.shared.close()

    def _refused(self, request: Request) -> None:
        self.host.report(request.item, "PVA search", Way.PVA.value)

    # --- puts -------------------------------------------------------------------------

    def _put(self, request: Request) -> None:
        name, op = request.item
        who, address = credentials(op)
        source = f"PVA put from {who[0]}@{address}"
        try:
            pv = self._target(request.channel, name)
            if self.may_put is not None and not self.may_put(
                    pv.access_group or "DEFAULT", who, address):
                raise Refused(Reason.AUTH_DENIED, f"{name}: the access security rules do not "
                              f"let {who[0]} at {address} write it")
            if pv is self.host.control.get(name):
                self._control_put(pv, op.value(), source)
            else:
                self._apply(pv, nt.read_put(op.value(), request.channel.shared.current(),
                                            pv.state.spec), f"pva {who[0]}@{address}")
        except Refused as refused:
            self.status.refused += 1
            self.host.report(refused, source, Way.PVA.value)
            op.done(error=str(refused))
            return
        self.status.accepted += 1
        op.done()

    def _target(self, channel: Channel | None, name: str) -> Any:
        """The PV a put goes to; `Refused` if its channel was closed (a delete)."""
        pv = channel.pv if channel is not None else None
        if pv is None or pv.pva is not channel:
            raise Refused(Reason.NO_SUCH_PV, f"{name} was deleted")
        return pv

    def _apply(self, pv: Any, put: nt.Put, writer: str) -> None:
        """The same path as a CA put (a value) or a CA field put (attributes alone);
        `writer` becomes the PV's last writer (``pva user@host``)."""
        spec = pv.state.spec
        if put.value is not nt.NO_VALUE:
            self.host.client_put(spec, put.value, put.ts_ns, put.meta or None, writer,
                                 Way.PVA.value)
            return
        target, alarm_changed = self.relay.set_meta(spec.name, put.meta)
        self.host.meta_changed(target, alarm_changed, time.monotonic())

    def _control_put(self, pv: Any, value: Any, source: str) -> None:
        """A put to ``delpv`` deletes the PV it names; the other control PVs are read-only."""
        control = self.host.control
        if pv is not control.delpv:
            raise Refused(Reason.READ_ONLY, f"{pv.state.spec.name} is read-only")
        if "value" not in value.changedSet():
            raise Refused(Reason.BAD_VALUE, f"{pv.state.spec.name}: put the name to delete")
        control.delete_named(str(value["value"]).split("\0", 1)[0], source)

    # --- posting ----------------------------------------------------------------------

    def update(self, pv: Any, mask: int) -> None:
        """Post `pv`'s change to its PVA clients (`mask`: the DBE_* bits of the event).

        DBE_PROPERTY posts everything; otherwise the value and time stamp (DBE_VALUE),
        and the alarm (DBE_ALARM).
        """
        channel = pv.pva
        state = pv.state
        value = channel.scratch
        try:
            if mask & DBE_PROPERTY:
                channel.shared.post(nt.full(state))
                return
            if mask & DBE_VALUE:
                nt.fill_value(value, state)
            if mask & DBE_ALARM:
                nt.fill_alarm(value, state)
            channel.shared.post(value)
        except Exception:
            self._log.log(logging.ERROR, "post", "internal error posting %s over pvAccess; "
                          "its PVA clients are disconnected", state.spec.name, exc_info=True)
            self.deleted(pv)
        finally:
            value.unmark()

    def deleted(self, pv: Any) -> None:
        """`pv` is gone (deleted): close its channel, so its PVA clients reconnect."""
        channel = pv.pva
        if channel is not None:
            self.provider.drop(channel)
            self._detach(channel)

    def refresh(self, now: float) -> None:
        """Every status interval: post the relay's own PVs that changed, keep the status."""
        for channel in self._control:
            state = channel.pv.state
            if state.ts_ns != channel.posted_ns:
                channel.posted_ns = state.ts_ns
                self.update(channel.pv, DBE_VALUE | DBE_ALARM)
        status = self.status
        status.channels = len(self.provider.channels)
        status.lag, self._lag = self._lag, 0.0
        registry = self.relay.registry
        self.provider.full = len(registry.placeholders) >= registry.max_placeholders
        while self._closed and self._closed[0][0] + CLOSED_KEPT < now:
            self._closed.pop(0)

    # --- closing channels ---------------------------------------------------------------

    def _forget(self, channel: Channel) -> None:
        """Drop a channel the CA loop cannot serve: its clients are disconnected."""
        self.provider.drop(channel)
        self._detach(channel)

    def _detach(self, channel: Channel) -> None:
        """Close a dropped channel; a placeholder no CA client holds is forgotten."""
        pv, channel.pv = channel.pv, None
        self._control.discard(channel)
        if pv is not None and pv.pva is channel:
            pv.pva = None
            if not pv.ca_attached:
                self.relay.registry.release(pv)
        self._close(channel)

    def _close(self, channel: Channel) -> None:
        channel.events.dead = True
        channel.shared.close()
        self._closed.append((time.monotonic(), channel))

    def stop(self) -> None:
        """Stop serving: the server first (no more requests), then every channel."""
        if self.server is not None:
            self.server.stop()
        for channel in list(self.provider.channels.values()):
            self._forget(channel)
        self._closed.clear()
        self.requests.close()
