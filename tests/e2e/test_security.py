"""End-to-end: who may publish and write, and what the relay refuses beyond its limits.

Real relays, real sockets, real CA clients, all on loopback (the one test that binds
0.0.0.0 sends its traffic to 127.0.0.1 only):

* ``relayd keygen`` and CurveZMQ on the ingest socket: authorised publishers get through
  (``Client`` and ``relay-push``); publishers without a key, with an unknown key, or with
  the wrong server key publish nothing, are told so, and the relay counts them;
* the ZMQ IP allow-list, and the refusal to bind beyond loopback without CURVE;
* unusable keys and access security files are boot failures (exit 3, one line);
* EPICS access security (ACF) on every CA PV: relay PVs, placeholders, fields, delpv
  and the status PVs, through pyepics (libca) and caproto;
* limits: total bytes, and the other limits over ZMQ, each refused with its reason while
  everything that exists keeps being served.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import zmq
import zmq.auth

from relayd.client import Client, RelayUnreachable
from tests.e2e._tools import (
    full, listed, own_relay, pack, relay_push, send_raw, status, wait_boot_failure,
    wait_listed, wait_status, write_text, zmq_port,
)
from tests.harness import wait_for

SEVR_INVALID, STAT_UDF = 3, 17
CA_READ, CA_WRITE = 1, 2  # access rights bits, as caproto reports them


# --- keys -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Keys:
    """Key pairs made once per module: the relay's, an authorised publisher's (daq1),
    a publisher the relay does not know (stranger), and an impostor server's."""

    root: Path

    def secret(self, name: str) -> str:
        return str(self.root / f"{name}.key_secret")

    def public(self, name: str) -> str:
        return str(self.root / f"{name}.key")

    @property
    def authorized(self) -> str:
        return str(self.root / "authorized")

    def relay_args(self) -> list[str]:
        return ["--curve-secret-key", self.secret("relay"),
                "--curve-authorized-keys", self.authorized]

    def client(self, secret: str = "daq1", server: str = "relay") -> dict[str, str]:
        """Client keyword arguments for a publisher with `secret`, trusting `server`."""
        return {"curve_secret_key": self.secret(secret), "curve_server_key": self.public(server)}

    def push_args(self, secret: str = "daq1", server: str = "relay") -> list[str]:
        return ["--curve-secret-key", self.secret(secret),
                "--curve-server-key", self.public(server)]


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    from relayd.keys import keygen

    root = tmp_path_factory.mktemp("keys")
    for name in ("relay", "daq1", "stranger", "impostor"):
        keygen(str(root / name))
    (root / "authorized").mkdir()
    shutil.copy(root / "daq1.key", root / "authorized" / "daq1.key")
    return Keys(root)


# How each kind of unauthorised publisher is set up: Client keywords, relay-push options.
def _intruder(keys: Keys, kind: str) -> tuple[dict[str, str], list[str]]:
    if kind == "no key":
        return {}, []
    if kind == "unknown key":
        return keys.client("stranger"), keys.push_args("stranger")
    if kind == "wrong server key":
        return keys.client("daq1", "impostor"), keys.push_args("daq1", "impostor")
    raise ValueError(kind)


def push_ok(endpoint: str, updates: dict, **curve: str) -> None:
    with Client(endpoint, send_timeout=5, **curve) as relay:
        relay.put_many(updates)


def push_unreachable(endpoint: str, pv: str = "intruder_f1", **curve: str) -> str:
    """Push until the client gives up; return RelayUnreachable's text."""
    client = Client(endpoint, send_timeout=1.0, queue_size=4, linger=0, **curve)
    try:
        with pytest.raises(RelayUnreachable) as raised:
            for i in range(1000):
                client.put(pv, float(i))
    finally:
        client.close()
    return str(raised.value)


def keygen_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "relayd", "keygen", *args],
                          capture_output=True, text=True, timeout=30)


# --- relayd keygen ------------------------------------------------------------------------


