"""The status PVs: their names, types, meaning, and how each value is computed. Pure.

Status and control PV names never end in ``_<dtype><count>``, so they can never collide
with a relay PV (the tests check this for every name here). The table of status PVs in
docs/OPERATIONS.md follows this list; tests/unit/test_docs.py checks that the two agree.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from relayd.core.errors import Reason
from relayd.core.names import Kind
from relayd.core.ops import Way
from relayd.core.writes import Relay

LAST_REFUSAL_LENGTH = 256


@dataclass(frozen=True)
class StatusPV:
    """One read-only status PV: `suffix` goes after ``<prefix>:``."""

    suffix: str
    kind: Kind
    count: int
    doc: str
    compute: Callable[[Relay, float], object]


def _of(part: object, name: str, default: object) -> object:
    """`name` of a part that reports its own status (autosave, PVA); `default` while off."""
    return default if part is None else getattr(part, name)


def _autosave(relay: Relay, name: str, default: object) -> object:
    return _of(relay.stats.autosave, name, default)


def _pva(relay: Relay, name: str, default: object) -> object:
    return _of(relay.stats.pva, name, default)


def _reason_pv(reason: Reason) -> StatusPV:
    return StatusPV(
        f"status:refused:{reason.code}",
        Kind.FLOAT,
        1,
        f"refusals because {reason.description}",
        lambda relay, started: float(relay.stats.by_reason[reason]),
    )


_WAY_NAMES = {Way.CA: "CA puts", Way.ZMQ: "ZMQ messages, pushed or acknowledged",
              Way.HTTP: "the HTTP API", Way.PVA: "pvAccess puts"}


def _way_pvs(way: Way) -> tuple[StatusPV, StatusPV]:
    return (
        StatusPV(f"status:accepted:{way.value}", Kind.FLOAT, 1,
                 f"updates accepted from {_WAY_NAMES[way]}",
                 lambda relay, started: float(relay.stats.accepted_by_way[way.value])),
        StatusPV(f"status:refused:{way.value}", Kind.FLOAT, 1,
                 f"refusals of {_WAY_NAMES[way]}",
                 lambda relay, started: float(relay.stats.refused_by_way[way.value])),
    )


STATUS_PVS: tuple[StatusPV, ...] = (
    StatusPV("status:pvs", Kind.INT, 1, "number of PVs the relay holds",
             lambda relay, started: len(relay.registry)),
    StatusPV("status:placeholders", Kind.INT, 1,
             "names watched by clients before any value arrived",
             lambda relay, started: len(relay.registry.placeholders)),
    StatusPV("status:accepted", Kind.FLOAT, 1, "updates accepted, all paths",
             lambda relay, started: float(relay.stats.accepted)),
    StatusPV("status:refused", Kind.FLOAT, 1,
             "refusals, all paths and reasons (puts, updates, names searched beyond a limit)",
             lambda relay, started: float(relay.stats.refused)),
    StatusPV("status:deleted", Kind.FLOAT, 1, "PVs deleted",
             lambda relay, started: float(relay.stats.deleted)),
    StatusPV("status:lastRefusal", Kind.CHAR, LAST_REFUSAL_LENGTH,
             "text of the last refusal: where it came from, the reason code and detail",
             lambda relay, started: relay.stats.last_refusal.encode()[:LAST_REFUSAL_LENGTH]),
    StatusPV("status:uptime", Kind.FLOAT, 1, "seconds since this CA server started",
             lambda relay, started: round(time.monotonic() - started, 3)),
    StatusPV("status:zmq:messages", Kind.FLOAT, 1, "ZMQ messages received by the ingest worker",
             lambda relay, started: float(relay.stats.zmq_messages)),
    StatusPV("status:zmq:updates", Kind.FLOAT, 1,
             "updates in those messages (accepted or refused)",
             lambda relay, started: float(relay.stats.zmq_updates)),
    StatusPV("status:pipe:backlog", Kind.FLOAT, 1,
             "bytes forwarded by the workers not yet read by the CA process (all up pipes)",
             lambda relay, started: float(relay.stats.pipe_backlog)),
    StatusPV("status:pipe:lag", Kind.FLOAT, 1,
             "seconds from the worker forwarding a batch to the CA process applying it "
             "(last batch)",
             lambda relay, started: round(relay.stats.pipe_lag, 6)),
    StatusPV("status:pipe:dropped", Kind.FLOAT, 1,
             "chunks of incomplete messages the CA process dropped from the pipe: a send the "
             "worker repeated after a full pipe (nothing lost), or a message cut short by a "
             "restart (its updates lost)",
             lambda relay, started: float(relay.stats.pipe_dropped)),
    StatusPV("status:ca:port", Kind.INT, 1, "TCP port the CA server serves on",
             lambda relay, started: relay.stats.ca_port),
    StatusPV("status:ca:portTaken", Kind.INT, 1,
             "1 when the configured CA server port was taken by another program and a dynamic "
             "port is served instead",
             lambda relay, started: int(relay.stats.ca_port_taken)),
    StatusPV("status:pipe:replyDropped", Kind.FLOAT, 1,
             "answers (verdicts) the CA process dropped because a worker's outbox was full; "
             "their senders are told nothing and time out",
             lambda relay, started: float(relay.stats.reply_dropped)),
    StatusPV("status:restarts:ca", Kind.INT, 1,
             "times the supervisor restarted the CA server process",
             lambda relay, started: int(relay.stats.restarts.get("ca-server", 0))),
    StatusPV("status:restarts:ingest", Kind.INT, 1,
             "times the supervisor restarted the ingest worker",
             lambda relay, started: int(relay.stats.restarts.get("ingest", 0))),
    StatusPV("status:restarts:http", Kind.INT, 1,
             "times the supervisor restarted the HTTP worker",
             lambda relay, started: int(relay.stats.restarts.get("http", 0))),
    StatusPV("status:autosave:enabled", Kind.INT, 1, "1 when autosave is on",
             lambda relay, started: int(relay.stats.autosave is not None)),
    StatusPV("status:autosave:lastSave", Kind.FLOAT, 1,
             "POSIX time of the last successful autosave write (0: none yet)",
             lambda relay, started: _autosave(relay, "last_save", 0.0)),
    StatusPV("status:autosave:pending", Kind.FLOAT, 1,
             "changes waiting to be written after a failed write",
             lambda relay, started: float(_autosave(relay, "pending", 0))),
    StatusPV("status:autosave:failures", Kind.FLOAT, 1, "autosave writes that failed",
             lambda relay, started: float(_autosave(relay, "failures", 0))),
    StatusPV("status:autosave:lastError", Kind.CHAR, LAST_REFUSAL_LENGTH,
             "why the last autosave write failed (empty once writes work again)",
             lambda relay, started: str(_autosave(relay, "last_error", "")).encode()[
                 :LAST_REFUSAL_LENGTH]),
    StatusPV("status:autosave:restored", Kind.INT, 1, "PVs restored from autosave at start",
             lambda relay, started: relay.stats.restored),
    StatusPV("status:pva:enabled", Kind.INT, 1, "1 when the PVs are also served over pvAccess",
             lambda relay, started: int(relay.stats.pva is not None)),
    StatusPV("status:pva:port", Kind.INT, 1, "TCP port pvAccess is served on (0: off)",
             lambda relay, started: int(_pva(relay, "port", 0))),
    StatusPV("status:pva:channels", Kind.INT, 1,
             "names with a pvAccess channel (PVs, placeholders and the relay's own PVs "
             "watched over PVA)",
             lambda relay, started: int(_pva(relay, "channels", 0))),
    StatusPV("status:pva:accepted", Kind.FLOAT, 1, "puts accepted over pvAccess",
             lambda relay, started: float(_pva(relay, "accepted", 0))),
    StatusPV("status:pva:refused", Kind.FLOAT, 1, "puts refused over pvAccess",
             lambda relay, started: float(_pva(relay, "refused", 0))),
    StatusPV("status:pva:requests", Kind.FLOAT, 1,
             "requests pvAccess threads handed to the CA loop (new channels, puts, last "
             "disconnections)",
             lambda relay, started: float(_pva(relay, "requests", 0))),
    StatusPV("status:pva:lag", Kind.FLOAT, 1,
             "longest time a pvAccess request waited for the CA loop in the last status "
             "interval, seconds",
             lambda relay, started: round(float(_pva(relay, "lag", 0.0)), 6)),
    StatusPV("status:autosave:leftOut", Kind.INT, 1,
             "saved rows left out at start because they could not be restored",
             lambda relay, started: relay.stats.left_out),
) + tuple(pv for way in Way for pv in _way_pvs(way)) + tuple(
    _reason_pv(reason) for reason in Reason)
