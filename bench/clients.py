"""Starting the measuring clients: the C CA clients (bench/c/) and the ZMQ pusher.

Each function starts one client process for one server (its CA port, its prefix) and
returns the `Proc`, or waits for and returns the client's JSON result. Which client
produced a figure is part of every result (its "client" field) and of the table.
"""

from __future__ import annotations

from pathlib import Path

from bench.procs import PYTHON, REPO, Epics, Proc, Procs, Server

PUSHER = REPO / "bench" / "pusher.py"
ACKER = REPO / "bench" / "acker.py"


class Clients:
    """The clients of one bench invocation: built binaries, registry and environment."""

    def __init__(self, tools: dict[str, Path], procs: Procs, epics: Epics):
        self.tools = tools
        self.procs = procs
        self.epics = epics

    def _start(self, tool: str, server: Server, args: list, array_bytes: int | None = None) -> Proc:
        env = self.epics.client_env(server.port, array_bytes)
        command = [str(self.tools[tool]), *map(str, args)]
        return self.procs.start(f"{tool}-{server.prefix}", command, env)

    # --- C clients --------------------------------------------------------------------

    def monitor(self, server: Server, base_pattern: str, n: int, *, count: int = 1,
                quiet_ms: int = 2000, deadline_s: float = 120.0, expect: int = 0,
                until_value: float | None = None, latency: bool = False,
                connect_timeout: float = 60.0) -> tuple[Proc, float]:
        """Start the C monitor and wait until it is subscribed; (proc, connect seconds).

        It stops after `expect` events, once every PV has shown `until_value`, after
        `quiet_ms` without events, or `deadline_s` after subscribing (see monitor.c).
        """
        args = ["--pattern", server.pv(base_pattern), "--n", n, "--count", count,
                "--quiet-ms", quiet_ms, "--deadline-s", deadline_s, "--expect", expect,
                "--connect-timeout-s", connect_timeout]
        if until_value is not None:
            args += ["--until-value", repr(float(until_value))]
        if latency:
            args.append("--latency")
        proc = self._start("monitor", server, args, count * 8 + 4096 if count > 1 else None)
        ready = proc.wait_line("READY", connect_timeout + 10)
        return proc, float(ready.split()[1])

    def put(self, server: Server, base_pattern: str, n: int, puts: int, mode: str = "nowait",
            *, rate: float = 0, value: str = "seq", first_value: float = 1) -> Proc:
        """Start the C put client (modes: nowait, wait, rate, create; see put.c)."""
        args = ["--pattern", server.pv(base_pattern), "--n", n, "--puts", puts, "--mode", mode,
                "--value", value, "--first-value", first_value, "--connect-timeout-s", 60]
        if rate:
            args += ["--rate", rate]
        return self._start("put", server, args)

    def connect(self, server: Server, base_pattern: str, n: int, timeout: float = 120.0) -> dict:
        """Time the C connect client connecting to n PVs; its result."""
        proc = self._start("connect", server, ["--pattern", server.pv(base_pattern), "--n", n,
                                               "--timeout-s", timeout])
        return proc.result(timeout + 30)

    def get(self, server: Server, *bases: str) -> dict[str, float | None]:
        """Read PVs once: {base name: value}."""
        args = []
        for base in bases:
            args += ["--pv", server.pv(base)]
        values = self._start("get", server, args).result(30.0)["values"]
        return {base: values[server.pv(base)] for base in bases}

    def get_until(self, server: Server, base: str, value: float, timeout: float = 60.0,
                  poll_ms: float = 5) -> Proc:
        """Start polling `base` until it reads >= value (the result says when).

        Returns once the client is connected, so that the caller's clock starts after.
        """
        proc = self._start("get", server, ["--pv", server.pv(base), "--until", value,
                                           "--timeout-s", timeout, "--poll-ms", poll_ms])
        proc.wait_line("READY", 20.0)
        return proc

    def get_reads(self, server: Server, base: str, reads: int, interval_ms: float = 10) -> Proc:
        """Start timing `reads` reads of `base`, one every `interval_ms`."""
        return self._start("get", server, ["--pv", server.pv(base), "--reads", reads,
                                           "--interval-ms", interval_ms])

    # --- the pusher ---------------------------------------------------------------------

    def pusher(self, endpoint: str, full_pattern: str, n: int, *, updates: int = 0,
               batch: int = 1, rate: float = 0, duration: float = 0, value: str = "seq",
               first_value: float = 1, count: int = 1, start_index: int = 0,
               start_at: float = 0.0) -> Proc:
        """Start a pusher process (bench/pusher.py); it prints SENDING, then its result.
        With `start_at` (a time.time()) it sends nothing before then."""
        args = [PYTHON, str(PUSHER), "--endpoint", endpoint, "--pattern", full_pattern,
                "--n", str(n), "--updates", str(updates), "--batch", str(batch),
                "--rate", str(rate), "--duration", str(duration), "--value", value,
                "--first-value", str(first_value), "--count", str(count),
                "--start-index", str(start_index), "--start-at", repr(start_at)]
        env = self.epics.client_env(0)
        return self.procs.start("pusher", args, env)

    def acker(self, endpoint: str, full_pattern: str, n: int, *, updates: int, window: int,
              client: str = "raw", durable: bool = False) -> Proc:
        """Start an acker process (bench/acker.py): acknowledged requests, verdicts counted."""
        args = [PYTHON, str(ACKER), "--endpoint", endpoint, "--pattern", full_pattern,
                "--n", str(n), "--updates", str(updates), "--window", str(window),
                "--client", client, *(["--durable"] if durable else [])]
        return self.procs.start("acker", args, self.epics.client_env(0))