def test_keygen_writes_a_pyzmq_key_pair_with_safe_modes(tmp_path):
    stem = tmp_path / "etc" / "relay"  # the folder is made as needed
    done = keygen_cli(str(stem))
    assert done.returncode == 0, done.stderr
    public, secret = Path(f"{stem}.key"), Path(f"{stem}.key_secret")
    assert str(public) in done.stdout and str(secret) in done.stdout
    assert stat.S_IMODE(public.stat().st_mode) == 0o644
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    # pyzmq's own reader takes both files: the public key in each, the secret in one.
    public_key, none = zmq.auth.load_certificate(public)
    same_public, secret_key = zmq.auth.load_certificate(secret)
    assert none is None and public_key == same_public
    assert len(public_key) == len(secret_key) == 40
    assert zmq.curve_public(secret_key) == public_key  # a real pair
    assert sorted(p.name for p in stem.parent.iterdir()) == ["relay.key", "relay.key_secret"]


def test_keygen_refuses_to_overwrite_without_force(tmp_path):
    stem = tmp_path / "relay"
    assert keygen_cli(str(stem)).returncode == 0
    public, secret = Path(f"{stem}.key"), Path(f"{stem}.key_secret")
    before = public.read_bytes(), secret.read_bytes()
    done = keygen_cli(str(stem))
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "--force" in done.stderr, done.stderr
    assert (public.read_bytes(), secret.read_bytes()) == before
    # Either file alone is enough to refuse.
    public.unlink()
    assert keygen_cli(str(stem)).returncode == 1
    assert secret.read_bytes() == before[1] and not public.exists()
    done = keygen_cli(str(stem), "--force")
    assert done.returncode == 0, done.stderr
    assert secret.read_bytes() != before[1]  # a new pair
    new_public, new_secret = zmq.auth.load_certificate(secret)
    assert zmq.auth.load_certificate(public)[0] == new_public
    assert zmq.curve_public(new_secret) == new_public
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert stat.S_IMODE(public.stat().st_mode) == 0o644


# --- CurveZMQ ingest -------------------------------------------------------------------------


def test_authorised_publisher_publishes_with_client_and_relay_push(client, start_relay, keys):
    relay = start_relay(*keys.relay_args())
    assert "CURVE on: 1 authorised client key(s)" in relay.log_text()
    push_ok(relay.endpoint, {"client_f1": 1.5, "text_c20": "over CURVE"}, **keys.client())
    done = relay_push(*keys.push_args(), relay.endpoint, full(relay, "cli_f2"), "1,2")
    assert (done.returncode, done.stderr) == (0, ""), done
    wait_listed(client, relay, *(full(relay, n) for n in ("client_f1", "text_c20", "cli_f2")))
    assert client.get(full(relay, "client_f1")) == 1.5
    assert client.get(full(relay, "text_c20"), as_string=True) == "over CURVE"
    assert list(client.get(full(relay, "cli_f2"))) == [1.0, 2.0]
    assert status(client, relay, "refused") == 0
    assert status(client, relay, "refused:authDenied") == 0


@pytest.mark.parametrize("kind", ["no key", "unknown key", "wrong server key"])
def test_unauthorised_publisher_publishes_nothing_and_is_told(caproto_client, start_relay,
                                                              keys, kind):
    relay = start_relay(*keys.relay_args(), "--status-interval", "0.2")
    reader = caproto_client
    push_ok(relay.endpoint, {"existing_f1": 1.5}, **keys.client())
    wait_listed(reader, relay, full(relay, "existing_f1"))
    wait_status(reader, relay, "zmq:messages", lambda n: n == 1)
    before = reader.get_meta(full(relay, "existing_f1"))

    curve, push_args = _intruder(keys, kind)
    text = push_unreachable(relay.endpoint, **curve)
    assert relay.endpoint in text
    done = relay_push(*push_args, "--timeout", "1", relay.endpoint,
                      full(relay, "intruder_f1"), "9")
    assert done.returncode == 1, done
    assert done.stderr.startswith("relay-push: ") and done.stderr.count("\n") == 1, done.stderr
    assert relay.endpoint in done.stderr
    if curve:  # a publisher with keys is told what to check
        assert "CURVE" in text and "CURVE" in done.stderr, (text, done.stderr)
    # Also an existing PV cannot be touched, nor a PV deleted.
    push_unreachable(relay.endpoint, "existing_f1", **curve)

    time.sleep(1.0)  # let anything that did get through arrive before looking
    assert listed(reader, relay) == [full(relay, "existing_f1")]
    after = reader.get_meta(full(relay, "existing_f1"))
    assert (after.value, after.timestamp) == (before.value, before.timestamp)
    assert status(reader, relay, "zmq:messages") == 1
    assert status(reader, relay, "accepted") == 1
    assert status(reader, relay, "pvs") == 1


