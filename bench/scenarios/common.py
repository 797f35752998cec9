"""What the scenarios share: the run context, starting servers, and one measured run.

A *run* is one measurement: a fresh C monitor subscribes, the load is sent, the monitor
counts what arrives. Servers live for a whole scenario and runs are interleaved (relayd,
then each baseline, then relayd again...), so slow drift on a shared machine hits every
side alike instead of one.
"""

from __future__ import annotations

import math
import sqlite3
import time
import uuid
from dataclasses import dataclass
from typing import Callable, Sequence

from bench.clients import Clients
from bench.cpu import CpuMeter, ProcessGone
from bench.procs import Baseline, Epics, Procs, Relay, RunFailure, Server
from bench.report import Figure

MONITOR = "C monitor (libca)"
PUT = "C put (libca)"
GET = "C get (libca)"
CONNECT = "C connect (libca)"
SINK = "python zmq sink"
PROC = "/proc"
CPU = "/proc schedstat"
CEILING = "direct-post ceiling (raw SWIG, loop)"
DIRECT_ZMQ = "direct-post via ZMQ (1 process)"

PATTERN = "bench%d_f1"  # 1000 scalar PVs unless stated


@dataclass
class Context:
    """Everything a scenario needs: mode, repetitions, processes, clients."""

    mode: str  # "quick" or "full"
    reps: int
    procs: Procs
    epics: Epics
    clients: Clients
    soak_minutes: float
    log: Callable[[str], None]

    @property
    def quick(self) -> bool:
        return self.mode == "quick"

    #: Silence after which a monitor decides that the rest of a stream was lost. Runs
    #: normally end sooner (an exact count, or every PV's last value seen), so this only
    #: costs time when events are missing; it is long enough that a server stalled by a
    #: busy machine is not taken for one that dropped events.
    quiet_ms: int = 2000

    def size(self, quick: int | float, full: int | float):
        return quick if self.quick else full

    @staticmethod
    def prefix(tag: str) -> str:
        """A prefix of its own for every server, so no two can ever answer each other."""
        return f"{tag}{uuid.uuid4().hex[:6]}"

    def relay(self, tag: str = "r", args: Sequence[str] = (), prefix: str | None = None) -> Relay:
        return Relay.start(self.procs, self.epics, prefix or self.prefix(tag), args)

    def baseline(self, kind: str, n: int = 1000, *, count: int = 1, zmq: bool = False,
                 pattern: str = PATTERN, label: str | None = None) -> Baseline:
        return Baseline.start(self.procs, self.epics, kind, self.prefix(kind[:3]), pattern, n,
                              count=count, zmq=zmq, label=label)


def full_pattern(server: Server, base_pattern: str) -> str:
    return server.pv(base_pattern)


def status(ctx: Context, relay: Relay, *names: str) -> dict[str, float | None]:
    """Read relayd status PVs (status:<name>) once."""
    values = ctx.clients.get(relay, *(f"status:{name}" for name in names))
    return {name: values[f"status:{name}"] for name in names}


def wait_status(ctx: Context, relay: Relay, name: str, value: float, timeout: float = 60.0) -> dict:
    """Poll status:<name> until it reads >= value; the get client's result."""
    result = ctx.clients.get_until(relay, f"status:{name}", value, timeout).result(timeout + 15)
    if not result["reached"]:
        raise RunFailure(f"status:{name} of relayd {relay.prefix} stayed at {result['value']} "
                         f"(waited {timeout:g} s for {value:g})")
    return result


REFUSED_FIRST_LOOK = 3.0  # seconds after the push before a slow creation checks for refusals


