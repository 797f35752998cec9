"""pva_scalars, pva_arrays, pva_ca_cost: pvAccess throughput, and what serving it costs CA.

* pva_scalars: 1000 scalar PVs, ZMQ batches of 100 into relayd, one PVA monitor
  (bench/pva_tools.py: p4p's raw client) subscribed to all 1000 counts updates/s.
  Ceiling: a bare p4p server (`pva_tools.py server`: SharedPVs, a reused Value posted
  from an in-process loop), counted by the same monitor. Target: >= 0.75 of it.
* pva_arrays: 10 PVs x 10,000 float64, one packed array per ZMQ message; MB/s at the PVA
  monitor, against the same ceiling posting 10,000-element arrays.
* pva_ca_cost: the zmq_batch100 CA figure (C monitor, 1000 PVs) of relayd as it starts
  (PVA served, no PVA client) against relayd --no-pva, interleaved in one run; and the
  same with a PVA monitor also subscribed to all 1000 PVs (both protocols delivering
  every update), as information. Target: CA within 10% of --no-pva.

PVA monitors may merge updates a client has not read yet (pvxs squashes a full
subscription queue), so the delivered fraction is reported beside the rate.
"""

from __future__ import annotations

import math
import os
import socket
from pathlib import Path

from bench.procs import PYTHON, REPO, Proc, Relay, RunFailure, free_port
from bench.report import Figure, Target
from bench.scenarios.common import (
    MONITOR, PATTERN, Context, Load, create_pvs, interleave, last_round, stream_run, values,
)

TOOLS = REPO / "bench" / "pva_tools.py"
PVA_MONITOR = "p4p raw monitor"
N = 1000
ARRAY_N, ARRAY_COUNT, ARRAY_PATTERN = 10, 10_000, "parr%d_f10000"


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system, every thread) `pid` has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def with_cpu(relay: Relay, run) -> dict:
    """`run()`'s result, with the CA process's CPU microseconds per update sent."""
    pid = relay.child("ca-server")
    before = cpu_seconds(pid)
    out = run()
    out["ca_cpu_us"] = (cpu_seconds(pid) - before) / out["updates"] * 1e6
    return out


def _relay(ctx: Context, args: tuple[str, ...] = ()) -> tuple[Relay, int]:
    search = free_port((socket.SOCK_DGRAM,))
    relay = Relay.start(ctx.procs, ctx.epics, ctx.prefix("pv"), list(args),
                        env=ctx.epics.pva_server_env(search))
    return relay, search


def _ceiling(ctx: Context, pattern: str, n: int, count: int) -> tuple[Proc, str, int]:
    search = free_port((socket.SOCK_DGRAM,))
    prefix = ctx.prefix("p4p")
    env = ctx.epics.server_env(free_port(), **ctx.epics.pva_server_env(search))
    proc = ctx.procs.start(f"p4p-ceiling-{prefix}", [
        PYTHON, str(TOOLS), "server", "--pattern", f"{prefix}:{pattern}", "--n", str(n),
        "--count", str(count)], env, stdin=True)
    proc.wait_json_line("READY ", 60.0)
    return proc, prefix, search


def _monitor(ctx: Context, search: int, full_pattern: str, n: int, count: int,
             expect: int, until_value: float) -> Proc:
    proc = ctx.procs.start("pva-monitor", [
        PYTHON, str(TOOLS), "monitor", "--pattern", full_pattern, "--n", str(n),
        "--count", str(count), "--expect", str(expect), "--until-value", repr(until_value),
        "--quiet-ms", str(ctx.quiet_ms)], ctx.epics.pva_client_env(search))
    proc.wait_line("READY", 90.0)
    return proc


def _relay_run(ctx: Context, relay: Relay, search: int, pattern: str, n: int, load: Load,
               first: float) -> dict:
    monitor = _monitor(ctx, search, relay.pv(pattern), n, load.count, load.updates,
                       last_round(first, load.updates, n))
    pusher = ctx.clients.pusher(relay.endpoint, relay.pv(pattern), n, updates=load.updates,
                                batch=load.batch, first_value=first, count=load.count)
    sent = pusher.result(300.0)
    seen = monitor.result(300.0)
    out = _figures(seen, sent["updates"], seen["last_values"],
                   [first + max(0, load.updates - n) + i for i in range(n)]
                   if load.count == 1 else None)
    out["send_rate"] = sent["updates"] / max(1e-9, seen["last"] - sent["t_first"])
    return out


