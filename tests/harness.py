"""Test harness: real relayd processes on loopback, and two real CA clients.

* `RelayProcess` runs ``python -m relayd`` as a subprocess on a CA port of its own and
  stops it with SIGTERM, checking that it exits cleanly.
* `PyepicsClient` uses pyepics (the EPICS C library, libca); `CaprotoClient` uses
  caproto's threading client (an independent pure-Python implementation). Both offer
  the same small API so that end-to-end tests run against each.
* `wait_for` polls a condition against a deadline instead of sleeping.

CA traffic stays on loopback: conftest.py sets the EPICS environment before any client
library is imported. pyepics reads that environment once per process, so the CA ports
of every relay the session will start are reserved up front (`PortPool`) and listed in
EPICS_CA_ADDR_LIST.
"""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

DEFAULT_TIMEOUT = 10.0


# --- ports and waiting -------------------------------------------------------------


def free_port(kinds: Iterable[int] = (socket.SOCK_STREAM, socket.SOCK_DGRAM)) -> int:
    """A loopback port that is free for every socket kind in `kinds` right now."""
    kinds = tuple(kinds)
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


class PortPool:
    """Server ports reserved for the whole session (see the module docstring): CA ports,
    and the UDP search ports of the relays' pvAccess servers."""

    def __init__(self, size: int, kinds: Iterable[int] = (socket.SOCK_STREAM, socket.SOCK_DGRAM)):
        self.ports = [free_port(kinds) for _ in range(size)]
        self._free: queue.SimpleQueue[int] = queue.SimpleQueue()
        for port in self.ports:
            self._free.put(port)

    def addr_list(self) -> str:
        return " ".join(f"127.0.0.1:{port}" for port in self.ports)

    def take(self) -> int:
        try:
            return self._free.get_nowait()
        except queue.Empty:
            raise RuntimeError("CA port pool exhausted: raise PORT_POOL_SIZE in conftest.py")

    def give_back(self, port: int) -> None:
        self._free.put(port)