@pytest.mark.parametrize("kind", ["no key", "unknown key", "wrong server key"])
def test_unauthorised_publisher_is_counted_and_named(caproto_client, start_relay, keys, kind):
    relay = start_relay(*keys.relay_args(), "--status-interval", "0.2")
    curve, _ = _intruder(keys, kind)
    push_unreachable(relay.endpoint, **curve)
    wait_status(caproto_client, relay, "refused:authDenied", lambda n: n >= 1, timeout=5,
                what=f"the publisher with {kind} counted as authDenied")
    last = status(caproto_client, relay, "lastRefusal")
    assert "authDenied" in last and "127.0.0.1" in last, last
    if kind == "unknown key":   # the operator learns which key to add, if it is welcome
        stranger = zmq.auth.load_certificate(keys.public("stranger"))[0].decode()
        assert f"Unknown key (public key {stranger})" in last, last
    else:                       # refused in the CURVE handshake, before any key check
        assert "CURVE" in last, last
    assert status(caproto_client, relay, "refused") >= 1
    assert "refused ZMQ: authDenied" in relay.log_text()
    # The authorised publisher is not disturbed by the refused one.
    push_ok(relay.endpoint, {"after_f1": 2.0}, **keys.client())
    wait_listed(caproto_client, relay, full(relay, "after_f1"))


def test_authorised_keys_are_read_again_when_the_ingest_worker_restarts(caproto_client,
                                                                         start_relay, keys,
                                                                         tmp_path):
    """SECURITY.md: the folder is read at start; to add or revoke a publisher, change the
    folder and kill the ingest worker, which the supervisor restarts."""
    folder = tmp_path / "authorized"
    folder.mkdir()
    shutil.copy(keys.public("daq1"), folder / "daq1.key")
    relay = start_relay("--curve-secret-key", keys.secret("relay"),
                        "--curve-authorized-keys", str(folder))

    def restart_ingest() -> None:
        old = relay.child_pids()["ingest"]
        os.kill(old, signal.SIGKILL)
        new = wait_for(lambda: relay.child_pids().get("ingest") not in (None, old)
                       and relay.child_pids()["ingest"], what="a new ingest worker")
        relay.wait_log(f"ingest ready (pid {new})")

    shutil.copy(keys.public("stranger"), folder / "stranger.key")
    push_unreachable(relay.endpoint, **keys.client("stranger"))   # not yet
    restart_ingest()
    push_ok(relay.endpoint, {"stranger_f1": 1.0}, **keys.client("stranger"))
    wait_listed(caproto_client, relay, full(relay, "stranger_f1"))

    (folder / "daq1.key").unlink()                                # revoke daq1
    restart_ingest()
    push_unreachable(relay.endpoint, "revoked_f1", **keys.client("daq1"))
    assert listed(caproto_client, relay) == [full(relay, "stranger_f1")]


# --- IP allow-list -------------------------------------------------------------------------


@pytest.mark.parametrize("curve", [False, True], ids=["plain", "curve"])
def test_allowed_address_publishes(caproto_client, start_relay, keys, curve):
    relay = start_relay("--zmq-allow", "127.0.0.1",
                        *(keys.relay_args() if curve else []))
    push_ok(relay.endpoint, {"allowed_f1": 3.0}, **(keys.client() if curve else {}))
    wait_listed(caproto_client, relay, full(relay, "allowed_f1"))
    assert caproto_client.get(full(relay, "allowed_f1")) == 3.0
    assert status(caproto_client, relay, "refused:authDenied") == 0


@pytest.mark.parametrize("curve", [False, True], ids=["plain", "curve"])
def test_address_not_allowed_is_refused_and_counted(caproto_client, start_relay, keys, curve):
    relay = start_relay("--zmq-allow", "127.0.0.2", "--status-interval", "0.2",
                        *(keys.relay_args() if curve else []))
    credentials = keys.client() if curve else {}
    text = push_unreachable(relay.endpoint, **credentials)  # from 127.0.0.1
    assert relay.endpoint in text
    wait_status(caproto_client, relay, "refused:authDenied", lambda n: n >= 1)
    last = status(caproto_client, relay, "lastRefusal")
    assert "authDenied" in last and "127.0.0.1" in last, last
    assert listed(caproto_client, relay) == []
    assert status(caproto_client, relay, "zmq:messages") == 0
    # The same relay takes a publisher whose connection comes from 127.0.0.2 (ZMQ's
    # "source;destination" endpoint syntax), which is still loopback.
    port = relay.endpoint.rsplit(":", 1)[1]
    push_ok(f"tcp://127.0.0.2:0;127.0.0.1:{port}", {"from_two_f1": 2.0}, **credentials)
    wait_listed(caproto_client, relay, full(relay, "from_two_f1"))


