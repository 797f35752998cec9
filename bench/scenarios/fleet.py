"""fleet: aggregate ZMQ -> CA monitor throughput of 1, 2 and 3 relays, one per host.

The way EPICS scales out (docs/SCALING.md): relays with different prefixes on hosts of
their own, and CA clients that find every PV by broadcast search. Here the hosts are
network namespaces on one bridged subnet (tests/e2e/_netns.py), all on this ONE machine:
every relay, pusher and monitor shares its cores. So the aggregate says what limits a
fleet on this machine, and the CPU per delivered event says what each event costs a
relay, which is what carries over to a fleet of real hosts.

Three relays run on hosts relay1..3 for the whole scenario, N PVs each. A run with k
relays loads the first k from an "ops" host: one pusher per relay (bench/pusher.py,
batches of 100: zmq_batch100's load) and one C monitor per relay, subscribed to its N
PVs, which it finds by broadcast (EPICS_CA_AUTO_ADDR_LIST=YES). The pushers start at
one agreed moment (``--start-at``) once every monitor is subscribed. Per k:

* aggregate updates/s delivered: every monitor's events, over the time from the first
  arrival at any monitor to the last at any; beside 1 relay (the ratio is the scaling);
* CPU per delivered event: CPU time of every process of the k loaded relays
  (supervisor, CA process, ingest worker; /proc/<pid>/stat) over the events; the JSON
  file also has it by process (``cpu_us_by_role``);
* cores used by the relays: their CPU time over the run's wall time;
* machine busy: the fraction of all cores busy during the run (/proc/stat): relays, load
  generators and anything else on the machine; at 1.0 the machine is the limit;
* delivered fraction: events / updates sent, which must be 1.

Same-run baseline: one relay on loopback with its clients in the machine's own
namespace (zmq_batch100's set-up), against which the 1-relay row shows what the lab's
veth pairs and bridge cost. Needs root (network namespaces); without, it is skipped.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from pathlib import Path
from typing import Sequence

from bench.clients import Clients
from bench.procs import Proc, Procs, Relay, RunFailure
from bench.report import Figure, Target, failed
from bench.scenarios.common import (
    MONITOR, PATTERN, PROC, Context, Load, create_pvs, full_pattern, interleave, last_round,
    stream_run, values,
)
from tests.e2e._netns import Host, NetLab, lab_environment, remove_leftovers, unavailable

N = 1000
BATCH = 100
RELAYS = ("relay1", "relay2", "relay3")
START_DELAY_S = 2.0  # from starting the pushers to their agreed start: time to encode


class HostProcs:
    """`Procs` for one lab host: each command runs on the host, in the lab's EPICS
    environment (EPICS's defaults, plus `extra`) instead of the loopback one."""

    def __init__(self, procs: Procs, host: Host, **extra: str):
        self.procs = procs
        self.host = host
        self.extra = extra

    @property
    def workdir(self) -> Path:
        return self.procs.workdir

    def start(self, name: str, command: Sequence[str], env: dict[str, str],
              stdin: bool = False) -> Proc:
        return self.procs.start(f"{name}@{self.host.name}", self.host.command(command),
                                lab_environment(env, **self.extra), stdin)


def fleet(ctx: Context) -> tuple[list[Figure], dict]:
    reason = unavailable()
    if reason is not None:
        return [failed("fleet", f"needs network namespaces: {reason}", status="skipped")], {}
    remove_leftovers()
    with NetLab([*RELAYS, "ops"]) as lab:
        try:
            return _measure(ctx, lab)
        finally:
            ctx.procs.stop_all()  # every relay and client stops before the lab goes


def _measure(ctx: Context, lab: NetLab) -> tuple[list[Figure], dict]:
    ops = lab.hosts["ops"]
    on_ops = dataclasses.replace(ctx, clients=Clients(
        ctx.clients.tools, HostProcs(ctx.procs, ops, EPICS_CA_AUTO_ADDR_LIST="YES"),
        ctx.epics))
    args = ["--insecure", "--zmq-allow", ops.address]
    relays = [Relay.start(HostProcs(ctx.procs, lab.hosts[name]), ctx.epics,
                          ctx.prefix(f"f{name[-1]}"), args, address=lab.hosts[name].address)
              for name in RELAYS]
    for relay in relays:
        create_pvs(on_ops, relay, PATTERN, N)
    loopback = ctx.relay("lo")
    create_pvs(ctx, loopback, PATTERN, N)
    updates = ctx.size(200_000, 1_000_000)
    variants = {"loopback": lambda rep: stream_run(
        ctx, loopback, N, Load(updates, BATCH), first_value=1 + rep * 1e7)}
    for k in range(1, len(relays) + 1):
        variants[f"{k} relays"] = (lambda rep, k=k: fleet_run(
            on_ops, relays[:k], updates, first_value=1 + (rep * len(relays) + k) * 1e7))
    runs = interleave(ctx.reps, variants, ctx.log)
    return figures(runs, os.cpu_count() or 0), runs


def fleet_run(ctx: Context, relays: list[Relay], updates: int, first_value: float) -> dict:
    """One run: `updates` to each of `relays` at once, counted by a monitor per relay."""
    monitors = [ctx.clients.monitor(relay, PATTERN, N, expect=updates, quiet_ms=ctx.quiet_ms,
                                    until_value=last_round(first_value, updates, N))[0]
                for relay in relays]
    pids = {"supervisor": [relay.proc.pid for relay in relays],
            **{role: [relay.child(role) for relay in relays] for role in ("ca-server", "ingest")}}
    start_at = time.time() + START_DELAY_S
    pushers = [ctx.clients.pusher(relay.endpoint, full_pattern(relay, PATTERN), N,
                                  updates=updates, batch=BATCH, first_value=first_value,
                                  start_at=start_at)
               for relay in relays]
    time.sleep(max(0.0, start_at - time.time()))  # CPU is counted from the agreed start
    cpu_before = {role: cpu_seconds(role_pids) for role, role_pids in pids.items()}
    machine_before, wall = machine_ticks(), time.monotonic()
    sent = [pusher.result(300.0) for pusher in pushers]
    seen = [monitor.result(300.0) for monitor in monitors]
    by_role = {role: cpu_seconds(role_pids) - cpu_before[role] for role, role_pids in pids.items()}
    cpu = sum(by_role.values())
    busy = busy_fraction(machine_before, machine_ticks())
    wall = time.monotonic() - wall
    events = sum(result["events"] for result in seen)
    span = max(r["last"] for r in seen) - min(r["first"] for r in seen if r["events"])
    if not events or span <= 0:
        raise RunFailure(f"the monitors of {len(relays)} relays counted {events} events")
    return {
        "rate": events / span, "cpu_us": cpu / events * 1e6, "busy": busy,
        "relay_cores": cpu / wall,
        "cpu_us_by_role": {role: seconds / events * 1e6 for role, seconds in by_role.items()},
        "delivered": events / sum(result["updates"] for result in sent),
        "start_skew_s": max(r["t_first"] for r in sent) - min(r["t_first"] for r in sent),
        "per_relay_rates": [r["rate"] for r in seen],
    }


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of `pids` so far (fields 14 and 15 of /proc/<pid>/stat)."""
    ticks = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            raise RunFailure(f"relayd process {pid} is gone (restarted?)") from None
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def machine_ticks() -> tuple[int, int]:
    """(busy, total) CPU ticks of the whole machine so far, from /proc/stat."""
    user, nice, system, idle, iowait, irq, softirq, steal = map(
        int, Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9])
    total = user + nice + system + idle + iowait + irq + softirq + steal
    return total - idle - iowait, total


def busy_fraction(before: tuple[int, int], after: tuple[int, int]) -> float:
    elapsed = after[1] - before[1]
    return (after[0] - before[0]) / elapsed if elapsed > 0 else math.nan


def figures(runs: dict[str, list[dict]], cores: int) -> list[Figure]:
    one = runs["1 relays"]
    rows = []
    for k in (1, 2, 3):
        mine = runs[f"{k} relays"]
        relays = f"{k} relay{'s' if k > 1 else ''}"
        base, base_runs, base_client = (("1 relay on loopback", values(runs["loopback"], "rate"),
                                         MONITOR) if k == 1 else
                                        ("1 relay", values(one, "rate"), MONITOR))
        rows += [
            Figure("fleet", f"updates/s delivered, {relays} (batch {BATCH})", "/s",
                   MONITOR, values(mine, "rate"), base, base_runs, base_client),
            Figure("fleet", f"CPU per delivered event, {relays} (all relayd processes)", "us",
                   PROC, values(mine, "cpu_us"), "" if k == 1 else "1 relay",
                   [] if k == 1 else values(one, "cpu_us"), "" if k == 1 else PROC),
            Figure("fleet", f"cores used by the relays, {relays} (of {cores})", "", PROC,
                   values(mine, "relay_cores"), compare=False),
            Figure("fleet", f"machine busy, {relays} (fraction of {cores} cores, any process)",
                   "", PROC, values(mine, "busy"), compare=False),
            Figure("fleet", f"delivered fraction, {relays}", "", MONITOR,
                   values(mine, "delivered"), targets=[Target(">=", 1.0, text="== 1")]),
        ]
    return rows
