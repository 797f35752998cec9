"""A fleet of relays, the way EPICS scales out: three relays, three hosts, one subnet.

Three relays with different prefixes run on three hosts of a network made for this
module (tests/e2e/_netns.py: network namespaces joined by a bridge, nothing in the
machine's own network). A fourth host, "ops", runs the publisher, one
`relayd.client.fleet.Fleet` that routes each update by its prefix, and unmodified CA
clients (pyepics on libca, caproto) that know nothing but the PV names: they find each
PV by broadcast search, as a control room finds IOCs, and monitor it.

Needs root and iproute2 (network namespaces). Without them the tests skip, saying why,
unless RELAYD_REQUIRE_NETNS is set, as .ci/run sets it: then they fail, so that CI can
never pass with the fleet untested.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from tests.e2e._netns import BROADCAST, Host, NetLab, ip, lab_environment, remove_leftovers, \
    unavailable
from tests.harness import RelayProcess, unique_prefix, wait_for

REPO = Path(__file__).resolve().parents[2]
RELAYS = ("relay1", "relay2", "relay3")
ZMQ_PORT = 5555
CA_PORT = 5064  # EPICS's default: every relay has a host of its own
LAB_TIMEOUT = 20.0


def require_netns() -> None:
    """Skip (or, with RELAYD_REQUIRE_NETNS set, fail) where no lab can be made."""
    reason = unavailable()
    if reason is None:
        return
    if os.environ.get("RELAYD_REQUIRE_NETNS"):
        pytest.fail(f"the fleet tests need network namespaces and RELAYD_REQUIRE_NETNS is "
                    f"set, but: {reason}")
    pytest.skip(f"the fleet tests need network namespaces: {reason}")


@dataclass
class LabRelay(RelayProcess):
    """relayd on a lab host, with EPICS's defaults (all interfaces, port 5064, broadcast
    beacons) and its ingest bound to the host's address, open to the ops host only."""

    host: Host | None = None

    @property
    def endpoint(self) -> str:
        assert self.host is not None
        return f"tcp://{self.host.address}:{ZMQ_PORT}"

    def command(self) -> list[str]:
        assert self.host is not None
        return self.host.command(super().command())

    def environment(self) -> dict[str, str]:
        return lab_environment(**self.env)


class LabProcess:
    """A tests/e2e/_lab_clients.py process on a lab host; its JSON lines, as they come."""

    def __init__(self, host: Host, *args: str, env: dict[str, str] | None = None):
        self.popen = subprocess.Popen(
            host.command([sys.executable, "-m", "tests.e2e._lab_clients", *args]),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            cwd=REPO, env=lab_environment(PYTHONPATH=str(REPO), **(env or {})))
        self.lines: queue.SimpleQueue[dict] = queue.SimpleQueue()
        self.seen: list[dict] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.lines.put(json.loads(line))

    def _drain(self) -> list[dict]:
        while True:
            try:
                self.seen.append(self.lines.get_nowait())
            except queue.Empty:
                return self.seen

    def wait(self, condition: Callable[[list[dict]], Any], what: str) -> Any:
        """Poll the lines seen so far until `condition(lines)` is truthy."""
        def check() -> Any:
            if self.popen.poll() is not None:
                raise AssertionError(f"exited with {self.popen.returncode}: {self.stderr()}")
            return condition(self._drain())
        try:
            return wait_for(check, LAB_TIMEOUT, what=what)
        except AssertionError as error:
            raise AssertionError(f"{error}; lines: {self.seen[-6:]}") from None

    def call(self, method: str, *args: Any) -> dict:
        """One call on the publisher's fleet; its reply line."""
        assert self.popen.stdin is not None
        before = len(self._drain())
        self.popen.stdin.write(json.dumps({"call": method, "args": args}) + "\n")
        self.popen.stdin.flush()
        return self.wait(lambda lines: len(lines) > before and lines[before],
                         f"the reply to {method}")

    def stderr(self) -> str:
        self.popen.kill()
        return self.popen.communicate(timeout=10)[1][-2000:]

    def close(self) -> None:
        """Close its stdin (the clients' signal to end) and wait for it to exit."""
        try:
            self.popen.stdin.close()  # type: ignore[union-attr]
            self.popen.wait(10)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()


