"""Every process the bench starts: relayd, the baseline servers, pushers and C clients.

Rules the whole bench follows, so that a run can never leave anything behind or talk to
anything else on the network:

* Every process is started through one `Procs` registry, and `Procs.stop_all()` (called
  by run.py in a ``finally`` after every scenario) kills whatever is still running, by pid.
* Everything stays on loopback: each CA server gets a CA port of its own
  (EPICS_CA_SERVER_PORT), listens on 127.0.0.1 only (EPICS_CAS_INTF_ADDR_LIST), and sends
  its beacons to a UDP socket the bench holds (`Epics.beacon_sink`) instead of
  broadcasting; each client searches exactly the port of the server it measures
  (EPICS_CA_ADDR_LIST, EPICS_CA_AUTO_ADDR_LIST=NO).
* A process's stdout is a pipe read line by line (`Proc.wait_line`, `Proc.result`); its
  stderr goes to a log file in the run's work directory, quoted when something fails.

`RunFailure` means the measured system misbehaved (did not start, died, timed out, a
client reported an error): the scenario is reported as failed and the bench goes on.
Any other exception is a bug in the bench itself.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from bench.cpu import process_tree

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


class RunFailure(RuntimeError):
    """The measured system (not the bench) failed: reported in the table, run goes on."""


# --- ports and environment ---------------------------------------------------------


def free_port(kinds: Sequence[int] = (socket.SOCK_STREAM, socket.SOCK_DGRAM)) -> int:
    """A loopback port free for every socket kind in `kinds` right now."""
    while True:
        with socket.socket(socket.AF_INET, kinds[0]) as first:
            first.bind(("127.0.0.1", 0))
            port = first.getsockname()[1]
            ok = True
            for kind in kinds[1:]:
                with socket.socket(socket.AF_INET, kind) as other:
                    try:
                        other.bind(("127.0.0.1", port))
                    except OSError:
                        ok = False
            if ok:
                return port


class Epics:
    """The loopback-only EPICS environment of one bench invocation."""

    def __init__(self) -> None:
        # Beacons go here; nobody reads them. Without a listener pcas logs "Connection
        # refused" for every beacon.
        self.beacon_sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.beacon_sink.bind(("127.0.0.1", 0))
        self.repeater_port = free_port()

    def close(self) -> None:
        self.beacon_sink.close()

    def _base(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("EPICS_")}
        env.update(
            EPICS_CA_AUTO_ADDR_LIST="NO",
            EPICS_CAS_INTF_ADDR_LIST="127.0.0.1",
            EPICS_CAS_BEACON_ADDR_LIST="127.0.0.1",
            EPICS_CAS_AUTO_BEACON_ADDR_LIST="NO",
            EPICS_CAS_BEACON_PORT=str(self.beacon_sink.getsockname()[1]),
            EPICS_CA_REPEATER_PORT=str(self.repeater_port),
            # pvAccess (relayd serves it by default): loopback only, no broadcasts
            EPICS_PVA_AUTO_ADDR_LIST="NO",
            EPICS_PVAS_INTF_ADDR_LIST="127.0.0.1",
            EPICS_PVAS_BEACON_ADDR_LIST="127.0.0.1",
            EPICS_PVAS_AUTO_BEACON_ADDR_LIST="NO",
            PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        )
        return env

    def server_env(self, port: int, **extra: str) -> dict[str, str]:
        env = self._base()
        env.update(EPICS_CA_SERVER_PORT=str(port), EPICS_CA_ADDR_LIST=f"127.0.0.1:{port}")
        env.update(self.pva_server_env(free_port((socket.SOCK_DGRAM,))))
        env.update(extra)
        return env

    @staticmethod
    def pva_server_env(search_port: int) -> dict[str, str]:
        """A pvAccess server's ports: UDP searches on `search_port`, TCP on a free port."""
        return {"EPICS_PVAS_BROADCAST_PORT": str(search_port),
                "EPICS_PVAS_SERVER_PORT": str(free_port((socket.SOCK_STREAM,)))}

    def pva_client_env(self, search_port: int) -> dict[str, str]:
        """A pvAccess client that searches exactly the server on `search_port`."""
        env = self._base()
        env.update(EPICS_PVA_ADDR_LIST=f"127.0.0.1:{search_port}",
                   EPICS_PVA_BROADCAST_PORT=str(search_port))
        return env

    def client_env(self, port: int, max_array_bytes: int | None = None) -> dict[str, str]:
        env = self._base()
        env.update(EPICS_CA_ADDR_LIST=f"127.0.0.1:{port}", EPICS_CA_SERVER_PORT=str(port),
                   EPICS_CA_CONN_TMO="10")
        if max_array_bytes:
            env["EPICS_CA_MAX_ARRAY_BYTES"] = str(max_array_bytes)
        return env