# --- binding beyond loopback ------------------------------------------------------------------


@pytest.mark.parametrize("endpoints", [
    ["tcp://0.0.0.0:{port}"],
    ["tcp://*:{port}"],
    ["tcp://127.0.0.1:{other}", "tcp://0.0.0.0:{port}"],
], ids=["0.0.0.0", "wildcard", "loopback-and-0.0.0.0"])
def test_binding_beyond_loopback_without_curve_is_refused(start_relay, endpoints):
    port, other = zmq_port(), zmq_port()
    args = []
    for endpoint in endpoints:
        args += ["--zmq-bind", endpoint.format(port=port, other=other)]
    relay = start_relay(*args, wait=False, expect_exit=3)
    reason = wait_boot_failure(relay)
    exposed = endpoints[-1].format(port=port, other=other)
    assert exposed in reason and "--insecure" in reason and "CURVE" in reason, reason


def test_insecure_binds_beyond_loopback_with_a_warning(caproto_client, start_relay):
    port = zmq_port()
    relay = start_relay("--zmq-bind", f"tcp://0.0.0.0:{port}", "--insecure")
    warnings = [line for line in relay.log_text().splitlines() if "INSECURE" in line]
    assert len(warnings) == 1 and "WARNING" in warnings[0], relay.log_text()
    assert f"tcp://0.0.0.0:{port}" in warnings[0]
    push_ok(f"tcp://127.0.0.1:{port}", {"open_f1": 4.0})  # loopback traffic only
    wait_listed(caproto_client, relay, full(relay, "open_f1"))


def test_curve_allows_binding_beyond_loopback(caproto_client, start_relay, keys):
    port = zmq_port()
    relay = start_relay("--zmq-bind", f"tcp://0.0.0.0:{port}", *keys.relay_args())
    assert "INSECURE" not in relay.log_text()
    endpoint = f"tcp://127.0.0.1:{port}"  # loopback traffic only
    push_ok(endpoint, {"sealed_f1": 5.0}, **keys.client())
    wait_listed(caproto_client, relay, full(relay, "sealed_f1"))
    push_unreachable(endpoint)  # and still no one without a key
    assert listed(caproto_client, relay) == [full(relay, "sealed_f1")]


# --- unusable keys -------------------------------------------------------------------------


def _bad_key_setup(kind: str, keys: Keys, tmp_path: Path) -> tuple[list[str], str]:
    """Relay options for one kind of unusable key material, and the path to blame."""
    if kind == "missing secret key":
        path = str(tmp_path / "absent.key_secret")
        return ["--curve-secret-key", path, "--curve-authorized-keys", keys.authorized], path
    if kind == "garbage secret key":
        path = tmp_path / "garbage.key_secret"
        path.write_bytes(np.random.default_rng(3).integers(0, 256, 300, np.uint8).tobytes())
        return ["--curve-secret-key", str(path), "--curve-authorized-keys",
                keys.authorized], str(path)
    if kind == "public key as secret key":
        path = keys.public("relay")
        return ["--curve-secret-key", path, "--curve-authorized-keys", keys.authorized], path
    if kind == "keys of the wrong length":
        path = write_text(tmp_path / "short.key_secret",
                          'metadata\ncurve\n    public-key = "abcde"\n'
                          '    secret-key = "fghij"\n')
        return ["--curve-secret-key", str(path), "--curve-authorized-keys",
                keys.authorized], str(path)
    if kind == "missing authorised keys folder":
        path = str(tmp_path / "absent")
        return ["--curve-secret-key", keys.secret("relay"), "--curve-authorized-keys", path], path
    if kind == "authorised keys path is a file":
        path = keys.public("daq1")
        return ["--curve-secret-key", keys.secret("relay"), "--curve-authorized-keys", path], path
    raise ValueError(kind)


