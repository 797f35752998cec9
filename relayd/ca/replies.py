"""The CA process's answers to the workers, sent down their pipes without ever blocking.

A batch that asks for an answer (`relayd.core.ops.Batch.reply`) gets one `Verdicts`
message once the CA process has applied it; a batch that asks for durability gets it
once autosave has committed its changes to the file:

* at the end of a cycle that applied such batches, `Autosaver.flush_now` hands every
  change to the writer thread and gives a generation; the verdicts are held until the
  writer's `committed` generation reaches it (checked every cycle), then sent with
  ``durable`` true;
* autosave off: sent at once, ``durable`` false, the note says so (the updates were
  applied; they are not saved);
* writes failing (disk full, read-only file...): held at most HOLD_INTERVALS autosave
  intervals, then sent with ``durable`` false and the autosave error as the note;
* a batch none of whose updates was accepted changed nothing: sent at once, durable.

Each worker's down pipe has an `Outbox` (bounded, OUTBOX_BYTES): the CA loop queues
answers and flushes them every cycle, never waiting for a worker. An answer that does
not fit (a worker that reads nothing: stopped, hung, restarting) is dropped, counted in
``status:pipe:replyDropped`` and logged (rate-limited); its sender times out and is told
"no answer". Nothing unanswered is ever reported as done.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from relayd.core.stats import Stats
from relayd.logs import RateLimitedLog
from relayd.store.writer import Autosaver
from relayd.supervise.messages import Message, Verdicts, encode
from relayd.supervise.pipe import Outbox

log = logging.getLogger("relayd.ca")

OUTBOX_BYTES = 64 * 1024 * 1024  # answers queued per worker before they are dropped
HOLD_INTERVALS = 3  # autosave intervals a durable answer waits for a commit, at most


@dataclass
class Held:
    """Verdicts waiting for autosave to commit generation `generation` (0: not asked yet)."""

    role: str
    request_id: int
    verdicts: list
    deadline: float
    generation: int = 0


class Replies:
    """Answers for every worker: sent when due, through each worker's outbox."""

    def __init__(self, outboxes: dict[str, Outbox], stats: Stats,
                 autosaver: Autosaver | None):
        self.outboxes = outboxes
        self.stats = stats
        self.autosaver = autosaver
        self._held: list[Held] = []
        self._log = RateLimitedLog(log, burst=3, period=60.0)

    def verdicts(self, role: str, request_id: int, verdicts: list, durable: bool) -> None:
        """The verdicts of an applied batch from worker `role`: sent now or held."""
        if not durable:
            self.send(role, Verdicts(request_id, verdicts, False, ""))
        elif self.autosaver is None:
            self.send(role, Verdicts(request_id, verdicts, False,
                                     "autosave is off: the updates were applied, not saved"))
        elif all(verdict[1] is not None for verdict in verdicts):
            self.send(role, Verdicts(request_id, verdicts, True, ""))  # nothing changed
        else:
            wait = HOLD_INTERVALS * self.autosaver.interval
            self._held.append(Held(role, request_id, verdicts, time.monotonic() + wait))

    def send(self, role: str, message: Message) -> None:
        """Queue `message` for worker `role`; dropped (counted, logged) if it cannot be."""
        outbox = self.outboxes.get(role)
        if outbox is not None and outbox.put(encode(message)):
            return
        self.stats.reply_dropped += 1
        self._log.warning("dropped", "an answer to the %s worker was dropped (%d since "
                          "start): %s; its sender will time out", role,
                          self.stats.reply_dropped,
                          "its outbox is full (the worker reads nothing?)" if outbox is not None
                          else "no such worker")

    def cycle(self, now: float) -> None:
        """Every CA loop cycle: release what autosave committed, send what is queued."""
        if self._held:
            self._release(now)
        for outbox in self.outboxes.values():
            if len(outbox):
                outbox.flush()

    def _release(self, now: float) -> None:
        autosaver = self.autosaver
        if autosaver is None:
            return
        if any(held.generation == 0 for held in self._held):
            generation = autosaver.flush_now()
            for held in self._held:
                held.generation = held.generation or generation
        committed = autosaver.committed
        keep = []
        for held in self._held:
            if held.generation <= committed:
                self.send(held.role, Verdicts(held.request_id, held.verdicts, True, ""))
            elif now >= held.deadline:
                why = autosaver.status.last_error or "the write is still in progress"
                self.send(held.role, Verdicts(
                    held.request_id, held.verdicts, False,
                    f"autosave did not commit within {HOLD_INTERVALS} intervals: {why}"))
            else:
                keep.append(held)
        self._held = keep

    def finish(self, saved: bool, timeout: float) -> bool:
        """At stop, once autosave has written everything (`saved`) or failed: send what
        is held, and everything queued, waiting up to `timeout`; True when all is sent."""
        note = "" if saved else "autosave failed at stop: see the log"
        for held in self._held:
            self.send(held.role, Verdicts(held.request_id, held.verdicts, saved, note))
        self._held = []
        return self.flush(timeout)

    def flush(self, timeout: float) -> bool:
        """Send everything queued, waiting up to `timeout`; True when done."""
        deadline = time.monotonic() + timeout
        while not all(outbox.flush() for outbox in self.outboxes.values()):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)
        return True

    def pending(self) -> int:
        """Verdicts held for autosave."""
        return len(self._held)


def outboxes(ends: dict[str, Any]) -> dict[str, Outbox]:
    """An outbox for each worker's down pipe end (by role)."""
    return {role: Outbox(end, OUTBOX_BYTES) for role, end in ends.items()}
