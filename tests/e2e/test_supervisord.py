"""End-to-end: relayd under the real supervisord, configured from etc/supervisord.conf.

The sample is read and only what must differ in a test is rewritten (paths into a tmp
dir, the control socket, the relayd command line, the EPICS environment); every other key
(autorestart, startsecs, stopsignal, stopwaitsecs, stopasgroup...) is the sample's own.
supervisord runs in a session of its own and relayd in its own process group (supervisord
makes each program a group leader), so whatever happens in a test, both groups are killed
at the end and no process is left behind.
"""

from __future__ import annotations

import configparser
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest
import zmq

from relayd.config import Config
from tests.conftest import PORTS
from tests.harness import free_port, unique_prefix, wait_for

SAMPLE = Path(__file__).resolve().parents[2] / "etc" / "supervisord.conf"
ROLES = ("supervisor", "ca-server", "ingest", "http")


def sample() -> configparser.RawConfigParser:
    """The sample as supervisord reads it (';' and '#' start inline comments)."""
    parser = configparser.RawConfigParser(inline_comment_prefixes=(";", "#"))
    assert parser.read(SAMPLE) == [str(SAMPLE)]
    return parser


def test_sample_config_keys():
    conf = sample()
    program = conf["program:relayd"]
    assert program["command"].startswith("relayd --config /etc/relayd/relayd.toml")
    assert program["autostart"] == program["autorestart"] == "true"
    assert program["stopsignal"] == "TERM"
    assert program["stopasgroup"] == program["killasgroup"] == "true"
    assert int(program["stopwaitsecs"]) > Config().stop_grace
    assert program["redirect_stderr"] == "true"
    assert "EPICS_CA_SERVER_PORT=" in program["environment"]
    assert "EPICS_CAS_INTF_ADDR_LIST=" in program["environment"]
    assert conf["supervisorctl"]["serverurl"] == "unix://" + conf["unix_http_server"]["file"]
    assert "rpcinterface:supervisor" in conf
    # One key per line, each with its default noted beside it.
    for line in SAMPLE.read_text().splitlines():
        if line and not line.startswith((";", "[")):
            assert " ;" in line, f"no comment beside: {line}"


# --- a supervisord of our own --------------------------------------------------------------


@dataclass
class Supervisord:
    """A real supervisord (and relayd under it) in `workdir`."""

    workdir: Path
    conf: Path
    prefix: str
    zmq_endpoint: str
    ca_port: int
    process: subprocess.Popen | None = None
    relayd_pids: set[int] = field(default_factory=set)  # every relayd pid seen
    relayd_groups: set[int] = field(default_factory=set)  # relayd's process groups

    @property
    def relayd_log(self) -> Path:
        return self.workdir / "relayd.log"

    def log_text(self) -> str:
        texts = []
        for path in (self.workdir / "supervisord.log", self.workdir / "supervisord.out",
                     self.relayd_log):
            with contextlib.suppress(FileNotFoundError):
                texts.append(f"--- {path.name}\n{path.read_text(errors='replace')}")
        return "\n".join(texts)

    def ctl(self, *args: str, check: bool = True) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "supervisor.supervisorctl", "-c", str(self.conf), *args],
            capture_output=True, text=True, timeout=60)
        if check:
            assert done.returncode == 0, f"supervisorctl {args}: {done}\n{self.log_text()}"
        return done.stdout

    def state(self) -> str:
        return self.ctl("status", "relayd", check=False).split()[1]

    def relayd_pid(self) -> int:
        pid = wait_for(lambda: int(self.ctl("pid", "relayd", check=False).strip() or 0),
                       what="relayd's pid from supervisorctl")
        self.relayd_pids.add(pid)
        self.relayd_groups.add(pid)  # supervisord makes each program a group leader
        return pid

    def processes(self) -> dict[str, int]:
        """{"supervisor": pid, "ca-server": pid, "ingest": pid, "http": pid} of relayd now
        running."""
        found = {}
        for pid in members(self.relayd_pid(), GROUP):
            role = relayd_role(pid)
            if role:
                found[role] = pid
                self.relayd_pids.add(pid)
        return found

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("EPICS_")}
        with open(self.workdir / "supervisord.out", "ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "supervisor.supervisord", "-n", "-c", str(self.conf)],
                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=self.workdir,
                start_new_session=True)

    def wait_relayd_ready(self) -> dict[str, int]:
        def ready() -> dict[str, int] | None:
            if self.process.poll() is not None:
                raise AssertionError(f"supervisord exited:\n{self.log_text()}")
            found = self.processes()
            text = self.relayd_log.read_text() if self.relayd_log.exists() else ""
            return found if (len(found) == len(ROLES) and "ca-server ready" in text
                             and "ingest ready" in text and "http ready" in text) else None

        return wait_for(ready, timeout=30, what="relayd ready under supervisord")

    def kill_everything(self) -> None:
        """Last resort: SIGKILL relayd's process groups and all of supervisord's session
        (relayd's group is inside it: supervisord makes a group, not a session)."""
        for pgid in self.relayd_groups:
            if members(pgid, GROUP):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pgid, signal.SIGKILL)
        if self.process is not None:
            for pid in members(self.process.pid, SESSION):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self.process.wait(10)


