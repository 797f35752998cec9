"""What p4p's threads run: answer searches, hand out channels, queue everything else.

p4p calls these from its own (pvxs) threads, holding the GIL. The CA loop is the only
thread that touches the relay's state, so nothing here changes it or calls the core
beyond a pure parse:

* a search (`Provider.testChannel`) is answered from the name's grammar and dict
  membership tests (a dict lookup is atomic under the GIL);
* a channel (`Provider.makeChannel`) must be handed out at once: it is a SharedPV that
  stays closed (a client's operations wait) until the CA loop has found or made its PV
  and opened it with the PV's state;
* puts, first and last connections are queued (`Requests`) and the CA loop is woken.

What crosses between the threads is exactly a `Request` on one queue, plus a byte on a
self-pipe that the CA process's wake-up thread watches; the CA loop measures how long
each request waited (`status:pva:lag`).

A channel's SharedPV is p4p's own class (`p4p._p4p.SharedPV`) with a handler that holds
no reference back to it. p4p's public wrapper (`p4p.server.raw.SharedPV`) keeps itself
in a reference cycle with its handler; the CA loop moves long-lived objects out of the
garbage collector's sight (`gc.freeze`), which would keep such a cycle for ever once its
channel closed. The wrapper also costs a Python call per post, on the hot path.
"""

from __future__ import annotations

import os
import queue
import threading
import time
import weakref
from typing import Any, Collection, Mapping, NamedTuple

from p4p._p4p import SharedPV
from p4p.server import DynamicProvider

from relayd.core.errors import Refused
from relayd.core.names import Grammar

# What a request asks of the CA loop.
ATTACH = "attach"  # a new channel: find or make its PV, open it
REJECT = "reject"  # a channel beyond the limit: close it, count the refusal
PUT = "put"  # a client's put (`item`: the channel's name and p4p's ServerOperation)
RELEASED = "released"  # the last client of a channel has gone
LATE = "late"  # a client attached to a channel the CA loop had already closed
REFUSED = "refused"  # a search for a name beyond a limit (`item` is the Refused)


class Request(NamedTuple):
    kind: str
    channel: "Channel | None"
    item: Any
    queued: float  # time.monotonic() when queued


class Requests:
    """The one way from p4p's threads to the CA loop: a queue, and a self-pipe to wake it."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Request] = queue.SimpleQueue()
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)

    def fileno(self) -> int:
        """Readable while requests may wait (the wake-up thread selects on it)."""
        return self._read

    def put(self, kind: str, channel: "Channel | None", item: Any = None) -> None:
        self._queue.put(Request(kind, channel, item, time.monotonic()))
        try:
            os.write(self._write, b"!")
        except BlockingIOError:
            pass  # the pipe is full, so it is readable: the loop will come

    def take(self, most: int) -> list[Request]:
        """Up to `most` waiting requests, oldest first.

        The pipe is emptied first: a request queued after that writes a new byte, so
        the loop cannot wait while a request waits.
        """
        while True:
            try:
                if len(os.read(self._read, 65536)) < 65536:
                    break
            except BlockingIOError:
                break
        taken: list[Request] = []
        while len(taken) < most:
            try:
                taken.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return taken

    def close(self) -> None:
        os.close(self._read)
        os.close(self._write)


class Events:
    """The handler p4p calls for one channel's SharedPV: every call only queues.

    It refers to its `Channel` weakly: the channel owns the SharedPV, which owns this.
    """

    __slots__ = ("name", "_channel", "_requests", "connected", "dead")

    def __init__(self, channel: "Channel", requests: Requests):
        self.name = channel.name
        self._channel = weakref.ref(channel)
        self._requests = requests
        self.connected = False  # a client is connected (set from p4p's threads)
        self.dead = False  # the CA loop has closed the channel for good

    def put(self, op: Any) -> None:
        # A channel freed meanwhile arrives as None: the CA loop answers "deleted".
        self._requests.put(PUT, self._channel(), (self.name, op))

    def rpc(self, op: Any) -> None:
        op.done(error="relayd PVs do not take RPC calls: put a value instead")

    def onFirstConnect(self) -> None:
        self.connected = True
        if self.dead:
            self._requests.put(LATE, self._channel())

    def onLastDisconnect(self) -> None:
        self.connected = False
        self._requests.put(RELEASED, self._channel())


class Channel:
    """One name served over PVA: its SharedPV, and (once attached) the PV it serves.

    `pv` and `posted_ns` belong to the CA loop; the PV refers back (``pv.pva``) while
    attached, a cycle the CA loop breaks when it detaches the channel.
    """

    __slots__ = ("name", "events", "shared", "pv", "scratch", "posted_ns", "__weakref__")

    def __init__(self, name: str, requests: Requests):
        self.name = name
        self.events = Events(self, requests)
        self.shared = SharedPV(self.events)
        self.pv: Any = None
        self.scratch: Any = None  # the Value its monitor updates are posted from
        self.posted_ns = -1  # for the relay's own PVs: the state's stamp last posted


class Provider:
    """The p4p DynamicProvider's handler: which names are the relay's, and their channels.

    `pvs` is the registry's table of PVs and `control` the names of the relay's own
    PVs, both only ever tested for membership here. `most` bounds the channels (a client
    can ask for channels without searching first). `full` is set by the CA loop while
    no new placeholder fits: searches for names that hold no PV then get no answer yet
    (and no negative cache entry), as CA leaves such searches unanswered.
    """

    def __init__(self, grammar: Grammar, pvs: Mapping[str, object],
                 control: Collection[str], most: int, requests: Requests):
        self.grammar = grammar
        self.pvs = pvs
        self.control = frozenset(control)
        self.most = most
        self.requests = requests
        self.full = False
        self.lock = threading.Lock()  # guards `channels`: p4p's threads and the CA loop
        self.channels: dict[str, Channel] = {}

    def testChannel(self, name: str) -> Any:
        if name in self.channels or name in self.pvs or name in self.control:
            return True
        try:
            spec = self.grammar.parse(name)
        except Refused as refused:
            self.requests.put(REFUSED, None, refused)
            return False
        if spec is None:
            return False
        return DynamicProvider.NotYet if self.full else True

    def makeChannel(self, name: str, peer: str) -> SharedPV:
        with self.lock:
            channel = self.channels.get(name)
            if channel is not None:
                return channel.shared
            channel = Channel(name, self.requests)
            admitted = len(self.channels) < self.most
            if admitted:
                self.channels[name] = channel
        self.requests.put(ATTACH if admitted else REJECT, channel, peer)
        return channel.shared

    def drop(self, channel: Channel, only_if_unused: bool = False) -> bool:
        """Forget `channel` (the CA loop then closes it); False if it is not the one
        serving its name, or (`only_if_unused`) a client connected again meanwhile."""
        with self.lock:
            if self.channels.get(channel.name) is not channel:
                return False
            if only_if_unused and channel.events.connected:
                return False
            del self.channels[channel.name]
            channel.events.dead = True
            return True
