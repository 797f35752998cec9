"""The relay's write logic and its counters: the one place a put becomes a change.

`Relay` joins the grammar, the value rules and the registry. Every path in (CA put, ZMQ
update, the delete PV) calls it, so a put is validated, converted and applied the same
way whatever brought it. Order matters and is the point of this module: the name is
parsed, then the value converted, and only then is the PV created or touched, so a
refused put never creates or changes anything. Pure: no I/O, no pcaspy.
"""

from __future__ import annotations

from collections import Counter
from typing import Generic

from relayd.errors import Reason, Refused
from relayd.names import Grammar, PVSpec
from relayd.registry import PV, Registry
from relayd.values import Stored, convert


class Stats:
    """Counters an operator watches; served by the status PVs."""

    def __init__(self) -> None:
        self.accepted = 0
        self.refused = 0
        self.by_reason: Counter[Reason] = Counter()
        self.last_refusal = ""
        self.deleted = 0

    def count_refusal(self, refused: Refused, source: str) -> str:
        """Count a refusal and return the one-line text that describes it."""
        self.refused += 1
        self.by_reason[refused.reason] += 1
        self.last_refusal = f"{source}: {refused}"
        return self.last_refusal


class Relay(Generic[PV]):
    """Validates, converts and applies puts and deletes for one prefix."""

    def __init__(self, grammar: Grammar, registry: Registry[PV]):
        self.grammar = grammar
        self.registry = registry
        self.stats = Stats()

    def put(self, name: str, raw: object, ts_ns: int) -> tuple[PV, bool]:
        """Put `raw` to `name` (with or without the prefix); `Refused` if not allowed.

        Returns the PV and whether its alarm changed (see `PVState.put`).
        """
        return self.put_spec(self.grammar.spec_for(name), raw, ts_ns)

    def put_spec(self, spec: PVSpec, raw: object, ts_ns: int) -> tuple[PV, bool]:
        """Put `raw` to the PV described by `spec` (its name already parsed)."""
        return self.apply(spec, convert(spec, raw), ts_ns)

    def apply(self, spec: PVSpec, stored: Stored, ts_ns: int) -> tuple[PV, bool]:
        """Apply a value already converted for `spec`, creating the PV if needed."""
        pv = self.registry.ensure(spec)
        alarm_changed = pv.state.put(stored, ts_ns)
        self.stats.accepted += 1
        return pv, alarm_changed

    def delete(self, name: str) -> PV:
        """Delete the PV `name` (with or without the prefix) and return it."""
        full = self.grammar.qualify(name.strip())
        if self.grammar.parse(full) is None:
            raise Refused(Reason.BAD_NAME, f"{name!r} is not a relay PV name")
        pv = self.registry.delete(full)
        self.stats.deleted += 1
        return pv
