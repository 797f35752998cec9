"""End-to-end: the ingest worker's memory stays bounded by what the relay can hold.

Issue 11: the worker cached the parsed spec of every name it had seen (up to 200,000),
also of names the CA process then refused (beyond ``--max-pvs``): a sender of endless
new names grew the worker by ~160 MB. The cache now holds at most ``--max-pvs`` +
``--max-placeholders`` names (`relayd.core.intake`).
"""

from __future__ import annotations

import pytest

from tests.e2e._tools import pack, send_raw, status, wait_status
from tests.harness import RelayProcess

pytestmark = pytest.mark.timeout(180)

NAMES = 150_000
PER_MESSAGE = 1_000


def rss_mib(relay: RelayProcess, role: str) -> float:
    return relay.rss_kib(relay.child_pids()[role]) / 1024


def test_endless_new_names_do_not_grow_the_worker(caproto_client, start_relay) -> None:
    relay = start_relay("--max-pvs", "10", "--max-placeholders", "10")
    # A first round warms the worker up (its buffers and allocator), then the measure.
    send_raw(relay.endpoint, pack([{"pv": f"warm{i}_f1", "value": 1.0}
                                   for i in range(PER_MESSAGE)]))
    wait_status(caproto_client, relay, "zmq:updates", lambda value: value == PER_MESSAGE)
    before = rss_mib(relay, "ingest")
    messages = [pack([{"pv": f"n{start + i}_f1", "value": 1.0} for i in range(PER_MESSAGE)])
                for start in range(0, NAMES, PER_MESSAGE)]
    send_raw(relay.endpoint, *messages)
    wait_status(caproto_client, relay, "zmq:updates",
                lambda value: value == PER_MESSAGE + NAMES, timeout=120)
    growth = rss_mib(relay, "ingest") - before
    print(f"the ingest worker grew by {growth:.1f} MiB for {NAMES} names")
    assert status(caproto_client, relay, "refused:pvLimit") >= NAMES - 10
    assert growth < 20, f"the ingest worker grew by {growth:.0f} MiB for {NAMES} names"
