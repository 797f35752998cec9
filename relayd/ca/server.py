"""The CA server: answers searches, attaches channels and routes puts to the relay.

`CAServer` is the pcaspy ``caServer`` of one relay and the handler of its relay PVs. It
holds no state of its own beyond what it is given: the `Relay` (pure write logic and
registry) and the `ControlPVs`. pcaspy's module-level registry (``pcaspy.driver.manager``)
is never used; each relay's PVs live in its own `Registry`, and each CA server runs in a
process of its own (see `ca_process`).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

from pcaspy import cas

from relayd.store.writer import Autosaver
from relayd.ca.pvs import (
    DBE_ALL, DBE_PROPERTY, DBE_VALUE_LOG, FieldPV, ServedPV, ca_writer, guarded, put_source,
)
from relayd.config import Config
from relayd.ca.control import ControlPVs
from relayd.core.errors import Reason, Refused
from relayd.logs import RateLimitedLog
from relayd.core.meta import FIELDS, Field, Meta, check_changes
from relayd.core.names import Grammar, PVSpec
from relayd.core.ops import Way
from relayd.core.pvstate import PVState
from relayd.core.registry import Registry
from relayd.core.writes import Relay
from relayd.store.rows import SavedPV
from relayd.store.rows import restore as restore_pieces
from relayd.core.staleness import StaleWatch
from relayd.ca import gdd as ca_gdd

log = logging.getLogger("relayd.ca")

# Access security groups (ASG) of the relay's PVs; an ACF without one of them puts those
# PVs in its DEFAULT group.
ASG_RELAY = "RELAY"  # relay PVs, placeholders and their fields: write = create/put
ASG_DELETE = "DELETE"  # <prefix>:delpv
ASG_STATUS = "STATUS"  # <prefix>:pvlist and the status PVs (read-only anyway)

# The status `ca_put` returns for each refusal, chosen so that every CA client sees
# ECA_PUTFAIL, as an IOC answers a put it refuses. A put with completion always gets
# ECA_PUTFAIL from pcas, whatever the status; a plain put gets an exception message whose
# code pcas derives from it: ECA_ALLOCMEM for S_cas_noMemory, ECA_NOCONVERT for
# S_cas_noConvert, ECA_BADTYPE for S_cas_badType (PUT_STATUS holds none of them; a test
# checks), ECA_PUTFAIL for the rest. The status's own text ("Requested op does not fit")
# travels with it; the reason itself is in the log and the status PVs.
_PUT_STATUS_BY_CODE = {
    "badValue": cas.S_casApp_outOfBounds,        # "operation was out of bounds"
    "tooManyElements": cas.S_cas_badElementCount,  # "Bad element count"
    "pvLimit": cas.S_cas_hugeRequest,            # "Requested op does not fit"
    "bytesLimit": cas.S_cas_hugeRequest,
    "placeholderLimit": cas.S_cas_hugeRequest,
    "countLimit": cas.S_cas_hugeRequest,
    "nameTooLong": cas.S_cas_hugeRequest,
    "noSuchPV": cas.S_casApp_pvNotFound,         # "PV not found"
    "badName": cas.S_casApp_pvNotFound,
    "wrongPrefix": cas.S_casApp_pvNotFound,
    "readOnly": cas.S_cas_noWrite,               # "write access denied"
    "malformed": cas.S_cas_badRequest,           # not from CA: "client's request was invalid"
    "authDenied": cas.S_cas_noWrite,             # not from CA
    "internal": cas.S_cas_internal,              # "Internal failure"
}
PUT_STATUS = {reason: _PUT_STATUS_BY_CODE[reason.code] for reason in Reason}

LEFT_OUT_SHOWN = 10  # saved rows left out at start that the log names one by one


class CAServer(cas.caServer):
    """The CA server of one relay."""

    def __init__(self, config: Config):
        cas.caServer.__init__(self)
        # Access security groups are assigned to each PV as it is made (see SECURITY.md).
        self.access_security = bool(config.access_security)
        grammar = Grammar(config.prefix, config.name_limits)
        registry: Registry[ServedPV] = Registry(
            grammar, self._new_pv, config.max_pvs, config.max_placeholders,
            Meta(tmo=config.stale_timeout), config.max_total_bytes,
        )
        self.relay: Relay[ServedPV] = Relay(grammar, registry)
        self.control = ControlPVs(config, self.relay, self.delete, self.report)
        if self.access_security:
            self.control.delpv.setAccessSecurityGroup(ASG_DELETE)
            for pv in self.control.computed:
                pv.setAccessSecurityGroup(ASG_STATUS)
        self.stale_watch = StaleWatch()
        self.autosaver: Autosaver | None = None  # set by the CA process when enabled
        self.pva: Any = None  # the pvAccess bridge (relayd.pva), set by the CA process
        self.feed: Any = None  # the HTTP worker's change feed (`relayd.ca.feed`), if any
        # The PVs changed since its last feed while it runs, else None (`relayd.ca.feed`).
        self.changed: dict[Any, None] | None = None
        self._refusals = RateLimitedLog(log)
        # Deletes are logged like refusals: a script deleting 100,000 PVs must not write
        # 100,000 lines (status:deleted counts them all).
        self._deletes = RateLimitedLog(log)
        # PVs dropped while the CA library may still be inside a call on them; they are
        # freed (and their clients disconnected) after the current processing cycle.
        self._graveyard: list[Any] = []

    def _new_pv(self, state: PVState) -> ServedPV:
        pv = ServedPV(state, self)
        if self.access_security:
            pv.setAccessSecurityGroup(ASG_RELAY)
        return pv

    def report(self, refused: Refused, source: str, way: str = Way.CA.value) -> int:
        """Count (by way in) and log (rate-limited) a refusal; return the CA status for it."""
        text = self.relay.stats.count_refusal(refused, source, way)
        self._refusals.warning(refused.reason, "refused %s", text)
        return PUT_STATUS[refused.reason]

    # --- called by the CA server library -------------------------------------------

    @guarded(cas.pverDoesNotExistHere)
    def pvExistTest(self, ctx: Any, address: Any, name: str) -> int:
        if name in self.relay.registry.pvs or name in self.control.by_name:
            return cas.pverExistsHere
        try:
            if "." in name:
                found = self._field(name) is not None
            else:
                found = self.relay.registry.search(name)
        except Refused as refused:
            self.report(refused, "CA search")
            return cas.pverDoesNotExistHere
        return cas.pverExistsHere if found else cas.pverDoesNotExistHere

    @guarded(cas.S_casApp_pvNotFound)
    def pvAttach(self, ctx: Any, name: str) -> Any:
        pv = self.control.get(name)
        if pv is not None:
            return pv
        try:
            if "." in name:
                found = self._field(name)
                if found is None:
                    return cas.S_casApp_pvNotFound
                pv, field = found
                if field is not None:
                    return pv.field_pv(field)
            else:
                pv = self.relay.registry.attach(name)
        except Refused as refused:
            self.report(refused, "CA connect")
            return cas.S_casApp_pvNotFound
        if pv is None:
            return cas.S_casApp_pvNotFound
        pv.ca_attached = True  # until pcas calls destroy (ca_released)
        return pv

    def _field(self, name: str) -> tuple[ServedPV, Field | None] | None:
        """(PV, field) for ``NAME.FIELD`` (field None for VAL); None if not ours.

        An unknown field is not answered. A known field of a name that holds no PV
        (yet) is refused: fields exist only once their PV does.
        """
        base, _, field_name = name.rpartition(".")
        field = FIELDS.get(field_name)
        if field is None and field_name != "VAL":
            return None
        if self.relay.grammar.parse(base) is None:
            return None
        pv = self.relay.registry.get(base)
        if pv is None:
            raise Refused(Reason.NO_SUCH_PV, f"{name}: field of a PV that does not exist (yet)")
        return pv, field

    # --- Handler of relay PVs ------------------------------------------------------

    def ca_put(self, pv: ServedPV, client: Any, value: cas.gdd) -> int:
        spec = pv.state.spec
        try:
            if self.relay.registry.lookup(spec.name) is not pv:
                raise Refused(Reason.NO_SUCH_PV, f"{spec.name} was deleted")
            self.client_put(spec, ca_gdd.extract(value, spec), writer=ca_writer(client))
        except Refused as refused:
            return self.report(refused, put_source(client))
        return cas.S_casApp_success

    def client_put(self, spec: PVSpec, raw: object, ts_ns: int | None = None,
                   meta: dict | None = None, writer: str = "",
                   way: str = Way.CA.value) -> ServedPV:
        """A client's put (CA or PVA): converted, applied (the PV made if needed) and
        posted; `Refused` if not. `ts_ns` None: the time of arrival; `writer` becomes the
        PV's last writer, `way` counts it."""
        now = time.monotonic()
        pv, alarm_changed = self.relay.put_spec(
            spec, raw, time.time_ns() if ts_ns is None else ts_ns, now, meta, writer, way)
        mask = DBE_ALL if alarm_changed else DBE_VALUE_LOG
        self.applied(pv, mask | DBE_PROPERTY if meta else mask, now)
        return pv

    def ca_released(self, pv: ServedPV) -> None:
        pv.ca_attached = False
        if pv.pva is None and self.relay.registry.release(pv):
            self._graveyard.append(pv)

    def ca_field_put(self, field_pv: FieldPV, client: Any, value: cas.gdd) -> int:
        pv, field = field_pv.parent, field_pv.field
        name = pv.state.spec.name
        try:
            if self.relay.registry.get(name) is not pv:
                raise Refused(Reason.NO_SUCH_PV, f"{name} was deleted")
            if not field.writable:
                raise Refused(Reason.READ_ONLY, f"{field_pv.name} is read-only")
            raw = ca_gdd.extract_field(value, field.ca_type)
            changes = check_changes({field.attribute: raw}, name)
            _, alarm_changed = self.relay.set_meta(name, changes)
        except Refused as refused:
            return self.report(refused, put_source(client))
        self.meta_changed(pv, alarm_changed, time.monotonic())
        return cas.S_casApp_success

    def ca_field_released(self, field_pv: FieldPV) -> None:
        fields = field_pv.parent.fields
        if fields and fields.get(field_pv.field.name) is field_pv:
            del fields[field_pv.field.name]
            self._graveyard.append(field_pv)

    # --- after a change ------------------------------------------------------------------

    def applied(self, pv: ServedPV, mask: int, now: float,
                stamp: cas.epicsTimeStamp | None = None) -> None:
        """A value was applied to `pv`: post it, save it, watch it if it may go stale.

        `mask` says which monitors to post to (DBE_* bits); with DBE_PROPERTY, the
        attributes changed with the value. `stamp` is the value's time stamp when the
        caller has it made already.
        """
        state = pv.state
        if pv.pva is not None:
            self.pva.update(pv, mask)
        if mask & DBE_PROPERTY:
            pv.post_property()
            mask &= ~DBE_PROPERTY
        pv.post(mask, stamp)
        if self.autosaver is not None:
            self.autosaver.touch(state)
        if self.changed is not None:
            self.changed[pv] = None
        if state.meta.tmo > 0:
            self.stale_watch.watch(state, now)

    def restore(self, saved: list[SavedPV], progress: Callable[[], None] = lambda: None
                ) -> None:
        """Recreate saved PVs before the first search is answered.

        `progress` is called every few thousand PVs (the CA process sends a heartbeat,
        so a large store is not mistaken for a hung process).
        """
        now = time.monotonic()
        stats = self.relay.stats
        for index, item in enumerate(saved):
            if index % 5000 == 4999:
                progress()
            try:
                spec, stored, ts_ns, meta = restore_pieces(item, self.relay.grammar)
                pv = self.relay.restore(spec, stored, ts_ns, meta, now)
            except (Refused, ValueError, TypeError) as error:
                stats.left_out += 1
                if stats.left_out <= LEFT_OUT_SHOWN:
                    log.error("autosave: cannot restore %s (%s); left out", item.label, error)
                continue
            if meta.tmo > 0:
                self.stale_watch.watch(pv.state, now)
        log.info("restored %d PVs", stats.restored)
        if stats.left_out:
            log.error("autosave: %d saved rows left out%s; they stay in the file until a PV of "
                      "their name is made again (relayd autosave export names every one)",
                      stats.left_out, f" (the first {LEFT_OUT_SHOWN} named above)"
                      if stats.left_out > LEFT_OUT_SHOWN else "")

    def meta_changed(self, pv: ServedPV, alarm_changed: bool, now: float) -> None:
        """`pv`'s attributes changed: tell DBE_PROPERTY monitors, and the rest if needed."""
        pv.post_property()
        if pv.pva is not None:
            self.pva.update(pv, DBE_ALL | DBE_PROPERTY)
        if self.autosaver is not None:
            self.autosaver.touch(pv.state)
        if self.changed is not None:
            self.changed[pv] = None
        if alarm_changed:
            pv.post(cas.DBE_ALARM | DBE_VALUE_LOG)
        elif pv.fields:
            for field_pv in pv.fields.values():
                field_pv.post()
        if pv.state.meta.tmo > 0:
            self.stale_watch.watch(pv.state, now)

    def check_stale(self, now: float) -> None:
        """Mark the PVs that received nothing within their TMO, and post their alarm."""
        for state in self.stale_watch.expired(now):
            pv = self.relay.registry.get(state.spec.name)
            if pv is not None and pv.state is state:
                pv.post(cas.DBE_ALARM | DBE_VALUE_LOG)
                if pv.pva is not None:
                    self.pva.update(pv, cas.DBE_ALARM)
                if self.changed is not None:
                    self.changed[pv] = None

    # --- the relay's own work ------------------------------------------------------

    def delete(self, name: str, source: str) -> ServedPV:
        """Delete a PV; its clients are disconnected at the end of this cycle."""
        pv = self.relay.delete(name)
        self.stale_watch.forget(pv.state)
        if self.autosaver is not None:
            self.autosaver.forget(pv.state.spec.name)
        if self.feed is not None:
            self.feed.forget(pv)
        self._graveyard.append(pv)
        if pv.pva is not None:
            self.pva.deleted(pv)
        if pv.fields:
            self._graveyard.extend(pv.fields.values())
            pv.fields = None  # break the PV <-> field cycle so both are freed now
        self._deletes.log(logging.INFO, "deleted", "deleted %s (%s)", pv.state.spec.name,
                          source)
        return pv

    def end_cycle(self) -> None:
        """Free what was dropped during the last processing cycle."""
        self._graveyard.clear()

    def close(self) -> None:
        """Drop every PV so that the CA library can shut down cleanly."""
        self._graveyard.clear()
        self.relay.registry.pvs.clear()
        self.relay.registry.placeholders.clear()
