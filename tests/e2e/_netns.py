"""Test hosts on a subnet of their own: network namespaces joined by a bridge.

A `NetLab` is a small network made for one test run and taken down after it, also when
the test fails:

* one namespace per host (``<tag>-<host>``), each with loopback and one interface,
  ``eth0``, holding an address on `SUBNET` (a /24, broadcast ``.255``);
* one more namespace, ``<tag>-br``, holding only the bridge that every host's ``eth0``
  is joined to (the other end of each host's veth pair is a bridge port there).

So a UDP broadcast from one host reaches every other host, as on a real subnet: CA name
searches work as they do between IOCs and clients. Nothing is created in the machine's
own namespace (every veth pair is made inside the lab's namespaces), nothing is routed
out of the lab, and the subnet exists only inside it. `SUBNET` is in 198.18.0.0/15, the
range set aside for network benchmark tests (RFC 2544).

`<tag>` is ``rfl<pid>x<n>``: the pid of the process that made the lab. A lab whose maker
is gone (a run killed before its cleanup) is a leftover, and `remove_leftovers` takes it
down: run it before making a lab. Taking a lab down kills every process still running in
its namespaces (by pid, as ``ip netns pids`` lists them), then deletes the namespaces.

Needs root and iproute2's ``ip``. `unavailable` says why a lab cannot be made here.
Standard library only, so that the bench can use it too (bench/scenarios/fleet.py).
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

SUBNET = "198.18.0"  # hosts are SUBNET.11, SUBNET.12, ...; the broadcast address is .255
BROADCAST = f"{SUBNET}.255"
TAG = re.compile(r"^rfl(\d+)x\d+-")
_serial = itertools.count()

# Every EPICS variable the test session sets to keep CA on loopback (tests/conftest.py,
# bench/procs.py). A process on a lab host starts with EPICS's own defaults instead, as it
# would on a real host; only the array limit and the connection timeout are kept.
KEEP_EPICS = ("EPICS_CA_MAX_ARRAY_BYTES", "EPICS_CA_CONN_TMO")


class LabError(RuntimeError):
    """A lab could not be made or taken down: an ``ip`` command failed."""


def ip_command() -> str | None:
    """iproute2's ``ip``: on PATH, or where Debian puts it (sbin is not on every PATH)."""
    return shutil.which("ip") or next(
        (path for path in ("/usr/sbin/ip", "/sbin/ip") if os.access(path, os.X_OK)), None)


def unavailable() -> str | None:
    """Why no lab can be made here, or None when it can be tried."""
    if os.geteuid() != 0:
        return "not root (network namespaces need root)"
    if ip_command() is None:
        return "no `ip` command (install iproute2)"
    return None


def ip(*args: str) -> str:
    """Run ``ip ARGS``; its output, or `LabError` with what it said."""
    done = subprocess.run([ip_command() or "ip", *args], capture_output=True, text=True,
                          timeout=30)
    if done.returncode != 0:
        raise LabError(f"ip {' '.join(args)}: {done.stderr.strip() or done.returncode}")
    return done.stdout


def lab_environment(base: Mapping[str, str] | None = None, **extra: str) -> dict[str, str]:
    """The environment for a process on a lab host: `base` (this process's by default)
    without the EPICS settings that pin CA to loopback, plus `extra`."""
    base = os.environ if base is None else base
    env = {key: value for key, value in base.items()
           if not key.startswith("EPICS_") or key in KEEP_EPICS}
    env.update(extra)
    return env


@dataclass(frozen=True)
class Host:
    """One host of a lab: its namespace and its address on the lab's subnet."""

    name: str
    netns: str
    address: str

    def command(self, argv: Sequence[str]) -> list[str]:
        """`argv` run on this host (``ip netns exec`` execs it: the pid stays the same)."""
        return [ip_command() or "ip", "netns", "exec", self.netns, *argv]


class NetLab:
    """Hosts `names` on one bridged subnet, in namespaces of their own (module docstring).

    Use it as a context manager: the lab is up inside the ``with`` block and taken down
    when the block ends, however it ends.
    """

    def __init__(self, names: Sequence[str]):
        if len(set(names)) != len(names) or not 0 < len(names) < 200:
            raise ValueError(f"host names must be distinct, 1 to 199 of them: {names}")
        self.tag = f"rfl{os.getpid()}x{next(_serial)}"
        self.bridge_netns = f"{self.tag}-br"
        self.hosts = {name: Host(name, f"{self.tag}-{name}", f"{SUBNET}.{11 + index}")
                      for index, name in enumerate(names)}

    def __enter__(self) -> NetLab:
        try:
            self.build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def build(self) -> None:
        """Make the namespaces, the bridge and every host's link."""
        ip("netns", "add", self.bridge_netns)
        self._in(self.bridge_netns, "link", "set", "lo", "up")
        self._in(self.bridge_netns, "link", "add", "br0", "type", "bridge")
        self._in(self.bridge_netns, "link", "set", "br0", "up")
        for index, host in enumerate(self.hosts.values()):
            port = f"port{index}"
            ip("netns", "add", host.netns)
            self._in(host.netns, "link", "set", "lo", "up")
            self._in(self.bridge_netns, "link", "add", port, "type", "veth",
                     "peer", "name", "eth0", "netns", host.netns)
            self._in(self.bridge_netns, "link", "set", port, "master", "br0", "up")
            self._in(host.netns, "addr", "add", f"{host.address}/24", "brd", BROADCAST,
                     "dev", "eth0")
            self._in(host.netns, "link", "set", "eth0", "up")

    def namespaces(self) -> list[str]:
        return [self.bridge_netns, *(host.netns for host in self.hosts.values())]

    def close(self) -> None:
        """Kill what still runs in the lab, delete its namespaces; `LabError` if any
        namespace is left after trying them all."""
        take_down(self.namespaces())

    @staticmethod
    def _in(netns: str, *args: str) -> None:
        ip("-n", netns, *args)


def existing_namespaces() -> list[str]:
    """The named network namespaces on this machine (``ip netns list``)."""
    return [line.split()[0] for line in ip("netns", "list").splitlines() if line.strip()]


def take_down(namespaces: Sequence[str]) -> None:
    """Kill every process in `namespaces`, then delete them (those that exist)."""
    present = set(existing_namespaces())
    failures = []
    for netns in namespaces:
        if netns not in present:
            continue
        try:
            _kill_all_in(netns)
            ip("netns", "delete", netns)
        except LabError as error:
            failures.append(str(error))
    if failures:
        raise LabError("could not take the lab down: " + "; ".join(failures))


def _kill_all_in(netns: str, timeout: float = 10.0) -> None:
    """SIGKILL each process in `netns` by pid and wait until none is left running."""
    pids = [int(pid) for pid in ip("netns", "pids", netns).split()]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while any(_running(pid) for pid in pids):
        if time.monotonic() > deadline:
            raise LabError(f"processes {pids} in {netns} did not die")
        time.sleep(0.01)


def _running(pid: int) -> bool:
    """True while `pid` exists and is not a zombie (a zombie waits for its parent only)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def remove_leftovers() -> list[str]:
    """Take down the labs whose maker is no longer running; the namespaces removed."""
    leftovers = []
    for netns in existing_namespaces():
        match = TAG.match(netns)
        if match and not _running(int(match.group(1))):
            leftovers.append(netns)
    take_down(leftovers)
    return leftovers