@pytest.mark.parametrize("kind", [
    "missing secret key", "garbage secret key", "public key as secret key",
    "keys of the wrong length", "missing authorised keys folder",
    "authorised keys path is a file",
])
def test_unusable_key_material_is_a_boot_failure(start_relay, keys, tmp_path, kind):
    args, path = _bad_key_setup(kind, keys, tmp_path)
    relay = start_relay(*args, wait=False, expect_exit=3)
    reason = wait_boot_failure(relay)
    assert path in reason, reason


@pytest.mark.parametrize("kind", ["missing secret key", "public key as secret key",
                                  "secret key of the wrong length",
                                  "server key of the wrong length"])
def test_publisher_with_unusable_key_files_is_told_in_one_line(keys, tmp_path, kind):
    """relay-push: exit 2 (usage error) with one line; Client: ValueError."""
    short = ('metadata\ncurve\n    public-key = "abcde"\n    secret-key = "fghij"\n')
    secret, server = keys.secret("daq1"), keys.public("relay")
    if kind == "missing secret key":
        secret = str(tmp_path / "absent.key_secret")
    elif kind == "public key as secret key":
        secret = keys.public("daq1")
    elif kind == "secret key of the wrong length":
        secret = str(write_text(tmp_path / "short.key_secret", short))
    else:
        server = str(write_text(tmp_path / "short.key", short))
    endpoint = f"tcp://127.0.0.1:{zmq_port()}"
    done = relay_push("--curve-secret-key", secret, "--curve-server-key", server,
                      "--timeout", "1", endpoint, "x_f1", "1")
    assert done.returncode == 2, done
    assert done.stderr.startswith("relay-push: ") and done.stderr.count("\n") == 1, done.stderr
    with pytest.raises(ValueError):
        Client(endpoint, curve_secret_key=secret, curve_server_key=server)


def test_a_bad_file_among_the_authorised_keys_does_not_lock_everyone_out(
        caproto_client, keys, session_dir, tmp_path):
    """A stray unreadable ``*.key`` in the folder must either stop relayd at start (exit
    3, naming the file) or be skipped: it must never silently refuse every publisher."""
    folder = tmp_path / "authorized"
    folder.mkdir()
    shutil.copy(keys.public("daq1"), folder / "daq1.key")
    junk = write_text(folder / "junk.key", "not a certificate\n")
    with own_relay(session_dir, "--curve-secret-key", keys.secret("relay"),
                   "--curve-authorized-keys", str(folder)) as relay:
        relay.start(wait=False)
        wait_for(lambda: relay.process.poll() is not None or (
            "ingest ready" in relay.log_text() and "ca-server ready" in relay.log_text()),
            timeout=20, what="relayd to start or give up")
        if relay.process.poll() is not None:
            reason = wait_boot_failure(relay)
            assert str(junk) in reason, reason
            return
        push_ok(relay.endpoint, {"still_f1": 1.0}, **keys.client())
        wait_listed(caproto_client, relay, full(relay, "still_f1"), timeout=5)


# --- EPICS access security ---------------------------------------------------------------------

ELSEWHERE = "nothere.invalid"


def acf(**groups: str) -> str:
    """An ACF: each group is "read" (everyone reads, no one writes), "ours" (our host
    writes) or "elsewhere" (only a host that is not ours writes)."""
    lines = [f"HAG(ours) {{ {socket.gethostname()} }}", f"HAG(elsewhere) {{ {ELSEWHERE} }}"]
    for name, rule in groups.items():
        lines.append(f"ASG({name}) {{")
        lines.append("    RULE(1, READ)")
        if rule in ("ours", "elsewhere"):
            lines.append(f"    RULE(1, WRITE) {{ HAG({rule}) }}")
        lines.append("}")
    return "\n".join(lines) + "\n"


def writable(client, name: str) -> bool:
    """Whether `client` was granted write access to `name` (CA access rights)."""
    pv = client.pv(name)
    if client.label == "pyepics":
        assert pv.read_access
        return bool(pv.write_access)
    rights = int(pv.channel.access_rights)
    assert rights & CA_READ
    return bool(rights & CA_WRITE)