@dataclass
class Fleet:
    """The module's lab: its relays (prefix order), the ops host and its publisher."""

    lab: NetLab
    relays: list[LabRelay]
    ops: Host
    publisher: LabProcess
    root_links: str  # the machine's own links, as they were before the lab was made


def root_links() -> str:
    """The links of the machine's own namespace, without their counters and states."""
    return "\n".join(sorted(line.split(":")[1].strip() for line in ip("-o", "link").splitlines()))


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    require_netns()
    remove_leftovers()
    before = root_links()
    with NetLab([*RELAYS, "ops"]) as lab:
        ops = lab.hosts["ops"]
        family = unique_prefix()
        workdir = tmp_path_factory.mktemp("fleet")
        relays = [LabRelay(f"{family}:{name}", CA_PORT, workdir,
                           ["--insecure", "--zmq-allow", ops.address], host=lab.hosts[name])
                  for name in RELAYS]
        publisher = None
        try:
            for relay in relays:
                relay.start(wait=False)
            for relay in relays:
                relay.wait_ready()
            routes = {relay.prefix: relay.endpoint for relay in relays}
            publisher = LabProcess(ops, "publish", json.dumps(routes))
            yield Fleet(lab, relays, ops, publisher, before)
        finally:
            if publisher is not None:
                publisher.close()
            codes = {relay.prefix: relay.stop() for relay in relays}
    assert codes == {relay.prefix: 0 for relay in relays}, "\n".join(
        relay.log_text() for relay in relays)


# pyepics searches on every broadcast address of its host (EPICS_CA_AUTO_ADDR_LIST);
# caproto, without netifaces, would broadcast to 255.255.255.255, which a host with no
# default route cannot send: it is given the subnet's broadcast address, as sites do.
CA_ENV = {
    "pyepics": {"EPICS_CA_AUTO_ADDR_LIST": "YES"},
    "caproto": {"EPICS_CA_AUTO_ADDR_LIST": "NO", "EPICS_CA_ADDR_LIST": BROADCAST},
}


def connected(lines: list[dict], names: list[str]) -> dict[str, str] | None:
    """{name: server host} once every name has connected."""
    hosts = {line["connected"]: line["host"] for line in lines if "connected" in line}
    return hosts if set(names) <= set(hosts) else None


def values(lines: list[dict], name: str) -> list[Any]:
    return [line["v"] for line in lines if line.get("value") == name]


@pytest.mark.parametrize("library", ["pyepics", "caproto"])
def test_one_publisher_feeds_three_relays_and_ca_finds_every_pv_by_name(
        fleet: Fleet, library: str, name: Callable[[str], str]) -> None:
    names = {relay.prefix: f"{relay.prefix}:{name('temp_f1')}" for relay in fleet.relays}
    ordered = list(names.values())
    # The first values make the PVs: one call, one message to each relay. (Not 0: a name
    # searched before any value arrived is served as a placeholder that reads 0.)
    firsts = {pv: -1.0 - index for index, pv in enumerate(ordered)}
    assert fleet.publisher.call("put_many", firsts) == {"ok": None}
    watcher = LabProcess(fleet.ops, "watch", library, *ordered, env=CA_ENV[library])
    try:
        hosts = watcher.wait(lambda lines: connected(lines, ordered),
                             f"{library} to find all three PVs")
        for relay in fleet.relays:  # each found on its own relay's host, by name alone
            assert hosts[names[relay.prefix]] == f"{relay.host.address}:{CA_PORT}"
        watcher.wait(lambda lines: all(values(lines, pv)[-1:] == [first]
                                       for pv, first in firsts.items()), "the first values")
        for step in range(1, 6):
            batch = [(pv, float(step) + index / 10) for index, pv in enumerate(ordered)]
            assert fleet.publisher.call("put_many", batch) == {"ok": None}
        finals = {pv: 5.0 + index / 10 for index, pv in enumerate(ordered)}
        watcher.wait(lambda lines: all(values(lines, pv)[-1:] == [final]
                                       for pv, final in finals.items()), "the last values")
        for index, pv in enumerate(ordered):
            seen = values(watcher.seen, pv)
            start = seen.index(firsts[pv])  # before it, at most the placeholder's 0
            assert set(seen[:start]) <= {0.0}, seen
            assert seen[start:] == sorted(seen[start:]), f"{pv} went back: {seen}"
            assert set(seen[start:]) <= {firsts[pv]} | {step + index / 10 for step in range(1, 6)}
    finally:
        watcher.close()


