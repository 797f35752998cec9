"""buffers: the memory a full right-appending buffer costs, against the data it holds.

N ``_F1000`` buffers (20,000; full mode only: with fewer, the CA process's fixed
transient memory - pipe, SQLite cache, malloc arenas - outweighs them) are filled through ZMQ and made to slide
(1,000 elements each, then four pushes of 333), so every element of each buffer's
storage has been written; relayd saves them all (autosave, its default). Once the
autosave file holds every PV and the CA process's RSS has stopped changing, the figure
is (RSS - RSS of the empty relay) / N against the payload, 8,000 bytes per buffer.
Target (issue 14): at most 1.2x.

Baseline: a plain pcaspy server (Driver, N static float PVs of count 1000) given five
rounds of new 1000-element arrays from its in-process loop (`setParam`, `updatePVs`; fed
through ZMQ the Driver would walk all N PVs per message); its empty RSS is that of the
same server with one PV.
"""

from __future__ import annotations

import time

from bench.procs import rss_bytes
from bench.report import Figure, Target
from bench.scenarios.common import (
    PROC, Context, interleave, max_pvs, status, wait_saved, wait_status,
)

COUNT = 1000
PATTERN = "buf%d_F1000"
BASE_PATTERN = "buf%d_f1000"  # the Driver's PVs are plain arrays of the same size
PUSHES = (COUNT, 333, 333, 333, 333)  # the first fills a buffer, the others make it slide
PAYLOAD = COUNT * 8


def settled_rss(pid: int, timeout: float = 20.0) -> int:
    """RSS once it held still for two seconds (the last writes and frees are done)."""
    deadline = time.monotonic() + timeout
    samples = [rss_bytes(pid)]
    while time.monotonic() < deadline:
        time.sleep(1.0)
        samples.append(rss_bytes(pid))
        if len(samples) >= 3 and max(samples[-3:]) - min(samples[-3:]) <= samples[-1] // 200:
            break
    return samples[-1]


def _push(ctx: Context, server, pattern: str, n: int, accepted: bool) -> None:
    sent = status(ctx, server, "accepted")["accepted"] if accepted else 0
    for count in PUSHES:
        ctx.clients.pusher(server.endpoint, server.pv(pattern), n, updates=n,
                           count=count).result(600)
        if accepted:
            sent += n
            wait_status(ctx, server, "accepted", sent, timeout=120)


def _relay(ctx: Context, n: int) -> dict:
    relay = ctx.relay("b", max_pvs(n))
    try:
        ca = relay.child("ca-server")
        empty = settled_rss(ca)
        _push(ctx, relay, PATTERN, n, accepted=True)
        saved_s = wait_saved(relay, n)
        rss = settled_rss(ca)
        return {"rss_empty": empty, "rss": rss, "saved_s": saved_s,
                "bytes_per_pv": (rss - empty) / n, "per_payload": (rss - empty) / n / PAYLOAD}
    finally:
        relay.stop()


def _plain(ctx: Context, n: int) -> dict:
    empty_server = ctx.baseline("driver", 1, count=COUNT, pattern=BASE_PATTERN)
    try:
        empty = settled_rss(empty_server.ready["pid"])
    finally:
        empty_server.stop()
    plain = ctx.baseline("driver", n, count=COUNT, pattern=BASE_PATTERN)
    try:
        # Its in-process loop: setParam of a new array of 1000 for every PV, then one
        # updatePVs, five rounds (fed through ZMQ, the Driver walks every PV per message).
        plain.loop(len(PUSHES) * n, timeout=600)
        rss = settled_rss(plain.ready["pid"])
        return {"rss_empty": empty, "rss": rss, "bytes_per_pv": (rss - empty) / n,
                "per_payload": (rss - empty) / n / PAYLOAD}
    finally:
        plain.stop()


def buffers(ctx: Context) -> tuple[list[Figure], dict]:
    n = 20_000
    runs = interleave(ctx.reps, {"relayd": lambda rep: _relay(ctx, n),
                                 "plain": lambda rep: _plain(ctx, n)}, ctx.log)
    name = "buffers"
    per_payload = [run["per_payload"] for run in runs["relayd"]]
    return [
        Figure(name, f"RSS per full _F1000 buffer / its 8 kB ({n} buffers)", "x", PROC,
               per_payload, "plain pcaspy, arrays of 1000", [r["per_payload"] for r in runs["plain"]],
               PROC, targets=[Target("<=", 1.2, text="<= 1.2x")]),
    ], runs