# --- processes -------------------------------------------------------------------------


class Proc:
    """One started process: its stdout read as lines, its stderr in a log file."""

    def __init__(self, name: str, popen: subprocess.Popen, log_path: Path):
        self.name = name
        self.popen = popen
        self.log_path = log_path
        self.lines: list[str] = []  # every stdout line read so far
        self._buffer = b""
        self._eof = False
        self._selector = selectors.DefaultSelector()
        if popen.stdout is not None:
            os.set_blocking(popen.stdout.fileno(), False)
            self._selector.register(popen.stdout, selectors.EVENT_READ)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _fail(self, what: str) -> RunFailure:
        tail = self.log_tail()
        said = "\n".join(line[:300] for line in self.lines[-3:])
        return RunFailure(f"{self.name}: {what}" + (f"\n--- its output:\n{said}" if said else "")
                          + (f"\n--- its log:\n{tail}" if tail else ""))

    def _read(self, timeout: float) -> None:
        if self._eof or self.popen.stdout is None:
            if timeout > 0:
                time.sleep(min(timeout, 0.01))
            return
        if self._selector.select(timeout):
            try:
                chunk = os.read(self.popen.stdout.fileno(), 1 << 20)
            except BlockingIOError:
                return
            if not chunk:
                self._eof = True
                if self._buffer:
                    self.lines.append(self._buffer.decode(errors="replace"))
                    self._buffer = b""
                return
            self._buffer += chunk
            *complete, self._buffer = self._buffer.split(b"\n")
            self.lines.extend(line.decode(errors="replace") for line in complete)

    def wait_line(self, prefix: str, timeout: float) -> str:
        """The first stdout line starting with `prefix` (waiting up to `timeout` s)."""
        deadline = time.monotonic() + timeout
        index = 0
        while True:
            for line in self.lines[index:]:
                if line.startswith(prefix):
                    self.lines.remove(line)
                    return line
            index = len(self.lines)
            if self._eof and self.popen.poll() is not None:
                raise self._fail(f"exited with {self.popen.returncode} before printing {prefix!r}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._fail(f"printed no {prefix!r} line within {timeout:g} s")
            self._read(min(remaining, 0.1))

    def wait_json_line(self, prefix: str, timeout: float) -> dict:
        """The JSON object on a line ``PREFIX {...}``."""
        line = self.wait_line(prefix, timeout)
        return _parse(self, line[len(prefix):])

    def result(self, timeout: float) -> dict:
        """Wait for the process to exit and parse the JSON object it printed last."""
        deadline = time.monotonic() + timeout
        while not self._eof:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.kill()
                raise self._fail(f"did not finish within {timeout:g} s")
            self._read(min(remaining, 0.1))
        try:
            self.popen.wait(max(0.5, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.kill()
            raise self._fail(f"closed its stdout but did not exit within {timeout:g} s") from None
        for line in reversed(self.lines):
            if line.startswith("{"):
                data = _parse(self, line)
                if "error" in data:
                    raise self._fail(f"reported an error: {data['error']}")
                if self.popen.returncode != 0:
                    raise self._fail(f"exited with {self.popen.returncode}")
                return data
        raise self._fail(f"exited with {self.popen.returncode} without printing a result")

    def send(self, line: str) -> None:
        """Write one command line to the process's stdin."""
        if self.popen.stdin is None or self.popen.poll() is not None:
            raise self._fail("is not running (cannot take commands)")
        try:
            self.popen.stdin.write((line + "\n").encode())
            self.popen.stdin.flush()
        except BrokenPipeError:
            raise self._fail("closed its stdin") from None

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 10.0, sig: int = signal.SIGTERM) -> int | None:
        """Signal, wait up to `timeout`, then kill. Returns the exit code."""
        if self.popen.poll() is None:
            try:
                self.popen.send_signal(sig)
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
            except ProcessLookupError:
                pass
        self.close_pipes()
        return self.popen.returncode

    def kill(self) -> None:
        if self.popen.poll() is None:
            try:
                self.popen.kill()
                self.popen.wait(5)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        self.close_pipes()

    def close_pipes(self) -> None:
        for pipe in (self.popen.stdin, self.popen.stdout):
            if pipe is not None and not pipe.closed:
                try:
                    if pipe is self.popen.stdout:
                        self._selector.unregister(pipe)
                    pipe.close()
                except (OSError, KeyError, ValueError):
                    pass


def _parse(proc: Proc, text: str) -> dict:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise proc._fail(f"printed something that is not JSON ({error}): {text[:200]!r}") from None


class Procs:
    """The registry of every process started; `stop_all` leaves nothing running."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._started: list[Proc] = []
        self._count = 0

    def start(self, name: str, command: Sequence[str], env: dict[str, str],
              stdin: bool = False) -> Proc:
        self._count += 1
        log_path = self.workdir / f"{self._count:03d}-{name.replace(' ', '_').replace('/', '_')}.log"
        with open(log_path, "wb") as log:
            try:
                popen = subprocess.Popen(
                    list(command), stdout=subprocess.PIPE, stderr=log,
                    stdin=subprocess.PIPE if stdin else subprocess.DEVNULL, env=env, cwd=REPO,
                )
            except OSError as error:
                raise RunFailure(f"cannot start {name}: {error}") from None
        proc = Proc(name, popen, log_path)
        self._started.append(proc)
        return proc

    def stop_all(self) -> None:
        """Stop everything still running, newest first (clients before servers)."""
        for proc in reversed(self._started):
            if proc.alive():
                proc.stop(timeout=5.0)
            else:
                proc.close_pipes()
        self._started.clear()


# --- /proc -----------------------------------------------------------------------------


def rss_bytes(pid: int) -> int:
    """Resident set size of `pid` (VmRSS), in bytes."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    raise RunFailure(f"cannot read the RSS of pid {pid} (has it exited?)")


def child_by_title(parent: int, title: str) -> int | None:
    """The pid of the child of `parent` whose command line (process title) is `title`."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) != parent:
            continue
        if cmdline.rstrip(b"\0").split(b"\0")[0].decode(errors="replace").startswith(title):
            return int(entry.name)
    return None


# --- the servers ---------------------------------------------------------------------------


@dataclass
class Server:
    """What a scenario needs to know of any CA server it measures."""

    label: str  # how the table names it
    prefix: str
    port: int
    proc: Proc
    endpoint: str | None = None  # its ZMQ PULL endpoint, if it has one

    def pv(self, base: str) -> str:
        return f"{self.prefix}:{base}"

    def cpu_pids(self) -> list[int]:
        """The processes whose CPU time is this server's (see bench/cpu.py)."""
        return [self.proc.pid]


@dataclass
class Relay(Server):
    """relayd started as a real subprocess: ``python -m relayd``."""

    args: list[str] = field(default_factory=list)
    ack_endpoint: str = ""  # the acknowledged (ROUTER) socket's endpoint

    started: float = 0.0  # time.monotonic() just before the process was started
    ready_s: float = 0.0  # seconds from start until both children were ready
    autosave_path: Path | None = None  # its autosave file (relayd's default place)
    http_port: int = 0  # its HTTP worker's port (0: run with --no-http)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @classmethod
    def start(cls, procs: Procs, epics: Epics, prefix: str, args: Sequence[str] = (),
              ready_timeout: float = 30.0, address: str = "127.0.0.1",
              env: dict[str, str] | None = None) -> "Relay":
        """Start relayd with its defaults plus `args`, and wait until it is ready.

        Its ingest binds `address` (another than loopback needs ``--insecure`` in `args`).

        relayd saves every PV to SQLite by default (autosave). Its state directory
        (XDG_STATE_HOME) is the bench's work directory, so the autosave files of the
        bench's relays never land in the user's home and go when the run is over; a
        relay started again with the same prefix finds its file there.
        """
        port = free_port()
        endpoint = f"tcp://{address}:{free_port((socket.SOCK_STREAM,))}"
        ack = f"tcp://{address}:{free_port((socket.SOCK_STREAM,))}"  # never the default port
        command = [PYTHON, "-m", "relayd", "--prefix", prefix, "--zmq-bind", endpoint,
                   "--zmq-ack-bind", ack, *args]
        http_port = 0 if "--no-http" in args else free_port((socket.SOCK_STREAM,))
        if http_port:  # the HTTP worker runs, on a port of its own
            command += ["--http-bind", f"127.0.0.1:{http_port}"]
        state_home = procs.workdir / "state"
        environ = epics.server_env(port, XDG_STATE_HOME=str(state_home), **(env or {}))
        started = time.monotonic()
        proc = procs.start(f"relayd-{prefix}", command, environ)
        relay = cls("relayd", prefix, port, proc, endpoint, list(args), started=started,
                    autosave_path=state_home / "relayd" / f"{prefix}.sqlite",
                    ack_endpoint=ack, http_port=http_port)
        relay.wait_ready(ready_timeout)
        return relay

    def wait_ready(self, timeout: float) -> None:
        """Wait for every child's "ready" line in relayd's log (its stderr)."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.proc.log_path.read_text(errors="replace")
            if ("ca-server ready" in text and "ingest ready" in text
                    and (not self.http_port or "http ready" in text)):
                self.ready_s = time.monotonic() - self.started
                return
            if not self.proc.alive():
                raise self.proc._fail(f"exited with {self.proc.popen.returncode} while starting")
            if time.monotonic() > deadline:
                raise self.proc._fail(f"not ready within {timeout:g} s")
            time.sleep(0.01)

    def child(self, role: str) -> int:
        """The pid of the child titled "relayd: <role>" (ca-server or ingest)."""
        pid = child_by_title(self.proc.pid, f"relayd: {role}")
        if pid is None:
            raise RunFailure(f"relayd {self.prefix} has no child titled 'relayd: {role}'")
        return pid

    def cpu_pids(self) -> list[int]:
        """The supervisor and every process under it: all of relayd's work."""
        return process_tree(self.proc.pid)

    def stop(self) -> int | None:
        """SIGTERM, as an operator would; relayd's own grace is 10 s."""
        return self.proc.stop(timeout=20.0)


@dataclass
class Baseline(Server):
    """A baseline server (bench/baseline_server.py) in a process of its own."""

    kind: str = ""
    ready: dict = field(default_factory=dict)  # what it printed on READY

    @classmethod
    def start(cls, procs: Procs, epics: Epics, kind: str, prefix: str, pattern: str, n: int,
              count: int = 1, zmq: bool = False, label: str | None = None,
              extra: Sequence[str] = (), timeout: float = 120.0) -> "Baseline":
        port = free_port()
        endpoint = f"tcp://127.0.0.1:{free_port((socket.SOCK_STREAM,))}" if zmq else None
        command = [PYTHON, str(REPO / "bench" / "baseline_server.py"), "--kind", kind,
                   "--prefix", prefix, "--pattern", pattern, "--n", str(n),
                   "--count", str(count), *extra]
        if endpoint:
            command += ["--zmq-bind", endpoint]
        env = epics.server_env(port)
        if count > 1:
            env["EPICS_CA_MAX_ARRAY_BYTES"] = str(count * 8 + 1024)
        proc = procs.start(f"baseline-{kind}-{prefix}", command, env, stdin=True)
        ready = proc.wait_json_line("READY ", timeout)
        return cls(label or kind, prefix, port, proc, endpoint, kind=kind, ready=ready)

    def loop(self, updates: int, timeout: float = 120.0) -> dict:
        """Post `updates` updates from the in-process loop; what it reports when done."""
        self.proc.send(f"loop {updates}")
        return self.proc.wait_json_line("DONE ", timeout)

    def stop(self) -> int | None:
        if self.proc.alive():
            try:
                self.proc.send("quit")
            except RunFailure:
                pass
        return self.proc.stop(timeout=5.0)


def sink_start(procs: Procs, latency: bool = False, quiet_ms: int = 300) -> tuple[Proc, str]:
    """The raw ZMQ+msgpack ceiling: a PULL socket that decodes and counts, no CA."""
    endpoint = f"tcp://127.0.0.1:{free_port((socket.SOCK_STREAM,))}"
    command = [PYTHON, str(REPO / "bench" / "baseline_server.py"), "--kind", "zmq-sink",
               "--zmq-bind", endpoint, "--quiet-ms", str(quiet_ms)]
    if latency:
        command.append("--latency")
    env = {k: v for k, v in os.environ.items() if not k.startswith("EPICS_")}
    env["PYTHONPATH"] = str(REPO)
    proc = procs.start("zmq-sink", command, env, stdin=True)
    proc.wait_json_line("READY ", 30.0)
    return proc, endpoint
