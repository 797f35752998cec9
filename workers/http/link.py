"""The HTTP worker's end of its channel to the CA process, on the worker's asyncio loop.

Up (worker -> CA process): batches of updates that want verdicts (`Forward`, each batch
with a request id in `Batch.reply`), questions (`Query`: one PV in full, a full sync of
the mirror), and the worker's own refusal counters. Down: `Verdicts` and `QueryResult`
answers, matched to the waiting request by id, and `Feed` messages for the mirror.

Request ids start at a random 63-bit number per worker process and go up by one: an
answer meant for a predecessor (still in the pipe after a restart) matches no request
and is ignored. An answer that never comes (the CA process restarted, its outbox was
full) ends the request with `NoAnswer` after its timeout; nothing is reported as done
that the CA process did not answer.

The mirror stays in step by sequence: the CA process numbers its feed messages, and a
gap, a silence of FEED_SILENCE seconds (the CA process sends the status at least every
second) or a new CA process makes the worker ask for a full sync again.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Any, Callable

from relayd.core.feed import FeedChunk
from relayd.core.ops import Batch, PipeOp, Way
from relayd.logs import RateLimitedLog
from relayd.supervise.child import Channel
from relayd.supervise.messages import Feed, Forward, Query, QueryResult, Verdicts, decode, encode
from relayd.supervise.pipe import PipeReader, PipeWriter
from workers.http.mirror import Mirror

log = logging.getLogger("relayd.http")

FEED_SILENCE = 3.0  # seconds without a feed after which the mirror is synced again
SEND_RETRY = 0.01  # seconds between tries to send into a full pipe
READ_BUDGET = 0.02  # seconds of reading the down pipe before other work gets a turn


class NoAnswer(Exception):
    """The CA process did not answer in time: whatever was sent may or may not apply."""


class Unavailable(Exception):
    """The CA process could not be reached: nothing was sent."""


class Link:
    """Requests to the CA process and the feed from it (see the module docstring)."""

    def __init__(self, channel: Channel, mirror: Mirror,
                 clock: Callable[[], float] = time.monotonic):
        self.writer = PipeWriter(channel.up)
        self.reader = PipeReader(channel.down)
        self.mirror = mirror
        self.clock = clock
        self._next_id = random.getrandbits(63)
        self._waiting: dict[int, asyncio.Future] = {}
        self._seq = 0
        self._sync_id = 0  # the sync asked for; feeds before its first chunk are stale
        self._syncing = False
        self._feed_seq: int | None = None
        self._last_feed = clock()
        self._log = RateLimitedLog(log, burst=3, period=60.0)

    # --- sending ---------------------------------------------------------------------------

    def _new_id(self) -> int:
        self._next_id = (self._next_id + 1) & (2**63 - 1)
        return self._next_id

    async def _send(self, message: Any, deadline: float) -> None:
        """Send one message, retrying while the pipe is full; `Unavailable` at `deadline`."""
        payload = encode(message)
        while not self.writer.send(payload, 0.0):
            if self.clock() >= deadline:
                raise Unavailable("the CA process is not reading its pipe (it is full)")
            await asyncio.sleep(SEND_RETRY)

    async def _ask(self, request_id: int, message: Any, timeout: float) -> Any:
        future = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = future
        deadline = self.clock() + timeout
        try:
            await self._send(message, deadline)
            return await asyncio.wait_for(future, max(0.0, deadline - self.clock()))
        except asyncio.TimeoutError:
            raise NoAnswer(f"no answer from the CA process within {timeout:.0f} s") from None
        finally:
            self._waiting.pop(request_id, None)

    async def apply(self, ops: list[PipeOp], source: str, durable: bool, timeout: float,
                    counters: dict | None = None) -> Verdicts:
        """Send one batch and wait for its verdicts."""
        request_id = self._new_id()
        self._seq += 1
        batch = Batch(ops, Way.HTTP.value, source, request_id, durable)
        forward = Forward(self._seq, time.monotonic_ns(), [batch], counters or {})
        return await self._ask(request_id, forward, timeout)

    async def query(self, kind: str, args: Any, timeout: float) -> QueryResult:
        request_id = self._new_id()
        return await self._ask(request_id, Query(request_id, kind, args), timeout)

    def send_counters(self, counters: dict) -> bool:
        """Send the worker's counters now, if the pipe has room (else they wait)."""
        self._seq += 1
        return self.writer.send(encode(Forward(self._seq, time.monotonic_ns(), [], counters)),
                                0.0)

    def ask_sync(self) -> None:
        """Ask for every PV again (at start, and whenever the mirror fell out of step)."""
        request_id = self._new_id()
        if self.writer.send(encode(Query(request_id, "sync", request_id)), 0.0):
            self._sync_id, self._syncing, self._feed_seq = request_id, True, None
            self._last_feed = self.clock()
            self.mirror.forget()

    # --- receiving -------------------------------------------------------------------------

    def readable(self) -> None:
        """The down pipe has data: read what is there (within READ_BUDGET)."""
        stop = time.perf_counter() + READ_BUDGET
        while time.perf_counter() < stop:
            payload = self.reader.read()
            if payload is None:
                return
            try:
                self._take(decode(payload))
            except Exception:  # a bug, or a message of another version: keep serving
                self._log.log(logging.ERROR, "internal", "internal error reading an answer "
                              "from the CA process", exc_info=True)
        asyncio.get_running_loop().call_soon(self.readable)

    def _take(self, message: Any) -> None:
        if isinstance(message, Feed):
            self._feed(message)
            return
        future = self._waiting.get(message.request_id)
        if future is not None and not future.done():
            future.set_result(message)

    def _feed(self, message: Feed) -> None:
        chunk = FeedChunk(*message.chunk)
        if self._syncing:
            if chunk.sync != self._sync_id:
                return  # older than the sync asked for
            self._syncing = False
            self.mirror.begin_sync()
        elif self._feed_seq is not None and message.seq != self._feed_seq + 1:
            self._log.warning("gap", "the HTTP worker missed feed messages (%s after %s); "
                              "asking for every PV again", message.seq, self._feed_seq)
            self.ask_sync()
            return
        self._feed_seq = message.seq
        self._last_feed = self.clock()
        self.mirror.apply(chunk, self._last_feed)

    def check(self) -> None:
        """Every housekeeping turn: ask for a sync if the feed went silent."""
        if self.clock() - self._last_feed > FEED_SILENCE:
            if self.mirror.synced or not self._syncing:
                self._log.warning("silent", "no feed from the CA process for %.0f s; "
                                  "asking for every PV again", FEED_SILENCE)
            self.ask_sync()
