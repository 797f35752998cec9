"""soak (full mode only): a steady 50k updates/s for --soak-minutes; does memory grow?

relayd holds 1000 scalar PVs with the C monitor subscribed to all; a pusher sends
batches of 100 at 500 messages per second (50,000 updates/s) for the whole soak. The RSS
of each relayd process (CA server, ingest worker, supervisor) is sampled every few
seconds from /proc. Growth is measured after a warm-up (the first fifth of the soak, at
most 60 s): median of the last three samples against the median of the first three
after warm-up. The < 1% target is judged for the whole relay (the sum of its three
processes) and, strictly, for each of its two working processes.

Baseline, at the same time and under the same load from its own pusher: the direct-post
server fed by ZMQ (pcaspy alone, no relay logic), so a growth that both show is pcas's,
not relayd's. A soak is one long run by nature: its figures have one run each.
"""

from __future__ import annotations

import time

from bench.procs import rss_bytes
from bench.report import Figure, Target
from bench.scenarios.common import MONITOR, PATTERN, PROC, Context, create_pvs, full_pattern
from bench.stats import median

N = 1000
RATE = 50_000
BATCH = 100
SAMPLE_EVERY = 5.0


def _growth(samples: list[tuple[float, int]], warmup: float) -> tuple[float, float, float]:
    """(rss after warm-up, rss at the end, growth fraction)."""
    after = [rss for t, rss in samples if t >= warmup]
    if len(after) < 6:
        return float("nan"), float("nan"), float("nan")
    start, end = median(after[:3]), median(after[-3:])
    return start, end, (end - start) / start


def soak(ctx: Context) -> tuple[list[Figure], dict]:
    duration = ctx.soak_minutes * 60
    warmup = min(60.0, duration / 5)
    relay = ctx.relay()
    create_pvs(ctx, relay, PATTERN, N)
    direct = ctx.baseline("direct", N, zmq=True)
    pids = {"ca-server": relay.child("ca-server"), "ingest": relay.child("ingest"),
            "supervisor": relay.proc.pid, "direct": direct.ready["pid"]}
    loads = []
    for server in (relay, direct):
        monitor, _ = ctx.clients.monitor(server, PATTERN, N, deadline_s=duration + 120,
                                         quiet_ms=10_000)
        pusher = ctx.clients.pusher(server.endpoint, full_pattern(server, PATTERN), N,
                                    batch=BATCH, rate=RATE, duration=duration)
        loads.append((monitor, pusher))
    for _, pusher in loads:
        pusher.wait_line("SENDING", 60)
    start = time.monotonic()
    samples: dict[str, list[tuple[float, int]]] = {name: [] for name in pids}
    next_log = start + 60
    while time.monotonic() - start < duration:
        now = time.monotonic() - start
        for name, pid in pids.items():
            samples[name].append((now, rss_bytes(pid)))
        if time.monotonic() > next_log:
            next_log += 60
            ctx.log(f"  soak {now / 60:.0f}/{ctx.soak_minutes:g} min: CA RSS "
                    f"{samples['ca-server'][-1][1] / 1e6:.1f} MB")
        time.sleep(SAMPLE_EVERY)
    results = [(monitor.result(300), pusher.result(300)) for monitor, pusher in loads]
    (relay_seen, relay_sent), (direct_seen, direct_sent) = results

    samples["relayd"] = [(t, sum(samples[role][i][1] for role in ("ca-server", "ingest",
                                                                   "supervisor")))
                         for i, (t, _) in enumerate(samples["ca-server"])]
    growth = {name: _growth(series, warmup) for name, series in samples.items()}
    name = "soak"
    note = [f"{ctx.soak_minutes:g} min at {RATE // 1000}k updates/s; warm-up {warmup:.0f} s; "
            "one run by nature"]
    raw = {"samples": {k: [(round(t, 1), rss) for t, rss in v] for k, v in samples.items()},
           "relayd": {"events": relay_seen["events"], "updates": relay_sent["updates"]},
           "direct": {"events": direct_seen["events"], "updates": direct_sent["updates"]}}
    base = "direct-post via ZMQ, same load"
    below_1 = [Target("<", 1.0, text="< 1 %")]

    def pct(name: str) -> list[float]:
        return [growth[name][2] * 100]

    figures = [
        Figure(name, "relayd RSS growth after warm-up (3 processes)", "%", PROC, pct("relayd"),
               base, pct("direct"), targets=below_1, notes=note, compare=False),
        Figure(name, "CA process RSS growth after warm-up", "%", PROC, pct("ca-server"),
               base, pct("direct"), targets=below_1, notes=note, compare=False),
        Figure(name, "ingest worker RSS growth after warm-up", "%", PROC, pct("ingest"),
               targets=below_1, notes=note, compare=False),
        Figure(name, "CA process RSS at the end", "MB", PROC, [growth["ca-server"][1] / 1e6],
               base, [growth["direct"][1] / 1e6], notes=note),
        Figure(name, "delivered fraction", "", MONITOR,
               [relay_seen["events"] / relay_sent["updates"]], base,
               [direct_seen["events"] / direct_sent["updates"]],
               targets=[Target(">=", 1.0, text="== 1")], notes=note),
    ]
    return figures, raw
