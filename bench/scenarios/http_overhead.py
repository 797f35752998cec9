"""http_overhead: the hot path with the HTTP worker and an open web page, against without.

Two relays in the same invocation: one with ``--no-http``, one with its HTTP worker and
a headless Chromium (Debian's, driven by Playwright) showing the web page's table of the
100 PVs being pushed, live. The pusher sends batches of 100 updates over those 100 PVs
as fast as ZeroMQ takes them; the C monitor counts events. Runs alternate between the
two relays.

Figures: updates/s delivered, and the CA process's CPU time per update (user + system
from /proc, over the run): what the feed costs the hot path itself, apart from the
browser and the HTTP worker taking CPU from the others on a machine with two cores. The
target (issue 12): at most 5% more with the page open.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from bench.procs import RunFailure
from bench.report import Figure, Target
from bench.scenarios.common import MONITOR, PATTERN, PROC, Context, Load, create_pvs, \
    interleave, stream_run, values

N = 100
BATCH = 100
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync"]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of `pid` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def open_page(ctx: Context, url: str) -> Callable[[], None]:
    """A headless Chromium on `url`, its table showing 100 rows; the function closing it."""
    if not CHROMIUM.exists():
        raise RunFailure("http_overhead needs Debian's chromium (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    playwright = sync_playwright().start()
    context = playwright.chromium.launch_persistent_context(
        str(ctx.procs.workdir / "chromium-profile"), headless=True,
        executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
    page = context.new_page()
    page.goto(url)
    page.select_option("#limit", "100")
    page.wait_for_function("document.querySelectorAll('#pvs tbody tr').length === 100",
                           timeout=30_000)

    def close() -> None:
        context.close()
        playwright.stop()
    return close


def http_overhead(ctx: Context) -> tuple[list[Figure], dict]:
    updates = ctx.size(300_000, 3_000_000)
    without = ctx.relay("hn", args=["--no-http"])
    with_http = ctx.relay("hw")
    for relay in (without, with_http):
        create_pvs(ctx, relay, PATTERN, N)
    close = open_page(ctx, with_http.url)
    try:
        def run(relay: Any) -> Callable[[int], dict]:
            def measured(rep: int) -> dict:
                pid = relay.child("ca-server")
                before = cpu_seconds(pid)
                result = stream_run(ctx, relay, N, Load(updates, BATCH), expect=False,
                                    first_value=1 + rep * 1e8)
                used = cpu_seconds(pid) - before
                result["cpu_us_per_update"] = used / result["updates"] * 1e6
                return result
            return measured

        runs = interleave(ctx.reps, {"page": run(with_http), "none": run(without)}, ctx.log)
    finally:
        close()
    name = "http_overhead"
    return [
        Figure(name, f"updates/s accepted ({N} PVs shown on the page)", "/s", MONITOR,
               values(runs["page"], "accept_rate"), "without the HTTP worker",
               values(runs["none"], "accept_rate"), MONITOR,
               targets=[Target(">=", 0.95, on="ratio", text="ratio >= 0.95")]),
        Figure(name, "CA process CPU per update", "us", PROC,
               values(runs["page"], "cpu_us_per_update"), "without the HTTP worker",
               values(runs["none"], "cpu_us_per_update"), PROC,
               targets=[Target("<=", 1.05, on="ratio", text="ratio <= 1.05")]),
    ], runs
