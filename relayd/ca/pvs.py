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

from pcaspy import _cas, cas

from relayd.ca import gdd as ca_gdd
from relayd.logs import RateLimitedLog
from relayd.core.meta import Field
from relayd.core.pvstate import PVState
from relayd.core.values import convert

log = logging.getLogger("relayd.ca")
_internal_errors = RateLimitedLog(log, burst=3, period=60.0)

DBE_VALUE_LOG = cas.DBE_VALUE | cas.DBE_LOG
DBE_ALL = cas.DBE_VALUE | cas.DBE_LOG | cas.DBE_ALARM
DBE_PROPERTY = cas.DBE_PROPERTY
# casPV::postEvent as the SWIG function pcaspy's `postEvent` method wraps: called
# directly, every value event saves that method's Python frame (see `relayd.ca.gdd`).
_post_event = _cas.PV_postEvent
_CTRL_APPS = ca_gdd.CTRL_APPS_ALL

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


def ca_writer(client: Any) -> str:
    """The last writer of a PV a CA client put to (``ca user@host``, as it claims)."""
    return _writer(client.user, client.host)


@functools.lru_cache(maxsize=1024)
def _writer(user: str, host: str) -> str:
    # Formatting costs more than the rest of the bookkeeping of a CA put: a few clients
    # put again and again, so each writer is made once.
    return f"ca {user}@{host}"


class Handler(Protocol):
    """Who decides what a put to, or the release of, a `ServedPV` means."""

    def ca_put(self, pv: "ServedPV", client: Any, value: cas.gdd) -> int: ...

    def ca_released(self, pv: "ServedPV") -> None: ...

    def ca_field_put(self, pv: "FieldPV", client: Any, value: cas.gdd) -> int: ...

    def ca_field_released(self, pv: "FieldPV") -> None: ...


class MonitoredPV(cas.casPV):
    """What every relayd PV does alike for the CA library.

    It knows whether anyone monitors it (pcas says so with interestRegister and
    interestDelete), and hands puts and its final release (the last channel closed) to
    `_put` and `_released`, which each kind of PV defines.
    """

    def __init__(self) -> None:
        cas.casPV.__init__(self)
        self.monitored = False

    def _put(self, client: Any, value: cas.gdd) -> int:
        raise NotImplementedError

    def _released(self) -> None:
        raise NotImplementedError

    @guarded(cas.S_cas_internal)
    def write(self, client: Any, value: cas.gdd) -> int:
        return self._put(client, value)

    @guarded(cas.S_cas_internal)
    def writeNotify(self, client: Any, value: cas.gdd) -> int:
        # A put with completion (caput -c, pyepics wait=True) is applied at once, so
        # it completes at once; the status tells the client whether it was accepted.
        return self._put(client, value)

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
        self._released()