GROUP, SESSION = 2, 3  # fields of /proc/<pid>/stat after the command name


def members(ident: int, kind: int) -> list[int]:
    """Live (not zombie) processes in process group or session `ident`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[kind]) == ident:
            found.append(int(entry.name))
    return found


def relayd_role(pid: int) -> str | None:
    try:
        title = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").decode()
    except (OSError, UnicodeDecodeError):
        return None
    for role in ROLES:
        if title == f"relayd: {role}":
            return role
    return None


def write_config(workdir: Path, socket_dir: Path, prefix: str, endpoint: str,
                 ca_port: int) -> Path:
    """The sample with paths, socket, command and environment rewritten for a test."""
    conf = sample()
    sock = socket_dir / "supervisor.sock"
    conf["unix_http_server"]["file"] = str(sock)
    conf["supervisorctl"]["serverurl"] = f"unix://{sock}"
    conf["supervisord"]["logfile"] = str(workdir / "supervisord.log")
    conf["supervisord"]["pidfile"] = str(workdir / "supervisord.pid")
    conf["supervisord"]["childlogdir"] = str(workdir)
    program = conf["program:relayd"]
    ack = f"tcp://127.0.0.1:{free_port((socket.SOCK_STREAM,))}"  # not the default port
    http = f"127.0.0.1:{free_port((socket.SOCK_STREAM,))}"  # nor the default HTTP port
    program["command"] = (f"{sys.executable} -m relayd --prefix {prefix} --zmq-bind {endpoint} "
                          f"--zmq-ack-bind {ack} --http-bind {http} "
                          f"--autosave {workdir / 'autosave.sqlite'}")  # not ~/.local/state
    program["stdout_logfile"] = str(workdir / "relayd.log")
    env = {k: v for k, v in os.environ.items()
           if k.startswith("EPICS_") and k != "EPICS_CA_MAX_ARRAY_BYTES"}
    env["EPICS_CA_SERVER_PORT"] = str(ca_port)
    program["environment"] = ",".join(f'{k}="{v}"' for k, v in sorted(env.items()))
    path = workdir / "supervisord.conf"
    with open(path, "w") as handle:
        conf.write(handle)
    return path


@pytest.fixture
def supervisord(tmp_path: Path) -> Iterator[Supervisord]:
    """A supervisord with relayd configured (not started); everything killed at the end."""
    port = PORTS.take()
    # A unix socket path must be short (108 bytes); tmp_path can be long.
    socket_dir = Path(tempfile.mkdtemp(prefix="relayd-sv-"))
    prefix = unique_prefix()
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    conf = write_config(tmp_path, socket_dir, prefix, endpoint, port)
    sv = Supervisord(tmp_path, conf, prefix, endpoint, port)
    try:
        yield sv
    finally:
        sv.kill_everything()
        PORTS.give_back(port)
        with contextlib.suppress(OSError):
            (socket_dir / "supervisor.sock").unlink()
        with contextlib.suppress(OSError):
            socket_dir.rmdir()


def push(endpoint: str, pv: str, value: float) -> None:
    code = textwrap.dedent(f"""
        from relayd.client import Client
        with Client({endpoint!r}) as relay:
            relay.put({pv!r}, {value!r})
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr


