"""Which names hold a PV, and which are only being watched. Pure: no I/O, no pcaspy.

Two tables, because the two kinds of entry live by different rules:

* ``pvs``: PVs that have received a value. They stay until deleted, are listed in
  ``pvlist`` (in creation order) and count against the PV limit.
* ``placeholders``: names a client connected to before any value arrived (monitor before
  create). They are served as undefined (INVALID/UDF), are never listed or saved, are
  capped in number, and are forgotten when their last client disconnects. The first put
  promotes a placeholder into ``pvs`` *as the same object*, so the clients already
  monitoring it receive that put as an ordinary monitor event.

The registry stores whatever object the CA layer wraps a state in (``factory(state)``),
so this module never touches pcaspy; the object needs only a ``state`` attribute.
"""

from __future__ import annotations

from typing import Callable, Generic, Iterator, Protocol, TypeVar

from relayd.core.errors import Reason, Refused
from relayd.core.meta import DEFAULT_META, Meta
from relayd.core.names import Grammar, PVSpec
from relayd.core.pvstate import PVState, new_state


class HasState(Protocol):
    state: PVState


PV = TypeVar("PV", bound=HasState)


class Registry(Generic[PV]):
    """The PVs and placeholders of one relay, within its limits."""

    def __init__(
        self,
        grammar: Grammar,
        factory: Callable[[PVState], PV],
        max_pvs: int = 100_000,
        max_placeholders: int = 10_000,
        default_meta: Meta = DEFAULT_META,
        max_bytes: int = 4 * 1024**3,
    ):
        self.grammar = grammar
        self.default_meta = default_meta  # new PVs start with these attributes
        self.max_pvs = max_pvs
        self.max_placeholders = max_placeholders
        self._factory = factory
        self.max_bytes = max_bytes
        self.bytes = 0  # the full size of every PV held (count x element size)
        self.pvs: dict[str, PV] = {}
        self.placeholders: dict[str, PV] = {}
        self._pvlist: str | None = ""
        self.version = 0  # bumps on every create/delete, so the list PV knows to post

    def __len__(self) -> int:
        return len(self.pvs)

    def __iter__(self) -> Iterator[PV]:
        return iter(self.pvs.values())

    def get(self, name: str) -> PV | None:
        """The PV called `name`, if it has received a value."""
        return self.pvs.get(name)

    def lookup(self, name: str) -> PV | None:
        """The PV or placeholder called `name`, if either exists."""
        pv = self.pvs.get(name)
        return pv if pv is not None else self.placeholders.get(name)

    def search(self, name: str) -> bool:
        """Whether a CA search for `name` is answered (it exists or may be watched).

        Raises `Refused` for a name of the grammar that is beyond a limit.
        """
        if name in self.pvs or name in self.placeholders:
            return True
        spec = self.grammar.parse(name)
        if spec is None:
            return False
        self._check_placeholder_room(name)
        return True

    def attach(self, name: str) -> PV | None:
        """The object a CA client connecting to `name` attaches to.

        An existing PV or placeholder, else a new placeholder; None if the name is not
        ours. Raises `Refused` beyond a limit.
        """
        pv = self.lookup(name)
        if pv is not None:
            return pv
        spec = self.grammar.parse(name)
        if spec is None:
            return None
        self._check_placeholder_room(name)
        pv = self._factory(new_state(spec, self.default_meta))
        self.placeholders[name] = pv
        return pv

    def _check_placeholder_room(self, name: str) -> None:
        if len(self.placeholders) >= self.max_placeholders:
            raise Refused(
                Reason.PLACEHOLDER_LIMIT,
                f"{name}: {len(self.placeholders)} names are already watched before "
                f"creation (limit {self.max_placeholders})",
            )

    def ensure(self, spec: PVSpec) -> PV:
        """The PV for `spec`, created (or promoted from placeholder) if needed.

        Call only for a put that has already been accepted, so a refused put never
        creates anything. Raises `Refused` (PV_LIMIT) when the relay is full.
        """
        pv = self.pvs.get(spec.name)
        if pv is not None:
            return pv
        if len(self.pvs) >= self.max_pvs:
            raise Refused(
                Reason.PV_LIMIT, f"{spec.name}: the relay holds {self.max_pvs} PVs already"
            )
        if self.bytes + spec.nbytes > self.max_bytes:
            raise Refused(
                Reason.BYTES_LIMIT,
                f"{spec.name}: {spec.nbytes} more bytes would exceed the limit of "
                f"{self.max_bytes} (the PVs hold {self.bytes})",
            )
        self.bytes += spec.nbytes
        pv = self.placeholders.pop(spec.name, None)
        if pv is None:
            pv = self._factory(new_state(spec, self.default_meta))
        self.pvs[spec.name] = pv
        self._changed()
        return pv

    def release(self, pv: PV) -> bool:
        """Forget a placeholder whose last client has gone; True if it was one."""
        name = pv.state.spec.name
        if self.placeholders.get(name) is pv:
            del self.placeholders[name]
            return True
        return False

    def delete(self, name: str) -> PV:
        """Remove the PV called `name` and return it; `Refused` if there is none."""
        pv = self.pvs.pop(name, None)
        if pv is None:
            raise Refused(Reason.NO_SUCH_PV, f"{name}: no such PV")
        self.bytes -= pv.state.spec.nbytes
        self._changed()
        return pv

    def _changed(self) -> None:
        self._pvlist = None
        self.version += 1

    def pvlist(self) -> str:
        """All PV names, comma-separated, in creation order.

        Built on demand and cached until the next create or delete, so creating PVs
        stays O(1) however many exist.
        """
        if self._pvlist is None:
            self._pvlist = ",".join(self.pvs)
        return self._pvlist