def wait_for(
    condition: Callable[[], Any],
    timeout: float = DEFAULT_TIMEOUT,
    interval: float = 0.02,
    what: str = "condition",
) -> Any:
    """Poll `condition` until it returns something truthy; return that value."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            value = condition()
            if value:
                return value
        except Exception as error:  # the condition may fail until the system is ready
            last_error = error
        if time.monotonic() > deadline:
            detail = f" (last error: {last_error!r})" if last_error else ""
            raise AssertionError(f"timed out after {timeout} s waiting for {what}{detail}")
        time.sleep(interval)


def unique_prefix() -> str:
    return "t" + uuid.uuid4().hex[:10]


# --- relayd as a real process --------------------------------------------------------


@dataclass
class RelayProcess:
    """One relayd subprocess serving `prefix` on CA port `port`."""

    prefix: str
    port: int
    workdir: Path
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen | None = None
    zmq_port: int = field(default_factory=lambda: free_port((socket.SOCK_STREAM,)))
    http_port: int = field(default_factory=lambda: free_port((socket.SOCK_STREAM,)))
    ack_port: int = field(default_factory=lambda: free_port((socket.SOCK_STREAM,)))
    log_offset: int = 0  # where the log of the latest start begins
    own_autosave: bool = True  # False: relayd's default autosave path, as in production
    # pvAccess: the UDP search port (one of the session's pool, listed in
    # EPICS_PVA_ADDR_LIST, for relays PVA clients must find) and the TCP port.
    pva_search_port: int = field(default_factory=lambda: free_port((socket.SOCK_DGRAM,)))
    pva_port: int = field(default_factory=lambda: free_port((socket.SOCK_STREAM,)))

    @property
    def endpoint(self) -> str:
        """The ZMQ endpoint the relay's ingest worker binds."""
        return f"tcp://127.0.0.1:{self.zmq_port}"

    @property
    def url(self) -> str:
        """The HTTP worker's address (the web page, the API, /metrics)."""
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def http(self) -> bool:
        """Whether this relay runs its HTTP worker."""
        return "--no-http" not in self.args

    @property
    def ack_endpoint(self) -> str:
        """The ZMQ endpoint of the relay's acknowledged (ROUTER) socket."""
        return f"tcp://127.0.0.1:{self.ack_port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / f"relayd-{self.prefix}.log"

    @property
    def autosave_path(self) -> Path:
        """The relay's autosave file (in the test's directory, never the user's)."""
        return self.workdir / f"autosave-{self.prefix}.sqlite"

    def command(self) -> list[str]:
        zmq = [] if "--zmq-bind" in self.args else ["--zmq-bind", self.endpoint]
        if self.http and "--http-bind" not in self.args:
            zmq += ["--http-bind", f"127.0.0.1:{self.http_port}"]
        # Never the default ack port: relays of parallel sessions would share it.
        if not {"--zmq-ack-bind", "--no-zmq-ack"} & set(self.args):
            zmq += ["--zmq-ack-bind", self.ack_endpoint]
        autosave = ([] if {"--autosave", "--no-autosave"} & set(self.args)
                    or not self.own_autosave else ["--autosave", str(self.autosave_path)])
        return [sys.executable, "-m", "relayd", "--prefix", self.prefix, *zmq, *autosave,
                *self.args]

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        # The clients' array limit is set for the test process; relayd sizes its own.
        env.pop("EPICS_CA_MAX_ARRAY_BYTES", None)
        env["EPICS_CA_SERVER_PORT"] = str(self.port)
        for name in ("EPICS_PVAS_BROADCAST_PORT", "EPICS_PVA_BROADCAST_PORT"):
            env[name] = str(self.pva_search_port)
        for name in ("EPICS_PVAS_SERVER_PORT", "EPICS_PVA_SERVER_PORT"):
            env[name] = str(self.pva_port)
        env.update(self.env)
        return env

    def start(self, wait: bool = True) -> "RelayProcess":
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.log_offset = log.tell()
        self.process = subprocess.Popen(
            self.command(), stdout=log, stderr=subprocess.STDOUT, env=self.environment(),
            cwd=self.workdir,
        )
        log.close()
        if wait:
            self.wait_ready()
        return self

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_since_start(self) -> str:
        """The log of the latest start only (a restarted relay appends to its log)."""
        try:
            with open(self.log_path, "rb") as log:
                log.seek(self.log_offset)
                return log.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_log(self, text: str, timeout: float = DEFAULT_TIMEOUT) -> str:
        return wait_for(lambda: text in self.log_text() and self.log_text(), timeout,
                        what=f"{text!r} in the log of relayd {self.prefix}")

    def wait_ready(self, timeout: float = 30.0) -> None:
        def ready() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(
                    f"relayd exited with {self.process.returncode}:\n{self.log_text()}"
                )
            text = self.log_since_start()
            return ("ca-server ready" in text and "ingest ready" in text
                    and (not self.http or "http ready" in text))

        deadline = time.monotonic() + timeout
        while not ready():
            if time.monotonic() > deadline:
                raise AssertionError(f"relayd did not start:\n{self.log_text()}")
            time.sleep(0.02)

    @property
    def pid(self) -> int:
        """The supervisor's pid."""
        assert self.process is not None
        return self.process.pid

    def child_pids(self) -> dict[str, int]:
        """{"ca-server": pid, "ingest": pid, "http": pid} of the children running now."""
        children = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid != self.pid:
                continue
            for role in ("ca-server", "ingest", "http"):
                if f"relayd: {role}".encode() in cmdline:
                    children[role] = int(entry.name)
        return children

    def ca_pid(self) -> int:
        return wait_for(lambda: self.child_pids().get("ca-server"), what="the CA child")

    def rss_kib(self, pid: int | None = None) -> int:
        """Resident memory of the CA process (or of `pid`)."""
        pid = pid or self.ca_pid()
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def restart(self, wait: bool = True) -> "RelayProcess":
        """Stop cleanly (SIGTERM, exit code 0), then start again: same prefix, ports,
        options and autosave file."""
        code = self.stop()
        assert code == 0, f"relayd exited with {code}:\n{self.log_text()}"
        return self.start(wait=wait)

    def kill_all(self, children: dict[str, int] | None = None) -> None:
        """SIGKILL the whole daemon at once, CA server first: as ``kill -9`` of its
        process group (supervisord's killasgroup) would, without leaving time for a
        clean stop in between. `children` are `child_pids()`, if already known."""
        assert self.process is not None
        children = children or self.child_pids()
        for pid in (children.get("ca-server"), self.pid, children.get("ingest"),
                    children.get("http")):
            if pid is not None:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.process.wait(10)
        for pid in children.values():  # reaped by init once their parent has gone
            wait_for(lambda: not Path(f"/proc/{pid}").exists() or
                     Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z",
                     what=f"relayd child {pid} gone")

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM and wait; return the exit code (SIGKILL if it does not stop)."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"relayd did not stop on SIGTERM:\n{self.log_text()}")


