"""The CA face of one PV: a pcaspy ``casPV`` wrapped around a pure `PVState`.

pcaspy calls these methods from C++ (SWIG directors). A Python exception escaping one of
them becomes a C++ exception inside the CA server library, which disconnects the client
and, the second time, aborts the whole process. So every method the library calls runs
under `guarded`: an unexpected error is logged (rate-limited, with its traceback) and
turned into a failure status for that one request.

What a request means is decided by the PV's handler, not here: the relay server for
relay PVs, the control PVs for ``pvlist``/``delpv``/status. This class only translates.
"""

from __future__ import annotations

import functools
import logging
import time
from typing import Any, Callable, Protocol, TypeVar

from pcaspy import cas

from relayd import ca_gdd
from relayd.logs import RateLimitedLog
from relayd.pvstate import PVState
from relayd.values import convert

log = logging.getLogger("relayd.ca")
_internal_errors = RateLimitedLog(log, burst=3, period=60.0)

DBE_VALUE_LOG = cas.DBE_VALUE | cas.DBE_LOG
DBE_ALL = cas.DBE_VALUE | cas.DBE_LOG | cas.DBE_ALARM

F = TypeVar("F", bound=Callable[..., Any])


def guarded(fallback: object) -> Callable[[F], F]:
    """Run a method called by the CA library so that it can never raise into C++."""

    def wrap(method: F) -> F:
        @functools.wraps(method)
        def guard(*args: Any) -> Any:
            try:
                return method(*args)
            except Exception:
                _internal_errors.log(
                    logging.ERROR, method.__qualname__,
                    "internal error in %s; the request failed", method.__qualname__,
                    exc_info=True,
                )
                return fallback

        return guard  # type: ignore[return-value]

    return wrap


def put_source(client: Any) -> str:
    """Who sent a CA put, as the client claims it (CA user and host are not verified)."""
    return f"CA put from {client.user}@{client.host}"


class Handler(Protocol):
    """Who decides what a put to, or the release of, a `ServedPV` means."""

    def ca_put(self, pv: "ServedPV", client: Any, value: cas.gdd) -> int: ...

    def ca_released(self, pv: "ServedPV") -> None: ...


class ServedPV(cas.casPV):
    """One PV as the CA server library sees it."""

    def __init__(self, state: PVState, handler: Handler):
        cas.casPV.__init__(self)
        self.state = state
        self.handler = handler
        self.monitored = False

    def post(self, mask: int = DBE_VALUE_LOG, stamp: cas.epicsTimeStamp | None = None) -> None:
        """Send the current state to every monitor (a no-op when no one monitors)."""
        if self.monitored:
            self.postEvent(mask, ca_gdd.event(self.state, stamp))

    # --- called by the CA server library -------------------------------------------

    @guarded("")
    def getName(self) -> str:
        return self.state.spec.name

    @guarded(cas.aitEnumInvalid)
    def bestExternalType(self) -> int:
        return ca_gdd.AIT[self.state.spec.kind]

    @guarded(0)
    def maxDimension(self) -> int:
        return 0 if self.state.spec.count == 1 else 1

    @guarded(1)
    def maxBound(self, dimension: int) -> int:
        return self.state.spec.count if dimension == 0 else 0

    @guarded(cas.S_casApp_undefined)
    def getValue(self, value: cas.gdd) -> int:
        ca_gdd.fill(value, self.state)
        return cas.S_casApp_success

    @guarded(cas.S_cas_internal)
    def write(self, client: Any, value: cas.gdd) -> int:
        return self.handler.ca_put(self, client, value)

    @guarded(cas.S_cas_internal)
    def writeNotify(self, client: Any, value: cas.gdd) -> int:
        # A put with completion (caput -c, pyepics wait=True) is applied at once, so
        # it completes at once; the status tells the client whether it was accepted.
        return self.handler.ca_put(self, client, value)

    @guarded(cas.S_casApp_success)
    def interestRegister(self) -> int:
        self.monitored = True
        return cas.S_casApp_success

    @guarded(None)
    def interestDelete(self) -> None:
        self.monitored = False

    @guarded(None)
    def destroy(self) -> None:
        # The library is done with this PV: its last channel closed.
        self.monitored = False
        self.handler.ca_released(self)


class ComputedPV(ServedPV):
    """A read-only PV whose value is computed from the relay: the list and status PVs.

    The value is recomputed when a client reads it (so a read is always current) and
    when the server refreshes the status PVs (so monitors see changes); monitors get an
    event only when the computed value changed.
    """

    def __init__(self, state: PVState, handler: Handler, compute: Callable[[], object]):
        super().__init__(state, handler)
        self.compute = compute
        self._last: object = object()

    def refresh(self, ts_ns: int) -> bool:
        """Recompute; True if the value changed (and the state now holds it)."""
        raw = self.compute()
        if raw is self._last or raw == self._last:
            return False
        self._last = raw
        self.state.put(convert(self.state.spec, raw), ts_ns)
        return True

    @guarded(cas.S_casApp_undefined)
    def getValue(self, value: cas.gdd) -> int:
        self.refresh(time.time_ns())
        ca_gdd.fill(value, self.state)
        return cas.S_casApp_success
