"""End-to-end: a large autosave flush reaches the file promptly, even on an idle relay.

The CA loop hands a flush to the writer thread in parts (`writer.SNAPSHOTS_PER_TICK`
PVs per cycle). It used to idle between the parts like between any cycles (IDLE,
0.2 s, when no traffic came): 100,000 PVs created at once took 9 s to reach the file
with the default 1 s interval, and a crash meanwhile lost them. It no longer idles while
a flush is being handed over.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from relayd.client import Client
from relayd.store import writer
from tests.harness import wait_for

COUNT = 50_000
BATCH = 1000
INTERVAL = 8.0  # --autosave-interval: longer than creating COUNT PVs takes
IDLE = 0.2  # the CA loop's longest wait when nothing happens (relayd.ca.process.IDLE)
# Handed at one part per idle wait, COUNT PVs would take (COUNT / SNAPSHOTS_PER_TICK - 1)
# * IDLE = 4.8 s from the first part to the last; handed without idling, the writer
# needs well under a second of CPU for them.
PROMPT = 2.5


def rows(path: Path) -> int:
    """Rows in the store, read from a connection of our own (WAL: beside the writer)."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        return db.execute("SELECT count(*) FROM pvs").fetchone()[0]
    finally:
        db.close()


def test_a_large_flush_reaches_the_file_without_idling_between_parts(pyepics_client,
                                                                    start_relay):
    parts = COUNT / writer.SNAPSHOTS_PER_TICK
    assert (parts - 1) * IDLE > 1.5 * PROMPT  # the old way could not pass
    # All PVs exist before the first flush starts: it holds every one of them.
    relay = start_relay("--autosave-interval", str(INTERVAL))
    with Client(relay.endpoint, send_timeout=60) as sender:
        for start in range(0, COUNT, BATCH):
            sender.put_many((f"flush{i}_f1", float(i)) for i in range(start, start + BATCH))
    pvs = f"{relay.prefix}:status:pvs"
    wait_for(lambda: pyepics_client.get(pvs) == COUNT, timeout=60, what=f"{COUNT} PVs created")
    assert rows(relay.autosave_path) == 0, "the flush began before every PV existed"
    # Polled from this process, not over CA: a client's requests would wake the idle
    # loop and hide the defect.
    wait_for(lambda: rows(relay.autosave_path) > 0, timeout=INTERVAL + 30, interval=0.01,
             what="the first part of the flush in the autosave file")
    first = time.monotonic()
    wait_for(lambda: rows(relay.autosave_path) == COUNT, timeout=60, interval=0.01,
             what="every PV in the autosave file")
    took = time.monotonic() - first
    assert took < PROMPT, (f"the flush of {COUNT} PVs took {took:.1f} s from its first "
                           "part in the file to its last")