# --- CA clients ---------------------------------------------------------------------


@dataclass
class Event:
    """One monitor event or connection change, as either client saw it."""

    value: Any = None
    severity: int | None = None
    status: int | None = None
    timestamp: float | None = None
    connected: bool | None = None  # set (only) for connection changes


class Monitor:
    """Events of one subscription, collected from a client callback thread."""

    def __init__(self, name: str):
        self.name = name
        self.events: list[Event] = []
        self._lock = threading.Lock()
        self.closer: Callable[[], None] = lambda: None

    def add(self, event: Event) -> None:
        with self._lock:
            self.events.append(event)

    def values(self) -> list[Any]:
        with self._lock:
            return [e.value for e in self.events if e.connected is None]

    def value_events(self) -> list[Event]:
        with self._lock:
            return [e for e in self.events if e.connected is None]

    def connection_changes(self) -> list[bool]:
        with self._lock:
            return [e.connected for e in self.events if e.connected is not None]

    def wait_count(self, n: int, timeout: float = DEFAULT_TIMEOUT) -> list[Event]:
        wait_for(lambda: len(self.value_events()) >= n, timeout,
                 what=f"{n} events on {self.name} (have {len(self.value_events())})")
        return self.value_events()

    def wait_value(self, predicate: Callable[[Any], bool], timeout: float = DEFAULT_TIMEOUT) -> Event:
        def found() -> Event | None:
            for event in self.value_events():
                try:
                    if predicate(event.value):
                        return event
                except Exception:
                    pass
            return None

        return wait_for(found, timeout, what=f"a matching event on {self.name}: "
                                            f"{[e.value for e in self.value_events()][-5:]}")

    def close(self) -> None:
        self.closer()


ECA_NORMAL = 1  # pyepics/libca success status


