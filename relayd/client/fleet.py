"""One push client for a fleet of relays: each update goes to the relay of its prefix.

EPICS scales out by adding servers, each owning a part of the name space, and lets CA
name resolution find the right one: a client searches for a name (a UDP broadcast on its
subnet) and the server that has it answers. relayd scales the same way. Run one relay per
prefix, on as many hosts as the load needs, and every CA client finds every PV by name
alone, with no list of relays anywhere. Only publishers must know where each relay
listens, because ZeroMQ has no name resolution: that map is what a `Fleet` holds.

    from relayd.client.fleet import Fleet

    with Fleet({"lab:relay": "tcp://relay1:5555", "beam:relay": "tcp://relay2:5555"}) as fleet:
        fleet.put("lab:relay:temperature_f1", 21.2)
        fleet.put_many({"lab:relay:pressure_f1": 1e-6, "beam:relay:current_f1": 0.2})
        with fleet.batch() as batch:              # one message per relay named in it
            batch.put("lab:relay:state_i1", 3)
            batch.delete("beam:relay:old_f1")

Rules, each checked where the mistake is made, so that nothing is sent to the wrong relay:

* Names are given in full, ``<prefix>:<name>_<dtype><count>``. A relay takes a name
  without its prefix as one of its own (it adds the prefix), so a name routed on a guess
  would make a wrong PV; a name under none of the fleet's prefixes raises `UnknownPrefix`
  at its line and nothing is sent.
* No prefix may lie inside another (``lab`` and ``lab:sub``): relay ``lab`` would also
  answer CA searches for every name under ``lab:sub:``, and CA clients would find two
  servers for one name. Such a map raises ValueError at construction, and so does one
  endpoint given for two prefixes (a relay serves one prefix).
* A batch (or `put_many`) that names several relays goes as one message per relay. Each
  relay applies its part at once, as it does any batch; nothing makes the parts atomic
  together: they are separate messages to separate processes. Every part is tried; if any
  cannot be queued, `FleetSendError` says which parts went and which did not.

A route's target is an endpoint, for which the fleet makes a `Client` with the fleet's
`client_options` (all of them on one ZeroMQ context, the fleet's own unless the options
give one), or a ready `Client`, for options of its own such as each relay's CURVE server
key. The fleet closes every client it holds when it is closed. Like `Client`, a fleet is
for one thread.
"""

from __future__ import annotations

from typing import Iterable, Iterator, Mapping

import zmq

from relayd.client.errors import RelayError
from relayd.client.push import Batch, Client
from relayd.core.names import validate_prefix


class UnknownPrefix(ValueError):
    """A name under none of the fleet's prefixes: there is no relay to send it to."""


class FleetSendError(RelayError):
    """Some parts of a fleet batch could not be queued for their relays.

    `sent` lists the prefixes whose part was handed to ZeroMQ, `failed` maps every other
    prefix of the batch to its error (`RelayUnreachable`, or ValueError for a part longer
    than its relay accepts). The parts that went are not taken back.
    """

    def __init__(self, sent: list[str], failed: dict[str, Exception]):
        self.sent = sent
        self.failed = failed
        reasons = "; ".join(f"{prefix!r}: {error}" for prefix, error in failed.items())
        went = ", ".join(repr(prefix) for prefix in sent) or "none"
        super().__init__(f"{len(failed)} of {len(sent) + len(failed)} relays did not take "
                         f"their part of the batch ({reasons}); parts sent to: {went}")


def heads(name: str) -> Iterator[str]:
    """Every head of `name` that ends before a ':', shortest first: for
    ``"a:b:c_f1"``, ``"a"`` and ``"a:b"``; these are the prefixes it could be under."""
    end = name.find(":")
    while end > 0:
        yield name[:end]
        end = name.find(":", end + 1)


def check_routes(routes: Mapping[str, str | Client]) -> None:
    """Raise ValueError unless `routes` is a usable prefix -> relay map (see the module
    docstring): valid prefixes, none inside another, no endpoint twice."""
    if not routes:
        raise ValueError("a fleet needs at least one prefix -> endpoint route")
    for prefix in routes:
        validate_prefix(prefix)
        outer = next((head for head in heads(prefix) if head in routes), None)
        if outer is not None:
            raise ValueError(
                f"prefixes {outer!r} and {prefix!r} overlap: relay {outer!r} would also "
                f"answer CA searches for names under {prefix + ':'!r}, so CA clients would "
                "find two servers for one name; give the relays prefixes that do not nest")
    seen: dict[str, str] = {}
    for prefix, target in routes.items():
        endpoint = target if isinstance(target, str) else target.endpoint
        if endpoint in seen:
            raise ValueError(
                f"endpoint {endpoint!r} is given for both {seen[endpoint]!r} and {prefix!r}: "
                "a relay serves one prefix, and takes a name under another as its own")
        seen[endpoint] = prefix


