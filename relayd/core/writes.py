"""The relay's write logic: the one place a put becomes a change.

`Relay` joins the grammar, the value rules and the registry. Every path in (CA put, ZMQ
update, the delete PV) calls it, so a put is validated, converted and applied the same
way whatever brought it. Order matters and is the point of this module: the name is
parsed, then the value converted, and only then is the PV created or touched, so a
refused put never creates or changes anything. Pure: no I/O, no pcaspy.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Generic

from relayd.core.errors import Reason, Refused
from relayd.core.meta import Meta
from relayd.core.names import Grammar, PVSpec
from relayd.core.ops import Way
from relayd.core.registry import PV, Registry
from relayd.core.stats import Stats
from relayd.core.values import Stored, convert


class Relay(Generic[PV]):
    """Validates, converts and applies puts and deletes for one prefix."""

    def __init__(self, grammar: Grammar, registry: Registry[PV]):
        self.grammar = grammar
        self.registry = registry
        self.stats = Stats()

    def put(self, name: str, raw: object, ts_ns: int, now: float = 0.0) -> tuple[PV, bool]:
        """Put `raw` to `name` (with or without the prefix); `Refused` if not allowed.

        Returns the PV and whether its alarm changed (see `PVState.put`).
        """
        return self.put_spec(self.grammar.spec_for(name), raw, ts_ns, now)

    def put_spec(self, spec: PVSpec, raw: object, ts_ns: int, now: float = 0.0,
                 writer: str = "", way: str = Way.CA) -> tuple[PV, bool]:
        """Put `raw` to the PV described by `spec` (its name already parsed), for
        `writer` (the PV's last writer, see `apply`) coming in by `way`."""
        stored = convert(spec, raw)
        pv = self.registry.ensure(spec)
        alarm_changed = self.apply(pv, stored, ts_ns, now, None, writer)
        self.stats.accepted_by_way[way] += 1
        return pv, alarm_changed

    def ensure(self, name: str) -> PV:
        """The PV of the full name `name`, made if needed, for a value already converted.

        `Refused` if the name is not the relay's, or the relay is full.
        """
        return self.registry.ensure(self._parse(name, name))

    def apply(self, pv: PV, stored: Stored, ts_ns: int, now: float = 0.0,
              meta: dict | None = None, writer: str = "") -> bool:
        """Apply a value already converted for `pv`; True if its alarm changed.

        The one place a value is applied, whichever way it came in. `meta`, attribute
        changes already checked (`meta.check_changes`), are applied first, so the value's
        alarm is judged by the new limits. `writer` says who sent it (``zmq 10.0.0.5``,
        ``ca user@host``): the PV's last writer. The caller counts it by way in.
        """
        state = pv.state
        if meta:
            state.meta = replace(state.meta, **meta)
        self.stats.accepted += 1
        state.writer = writer
        state.updates += 1
        return state.put(stored, ts_ns, now)

    def restore(self, spec: PVSpec, stored: Stored, ts_ns: int, meta: Meta, now: float) -> PV:
        """Recreate a saved PV with its value, time stamp and attributes (at start)."""
        pv = self.registry.ensure(spec)
        pv.state.meta = meta
        pv.state.put(stored, ts_ns, now)
        self.stats.restored += 1
        return pv

    def set_meta(self, name: str, changes: dict) -> tuple[PV, bool]:
        """Apply checked attribute changes to the existing PV `name`.

        Returns the PV and whether its alarm changed. A PV that does not exist yet is
        refused: attributes alone never create a PV.
        """
        pv = self.registry.get(name)
        if pv is None:
            raise Refused(Reason.NO_SUCH_PV, f"{name}: attributes for a PV that does not exist")
        alarm_changed = pv.state.set_meta(replace(pv.state.meta, **changes))
        self.stats.accepted += 1
        return pv, alarm_changed

    def _parse(self, full: str, name: str) -> PVSpec:
        """The spec of `full`; `Refused` (naming `name`, as the sender wrote it) if none."""
        spec = self.grammar.parse(full)
        if spec is None:
            raise Refused(Reason.BAD_NAME, f"{name!r} is not a relay PV name")
        return spec

    def delete(self, name: str) -> PV:
        """Delete the PV `name` (with or without the prefix) and return it."""
        full = self.grammar.qualify(name.strip())
        self._parse(full, name)
        pv = self.registry.delete(full)
        self.stats.deleted += 1
        return pv
