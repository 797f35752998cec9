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
from typing import Any

from pcaspy import cas

from relayd.ca_pvs import DBE_ALL, DBE_VALUE_LOG, ServedPV, guarded, put_source
from relayd.config import Config
from relayd.control import ControlPVs
from relayd.errors import Reason, Refused
from relayd.logs import RateLimitedLog
from relayd.names import Grammar
from relayd.pvstate import PVState
from relayd.registry import Registry
from relayd.relay import Relay
from relayd import ca_gdd

log = logging.getLogger("relayd.ca")

# The CA status a client gets back for each refusal. Clients report any of these as a
# failed put (ECA_PUTFAIL); the reason itself is in the log and the status PVs.
PUT_STATUS = {
    Reason.BAD_VALUE: cas.S_cas_noConvert,
    Reason.TOO_MANY_ELEMENTS: cas.S_cas_badElementCount,
    Reason.PV_LIMIT: cas.S_cas_noMemory,
    Reason.NO_SUCH_PV: cas.S_casApp_pvNotFound,
    Reason.READ_ONLY: cas.S_cas_noWrite,
}


class CAServer(cas.caServer):
    """The CA server of one relay."""

    def __init__(self, config: Config):
        cas.caServer.__init__(self)
        grammar = Grammar(config.prefix, config.name_limits)
        registry: Registry[ServedPV] = Registry(
            grammar, self._new_pv, config.max_pvs, config.max_placeholders
        )
        self.relay: Relay[ServedPV] = Relay(grammar, registry)
        self.control = ControlPVs(config, self.relay, self.delete, self.report)
        self._refusals = RateLimitedLog(log)
        # PVs dropped while the CA library may still be inside a call on them; they are
        # freed (and their clients disconnected) after the current processing cycle.
        self._graveyard: list[ServedPV] = []

    def _new_pv(self, state: PVState) -> ServedPV:
        return ServedPV(state, self)

    def report(self, refused: Refused, source: str) -> int:
        """Count and log (rate-limited) a refusal; return the CA status for it."""
        text = self.relay.stats.count_refusal(refused, source)
        self._refusals.warning(refused.reason, "refused %s", text)
        return PUT_STATUS.get(refused.reason, cas.S_cas_noConvert)

    # --- called by the CA server library -------------------------------------------

    @guarded(cas.pverDoesNotExistHere)
    def pvExistTest(self, ctx: Any, address: Any, name: str) -> int:
        if name in self.control.by_name:
            return cas.pverExistsHere
        try:
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
            pv = self.relay.registry.attach(name)
        except Refused as refused:
            self.report(refused, "CA connect")
            return cas.S_casApp_pvNotFound
        return pv if pv is not None else cas.S_casApp_pvNotFound

    # --- Handler of relay PVs ------------------------------------------------------

    def ca_put(self, pv: ServedPV, client: Any, value: cas.gdd) -> int:
        spec = pv.state.spec
        try:
            if self.relay.registry.lookup(spec.name) is not pv:
                raise Refused(Reason.NO_SUCH_PV, f"{spec.name} was deleted")
            raw = ca_gdd.extract(value, spec)
            _, alarm_changed = self.relay.put_spec(spec, raw, time.time_ns())
        except Refused as refused:
            return self.report(refused, put_source(client))
        pv.post(DBE_ALL if alarm_changed else DBE_VALUE_LOG)
        return cas.S_casApp_success

    def ca_released(self, pv: ServedPV) -> None:
        if self.relay.registry.release(pv):
            self._graveyard.append(pv)

    # --- the relay's own work ------------------------------------------------------

    def delete(self, name: str, source: str) -> ServedPV:
        """Delete a PV; its clients are disconnected at the end of this cycle."""
        pv = self.relay.delete(name)
        self._graveyard.append(pv)
        log.info("deleted %s (%s)", pv.state.spec.name, source)
        return pv

    def end_cycle(self) -> None:
        """Free what was dropped during the last processing cycle."""
        self._graveyard.clear()

    def close(self) -> None:
        """Drop every PV so that the CA library can shut down cleanly."""
        self._graveyard.clear()
        self.relay.registry.pvs.clear()
        self.relay.registry.placeholders.clear()
