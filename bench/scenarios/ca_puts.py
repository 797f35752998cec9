"""ca_puts: CA puts per second from one C client, relayd against a plain pcaspy server.

The C put client puts doubles round-robin to 1000 existing scalar PVs with
ca_array_put (no callback), then reads one PV back: CA answers the requests of one
circuit in order, so the answer marks the moment the server has handled every put.
No monitor is connected (a post without monitors is a no-op on both servers). relayd
must accept every put (status:accepted grows by exactly the puts made).

Also with completion (ca_array_put_callback, waiting for each), what `caput -c` and
pyepics ``wait=True`` do: one round trip per put. CPU per put (no wait), every process
of each server.
"""

from __future__ import annotations

from bench.report import Figure, Target
from bench.scenarios.common import (
    PATTERN, PUT, Context, cpu_figures, cpu_meter, cpu_row, create_pvs, interleave, status,
    values, wait_status,
)

N = 1000


def _run(ctx: Context, server, puts: int, mode: str, check_accepted: bool, rep: int) -> dict:
    before = status(ctx, server, "accepted")["accepted"] if check_accepted else None
    meter = cpu_meter(server)
    result = ctx.clients.put(server, PATTERN, N, puts, mode=mode,
                             first_value=1 + rep * 1e7).result(600)
    out = cpu_figures(server, meter, puts, puts)
    out.update({"put": result, "rate": result["rate"],
                "failed": result["failures"] + result["exceptions"]})
    if check_accepted:
        reached = wait_status(ctx, server, "accepted", before + puts, timeout=10)
        out["accepted"] = (reached["value"] - before) / puts
    return out


def ca_puts(ctx: Context) -> tuple[list[Figure], dict]:
    puts = ctx.size(50_000, 500_000)
    waited = ctx.size(2_000, 10_000)
    relay = ctx.relay()
    create_pvs(ctx, relay, PATTERN, N)
    plain = ctx.baseline("driver", N, label="plain pcaspy")
    runs = interleave(ctx.reps, {
        "relayd": lambda rep: _run(ctx, relay, puts, "nowait", True, rep),
        "plain": lambda rep: _run(ctx, plain, puts, "nowait", False, rep),
        "relayd wait": lambda rep: _run(ctx, relay, waited, "wait", False, rep),
        "plain wait": lambda rep: _run(ctx, plain, waited, "wait", False, rep),
    }, ctx.log)
    name = "ca_puts"
    figures = [
        Figure(name, "CA puts/s, no wait (1 client)", "/s", PUT, values(runs["relayd"], "rate"),
               "plain pcaspy", values(runs["plain"], "rate"),
               targets=[Target(">=", 0.95, on="ratio", text="ratio >= 0.95")]),
        cpu_row(name, "CA put (no wait)", runs["relayd"], "plain pcaspy", runs["plain"]),
        Figure(name, "CA puts/s, with callback (1 client)", "/s", PUT,
               values(runs["relayd wait"], "rate"), "plain pcaspy",
               values(runs["plain wait"], "rate")),
        Figure(name, "accepted fraction (status:accepted)", "", "C get (libca)",
               values(runs["relayd"], "accepted"), targets=[Target(">=", 1.0, text="== 1")]),
    ]
    return figures, runs