def put_text_field(client, name: str, text_value: str) -> bool:
    """Put `text_value` to a DBR_STRING field (``X.EGU``); True if it was accepted."""
    if client.label == "caproto":
        return client.put(name, text_value)
    try:
        client.pv(name).put(text_value, wait=True, timeout=5)
    except Exception:  # pyepics raises for "Write access denied"
        return False
    return text(client.get(name)) == text_value


def text(value) -> str:
    """A DBR_STRING value as str (caproto hands bytes, pyepics str)."""
    return value.decode() if isinstance(value, bytes) else value


def put_refused(client, name: str, value) -> bool:
    """True if the put failed (a failed put, or an error raised for lack of access)."""
    try:
        return not client.put(name, value)
    except Exception:
        return True


def start_with_acf(start_relay, tmp_path: Path, content: str, *args: str):
    path = write_text(tmp_path / "relay.acf", content)
    relay = start_relay("--access-security", str(path), *args)
    assert f"CA access security from {path}" in relay.log_text()
    return relay


def test_acf_denying_our_host_fails_every_put_while_reads_and_monitors_work(
        client, start_relay, tmp_path):
    relay = start_with_acf(start_relay, tmp_path, acf(DEFAULT="elsewhere"),
                           "--status-interval", "0.2")
    value, field, new = (full(relay, n) for n in ("value_f1", "value_f1.EGU", "new_f1"))
    delpv = full(relay, "delpv")
    # The ZMQ ingest is not governed by the ACF: publishers still create PVs.
    with Client(relay.endpoint) as pusher:   # one connection: the value arrives first
        pusher.put("value_f1", 1.5)
        pusher.set_meta("value_f1", egu="mm")
    wait_listed(client, relay, value)          # (a search of a field before it counts)
    wait_for(lambda: text(client.get(field)) == "mm", what="units set over ZMQ")
    monitor = client.monitor(value)
    monitor.wait_value(lambda v: v == 1.5)
    refused_before = status(client, relay, "refused")

    for name in (value, new, field, delpv, full(relay, "status:pvs"), full(relay, "pvlist")):
        assert not writable(client, name), name
    assert put_refused(client, value, 2.5)
    assert put_refused(client, new, 1.0)                  # a placeholder is not created
    assert not put_text_field(client, field, "K")
    assert put_refused(client, delpv, "value_f1")
    assert put_refused(client, full(relay, "status:pvs"), 7)

    # Nothing changed; reads work; the refusals happened in the CA library, before
    # relayd, so relayd counted none of them.
    assert client.get(value) == 1.5 and text(client.get(field)) == "mm"
    assert listed(client, relay) == [value]
    assert status(client, relay, "pvs") == 1
    meta = client.get_meta(new)
    assert (meta.severity, meta.status) == (SEVR_INVALID, STAT_UDF)
    assert status(client, relay, "refused") == refused_before, \
        status(client, relay, "lastRefusal")
    # Monitors still work: a pushed value arrives.
    push_ok(relay.endpoint, {"value_f1": 3.5})
    monitor.wait_value(lambda v: v == 3.5)
    monitor.close()


def test_acf_allowing_our_host_lets_puts_through(client, start_relay, tmp_path):
    relay = start_with_acf(start_relay, tmp_path, acf(DEFAULT="ours"))
    value, field = full(relay, "value_f1"), full(relay, "value_f1.EGU")
    for name in (value, full(relay, "delpv")):
        assert writable(client, name), name
    assert client.put(value, 1.5)                         # creates it
    assert client.get(value) == 1.5
    assert writable(client, field)
    assert put_text_field(client, field, "K")
    assert text(client.get(field)) == "K"
    assert client.put(full(relay, "other_i1"), 3)
    assert client.put(full(relay, "delpv"), "other_i1")
    assert listed(client, relay) == [value]
    # Write access to a status PV is granted, but it stays read-only: relayd refuses.
    assert not client.put(full(relay, "status:pvs"), 9)
    assert status(client, relay, "refused:readOnly") == 1


# Which of relay PVs, delpv and the status PVs each ACF lets our host write. A group the
# file does not define falls back to DEFAULT.
ACF_MATRIX = {
    "DEFAULT-only-denies": (acf(DEFAULT="read"), (False, False, False)),
    "DEFAULT-only-allows": (acf(DEFAULT="ours"), (True, True, True)),
    "RELAY-allows-DELETE-denies": (acf(DEFAULT="ours", RELAY="ours", DELETE="elsewhere"),
                                   (True, False, True)),
    "DELETE-and-STATUS-allow": (acf(DEFAULT="read", DELETE="ours", STATUS="ours"),
                                (False, True, True)),
    "RELAY-denies-rest-default": (acf(DEFAULT="ours", RELAY="read"), (False, True, True)),
}