class Routed:
    """`put`, `set_meta` and `delete` of one name, each handed to what `_target` picks for
    the name: a relay's `Client` (a `Fleet`: sent now) or a relay's part of a batch (a
    `FleetBatch`: sent when the batch ends). Both take the same calls, with the same
    checks at the line that makes them."""

    def _target(self, pv: str) -> Client | Batch:
        raise NotImplementedError

    def put(self, pv: str, value: object, *, ts: float | None = None,
            meta: dict | None = None) -> None:
        """Put `value` (and attributes `meta`) to the full name `pv` (see `Client.put`)."""
        self._target(pv).put(pv, value, ts=ts, meta=meta)

    def set_meta(self, pv: str, **meta: object) -> None:
        """Set attributes of the existing PV `pv` (see `Client.set_meta`)."""
        self._target(pv).set_meta(pv, **meta)

    def delete(self, pv: str) -> None:
        """Delete the PV `pv` from its relay."""
        self._target(pv).delete(pv)


class Fleet(Routed):
    """Pushes updates to several relays, each update to the relay of its name's prefix.

    `routes` maps each relay's prefix to its ZMQ endpoint (its ``--zmq-bind``) or to a
    ready `Client`. `client_options` are `Client`'s keyword arguments (`send_timeout`,
    `queue_size`, `curve_secret_key`...) for the clients made from endpoints.
    """

    def __init__(self, routes: Mapping[str, str | Client], **client_options: object):
        check_routes(routes)
        self._context: zmq.Context | None = None
        if "context" not in client_options:
            self._context = zmq.Context()
            client_options["context"] = self._context
        self._clients: dict[str, Client] = {}
        self._closed = False
        try:
            for prefix, target in routes.items():
                self._clients[prefix] = (Client(target, **client_options)  # type: ignore[arg-type]
                                         if isinstance(target, str) else target)
        except BaseException:
            self.close()
            raise

    @property
    def prefixes(self) -> list[str]:
        """The prefixes of the fleet's relays, in the order given."""
        return list(self._clients)

    def prefix_of(self, name: str) -> str:
        """The prefix of the relay that serves `name`; `UnknownPrefix` if none does."""
        if not isinstance(name, str):
            raise TypeError(f"a PV name is a str, not {type(name).__name__}")
        for head in heads(name):
            if head in self._clients:
                return head
        known = ", ".join(repr(prefix) for prefix in self._clients)
        raise UnknownPrefix(f"{name!r} is under none of this fleet's prefixes ({known}): "
                            "give the full name, <prefix>:<name>_<dtype><count>")

    def client_for(self, name: str) -> Client:
        """The client of the relay that serves `name` (`UnknownPrefix` if none does)."""
        return self._clients[self.prefix_of(name)]

    _target = client_for

    def put_many(self, updates: Mapping[str, object] | Iterable[tuple[str, object]]) -> None:
        """Put several values: a mapping {pv: value} or (pv, value) pairs, one message per
        relay (a batch: see `batch`). Every name is routed before anything is sent."""
        pairs = updates.items() if isinstance(updates, Mapping) else updates
        with self.batch() as batch:
            for pv, value in pairs:
                batch.put(pv, value)

    def batch(self) -> FleetBatch:
        """A `FleetBatch`: sent when its ``with`` block ends normally, one message per relay."""
        return FleetBatch(self)

    def close(self) -> None:
        """Close every client, waiting up to their `linger` for queued messages to leave."""
        if self._closed:
            return
        self._closed = True
        for client in self._clients.values():
            client.close()
        if self._context is not None:
            self._context.term()  # the clients' linger runs here, for all of them at once

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        routes = ", ".join(f"{prefix}={client.endpoint}"
                           for prefix, client in self._clients.items())
        return f"<Fleet {routes}{' closed' if self._closed else ''}>"

    def _send_parts(self, parts: Mapping[str, Batch]) -> None:
        """Send each relay's part of a batch; `FleetSendError` after trying all if any failed."""
        sent: list[str] = []
        failed: dict[str, Exception] = {}
        for prefix, part in parts.items():
            try:
                part.__exit__(None, None, None)  # a Batch sends itself as its block ends
                sent.append(prefix)
            except (RelayError, ValueError) as error:
                failed[prefix] = error
        if failed:
            raise FleetSendError(sent, failed)


class FleetBatch(Routed):
    """Updates collected in a ``with`` block and sent when it ends, ONE message per relay.

    Each `put`/`set_meta`/`delete` routes its name and checks its update at once, so a
    mistake raises at its line; if the block raises, nothing is sent to any relay.
    """

    def __init__(self, fleet: Fleet):
        self._fleet = fleet
        self._parts: dict[str, Batch] = {}

    def __len__(self) -> int:
        return sum(len(part) for part in self._parts.values())

    def __enter__(self) -> FleetBatch:
        return self

    def __exit__(self, exc_type: object, exc: object, traceback: object) -> None:
        parts, self._parts = self._parts, {}
        if exc_type is None:
            self._fleet._send_parts(parts)

    def _target(self, pv: str) -> Batch:
        prefix = self._fleet.prefix_of(pv)
        part = self._parts.get(prefix)
        if part is None:
            part = self._parts[prefix] = self._fleet._clients[prefix].batch()
        return part
