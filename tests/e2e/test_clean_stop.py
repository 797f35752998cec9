"""End-to-end: a clean stop loses nothing the relay received (issue 11).

Two publishers, each a process of its own, push numbered values at a steady pace into a
buffer PV each: one acknowledged (every verdict recorded), one fire-and-forget (PUSH).
Meanwhile the relay is stopped as supervisord stops it (SIGTERM to the whole process
group at once: ``stopasgroup=true``) or as an operator does (SIGTERM to relayd), and
started again on the same ports and autosave file. Afterwards:

* every value the relay acknowledged is in the buffer, in order;
* of the pushes, the buffer holds exactly the first N sent, N being what the stopped
  relay's ingest worker says it received ("N pushes ... received since start"): every
  push ZeroMQ had delivered to the worker was applied and saved. What follows N until
  the restarted relay's first value is what was in flight at the cut, the sender's
  (docs/PROTOCOL.md, "Stopping and restarting").
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from relayd.supervise.supervisor import ROLES
from tests.e2e._tools import full
from tests.harness import RelayProcess, wait_for

pytestmark = pytest.mark.timeout(180)

PACE = 0.002  # seconds between two values of a publisher
ACKED, PUSHED = "acked_F200000", "pushed_F200000"

PUBLISHER = textwrap.dedent('''
    import json, sys, time
    import zmq
    from relayd.client import Client, RelayUnreachable
    from relayd.core.protocol import dumps, encode_update

    mode, endpoint, ack_endpoint, pv, pace, stop_file = sys.argv[1:7]
    pace = float(pace)
    acked, unknown, sent = [], [], 0
    if mode == "ack":
        client = Client(endpoint, ack=True, ack_endpoint=ack_endpoint, timeout=3.0, linger=0)
    else:  # a bare PUSH socket that queues while the relay is away, as a publisher's does
        context = zmq.Context()
        push = context.socket(zmq.PUSH)
        push.setsockopt(zmq.SNDHWM, 100_000)
        push.setsockopt(zmq.LINGER, 10_000)
        push.connect(endpoint)
    import os
    next_send = time.monotonic()
    while not os.path.exists(stop_file):
        sent += 1
        if mode == "ack":
            try:
                client.put(pv, [float(sent)])
                acked.append(sent)
            except RelayUnreachable:
                unknown.append(sent)
        else:
            push.send(dumps(encode_update(pv, [float(sent)])))
        next_send += pace
        time.sleep(max(0.0, next_send - time.monotonic()))
    if mode == "ack":
        client.close()
    else:
        push.close()  # waits for the queue to leave (LINGER)
        context.term()
    print(json.dumps({"sent": sent, "acked": acked, "unknown": unknown}))
''')


def start_publisher(relay: RelayProcess, mode: str, pv: str, stop_file) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", PUBLISHER, mode, relay.endpoint,
         getattr(relay, "ack_endpoint", ""), pv, str(PACE), str(stop_file)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)


def stop_as_group(relay: RelayProcess) -> int:
    """SIGTERM to relayd and every child at once, as supervisord's stopasgroup does."""
    pids = [relay.pid, *relay.child_pids().values()]
    assert len(pids) == 1 + len(ROLES), pids  # the supervisor and each of its roles
    for pid in pids:
        os.kill(pid, signal.SIGTERM)
    return relay.process.wait(30)


def held(reader, relay: RelayProcess, pv: str) -> list[int]:
    """The values a buffer PV holds, as ints ([] while it holds none)."""
    value = reader.get(full(relay, pv))
    return [] if value is None else [int(v) for v in value]


def start_again(relay: RelayProcess, reader, pv: str) -> None:
    """Start the stopped relay again and wait until its publisher's values flow into `pv`."""
    relay.start()
    before = len(held(reader, relay, pv))
    wait_for(lambda: len(held(reader, relay, pv)) > before + 200, 30,
             what=f"the publisher of {pv} under way again")


def received_pushes(log: str) -> int:
    """What the stopped relay's ingest worker says it received."""
    found = re.findall(r"stopping: (\d+) pushes and (\d+) requests received since start "
                       r"\((\d+) and (\d+) of them after the stop signal\), every one "
                       r"forwarded and every request answered", log)
    assert len(found) == 1, log
    return int(found[0][0])