@pytest.mark.parametrize("case", list(ACF_MATRIX))
def test_acf_groups_relay_delete_status_and_default(pyepics_client, caproto_client,
                                                    start_relay, tmp_path, case):
    text, (relay_ok, delete_ok, status_ok) = ACF_MATRIX[case]
    relay = start_with_acf(start_relay, tmp_path, text)
    push_ok(relay.endpoint, {"pushed_f1": 1.0, "doomed_f1": 2.0})
    wait_listed(caproto_client, relay, full(relay, "pushed_f1"), full(relay, "doomed_f1"))
    groups = {
        full(relay, "pushed_f1"): relay_ok,
        full(relay, "pushed_f1.EGU"): relay_ok,
        full(relay, "placeholder_f1"): relay_ok,
        full(relay, "delpv"): delete_ok,
        full(relay, "pvlist"): status_ok,
        full(relay, "status:pvs"): status_ok,
        full(relay, "status:refused:authDenied"): status_ok,
    }
    for reader in (pyepics_client, caproto_client):
        for name, expected in groups.items():
            assert writable(reader, name) == expected, (reader.label, name)
    # And the puts behave accordingly.
    writer = caproto_client
    assert writer.put(full(relay, "pushed_f1"), 5.0) == relay_ok
    assert writer.get(full(relay, "pushed_f1")) == (5.0 if relay_ok else 1.0)
    assert writer.put(full(relay, "made_f1"), 6.0) == relay_ok
    assert writer.put(full(relay, "delpv"), "doomed_f1") == delete_ok
    expected = [full(relay, "pushed_f1")] + ([] if delete_ok else [full(relay, "doomed_f1")])
    expected += [full(relay, "made_f1")] if relay_ok else []
    assert listed(writer, relay) == expected
    assert not writer.put(full(relay, "status:pvs"), 1)
    # Only a put the ACF let through reaches relayd, which refuses it as read-only.
    assert status(writer, relay, "refused:readOnly") == (1 if status_ok else 0)


@pytest.mark.parametrize("kind", ["missing", "syntax error", "binary garbage", "a directory"])
def test_unloadable_acf_is_a_boot_failure(start_relay, tmp_path, kind):
    path = tmp_path / "relay.acf"
    if kind == "syntax error":
        path.write_text("ASG(DEFAULT) {\n    RULE(1, READ\n")
    elif kind == "binary garbage":
        path.write_bytes(np.random.default_rng(5).integers(0, 256, 200, np.uint8).tobytes())
    elif kind == "a directory":
        path.mkdir()
    relay = start_relay("--access-security", str(path), wait=False, expect_exit=3)
    reason = wait_boot_failure(relay)
    assert str(path) in reason, reason


# --- limits ---------------------------------------------------------------------------------------


def test_total_bytes_limit_refuses_new_pvs_and_recovers_after_a_delete(caproto_client,
                                                                       start_relay):
    relay = start_relay("--max-total-bytes", "1000", "--status-interval", "0.2")
    ca = caproto_client
    a, b, c, d = (full(relay, n) for n in ("a_f100", "b_f50", "c_f25", "d_i1"))
    data = np.arange(100, dtype=float)
    assert ca.put(a, data)                                       # 800 bytes
    stamp = ca.get_meta(a).timestamp

    assert not ca.put(b, [1.0])                                  # 800 + 400 > 1000
    assert status(ca, relay, "refused:bytesLimit") == 1
    assert "bytesLimit" in status(ca, relay, "lastRefusal")
    push_ok(relay.endpoint, {"b_f50": [2.0]})                    # the same over ZMQ
    wait_status(ca, relay, "refused:bytesLimit", lambda n: n == 2)
    # A name only watched holds no memory: it connects even beyond the limit...
    big = ca.monitor(full(relay, "big_f1000"))
    assert big.wait_count(1)[0].severity == SEVR_INVALID
    assert not ca.put(full(relay, "big_f1000"), [1.0])           # ...but cannot be created
    assert status(ca, relay, "refused:bytesLimit") == 3

    assert ca.put(c, [1.0] * 25)                                 # exactly 1000 bytes
    push_ok(relay.endpoint, {"d_i1": 1})                         # 1004 > 1000
    wait_status(ca, relay, "refused:bytesLimit", lambda n: n == 4)
    # Everything that exists is still served, unchanged.
    assert listed(ca, relay) == [a, c]
    got = ca.get_meta(a)
    assert np.array_equal(got.value, data) and got.timestamp == stamp
    assert status(ca, relay, "refused") == 4

    assert ca.put(full(relay, "delpv"), a)                       # frees 800 bytes
    push_ok(relay.endpoint, {"b_f50": [3.0]})
    wait_listed(ca, relay, b)
    assert ca.put(d, 4)
    assert listed(ca, relay) == [c, b, d]
    assert list(ca.get(b)) == [3.0] and ca.get(d) == 4
    assert status(ca, relay, "refused:bytesLimit") == 4
    big.close()