class PyepicsClient:
    """pyepics, i.e. the EPICS C client library."""

    label = "pyepics"

    def __init__(self) -> None:
        import epics

        self.epics = epics
        self.ca = epics.ca
        self._pvs: dict[str, Any] = {}

    def pv(self, name: str, timeout: float = DEFAULT_TIMEOUT) -> Any:
        pv = self._pvs.get(name)
        if pv is None:
            pv = self._pvs[name] = self.epics.PV(name, auto_monitor=False)
        if not pv.wait_for_connection(timeout=timeout):
            raise TimeoutError(f"pyepics could not connect to {name}")
        return pv

    def connects(self, name: str, timeout: float) -> bool:
        pv = self.epics.PV(name, auto_monitor=False)
        try:
            return bool(pv.wait_for_connection(timeout=timeout))
        finally:
            pv.disconnect()

    def get(self, name: str, as_string: bool = False) -> Any:
        pv = self.pv(name)
        value = pv.get(timeout=DEFAULT_TIMEOUT, use_monitor=False)
        if value is None:
            raise TimeoutError(f"pyepics get of {name} failed")
        if as_string:
            # pyepics' own as_string strips trailing white space; decode exactly instead.
            return bytes(np.atleast_1d(value).astype(np.uint8)).split(b"\0", 1)[0].decode()
        return value

    def get_meta(self, name: str) -> Event:
        pv = self.pv(name)
        data = pv.get_with_metadata(timeout=DEFAULT_TIMEOUT, form="time", use_monitor=False)
        return Event(data["value"], data["severity"], data["status"], data["timestamp"])

    def put(self, name: str, value: Any, timeout: float = DEFAULT_TIMEOUT) -> bool:
        """Put with completion; True when the server accepted it.

        pyepics drops the status of a put callback, so the callback is registered here
        through pyepics' own libca binding to read that status.
        """
        chid = self.pv(name).chid
        ftype = self.ca.field_type(chid)
        native = self.ca.element_count(chid)
        dbr = self.epics.dbr
        if ftype == dbr.CHAR and isinstance(value, (str, bytes)):
            data_list = list(value.encode() if isinstance(value, str) else value) + [0]
            data_list = data_list[: max(native, 1)] if native > 1 else data_list[:1]
        elif np.ndim(value) == 0:
            data_list = [value]
        else:
            data_list = list(value)
        count = len(data_list)
        data = (count * dbr.Map[ftype])()
        for i, item in enumerate(data_list):
            data[i] = item
        return self.put_dbr(name, ftype, count, data, timeout)

    def put_dbr(self, name: str, ftype: int, count: int, data: Any,
                timeout: float = DEFAULT_TIMEOUT) -> bool:
        """``ca_array_put_callback`` of a ready ctypes buffer as DBR type `ftype`; True
        when the server accepted it (the put's completion status)."""
        return self.put_dbr_status(name, ftype, count, data, timeout) == ECA_NORMAL

    def put_dbr_status(self, name: str, ftype: int, count: int, data: Any,
                       timeout: float = DEFAULT_TIMEOUT) -> int:
        """As `put_dbr`, but the ECA code: the put's completion status, or why libca
        would not send it."""
        done = threading.Event()
        result: dict[str, int] = {}

        def on_done(args: Any) -> None:
            result["status"] = args.status
            done.set()

        callback = self.epics.dbr.make_callback(on_done, self.epics.dbr.event_handler_args)
        chid = self.pv(name).chid
        status = self.ca.libca.ca_array_put_callback(ftype, count, chid, data, callback, 0)
        if status != ECA_NORMAL:
            return status
        self.ca.flush_io()
        if not done.wait(timeout):
            raise TimeoutError(f"pyepics put to {name} did not complete")
        return result["status"]

    def put_nowait(self, name: str, value: Any) -> None:
        self.pv(name).put(value, wait=False)

    def monitor(self, name: str) -> Monitor:
        monitor = Monitor(name)

        def on_value(value=None, severity=None, status=None, timestamp=None, nelm=1,
                     **_: Any) -> None:
            if np.ndim(value) == 0 and (nelm or 1) > 1:
                value = np.array([value])  # pyepics hands one-element arrays as scalars
            monitor.add(Event(_copy(value), severity, status, timestamp))

        def on_connection(conn=None, **_: Any) -> None:
            monitor.add(Event(connected=bool(conn)))

        pv = self.epics.PV(name, callback=on_value, connection_callback=on_connection,
                           form="time", auto_monitor=True)
        monitor.closer = pv.disconnect
        return monitor

    def host(self, name: str) -> str:
        return self.ca.host_name(self.pv(name).chid)

    def forget(self, name: str) -> None:
        """Drop the channel to `name`; the next use makes a new one."""
        pv = self._pvs.pop(name, None)
        if pv is not None:
            pv.disconnect()