@pytest.mark.parametrize("how", ["stopasgroup", "sigterm"])
def test_a_clean_restart_loses_nothing_the_relay_received(pyepics_client, start_relay,
                                                          tmp_path, how: str) -> None:
    relay = start_relay()
    stop_file = tmp_path / "stop"
    publishers = {pv: start_publisher(relay, mode, pv, stop_file)
                  for mode, pv in (("ack", ACKED), ("push", PUSHED))}
    try:
        wait_for(lambda: len(held(pyepics_client, relay, ACKED)) > 200, 20,
                 what="the publishers under way")
        code = stop_as_group(relay) if how == "stopasgroup" else relay.stop()
        first_life = relay.log_text()
        assert code == 0, first_life
        time.sleep(0.3)  # the publishers go on meanwhile: pushes queue, requests time out
        start_again(relay, pyepics_client, ACKED)
    finally:
        stop_file.touch()
        outcomes = {pv: json.loads(process.communicate(timeout=60)[0])
                    for pv, process in publishers.items()}
    acked_values = held(pyepics_client, relay, ACKED)
    pushed_values = held(pyepics_client, relay, PUSHED)

    acked = outcomes[ACKED]["acked"]
    assert len(acked) > 400 and set(acked) <= set(acked_values), (
        f"acknowledged but missing: {sorted(set(acked) - set(acked_values))[:20]}")
    assert acked_values == sorted(acked_values) and len(set(acked_values)) == len(acked_values)
    unknown = set(outcomes[ACKED]["unknown"])
    assert set(acked_values) <= set(acked) | unknown  # nothing the publisher did not send

    received = received_pushes(first_life)
    assert received > 50
    assert pushed_values[:received] == list(range(1, received + 1)), (
        "a push the first relay's worker had received is missing")
    assert pushed_values == sorted(pushed_values)
    resumed = pushed_values[received] if len(pushed_values) > received else None
    assert resumed is not None, "nothing pushed after the restart arrived"
    assert pushed_values[received:] == list(range(resumed, outcomes[PUSHED]["sent"] + 1)), (
        "after the restart every push arrives, in order")
    # In flight at the cut (the sender's): written to the network, never read.
    print(f"{how}: {len(acked)} acknowledged, {len(unknown)} unanswered; {received} pushes "
          f"received by the stopped relay, {resumed - received - 1} in flight at the cut, "
          f"{outcomes[PUSHED]['sent']} sent")
    assert resumed - received - 1 < 500, (received, resumed)


def first_gap(values: list[int]) -> tuple[int, int]:
    """(how many values from 1 on are all there, how many are missing after them)."""
    for index, value in enumerate(values):
        if value != index + 1:
            return index, value - index - 1
    return len(values), 0


def test_pushes_waiting_for_a_stalled_worker_are_not_lost_at_a_stop(pyepics_client,
                                                                    start_relay, tmp_path
                                                                    ) -> None:
    """The worker is stopped (SIGSTOP) for a second while a publisher goes on pushing:
    ~500 pushes wait in the network's buffers and ZeroMQ's queue. Then the relay is
    stopped as supervisord does it, and started again. Before issue 11's fix the worker
    closed its socket without reading them, and the CA process had already stopped:
    every one of them was lost (a gap of ~500 values). Now they are taken in, applied
    and saved before the relay exits."""
    relay = start_relay()
    stop_file = tmp_path / "stop"
    publisher = start_publisher(relay, "push", PUSHED, stop_file)
    try:
        wait_for(lambda: len(held(pyepics_client, relay, PUSHED)) > 100, 20,
                 what="the publisher under way")
        worker = relay.child_pids()["ingest"]
        os.kill(worker, signal.SIGSTOP)
        time.sleep(1.0)
        pids = [relay.pid, *relay.child_pids().values()]
        for pid in pids:
            os.kill(pid, signal.SIGTERM)
        os.kill(worker, signal.SIGCONT)
        assert relay.process.wait(30) == 0, relay.log_text()
        start_again(relay, pyepics_client, PUSHED)
    finally:
        stop_file.touch()
        sent = json.loads(publisher.communicate(timeout=60)[0])["sent"]
    values = held(pyepics_client, relay, PUSHED)
    whole, missing = first_gap(values)
    print(f"stalled worker: the first {whole} values all there, then {missing} missing, "
          f"{sent} sent")
    assert values == sorted(values)
    assert whole > 500 and missing < 20, (whole, missing)