class ServedPV(MonitoredPV):
    """One PV as the CA server library sees it."""

    def __init__(self, state: PVState, handler: Handler):
        MonitoredPV.__init__(self)
        self.state = state
        self.handler = handler
        self.fields: dict[str, FieldPV] | None = None  # attached field PVs, by field name
        self.access_group = ""  # access security group, when an ACF is in use
        self.ca_attached = False  # CA channels hold it (from pvAttach to destroy)
        self.pva: Any = None  # its pvAccess channel while PVA clients have one (relayd.pva)

    def post(self, mask: int = DBE_VALUE_LOG, stamp: cas.epicsTimeStamp | None = None) -> None:
        """Send the current state to every monitor (a no-op when no one monitors)."""
        if self.monitored:
            _post_event(self, mask, ca_gdd.monitor_event(self.state, stamp))
        if self.fields:
            for field_pv in self.fields.values():
                field_pv.post()

    def post_property(self) -> None:
        """Tell monitors that the PV's attributes changed (DBE_PROPERTY)."""
        if self.monitored:
            self.postEvent(cas.DBE_PROPERTY, ca_gdd.ctrl_event(self.state))

    def field_pv(self, field: Field) -> "FieldPV":
        """The CA PV of one of this PV's fields, made on first use."""
        if self.fields is None:
            self.fields = {}
        field_pv = self.fields.get(field.name)
        if field_pv is None:
            field_pv = self.fields[field.name] = FieldPV(self, field, self.handler)
            if self.access_group:
                field_pv.setAccessSecurityGroup(self.access_group)
        return field_pv

    def setAccessSecurityGroup(self, group: str) -> bool:
        """Put this PV (and the fields made from it later) in access security `group`."""
        self.access_group = group
        return cas.casPV.setAccessSecurityGroup(self, group)

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
        ca_gdd.fill_read(value, self.state)
        return cas.S_casApp_success

    @guarded(cas.S_cas_internal)
    def read(self, ctx: Any, prototype: cas.gdd) -> int:
        # pcaspy's read fills DBR_GR/DBR_CTRL from the get* methods below, but asks the
        # same getHighLimit/getLowLimit for display and control limits; put the control
        # limits in their slots afterwards.
        status = cas.PV.read(self, ctx, prototype)
        if status == cas.S_casApp_success and prototype.applicationType() in _CTRL_APPS:
            ca_gdd.put_control_limits(prototype, self.state.meta)
        return status

    @guarded(cas.S_casApp_success)
    def getUnits(self, value: cas.gdd) -> int:
        value.putConvertString(self.state.meta.egu)
        return cas.S_casApp_success

    @guarded(cas.S_casApp_success)
    def getPrecision(self, value: cas.gdd) -> int:
        value.putConvertNumeric(self.state.meta.prec)
        return cas.S_casApp_success

    @guarded(cas.S_casApp_success)
    def getHighLimit(self, value: cas.gdd) -> int:
        value.putConvertNumeric(self.state.meta.hopr)
        return cas.S_casApp_success

    @guarded(cas.S_casApp_success)
    def getLowLimit(self, value: cas.gdd) -> int:
        value.putConvertNumeric(self.state.meta.lopr)
        return cas.S_casApp_success

    @guarded(cas.S_casApp_success)
    def getHighAlarmLimit(self, value: cas.gdd) -> int:
        value.putConvertNumeric(self.state.field("HIHI"))
        return cas.S_casApp_success

    @guarded(cas.S_casApp_success)
    def getLowAlarmLimit(self, value: cas.gdd) -> int:
        value.putConvertNumeric(self.state.field("LOLO"))
        return cas.S_casApp_success

    @guarded(cas.S_casApp_success)
    def getHighWarnLimit(self, value: cas.gdd) -> int:
        value.putConvertNumeric(self.state.field("HIGH"))
        return cas.S_casApp_success

    @guarded(cas.S_casApp_success)
    def getLowWarnLimit(self, value: cas.gdd) -> int:
        value.putConvertNumeric(self.state.field("LOW"))
        return cas.S_casApp_success

    def _put(self, client: Any, value: cas.gdd) -> int:
        return self.handler.ca_put(self, client, value)

    def _released(self) -> None:
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
        ca_gdd.fill_read(value, self.state)
        return cas.S_casApp_success


class FieldPV(MonitoredPV):
    """A record-style field of a relay PV, ``NAME.FIELD``, as its own CA PV.

    It holds nothing itself: reads come from the parent PV's state, writes go to the
    handler, which changes the parent's attributes. The parent posts to its attached
    field PVs whenever it changes, so a monitor on ``NAME.SEVR`` sees alarm changes.
    """

    def __init__(self, parent: ServedPV, field: Field, handler: Handler):
        MonitoredPV.__init__(self)
        self.parent = parent
        self.field = field
        self.handler = handler
        self.name = f"{parent.state.spec.name}.{field.name}"
        self._posted: object = None  # the value last sent to monitors

    def value(self) -> object:
        return self.parent.state.field(self.field.name)

    def post(self) -> None:
        """Tell monitors the field's value, if it changed (as an IOC posts a field)."""
        if self.monitored:
            value = self.value()
            if value != self._posted:
                self._posted = value
                self.postEvent(DBE_VALUE_LOG, ca_gdd.field_event(
                    self.field.ca_type, value, self.parent.state))

    @guarded(cas.S_casApp_success)
    def interestRegister(self) -> int:
        self._posted = self.value()  # pcas sends the current value on subscription
        return MonitoredPV.interestRegister(self)

    @guarded("")
    def getName(self) -> str:
        return self.name

    @guarded(cas.aitEnumInvalid)
    def bestExternalType(self) -> int:
        return ca_gdd.FIELD_AIT[self.field.ca_type]

    @guarded(0)
    def maxDimension(self) -> int:
        return 0

    @guarded(1)
    def maxBound(self, dimension: int) -> int:
        return 1

    @guarded(cas.S_casApp_undefined)
    def getValue(self, value: cas.gdd) -> int:
        ca_gdd.fill_field(value, self.field.ca_type, self.value(), self.parent.state)
        return cas.S_casApp_success

    @guarded(cas.S_casApp_success)
    def getEnums(self, value: cas.gdd) -> int:
        if self.field.menu:
            value.put(list(self.field.menu))
        return cas.S_casApp_success

    def _put(self, client: Any, value: cas.gdd) -> int:
        return self.handler.ca_field_put(self, client, value)

    def _released(self) -> None:
        self.handler.ca_field_released(self)