# --- the tests -----------------------------------------------------------------------------


def test_relayd_under_supervisord(supervisord, caproto_client):
    sv = supervisord
    sv.start()
    first = sv.wait_relayd_ready()
    assert sv.state() in ("STARTING", "RUNNING")

    # It answers on CA (the port comes from the environment line) and on ZMQ.
    pv = f"{sv.prefix}:by_ca_f1"
    assert caproto_client.put(pv, 1.5)
    assert caproto_client.get(pv) == 1.5
    assert caproto_client.host(pv).endswith(f":{sv.ca_port}")
    push(sv.zmq_endpoint, "by_zmq_f1", 2.5)
    wait_for(lambda: caproto_client.get(f"{sv.prefix}:by_zmq_f1") == 2.5,
             what="the pushed value")

    # relayd replaces a CA process that dies; supervisord does not even notice.
    os.kill(first["ca-server"], signal.SIGKILL)
    second = wait_for(lambda: (found := sv.processes()).get("ca-server") not in
                      (None, first["ca-server"]) and found, what="a new CA process")
    assert second["supervisor"] == first["supervisor"]
    assert second["ingest"] == first["ingest"]
    pv = f"{sv.prefix}:after_restart_f1"
    wait_for(lambda: caproto_client.put(pv, 3.5), timeout=20, what="the new CA process")
    assert caproto_client.get(pv) == 3.5
    push(sv.zmq_endpoint, "after_restart_zmq_f1", 4.5)
    wait_for(lambda: caproto_client.get(f"{sv.prefix}:after_restart_zmq_f1") == 4.5,
             what="the pushed value after the restart")
    wait_for(lambda: sv.state() == "RUNNING", timeout=30, what="RUNNING after startsecs")
    assert sv.relayd_pid() == first["supervisor"]

    # supervisorctl stop: TERM to the group; relayd stops cleanly, nothing is left.
    assert "relayd: stopped" in sv.ctl("stop", "relayd")
    assert sv.state() == "STOPPED"
    wait_for(lambda: not members(first["supervisor"], GROUP), timeout=5,
             what="no process left in relayd's process group")
    assert not [pid for pid in sv.relayd_pids if relayd_role(pid)], "a relayd process is left"
    log = sv.relayd_log.read_text()
    assert "relayd stopped" in log and "killing it" not in log, log

    sv.ctl("shutdown")
    assert sv.process.wait(15) == 0


def test_relayd_that_cannot_boot_goes_fatal(supervisord):
    """relayd exits 3 when its ZMQ endpoint is taken; supervisord gives up after
    startretries instead of restarting it forever."""
    sv = supervisord
    context = zmq.Context()
    squatter = context.socket(zmq.PULL)
    squatter.bind(sv.zmq_endpoint)
    try:
        sv.start()
        wait_for(lambda: sv.state() == "FATAL", timeout=60, interval=0.2,
                 what="relayd FATAL")
    finally:
        squatter.close(0)
        context.term()
    tries = 1 + int(sample()["program:relayd"]["startretries"])
    log = sv.relayd_log.read_text()
    reasons = [line for line in log.splitlines() if "relayd cannot start" in line]
    assert len(reasons) == tries and all(sv.zmq_endpoint in line for line in reasons), log
    main_log = (sv.workdir / "supervisord.log").read_text()
    assert "gave up: relayd entered FATAL state, too many start retries too quickly" in main_log
    assert main_log.count("exited: relayd (exit status 3; not expected)") == tries
    sv.ctl("shutdown")
    assert sv.process.wait(15) == 0
