"""The CA process's change feed to the HTTP worker (relayd.ca.feed), with values only.

The feed needs of the CA server only its relay and the `changed` attribute it sets, so
it is run here on a real `Relay` and registry; what it sends is decoded with the real
message format (`relayd.supervise.messages`) and read back into a real mirror.
"""

from __future__ import annotations

import numpy as np

from relayd.ca.feed import CHUNK, CYCLE_ROWS, PERIOD, Feed
from relayd.core.feed import FeedChunk
from relayd.core.names import Grammar
from relayd.core.registry import Registry
from relayd.core.writes import Relay
from relayd.supervise.messages import Feed as FeedMessage
from relayd.supervise.messages import decode
from workers.http.mirror import Mirror


class PV:
    """What the registry holds for a PV in this test (the CA shell's ServedPV has more)."""

    def __init__(self, state):
        self.state = state


class Server:
    """The two things the feed uses of the CA server."""

    def __init__(self) -> None:
        grammar = Grammar("p")
        self.relay = Relay(grammar, Registry(grammar, PV))
        self.changed = None


class Rig:
    def __init__(self, room: bool = True) -> None:
        self.server = Server()
        self.sent: list[FeedMessage] = []
        self.room = room
        self.feed = Feed(self.server, lambda: {"status:pvs": len(self.server.relay.registry)},
                         self.put)
        self.mirror = Mirror("p")
        self.syncing = 0  # the sync the mirror began (as the worker's link does)

    def put(self, payload: bytes) -> bool:
        if not self.room:
            return False
        message = decode(payload)
        assert isinstance(message, FeedMessage)
        self.sent.append(message)
        return True

    def put_value(self, name: str, value: float) -> PV:
        pv, _ = self.server.relay.put(name, value, 1_000_000_000)
        if self.server.changed is not None:  # what CAServer.applied does
            self.server.changed[pv] = None
        return pv

    def take(self) -> list[FeedChunk]:
        chunks = [FeedChunk(*message.chunk) for message in self.sent]
        self.sent.clear()
        for chunk in chunks:
            if chunk.sync and chunk.sync != self.syncing:
                self.syncing = chunk.sync
                self.mirror.begin_sync()
            self.mirror.apply(chunk, 0.0)
        return chunks


def test_nothing_is_noted_or_sent_until_a_worker_asks() -> None:
    rig = Rig()
    rig.put_value("a_f1", 1.0)
    rig.feed.cycle(100.0)
    assert rig.server.changed is None and rig.sent == [] and not rig.feed.busy


def test_a_sync_streams_every_pv_in_bounded_cycles_then_changes_follow() -> None:
    rig = Rig()
    for index in range(CYCLE_ROWS + 10):
        rig.put_value(f"pv{index:05d}_f1", float(index))
    assert rig.feed.sync(42) == {"pvs": CYCLE_ROWS + 10}
    assert rig.server.changed is not None and rig.feed.busy
    rig.feed.cycle(0.0)
    first = rig.take()
    assert len(first) == CYCLE_ROWS // CHUNK and all(chunk.sync == 42 for chunk in first)
    assert not any(chunk.final for chunk in first) and not rig.mirror.synced
    rig.put_value("pv00001_f1", -1.0)  # changed during the sync
    rig.feed.cycle(0.0)
    last = rig.take()
    assert last[-1].final and last[-1].status == {"status:pvs": CYCLE_ROWS + 10}
    assert rig.mirror.synced and len(rig.mirror) == CYCLE_ROWS + 10
    assert not rig.feed.busy
    rig.feed.cycle(PERIOD)
    changes = rig.take()
    assert [row[0] for chunk in changes for row in chunk.rows] == ["p:pv00001_f1"]
    assert rig.mirror.get("pv00001_f1").row.value == -1.0
    assert [message.seq for message in rig.sent] == []  # everything taken


def test_changes_are_conflated_and_deletes_sent_as_names() -> None:
    rig = Rig()
    rig.feed.sync(1)
    rig.feed.cycle(0.0)
    rig.take()
    for value in range(100):
        rig.put_value("hot_f1", float(value))
    gone = rig.put_value("gone_f3", 1.0)
    rig.server.relay.delete("gone_f3")
    rig.feed.forget(gone)
    buffer = rig.put_value("trace_F50", 2.0)
    rig.feed.cycle(PERIOD)
    chunks = rig.take()
    rows = [row for chunk in chunks for row in chunk.rows]
    assert [(row[0], row[1]) for row in rows] == [("p:hot_f1", 99.0), ("p:trace_F50", [2.0])]
    assert rows[0][8] == 100  # updates, counted by the CA process
    assert chunks[-1].deleted == ["p:gone_f3"]
    assert gone not in rig.feed.dirty  # a deleted PV is not kept alive by the feed
    assert rig.mirror.get("gone_f3") is None and buffer.state.spec.buffer


def test_a_full_outbox_stops_the_feed_until_the_next_sync() -> None:
    rig = Rig(room=False)
    rig.feed.sync(7)
    rig.feed.cycle(0.0)
    assert rig.server.changed is None and not rig.feed.active and not rig.feed.busy
    rig.put_value("a_f1", 1.0)
    assert rig.feed.dirty == {}
    rig.room = True
    rig.feed.sync(8)
    rig.feed.cycle(0.0)
    assert rig.take()[-1].final


def test_one_pv_in_full() -> None:
    rig = Rig()
    pv, _ = rig.server.relay.put("wave_f100", np.arange(100.0), 5)
    pv.state.writer, pv.state.updates = "http 127.0.0.1", 3
    row, value = rig.feed.query_pv("p:wave_f100")
    assert value == list(range(100)) and len(row[1]) < 100 and row[7] == "http 127.0.0.1"
    assert rig.feed.query_pv("p:none_f1") is None
