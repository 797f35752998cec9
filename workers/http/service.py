"""What the HTTP worker does for a request, whatever route it came by: the thin adapter.

An HTTP write becomes the relay's own updates (`workers.http.bodies`), each checked by
the shared intake (`relayd.core.intake`), exactly as a ZMQ message's; what passes goes to
the CA process as one batch asking for verdicts (`workers.http.link`), and the verdicts
come back as the answer. What the worker itself refuses (a body that does not parse, a
bad name or value, a request from where writes are not allowed) is counted here, by
reason and as way in ``http``, logged (rate-limited), and reaches the status PVs with
the worker's next counters. Reads come from the mirror.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from relayd.config import Config
from relayd.core.errors import Refused
from relayd.core.intake import Intake
from relayd.core.names import Grammar
from relayd.core.ops import Verdict, Way
from relayd.core.protocol import Update
from relayd.logs import RateLimitedLog
from workers.http import answers
from workers.http.access import Access
from workers.http.link import Link, NoAnswer, Unavailable
from workers.http.mirror import Mirror

log = logging.getLogger("relayd.http")

# One update of a write: the PV name as sent, and the update or why it was refused already.
Item = tuple[str, "Update | Refused"]

ANSWER_TIMEOUT = 5.0  # seconds a write waits for the CA process's verdicts
QUERY_TIMEOUT = 5.0  # seconds a one-PV query waits


@dataclass
class Outcome:
    """The answer to one write: HTTP status and JSON body."""

    status: int
    body: dict[str, Any]


@dataclass
class Service:
    """One HTTP worker's state: config, rules, mirror, channel and counters."""

    config: Config
    access: Access
    mirror: Mirror
    link: Link
    grammar: Grammar = field(init=False)
    intake: Intake = field(init=False)
    status_made: tuple[float, Any] = (0.0, None)  # the last /api/v1/status answer, and when
    _refused: Counter = field(default_factory=Counter)
    _last_refusal: str = ""
    _log: RateLimitedLog = field(default_factory=lambda: RateLimitedLog(log))

    def __post_init__(self) -> None:
        config = self.config
        self.grammar = Grammar(config.prefix, config.name_limits)
        self.intake = Intake.bounded(self.grammar, config.max_pvs, config.max_placeholders)

    # --- refusals the worker decides itself -------------------------------------------------

    def refuse(self, refused: Refused, source: str) -> dict[str, Any]:
        """Count and log a refusal of this worker's; its verdict as JSON."""
        self._refused[refused.reason.code] += 1
        self._last_refusal = f"{source}: {refused}"
        self._log.warning(refused.reason, "refused %s", self._last_refusal)
        return answers.refused("", refused.reason.code, refused.detail)

    def take_counters(self) -> dict:
        """The refusals counted since the last call, for the CA process's status PVs."""
        if not self._refused:
            return {}
        counters = {"refused": dict(self._refused), "last_refusal": self._last_refusal,
                    "way": Way.HTTP.value}
        self._refused.clear()
        return counters

    def restore_counters(self, counters: dict) -> None:
        """Counters that could not be sent: kept for the next try."""
        self._refused.update(counters.get("refused", {}))

    # --- writes ------------------------------------------------------------------------------

    async def submit(self, items: list[Item], source: str, durable: bool = False
                     ) -> tuple[list[dict[str, Any]], bool, str]:
        """Verdicts for `items` (the name as sent, and its update or its refusal), in order.

        Returns the verdicts as JSON, and whether they are durable and the note on that.
        Raises `NoAnswer` or `Unavailable` when the CA process did not take or answer them.
        """
        results: list[dict[str, Any] | None] = [None] * len(items)
        ops, positions = [], []
        now_ns = time.time_ns()
        for index, (name, item) in enumerate(items):
            try:
                if isinstance(item, Refused):
                    raise item
                ops.append(self.intake.prepare(item, now_ns))
                positions.append(index)
            except Refused as refused:
                results[index] = {**self.refuse(refused, source), "pv": name}
        durable_ok, note = durable, ""
        if ops:
            reply = await self.link.apply(ops, source, durable,
                                          ANSWER_TIMEOUT + self._durable_wait(durable),
                                          self.take_counters())
            for index, wire in zip(positions, reply.verdicts):
                results[index] = verdict_json(Verdict.from_wire(wire))
            durable_ok, note = reply.durable, reply.note
        else:
            self.link.send_counters(self.take_counters())
        return results, durable_ok, note  # type: ignore[return-value]

    def _durable_wait(self, durable: bool) -> float:
        return 4 * self.config.autosave_interval if durable else 0.0

    async def write(self, items: list[Item], source: str, durable: bool,
                    batch: bool) -> Outcome:
        """Submit and turn the verdicts into the HTTP answer (one update, or a batch)."""
        try:
            results, durable_ok, note = await self.submit(items, source, durable)
        except NoAnswer as error:
            return Outcome(answers.NO_ANSWER, {"ok": False, "reason": "noAnswer",
                                               "text": f"{error}: the update may or may "
                                               "not have been applied"})
        except Unavailable as error:
            return Outcome(answers.UNAVAILABLE, {"ok": False, "reason": "unavailable",
                                                 "text": f"{error}: nothing was applied"})
        extra = {"durable": durable_ok, "note": note} if durable else {}
        if batch:
            ok = all(result["ok"] for result in results)
            return Outcome(answers.batch_status(results),
                           {"ok": ok, "results": results, **extra})
        return Outcome(answers.status_of(results[0]), {**results[0], **extra})

    async def query(self, kind: str, args: Any) -> Any:
        """Ask the CA process (one PV in full); `NoAnswer`, `Unavailable` as `submit`."""
        return await self.link.query(kind, args, QUERY_TIMEOUT)


def verdict_json(verdict: Verdict) -> dict[str, Any]:
    if verdict.ok:
        return answers.accepted(verdict.pv)
    return answers.refused(verdict.pv, verdict.reason.code, verdict.detail)  # type: ignore[union-attr]
