"""Fault injection helpers: a steady background load, and signals to relayd's children.

`Load` is an independent publisher process that pushes an increasing counter to one PV
every few milliseconds until it is stopped, and reports the last value it sent. The
signal helpers act on one pid at a time (never by name), and `stopped` makes sure a
SIGSTOPped child gets its SIGCONT however the test ends.
"""

from __future__ import annotations

import os
import signal
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from tests.e2e._tools import full, snippet_command
from tests.harness import RelayProcess, wait_for

LOAD = """
    # Push an increasing counter to argv[2] every argv[3] seconds until stdin closes.
    done = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
    pv, period = sys.argv[2], float(sys.argv[3])
    sent = 0
    with Client(endpoint, send_timeout=60, queue_size=100_000, linger=10) as relay:
        for i in itertools.count(1):
            relay.put(pv, i)
            sent = i
            if done.wait(period) or i >= 100_000:
                break
    print(sent)
"""


class Load:
    """A background publisher: ``counter`` goes 1, 2, 3... every `period` seconds."""

    def __init__(self, relay: RelayProcess, pv: str = "load_i1", period: float = 0.005):
        self.relay = relay
        self.pv = pv
        self.name = full(relay, pv)
        self.period = period
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> "Load":
        self.process = subprocess.Popen(
            snippet_command(self.relay.endpoint, LOAD, self.pv, str(self.period)),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        return self

    def stop(self, timeout: float = 30.0) -> int:
        """Stop pushing; return the last value sent (all of them queued for the relay)."""
        assert self.process is not None
        try:
            out, err = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            out, err = self.process.communicate()
            raise AssertionError(f"the load did not stop:\n{err}") from None
        assert self.process.returncode == 0, f"the load failed:\n{err}"
        return int(out)

    def __exit__(self, *exc_info: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.communicate()


def proc_state(pid: int) -> str:
    """The state letter of `pid` (R, S, T for stopped, Z...), "" if it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return ""


def send_signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


@contextmanager
def stopped(pid: int) -> Iterator[None]:
    """SIGSTOP `pid` for the block; SIGCONT when it ends, however it ends."""
    os.kill(pid, signal.SIGSTOP)
    try:
        wait_for(lambda: proc_state(pid) in ("T", "t", ""), timeout=5,
                 what=f"pid {pid} stopped")
        yield
    finally:
        send_signal(pid, signal.SIGCONT)


def replaced(relay: RelayProcess, role: str, old: int, timeout: float = 20.0) -> dict[str, int]:
    """Wait for a new `role` child (not `old`) to be running and ready; its pids."""
    pids = wait_for(lambda: (p := relay.child_pids()).get(role) not in (None, old) and p,
                    timeout, what=f"a new {role} process")
    relay.wait_log(f"{role} ready (pid {pids[role]})", timeout=timeout)
    return pids
