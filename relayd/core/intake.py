"""The one intake of every worker: a decoded update in, a `PipeOp` out, or `Refused`. Pure.

Whatever the way in (a ZMQ message in `workers.ingest`, a JSON body in `workers.http`),
an update is a `relayd.core.protocol.Update` once its own format is decoded, and this is
where it is judged: the name parsed with the relay's grammar, the value converted with
the same rules as a CA put (`relayd.core.values`), the attribute changes checked
(`relayd.core.meta`). What passes is a `PipeOp` the CA process stores without checking
it again; only what needs the relay's state (is it full, does the PV exist) is left to
the CA process.

Parsed names and their converters are cached: publishers send the same names over and
over, and parsing is most of the cost of a small update. The cache holds at most what
the relay can hold (its PVs and its placeholders, `cache_size`): a sender of endless new
names, which the CA process refuses beyond ``--max-pvs``, cannot grow the worker beyond
that (issue 11: 200,000 such names took ~160 MB). When full it starts over.
"""

from __future__ import annotations

from typing import Callable

from relayd.core.meta import check_changes
from relayd.core.names import Grammar, PVSpec
from relayd.core.ops import Op, PipeOp
from relayd.core.protocol import DELETE, NO_VALUE, Update, new_tuple
from relayd.core.values import converter

# Enum members are slow to look up in Python 3.11 (~60 ns each): `prepare` uses these.
_PUT, _DELETE, _META = Op.PUT, Op.DELETE, Op.META


class Intake:
    """Turns decoded updates into pipe ops for one relay's grammar."""

    def __init__(self, grammar: Grammar, cache_size: int):
        if cache_size < 1:
            raise ValueError("cache_size must be >= 1")
        self.grammar = grammar
        self.cache_size = cache_size
        self._names: dict[str, tuple[PVSpec, Callable]] = {}

    @classmethod
    def bounded(cls, grammar: Grammar, max_pvs: int, max_placeholders: int) -> Intake:
        """An intake whose cache holds at most what the relay can (its PVs and
        placeholders): the way every worker makes one from its config."""
        return cls(grammar, max_pvs + max_placeholders)

    def __len__(self) -> int:
        """Names in the cache."""
        return len(self._names)

    def spec(self, name: str) -> tuple[PVSpec, Callable]:
        """The spec of `name` (with or without the prefix) and its value converter;
        `Refused` if it is not a relay name or is beyond a limit."""
        known = self._names.get(name)
        if known is None:
            spec = self.grammar.spec_for(name)
            if len(self._names) >= self.cache_size:
                self._names.clear()
            known = self._names[name] = (spec, converter(spec))
        return known

    def prepare(self, update: Update, arrival_ns: int) -> PipeOp:
        """The pipe op of one update; `Refused` (nothing changed) if it is not allowed.

        A put without ``ts`` is stamped `arrival_ns` (POSIX nanoseconds).
        """
        pv, op, value, ts, _, meta = update  # one unpacking, not a lookup per field
        known = self._names.get(pv)  # `spec`, inline: this is the hot path
        spec, convert = known if known is not None else self.spec(pv)
        if op == DELETE:
            return PipeOp(_DELETE, spec.name, None, 0, None)
        if meta is not None:
            meta = check_changes(meta, spec.name)
        if value is NO_VALUE:
            return PipeOp(_META, spec.name, None, 0, meta)
        stored = convert(spec, value)
        ts_ns = arrival_ns if ts is None else round(ts * 1_000_000) * 1000
        return new_tuple(PipeOp, (_PUT, spec.name, stored, ts_ns, meta))
