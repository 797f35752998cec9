"""CPU time of the measured processes, from /proc: the figure a shared machine moves least.

On a busy 2-core machine events/s swing by tens of percent from one run to the next,
because the measured processes wait for a core. The CPU time they spend per delivered
event hardly moves: it counts work done, not time waited. It also counts what events/s
hides: relayd's ingest worker runs beside the CA process, so on two cores its cost shows
in throughput only in part, while here every process of relayd counts.

A process's CPU time is the sum over its threads of the time each spent on a CPU, in
nanoseconds (``/proc/<pid>/task/<tid>/schedstat``). ``utime + stime`` of
``/proc/<pid>/stat`` counts the same in clock ticks (10 ms), too coarse for a quick run
of 0.1 s of CPU; it is the fallback for a process one of whose threads exited during the
measurement (the exited thread's time is in it, and in no schedstat file any more).
relayd is its supervisor and every descendant; a baseline is its one process.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

TICK = 1.0 / os.sysconf("SC_CLK_TCK")


class ProcessGone(RuntimeError):
    """A measured process exited during a measurement: its CPU time is unknown."""


def _stat_fields(pid: int) -> list[str]:
    """The fields of /proc/<pid>/stat after the command name (which may hold spaces)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        raise ProcessGone(f"process {pid} has exited") from None
    return text.rsplit(")", 1)[1].split()


def cpu_seconds(pid: int) -> float:
    """utime + stime of `pid`, every thread of it, in seconds."""
    fields = _stat_fields(pid)
    # After the name: state (0), ppid (1), ... utime (11), stime (12).
    return (int(fields[11]) + int(fields[12])) * TICK


def thread_ns(pid: int) -> dict[int, int]:
    """{thread id: nanoseconds on a CPU} of every thread of `pid`."""
    threads = {}
    try:
        tids = [int(entry.name) for entry in Path(f"/proc/{pid}/task").iterdir()]
    except OSError:
        raise ProcessGone(f"process {pid} has exited") from None
    for tid in tids:
        try:
            threads[tid] = int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])
        except (OSError, IndexError, ValueError):
            continue  # exited between the listing and the read
    return threads


class _Sample:
    """One process at one moment: its threads' nanoseconds and its tick count."""

    def __init__(self, pid: int):
        self.threads = thread_ns(pid)
        self.ticks = cpu_seconds(pid)

    def since(self, start: "_Sample") -> float:
        """Seconds of CPU from `start` to this sample."""
        if not set(start.threads) <= set(self.threads):
            return self.ticks - start.ticks  # a thread exited: only the ticks count it
        spent = sum(ns - start.threads.get(tid, 0) for tid, ns in self.threads.items())
        return spent / 1e9


def _parents() -> dict[int, int]:
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int(_stat_fields(int(entry.name))[1])
            except ProcessGone:
                continue
    return parents


def process_tree(pid: int) -> list[int]:
    """`pid` and every process descended from it, parents first."""
    children: dict[int, list[int]] = {}
    for child, parent in _parents().items():
        children.setdefault(parent, []).append(child)
    tree, queue = [], [pid]
    while queue:
        current = queue.pop(0)
        tree.append(current)
        queue.extend(sorted(children.get(current, ())))
    return tree


def title(pid: int) -> str:
    """The process title (first word of its command line), for the JSON file."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "?"
    return raw.split(b"\0")[0].decode(errors="replace") or "?"


class CpuMeter:
    """CPU seconds spent by a set of processes between `__init__` and `stop`."""

    def __init__(self, pids: Iterable[int]):
        self.pids = list(pids)
        self._start = {pid: _Sample(pid) for pid in self.pids}

    def stop(self) -> dict:
        """{"cpu_s": total, "by_process": {title: seconds}} since the meter started.

        Raises `ProcessGone` if one of the processes exited meanwhile: its time would
        be missing from the total.
        """
        spent = {pid: _Sample(pid).since(start) for pid, start in self._start.items()}
        by_process: dict[str, float] = {}
        for pid, seconds in spent.items():
            name = title(pid)
            by_process[name] = by_process.get(name, 0.0) + seconds
        return {"cpu_s": sum(spent.values()), "by_process": by_process}