def _ceiling_run(ctx: Context, ceiling: tuple[Proc, str, int], pattern: str, n: int,
                 count: int, updates: int) -> dict:
    proc, prefix, search = ceiling
    rounds = max(1, updates // n)
    monitor = _monitor(ctx, search, f"{prefix}:{pattern}", n, count, rounds * n, rounds)
    before = cpu_seconds(proc.pid)
    proc.send(f"loop {updates}")
    done = proc.wait_json_line("DONE ", 300.0)
    seen = monitor.result(300.0)
    out = _figures(seen, done["posted"], None, None)
    out["post_rate"] = done["posted"] / max(1e-9, done["t_last"] - done["t_first"])
    out["cpu_us"] = (cpu_seconds(proc.pid) - before) / done["posted"] * 1e6
    return out


def _figures(seen: dict, sent: int, last_values, expected) -> dict:
    out = {"rate": seen["rate"], "events": seen["events"], "updates": sent,
           "delivered": seen["events"] / sent if sent else math.nan,
           "mb_per_s": seen["bytes"] / seen["span_s"] / 1e6 if seen["span_s"] > 0 else math.nan}
    if last_values and expected:
        out["last_ok"] = sum(1 for got, want in zip(last_values, expected)
                             if got is not None and got >= want) / len(expected)
    return out


def pva_scalars(ctx: Context) -> tuple[list[Figure], dict]:
    updates = ctx.size(100_000, 1_000_000)
    relay, search = _relay(ctx)
    create_pvs(ctx, relay, PATTERN, N)
    ceiling = _ceiling(ctx, PATTERN, N, 1)
    load = Load(updates, 100)
    runs = interleave(ctx.reps, {
        "relayd": lambda rep: with_cpu(relay, lambda: _relay_run(
            ctx, relay, search, PATTERN, N, load, 1 + rep * 1e7)),
        "ceiling": lambda rep: _ceiling_run(ctx, ceiling, PATTERN, N, 1, updates),
    }, ctx.log)
    what = "PVA updates/s delivered (1000 scalar PVs, ZMQ batch 100)"
    return [
        Figure("pva_scalars", what, "/s", PVA_MONITOR, values(runs["relayd"], "rate"),
               "bare p4p SharedPV server (loop)", values(runs["ceiling"], "rate"), PVA_MONITOR,
               targets=[Target(">=", 0.75, on="ratio", text="ratio >= 0.75")]),
        Figure("pva_scalars", "PVA delivered fraction (updates/posts)", "", PVA_MONITOR,
               values(runs["relayd"], "delivered"), "bare p4p SharedPV server (loop)",
               values(runs["ceiling"], "delivered"), PVA_MONITOR),
        Figure("pva_scalars", "PVA monitor ends on last value (fraction of PVs)", "",
               PVA_MONITOR, values(runs["relayd"], "last_ok"),
               targets=[Target(">=", 1.0, text="== 1")]),
        Figure("pva_scalars", "server CPU per update delivered over PVA (us)", "us", "/proc",
               values(runs["relayd"], "ca_cpu_us"), "bare p4p SharedPV server (loop)",
               values(runs["ceiling"], "cpu_us"), "/proc"),
    ], runs


def pva_arrays(ctx: Context) -> tuple[list[Figure], dict]:
    messages = ctx.size(3_000, 30_000)
    relay, search = _relay(ctx)
    create_pvs(ctx, relay, ARRAY_PATTERN, ARRAY_N, count=ARRAY_COUNT)
    ceiling = _ceiling(ctx, ARRAY_PATTERN, ARRAY_N, ARRAY_COUNT)
    load = Load(messages, 1, count=ARRAY_COUNT)
    runs = interleave(ctx.reps, {
        "relayd": lambda rep: _relay_run(ctx, relay, search, ARRAY_PATTERN, ARRAY_N, load,
                                         1 + rep * 1e7),
        "ceiling": lambda rep: _ceiling_run(ctx, ceiling, ARRAY_PATTERN, ARRAY_N,
                                            ARRAY_COUNT, messages),
    }, ctx.log)
    what = f"PVA MB/s delivered ({ARRAY_N} x {ARRAY_COUNT} float64)"
    return [
        Figure("pva_arrays", what, "MB/s", PVA_MONITOR, values(runs["relayd"], "mb_per_s"),
               "bare p4p SharedPV server (loop)", values(runs["ceiling"], "mb_per_s"),
               PVA_MONITOR, targets=[Target(">=", 0.75, on="ratio", text="ratio >= 0.75")]),
        Figure("pva_arrays", "PVA delivered fraction (arrays/posts)", "", PVA_MONITOR,
               values(runs["relayd"], "delivered"), "bare p4p SharedPV server (loop)",
               values(runs["ceiling"], "delivered"), PVA_MONITOR),
    ], runs


def pva_ca_cost(ctx: Context) -> tuple[list[Figure], dict]:
    updates = ctx.size(100_000, 2_000_000)
    relay, search = _relay(ctx)
    bare, _ = _relay(ctx, ("--no-pva",))
    for server in (relay, bare):
        create_pvs(ctx, server, PATTERN, N)
    load = Load(updates, 100)

    def with_pva_monitor(rep: int) -> dict:
        first = 1 + (rep + 100) * 1e7
        watcher = _monitor(ctx, search, relay.pv(PATTERN), N, 1, updates,
                           last_round(first, updates, N))
        out = with_cpu(relay, lambda: stream_run(ctx, relay, N, load, first_value=first))
        out["pva"] = watcher.result(300.0)["events"] / updates
        return out

    # --no-pva runs first in each round, so that the PVA relay has closed the previous
    # round's 1000 PVA channels (their teardown is not the cost measured) before its run.
    runs = interleave(ctx.reps, {
        "no_pva": lambda rep: with_cpu(bare, lambda: stream_run(
            ctx, bare, N, load, first_value=1 + rep * 1e7)),
        "pva": lambda rep: with_cpu(relay, lambda: stream_run(
            ctx, relay, N, load, first_value=1 + rep * 1e7)),
        "pva_watched": with_pva_monitor,
    }, ctx.log)
    if not runs["pva"]:
        raise RunFailure("no runs")
    what = "CA updates/s delivered (1000 PVs, ZMQ batch 100)"
    return [
        Figure("pva_ca_cost", what + ", PVA served, no PVA client", "/s", MONITOR,
               values(runs["pva"], "rate"), "relayd --no-pva", values(runs["no_pva"], "rate"),
               MONITOR, targets=[Target(">=", 0.9, on="ratio", text="ratio >= 0.9")]),
        Figure("pva_ca_cost", what + ", a PVA monitor on every PV too", "/s", MONITOR,
               values(runs["pva_watched"], "rate"), "relayd --no-pva",
               values(runs["no_pva"], "rate"), MONITOR),
        Figure("pva_ca_cost", "CA process CPU per update (us), PVA served, no PVA client",
               "us", "/proc", values(runs["pva"], "ca_cpu_us"), "relayd --no-pva",
               values(runs["no_pva"], "ca_cpu_us"), "/proc",
               targets=[Target("<=", 1.1, on="ratio", text="ratio <= 1.1")]),
        Figure("pva_ca_cost", "CA process CPU per update (us), a PVA monitor on every PV too",
               "us", "/proc", values(runs["pva_watched"], "ca_cpu_us"), "relayd --no-pva",
               values(runs["no_pva"], "ca_cpu_us"), "/proc"),
        Figure("pva_ca_cost", "CA delivered fraction, PVA served", "", MONITOR,
               values(runs["pva"], "delivered"), "relayd --no-pva",
               values(runs["no_pva"], "delivered"), MONITOR,
               targets=[Target(">=", 1.0, text="== 1")]),
    ], runs
