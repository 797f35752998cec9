"""End-to-end: the internal pipe's status PVs tell what happened in it."""

from __future__ import annotations

import numpy as np

from tests.e2e._faults import stopped
from tests.e2e._tools import full, run_snippet, status, wait_listed, wait_status
from tests.e2e.test_faults import FLOOD

BIG = "with Client(endpoint) as r: r.put('big_f100000', np.arange(100_000, dtype=np.float64))"


def test_a_send_cut_short_by_a_full_pipe_is_counted_dropped_and_arrives_whole(
        pyepics_client, caproto_client, start_relay):
    """The worker's send of an 800 kB message times out half-way into a pipe the stopped
    CA process does not read, and is repeated whole: the CA process drops the first,
    partial copy (status:pipe:dropped, a WARNING in the log) and applies the second."""
    relay = start_relay("--pipe-buffer", "65536", "--zmq-rcvhwm", "10",
                        "--status-interval", "0.2")
    assert status(caproto_client, relay, "pipe:dropped") == 0.0
    with stopped(relay.child_pids()["ca-server"]):
        run_snippet(relay.endpoint, BIG)  # the worker starts forwarding it at once
        output = run_snippet(relay.endpoint, FLOOD)
        # The flood found the relay unreachable for a second: the worker was stuck
        # sending the array into the full pipe, long enough for its send to time out
        # (after 0.5 s) and to be repeated.
        assert output.startswith("unreachable after"), output
    dropped = wait_status(caproto_client, relay, "pipe:dropped", lambda n: n > 0)
    assert dropped == int(dropped)
    big = full(relay, "big_f100000")
    wait_listed(caproto_client, relay, big)
    assert np.array_equal(pyepics_client.get(big), np.arange(100_000, dtype=np.float64))
    relay.wait_log("internal pipe: dropped")
    assert status(caproto_client, relay, "restarts:ca") == 0