def test_a_name_under_no_relay_is_refused_where_it_is_sent(fleet: Fleet) -> None:
    family = fleet.relays[0].prefix.rsplit(":", 1)[0]
    reply = fleet.publisher.call("put_many", {f"{fleet.relays[0].prefix}:a_f1": 1.0,
                                              f"{family}:relay4:a_f1": 1.0})
    assert reply["error"] == "UnknownPrefix"
    assert f"'{family}:relay4:a_f1' is under none of this fleet's prefixes" in reply["text"]
    assert fleet.publisher.call("prefix_of", f"{fleet.relays[2].prefix}:x:y_i1") == {
        "ok": fleet.relays[2].prefix}


def test_the_machines_own_network_is_untouched(fleet: Fleet) -> None:
    assert root_links() == fleet.root_links
    assert BROADCAST.rsplit(".", 1)[0] + "." not in ip("-o", "addr")
    assert set(fleet.lab.namespaces()) <= set(ip("netns", "list").split())


def test_a_lab_is_taken_down_even_when_its_test_fails() -> None:
    require_netns()
    with pytest.raises(RuntimeError, match="the test failed"):
        with NetLab(["a", "b"]) as lab:
            sleeper = subprocess.Popen(lab.hosts["a"].command(["sleep", "60"]))
            wait_for(lambda: str(sleeper.pid) in ip("netns", "pids", lab.hosts["a"].netns),
                     what="the sleeper inside the lab")
            raise RuntimeError("the test failed")
    assert sleeper.wait(10) == -9
    assert not set(lab.namespaces()) & set(ip("netns", "list").split())


def test_leftovers_of_a_run_that_died_are_removed() -> None:
    require_netns()
    gone = subprocess.Popen(["true"])
    gone.wait()
    dead = f"rfl{gone.pid}x0-br"
    ip("netns", "add", dead)
    with NetLab(["a"]) as alive:  # a lab of a running maker (this one) is left alone
        assert dead in remove_leftovers()
        listed = ip("netns", "list")
        assert dead not in listed and alive.hosts["a"].netns in listed


@pytest.mark.parametrize("required, outcome", [("", "1 skipped"), ("1", "1 error")])
def test_without_root_the_fleet_tests_skip_or_fail_as_asked(required: str, outcome: str) -> None:
    """As a user without root (a user namespace of its own, where this process's files
    stay readable), the tests skip, or fail when RELAYD_REQUIRE_NETNS is set (CI)."""
    require_netns()
    env = {key: value for key, value in os.environ.items() if key != "RELAYD_REQUIRE_NETNS"}
    env["RELAYD_REQUIRE_NETNS"] = required
    done = subprocess.run(
        ["unshare", "--user", sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
         "-rs", f"{__file__}::test_the_machines_own_network_is_untouched"],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert outcome in done.stdout, done.stdout + done.stderr
    assert "not root" in done.stdout