def max_pvs(total: int) -> list[str]:
    """relayd arguments for a relay that will hold `total` PVs, with room to spare.

    A relay at exactly its --max-pvs refuses every further creation, which a scenario
    would see only as a stalled count: the bench's relays always have room.
    """
    return ["--max-pvs", str(total + max(1000, total // 100))]


def create_pvs(ctx: Context, relay: Relay, base_pattern: str, n: int, *, count: int = 1,
               batch: int = 1000, timeout: float = 120.0, details: dict | None = None) -> float:
    """Create n PVs through ZMQ (one value each); seconds from first send to status:pvs.

    `details`, if given, receives the poller's result: its reads of status:pvs, every
    5 ms during the creation, are timed too (CA service while PVs are being created).
    A creation relayd refuses (status:refused grows: the relay is full, a bad name)
    fails the run at once, with relayd's own count, instead of a count that stalls.
    """
    before = status(ctx, relay, "pvs", "refused")
    poller = ctx.clients.get_until(relay, "status:pvs", (before["pvs"] or 0) + n, timeout)
    pusher = ctx.clients.pusher(relay.endpoint, full_pattern(relay, base_pattern), n,
                                updates=n, batch=batch if count == 1 else 1, first_value=0,
                                count=count)
    sent = pusher.result(timeout)
    # Not while a creation goes well: each look is a client process competing for the CPU.
    look = time.monotonic() + REFUSED_FIRST_LOOK
    while poller.alive():
        if time.monotonic() > look:
            _check_refused(ctx, relay, before["refused"] or 0, n, poller)
            look = time.monotonic() + 1.0
        time.sleep(0.02)
    reached = poller.result(timeout + 15)
    _check_refused(ctx, relay, before["refused"] or 0, n, poller)
    if not reached["reached"]:
        raise RunFailure(f"relayd {relay.prefix} holds {reached['value']:g} PVs, "
                         f"not {(before['pvs'] or 0) + n:g}, {timeout:g} s after the push")
    if details is not None:
        details.update(reached)
    return reached["t_reached"] - sent["t_first"]


def wait_saved(relay: Relay, n: int, timeout: float = 120.0) -> float:
    """Wait until relayd's autosave file holds `n` rows; seconds waited.

    Right after a mass creation the writer thread is still saving the new PVs (for
    100,000 of them, ~1.5 s of the CA process's CPU): a measurement started then would
    measure that too. The file is read beside the writer (WAL), from this process, so
    the wait itself sends relayd nothing. A relay without autosave has nothing to wait for.
    """
    started = time.monotonic()
    if "--no-autosave" in relay.args or relay.autosave_path is None:
        return 0.0
    rows = 0
    while time.monotonic() - started < timeout:
        try:
            db = sqlite3.connect(f"file:{relay.autosave_path}?mode=ro", uri=True, timeout=10)
            try:
                rows = db.execute("SELECT count(*) FROM pvs").fetchone()[0]
            finally:
                db.close()
        except sqlite3.Error:
            rows = 0  # not made yet
        if rows >= n:
            return time.monotonic() - started
        time.sleep(0.05)
    raise RunFailure(f"relayd {relay.prefix} saved {rows} of {n} PVs in {timeout:g} s "
                     f"({relay.autosave_path})")


def quiesce(server: Server, timeout: float = 10.0, window: float = 0.2,
            busy: float = 0.02) -> float:
    """Wait until `server`'s processes are idle (under `busy` of a core over `window`).

    What a step leaves behind runs on after it: a client that connected to 100,000 PVs
    costs the CA process ~120 ms of CPU after it has gone (pcas tears down its channels
    and relayd's PVs are told), and a measurement started at once would count that too.
    Returns the seconds waited.
    """
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        meter = cpu_meter(server)
        time.sleep(window)
        if cpu_figures(server, meter, 1, 1)["cpu_s"] < busy * window:
            break
    return time.monotonic() - started


def _check_refused(ctx: Context, relay: Relay, before: float, n: int, poller) -> None:
    now = status(ctx, relay, "refused")["refused"] or 0
    if now > before:
        poller.kill()
        raise RunFailure(f"relayd {relay.prefix} refused {now - before:g} of {n} PV creations "
                         f"(status:refused; its arguments: {' '.join(relay.args) or 'defaults'})")


@dataclass
class Load:
    """What a pusher sends in one run."""

    updates: int
    batch: int = 1
    count: int = 1
    rate: float = 0
    duration: float = 0
    value: str = "seq"


def stream_run(ctx: Context, server: Server, n: int, load: Load, *, first_value: float = 1,
               base_pattern: str = PATTERN, latency: bool = False, expect: bool = True,
               accepted: bool = False) -> dict:
    """One run: monitor subscribed to n PVs, pusher sends `load` to the server's ZMQ.

    Returns the monitor's and pusher's results and the derived figures: `rate` (events/s
    at the monitor, first to last arrival), `delivered` (events / updates sent),
    `last_ok` (fraction of PVs whose last event carried the last value sent) and, with
    `accepted`, relayd's status:accepted increase divided by the updates sent.
    """
    if server.endpoint is None:
        raise RunFailure(f"{server.label} has no ZMQ endpoint")
    before = status(ctx, server, "accepted")["accepted"] if accepted else None
    steady = load.duration > 0  # no exact count: it runs for a time
    monitor, _ = ctx.clients.monitor(
        server, base_pattern, n, count=load.count, latency=latency, quiet_ms=ctx.quiet_ms,
        expect=load.updates if expect and not steady else 0,
        until_value=last_round(first_value, load.updates, n)
        if load.value == "seq" and not steady else None,
        deadline_s=max(120.0, load.duration * 2 + 30))
    meter = cpu_meter(server)
    pusher = ctx.clients.pusher(
        server.endpoint, full_pattern(server, base_pattern), n, updates=load.updates,
        batch=load.batch, rate=load.rate, duration=load.duration, value=load.value,
        first_value=first_value, count=load.count)
    sent = pusher.result(300.0)
    seen = monitor.result(300.0)
    out = cpu_figures(server, meter, seen["events"], sent["updates"])
    out.update({"monitor": _lean(seen), "pusher": _lean(sent), "rate": seen["rate"],
           "events": seen["events"], "updates": sent["updates"],
           "delivered": seen["events"] / sent["updates"] if sent["updates"] else math.nan,
           "mb_per_s": seen["bytes"] / seen["span_s"] / 1e6 if seen["span_s"] > 0 else math.nan,
           "accept_rate": sent["updates"] / (seen["last"] - sent["t_first"])
           if seen["events"] else math.nan})
    if sent.get("last_values") and seen.get("last_values"):
        pairs = list(zip(sent["last_values"], seen["last_values"]))
        out["last_ok"] = sum(1 for s, m in pairs if s is not None and s == m) / len(pairs)
    if accepted:
        result = ctx.clients.get_until(server, "status:accepted", before + sent["updates"],
                                       timeout=10).result(30)
        out["accepted"] = (result["value"] - before) / sent["updates"]
    return out


def last_round(first_value: float, updates: int, n: int) -> float:
    """The least of the last values the pusher sends to each of n PVs (round-robin)."""
    return first_value + max(0, updates - n)


def loop_run(ctx: Context, baseline: Baseline, n: int, updates: int, *, count: int = 1,
             base_pattern: str = PATTERN) -> dict:
    """One run of a baseline's in-process loop, counted by the C monitor."""
    rounds = max(1, updates // n)
    monitor, _ = ctx.clients.monitor(baseline, base_pattern, n, count=count, expect=rounds * n,
                                     until_value=rounds, quiet_ms=ctx.quiet_ms)
    meter = cpu_meter(baseline)
    done = baseline.loop(updates)
    seen = monitor.result(300.0)
    return {**cpu_figures(baseline, meter, seen["events"], done["posted"]),
            "monitor": _lean(seen), "server": done, "rate": seen["rate"],
            "events": seen["events"], "updates": done["posted"],
            "delivered": seen["events"] / done["posted"],
            "mb_per_s": seen["bytes"] / seen["span_s"] / 1e6 if seen["span_s"] > 0 else math.nan,
            "post_rate": done["posted"] / (done["t_last"] - done["t_first"])}


def cpu_meter(server: Server) -> CpuMeter:
    """Start counting the CPU time of every process of `server` (bench/cpu.py)."""
    try:
        return CpuMeter(server.cpu_pids())
    except ProcessGone as error:
        raise RunFailure(f"{server.label}: {error}") from None


def cpu_figures(server: Server, meter: CpuMeter, events: int, updates: int) -> dict:
    """CPU time the server spent since `meter` started, per delivered event and per update.

    `cpu_us_per_event` is the figure to steer by: microseconds of CPU, summed over every
    process of the server, per event the monitor received.
    """
    try:
        spent = meter.stop()
    except ProcessGone as error:
        raise RunFailure(f"{server.label}: {error} during the run") from None
    return {"cpu_s": spent["cpu_s"], "cpu_by_process": spent["by_process"],
            "cpu_us_per_event": spent["cpu_s"] / events * 1e6 if events else math.nan,
            "cpu_us_per_update": spent["cpu_s"] / updates * 1e6 if updates else math.nan}


def cpu_row(scenario: str, what: str, runs: list[dict], baseline: str, baseline_runs: list[dict],
            targets: Sequence = (), key: str = "cpu_us_per_event") -> Figure:
    """The CPU time per `what` (every process of each server) beside a baseline's."""
    return Figure(scenario, f"CPU per {what}, all processes", "us", CPU, values(runs, key),
                  baseline, values(baseline_runs, key), CPU, targets=list(targets))


def sink_run(ctx: Context, sink, endpoint: str, n: int, load: Load) -> dict:
    """One run of the pusher into the raw ZMQ+msgpack sink (no CA)."""
    pusher = ctx.clients.pusher(endpoint, "sink:" + PATTERN, n, updates=load.updates,
                                batch=load.batch, rate=load.rate, duration=load.duration,
                                value=load.value, count=load.count)
    sent = pusher.result(300.0)
    done = sink.wait_json_line("DONE ", 60.0)
    return {"sink": done, "pusher": _lean(sent), "rate": done["rate"],
            "delivered": done["updates"] / sent["updates"]}


def _lean(result: dict) -> dict:
    """A client result without its per-PV lists (kept out of the JSON file's runs)."""
    return {k: v for k, v in result.items() if k not in ("last_values", "pv_events")}


def interleave(reps: int, variants: dict[str, Callable[[int], dict]],
               log: Callable[[str], None]) -> dict[str, list[dict]]:
    """Run every variant once per repetition, in turn: {variant: [run, ...]}."""
    runs: dict[str, list[dict]] = {name: [] for name in variants}
    for rep in range(reps):
        for name, run in variants.items():
            started = time.monotonic()
            result = run(rep)
            runs[name].append(result)
            log(f"  rep {rep + 1}/{reps} {name} ({time.monotonic() - started:.1f} s): "
                + _brief(result))
    return runs


def _brief(result: dict) -> str:
    """The run's top-level numbers, for the progress log."""
    parts = [f"{key}={value:.4g}" for key, value in result.items()
             if isinstance(value, (int, float)) and not isinstance(value, bool)
             and not key.startswith("t_") and key not in ("events", "updates")]
    return " ".join(parts[:8])


def values(runs: list[dict], key: str) -> list[float]:
    return [run[key] for run in runs if key in run]
