"""The relay's own PVs: ``pvlist``, ``delpv`` and the ``status:*`` counters.

Their names never end in ``_<dtype><count>``, so they can never collide with a relay PV.
`ControlPVs` is the handler for all of them: puts to ``delpv`` delete a PV, puts to any
other control PV are refused as read-only.
"""

from __future__ import annotations

import functools
import time
from typing import Any, Callable

from pcaspy import cas

from relayd.ca import gdd as ca_gdd
from relayd.ca.pvs import ComputedPV, ServedPV, put_source
from relayd.config import Config
from relayd.ca.epics_env import pvlist_capacity
from relayd.core.errors import Reason, Refused
from relayd.core.names import Kind, PVSpec
from relayd.core.pvstate import PVState
from relayd.core.writes import Relay
from relayd.core.status import STATUS_PVS


class ControlPVs:
    """The control and status PVs of one relay, by full name."""

    def __init__(
        self,
        config: Config,
        relay: Relay,
        delete: Callable[[str, str], None],
        report: Callable[[Refused, str], int],
    ):
        self._delete = delete
        self._report = report
        head = config.prefix + ":"
        started = time.monotonic()
        self.computed: list[ComputedPV] = [
            ComputedPV(
                PVState(PVSpec(head + "pvlist", Kind.CHAR, pvlist_capacity(config), False)),
                self,
                relay.registry.pvlist,
            )
        ]
        for status in STATUS_PVS:
            spec = PVSpec(head + status.suffix, status.kind, status.count, False)
            compute = functools.partial(status.compute, relay, started)
            self.computed.append(ComputedPV(PVState(spec), self, compute))
        self.delpv = ServedPV(
            PVState(PVSpec(head + "delpv", Kind.CHAR, config.max_name_length, False)), self
        )
        self.by_name: dict[str, ServedPV] = {pv.state.spec.name: pv for pv in self.computed}
        self.by_name[self.delpv.state.spec.name] = self.delpv
        self.refresh(time.time_ns())

    def get(self, name: str) -> ServedPV | None:
        return self.by_name.get(name)

    def refresh(self, ts_ns: int) -> None:
        """Recompute the list and status PVs and post those that changed."""
        for pv in self.computed:
            if pv.refresh(ts_ns):
                pv.post()

    def ca_put(self, pv: ServedPV, client: Any, value: cas.gdd) -> int:
        source = put_source(client)
        if pv is not self.delpv:
            return self._report(
                Refused(Reason.READ_ONLY, f"{pv.state.spec.name} is read-only"), source
            )
        text = ca_gdd.extract(value, pv.state.spec)
        name = text.split(b"\0", 1)[0].decode("utf-8", "replace")  # type: ignore[union-attr]
        try:
            self.delete_named(name, source)
        except Refused as refused:
            return self._report(refused, source)
        return cas.S_casApp_success

    def delete_named(self, name: str, source: str) -> None:
        """A put of `name` to delpv (over CA or PVA): delete it, show it; `Refused` if not."""
        self._delete(name, source)
        delpv = self.delpv
        delpv.state.put(name.encode()[: delpv.state.spec.count], time.time_ns())
        delpv.post()

    def ca_released(self, pv: ServedPV) -> None:
        """Control PVs live as long as the server; nothing to release."""