def test_limits_over_zmq_refuse_with_their_reason_and_the_relay_keeps_serving(
        pyepics_client, caproto_client, start_relay):
    relay = start_relay("--max-pvs", "4", "--max-elements", "10", "--max-name-length", "40",
                        "--max-placeholders", "1", "--zmq-max-message-size", "4000",
                        "--status-interval", "0.2")
    ca = caproto_client
    keep = {"keep_f10": list(np.linspace(0, 1, 10)), "keep_c10": "hello"}
    push_ok(relay.endpoint, keep)
    wait_listed(ca, relay, *(full(relay, n) for n in keep))
    pids = relay.child_pids()

    def refused(reason: str, count: int, exact: bool = True) -> None:
        wait_status(ca, relay, f"refused:{reason}",
                    lambda n: n == count if exact else n >= count)
        assert reason in status(ca, relay, "lastRefusal")

    push_ok(relay.endpoint, {"p1_f1": 1.0, "p2_f1": 2.0, "p3_f1": 3.0})  # the 5th PV
    refused("pvLimit", 1)
    push_ok(relay.endpoint, {"big_f11": [1.0]})                          # 11 > 10 elements
    refused("countLimit", 1)
    long_name = "n" * (41 - len(relay.prefix) - len(":_f1")) + "_f1"
    assert len(full(relay, long_name)) == 41
    push_ok(relay.endpoint, {long_name: 1.0})
    refused("nameTooLong", 1)
    # A message above --zmq-max-message-size is dropped by ZMQ, before relayd sees it
    # (had it arrived, keep_f10 would hold zeros).
    messages = status(ca, relay, "zmq:messages")
    oversize = pack([{"pv": "keep_f10", "value": [0.0] * 10}] * 40)
    assert len(oversize) > 4000
    send_raw(relay.endpoint, oversize)
    push_ok(relay.endpoint, {"keep_c10": "hello"})  # a later message from a new socket
    wait_status(ca, relay, "zmq:messages", lambda n: n == messages + 1)
    # Placeholders: one name watched; a second is not answered...
    watched = ca.monitor(full(relay, "w1_f1"))
    watched.wait_count(1)
    assert not pyepics_client.connects(full(relay, "w2_f1"), timeout=1.0)
    refused("placeholderLimit", 1, exact=False)  # each search the client repeats counts

    # ...and through all of it, what exists is served unchanged.
    assert np.array_equal(ca.get(full(relay, "keep_f10")), keep["keep_f10"])
    assert ca.get(full(relay, "keep_c10"), as_string=True) == "hello"
    assert listed(ca, relay) == [full(relay, n) for n in ("keep_f10", "keep_c10", "p1_f1",
                                                          "p2_f1")]
    assert relay.child_pids() == pids
    assert status(ca, relay, "restarts:ingest") == 0 and status(ca, relay, "restarts:ca") == 0

    # When load drops, work is accepted again.
    with Client(relay.endpoint) as pusher:
        pusher.delete("p1_f1")
        pusher.put("p3_f1", 3.0)
    wait_listed(ca, relay, full(relay, "p3_f1"))
    watched.close()
    wait_for(lambda: pyepics_client.connects(full(relay, "w2_f1"), timeout=1.0),
             what="a placeholder freed and the next name answered")
    assert status(ca, relay, "refused:pvLimit") == 1