class CaprotoClient:
    """caproto's threading client, an independent implementation of CA."""

    label = "caproto"

    def __init__(self) -> None:
        from caproto import ChannelType
        from caproto.threading.client import Context

        self.ChannelType = ChannelType
        self.context = Context()
        self._pvs: dict[str, Any] = {}

    def pv(self, name: str, timeout: float = DEFAULT_TIMEOUT) -> Any:
        pv = self._pvs.get(name)
        if pv is None:
            pv, = self.context.get_pvs(name, timeout=timeout)
            self._pvs[name] = pv
        pv.wait_for_connection(timeout=timeout)
        return pv

    def connects(self, name: str, timeout: float) -> bool:
        pv, = self.context.get_pvs(name, timeout=timeout)
        try:
            pv.wait_for_connection(timeout=timeout)
            return True
        except TimeoutError:
            return False
        finally:
            pv.go_idle()

    def _value(self, pv: Any, response: Any, as_string: bool) -> Any:
        data = response.data
        if pv.channel.native_data_type == self.ChannelType.CHAR:
            text = bytes(np.asarray(data, dtype=np.uint8)).split(b"\0", 1)[0]
            if as_string:
                return text.decode()
            return np.asarray(data)
        if pv.channel.native_data_count == 1:
            return data[0]
        return np.asarray(data)

    def get(self, name: str, as_string: bool = False) -> Any:
        pv = self.pv(name)
        return self._value(pv, pv.read(timeout=DEFAULT_TIMEOUT), as_string)

    def get_meta(self, name: str) -> Event:
        pv = self.pv(name)
        response = pv.read(data_type="time", timeout=DEFAULT_TIMEOUT)
        meta = response.metadata
        return Event(self._value(pv, response, False), int(meta.severity), int(meta.status),
                     meta.timestamp)

    def put(self, name: str, value: Any, timeout: float = DEFAULT_TIMEOUT) -> bool:
        pv = self.pv(name)
        if isinstance(value, str):
            value = value.encode()
        if isinstance(value, bytes):
            data: Any = value + b"\0" if len(value) < pv.channel.native_data_count else value
        elif np.ndim(value) == 0:
            data = [value]
        else:
            data = value
        response = pv.write(data, wait=True, timeout=timeout)
        return response.status.success == 1

    def put_nowait(self, name: str, value: Any) -> None:
        pv = self.pv(name)
        pv.write([value] if np.ndim(value) == 0 else value, wait=False)

    def monitor(self, name: str) -> Monitor:
        monitor = Monitor(name)
        pv, = self.context.get_pvs(name)

        def on_value(sub: Any, response: Any) -> None:
            meta = response.metadata
            monitor.add(Event(self._value(pv, response, False), int(meta.severity),
                              int(meta.status), meta.timestamp))

        def on_connection(pv_: Any, state: str) -> None:
            if state in ("connected", "disconnected"):
                monitor.add(Event(connected=state == "connected"))

        pv.connection_state_callback.add_callback(on_connection, run=True)
        sub = pv.subscribe(data_type="time")
        token = sub.add_callback(on_value)

        def close() -> None:
            try:
                sub.remove_callback(token)
                sub.clear()
                pv.go_idle()
            except Exception:
                # caproto's threading client does not handle a server-side disconnect
                # (CA_PROTO_SERVER_DISCONN) and then fails to clear the channel.
                pass

        monitor.closer = close
        monitor.pv = pv  # keep the callbacks alive (caproto holds weak references)
        monitor.callbacks = (on_value, on_connection)
        return monitor

    def host(self, name: str) -> str:
        host, port = self.pv(name).circuit_manager.circuit.address
        return f"{host}:{port}"

    def forget(self, name: str) -> None:
        """Drop `name`: after a server-side disconnect caproto's threading client cannot
        reuse the channel, and its context caches it by name, so use a new context."""
        self._pvs.clear()
        old, self.context = self.context, type(self.context)()
        old.disconnect()

    def forget_all(self) -> None:
        """Drop every channel this client made (a new context): the next uses search
        afresh instead of waiting for the client's own reconnection after a restart."""
        self.forget("")


def _copy(value: Any) -> Any:
    return value.copy() if isinstance(value, np.ndarray) else value

