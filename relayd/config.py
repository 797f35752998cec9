"""relayd's configuration: one frozen object built from the command line and a file.

Precedence is command line, then the ``--config`` TOML file, then the defaults here.
The EPICS server environment (EPICS_CA_SERVER_PORT, EPICS_CAS_INTF_ADDR_LIST,
EPICS_CA_MAX_ARRAY_BYTES, ...) is read by the CA server library itself and is not
duplicated here; see `epics_env`.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import json
import sys
from dataclasses import dataclass, fields
from typing import Any, Sequence

from relayd.core.names import NameLimits, validate_prefix
from relayd.store.paths import default_path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def split_host_port(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:8080`` for IPv6) as (host, port); ValueError if it is not one."""
    host, colon, port = str(text).rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"http_bind {text!r} is not HOST:PORT (e.g. 127.0.0.1:8080)")
    return host, int(port)


def network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """An address or network (``10.0.0.0/8``, ``192.168.1.7``); ValueError naming it if not."""
    try:
        return ipaddress.ip_network(str(text), strict=False)
    except ValueError:
        raise ValueError(f"{text!r} is not an IP address or network (e.g. 10.0.0.0/8)") from None


def _check_type(name: str, value: Any, kind: type) -> None:
    """Refuse a value of the wrong type with a ValueError that names the option."""
    if kind is float and type(value) is int:
        return  # 1 is a fine value for a float option
    if type(value) is not kind and not (kind is tuple and isinstance(value, (tuple, list))):
        raise ValueError(f"{name} must be {kind.__name__}, not {type(value).__name__} {value!r}")


@dataclass(frozen=True)
class Config:
    """Everything relayd's processes need to know, passed down as one value."""

    prefix: str = "relay"
    max_name_length: int = 128
    max_elements: int = 1_000_000
    max_pvs: int = 100_000
    max_placeholders: int = 10_000
    status_interval: float = 1.0
    log_level: str = "INFO"
    zmq_bind: tuple = ("tcp://127.0.0.1:5555",)
    zmq_ack_bind: tuple = ("tcp://127.0.0.1:5556",)
    no_zmq_ack: bool = False
    zmq_rcvhwm: int = 1000
    zmq_max_message_size: int = 64 * 1024 * 1024
    pipe_buffer: int = 4 * 1024 * 1024
    stop_grace: float = 10.0
    heartbeat_timeout: float = 20.0
    stale_timeout: float = 0.0
    autosave: str = ""
    no_autosave: bool = False
    autosave_interval: float = 1.0
    autosave_reset: bool = False
    max_total_bytes: int = 4 * 1024**3
    curve_secret_key: str = ""
    curve_authorized_keys: str = ""
    zmq_allow: tuple = ()
    insecure: bool = False
    access_security: str = ""
    no_pva: bool = False
    strict_port: bool = False
    http_bind: tuple = ("127.0.0.1:8080",)
    no_http: bool = False
    http_token_file: str = ""
    http_read_from: tuple = ()
    http_write_from: tuple = ()
    http_cert: str = ""
    http_key: str = ""
    http_max_body: int = 64 * 1024 * 1024

    def __post_init__(self) -> None:
        for field in fields(self):
            _check_type(field.name, getattr(self, field.name), type(field.default))
        object.__setattr__(self, "zmq_bind", tuple(self.zmq_bind))
        if not self.zmq_bind or not all(isinstance(e, str) and e for e in self.zmq_bind):
            raise ValueError("zmq_bind needs at least one endpoint")
        object.__setattr__(self, "zmq_ack_bind", tuple(self.zmq_ack_bind))
        if not all(isinstance(e, str) and e for e in self.zmq_ack_bind) or not (
                self.zmq_ack_bind or self.no_zmq_ack):
            raise ValueError("zmq_ack_bind needs at least one endpoint (or no_zmq_ack)")
        for name in ("zmq_rcvhwm", "zmq_max_message_size", "pipe_buffer"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        for name in ("stop_grace", "heartbeat_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0")
        if self.stale_timeout < 0:
            raise ValueError("stale_timeout must be >= 0")
        if not 0 < self.autosave_interval <= 60:
            raise ValueError("autosave_interval must be > 0 and <= 60 seconds")
        object.__setattr__(self, "zmq_allow", tuple(self.zmq_allow))
        if bool(self.curve_secret_key) != bool(self.curve_authorized_keys):
            raise ValueError("CURVE needs both curve_secret_key and curve_authorized_keys")
        if self.max_total_bytes < 1:
            raise ValueError("max_total_bytes must be >= 1")
        validate_prefix(self.prefix)
        for name in ("max_name_length", "max_elements", "max_pvs", "max_placeholders"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.status_interval <= 0:
            raise ValueError("status_interval must be > 0")
        if self.log_level.upper() not in LOG_LEVELS:
            raise ValueError(f"log_level must be one of {', '.join(LOG_LEVELS)}")
        self._check_http()

    def _check_http(self) -> None:
        """The HTTP worker's options: addresses, networks, TLS files in pairs."""
        for name in ("http_bind", "http_read_from", "http_write_from"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if not self.http_bind:
            raise ValueError("http_bind needs at least one HOST:PORT (or use no_http)")
        for text in self.http_bind:
            split_host_port(text)
        for text in self.http_read_from + self.http_write_from:
            network(text)
        if bool(self.http_cert) != bool(self.http_key):
            raise ValueError("TLS needs both http_cert and http_key")
        if self.http_max_body < 1:
            raise ValueError("http_max_body must be >= 1")

    @property
    def http_url(self) -> str:
        """Where the HTTP API of a relay with this config answers, seen from its own host."""
        host, port = split_host_port(self.http_bind[0])
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1" if host != "::" else "::1"
        if ":" in host:
            host = f"[{host}]"
        return f"{'https' if self.http_cert else 'http'}://{host}:{port}"

    @property
    def autosave_path(self) -> str | None:
        """The autosave file, or None when autosave is off."""
        if self.no_autosave:
            return None
        if self.autosave:
            return self.autosave
        return default_path(self.prefix)

    @property
    def ack_endpoints(self) -> tuple:
        """Where the acknowledged ZMQ socket binds; () when it is off."""
        return () if self.no_zmq_ack else self.zmq_ack_bind

    @property
    def name_limits(self) -> NameLimits:
        return NameLimits(self.max_name_length, self.max_elements)

    def to_json(self) -> str:
        """The config as JSON, to hand to a child process."""
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "Config":
        return cls(**json.loads(text))


# Help text for each option; the keys are also the keys accepted in the TOML file.
HELP = {
    "prefix": "PV name prefix; relay PVs are <prefix>:<name>_<dtype><count>",
    "max_name_length": "longest full PV name accepted",
    "max_elements": "most elements one PV may hold",
    "max_pvs": "most PVs the relay holds",
    "max_placeholders": "most names watched by clients before any value arrived",
    "status_interval": "seconds between refreshes of the status PVs",
    "log_level": "DEBUG, INFO, WARNING or ERROR",
    "zmq_bind": "ZMQ endpoint the ingest PULL socket binds; repeat for several "
                "(binding beyond loopback must be asked for explicitly)",
    "zmq_ack_bind": "ZMQ endpoint the acknowledged ROUTER socket binds (protocol version 2, "
                    "see PROTOCOL.md); repeat for several; same security as --zmq-bind",
    "no_zmq_ack": "do not open the acknowledged ZMQ socket",
    "zmq_rcvhwm": "ZMQ receive high-water mark of the ingest sockets, in messages",
    "zmq_max_message_size": "largest ZMQ message accepted, in bytes (ZMQ_MAXMSGSIZE)",
    "pipe_buffer": "bytes the internal pipe from the ingest worker to the CA process buffers",
    "stop_grace": "seconds children get to stop on SIGTERM before they are killed",
    "heartbeat_timeout": "seconds without a heartbeat after which a child is restarted",
    "stale_timeout": "default TMO of new PVs: seconds without a value after which a PV "
                     "goes INVALID/TIMEOUT (0 = off)",
    "autosave": "SQLite file where every PV is saved and restored from "
                "(default: $XDG_STATE_HOME or ~/.local/state, relayd/<prefix>.sqlite)",
    "no_autosave": "do not save or restore PVs",
    "autosave_interval": "seconds between autosave writes (the most a kill can lose)",
    "autosave_reset": "if the autosave file is unreadable or corrupt, move it aside and "
                      "start empty instead of refusing to start",
    "max_total_bytes": "most bytes all PVs together may hold (counted at their full size)",
    "curve_secret_key": "the relay's CurveZMQ secret key file (NAME.key_secret from relayd "
                        "keygen): encrypts and authenticates the ingest socket",
    "curve_authorized_keys": "folder of the public keys (*.key) of the publishers allowed "
                             "to connect (with --curve-secret-key)",
    "zmq_allow": "client IP address allowed to connect to the ingest socket; repeat for "
                 "several (default: any address)",
    "insecure": "allow binding the ingest sockets beyond loopback without CURVE",
    "access_security": "EPICS access security file (ACF) for every CA PV; see SECURITY.md",
    "no_pva": "do not serve the PVs over pvAccess (PVA, EPICS 7); see docs/PVA.md",
    "strict_port": "exit (code 3) instead of serving on a dynamic TCP port when the CA "
                   "or PVA server port is taken by another program (default: serve, with a "
                   "warning)",
    "http_bind": "HOST:PORT the HTTP worker (web page, JSON API, /metrics) listens on; "
                 "repeat for several",
    "no_http": "do not run the HTTP worker",
    "http_token_file": "file holding the bearer token every HTTP write must carry "
                       "(then loopback writes need it too); see HTTP.md",
    "http_read_from": "network (10.0.0.0/8) or address allowed to read the HTTP API, page "
                      "and metrics; repeat for several (default: loopback only)",
    "http_write_from": "network or address allowed to write over HTTP without a token; "
                       "repeat for several (default: loopback only)",
    "http_cert": "TLS certificate file (PEM) for the HTTP worker, with --http-key",
    "http_key": "TLS private key file (PEM) for the HTTP worker, with --http-cert",
    "http_max_body": "largest HTTP request body accepted, in bytes",
}


METAVARS = {
    "zmq_bind": "ENDPOINT", "zmq_ack_bind": "ENDPOINT", "zmq_allow": "ADDRESS", "autosave": "FILE",
    "curve_secret_key": "FILE", "curve_authorized_keys": "DIR", "access_security": "FILE",
    "prefix": "PREFIX", "http_bind": "HOST:PORT", "http_token_file": "FILE",
    "http_read_from": "NETWORK", "http_write_from": "NETWORK", "http_cert": "FILE",
    "http_key": "FILE",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one option per Config field (defaults shown in --help)."""
    parser.add_argument("--config", metavar="FILE", help="TOML file with any of the options below")
    for field in fields(Config):
        flag = "--" + field.name.replace("_", "-")
        kind = type(field.default)
        if kind is bool:
            parser.add_argument(flag, dest=field.name, action="store_true", default=None,
                                help=HELP[field.name])
            continue
        shown = "" if field.default in ("", ()) else (
            " ".join(field.default) if kind is tuple else field.default)
        help_text = HELP[field.name] + (f" (default: {shown})" if shown != "" else "")
        metavar = METAVARS.get(field.name, field.name.upper())
        if kind is tuple:
            parser.add_argument(flag, dest=field.name, action="append", default=None,
                                metavar=metavar, help=help_text)
            continue
        parser.add_argument(flag, dest=field.name, type=kind, default=None,
                            metavar=metavar, help=help_text)


def load_file(path: str) -> dict[str, Any]:
    """Options from a TOML file: top-level keys, or a [relayd] table."""
    with open(path, "rb") as handle:
        try:
            data = tomllib.load(handle)
        except tomllib.TOMLDecodeError as error:
            raise ValueError(f"{path}: {error}") from None
    if "relayd" in data:
        others = sorted(set(data) - {"relayd"})
        if others:
            raise ValueError(f"{path}: option(s) {', '.join(others)} outside [relayd]")
        data = data["relayd"]
    known = {f.name for f in fields(Config)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{path}: unknown option(s) {', '.join(unknown)}")
    return data


def from_args(args: argparse.Namespace) -> Config:
    """The Config for parsed command-line `args` (reading --config if given)."""
    values: dict[str, Any] = load_file(args.config) if args.config else {}
    for field in fields(Config):
        given = getattr(args, field.name, None)
        if given is not None:
            values[field.name] = given
    return Config(**values)


def parse(argv: Sequence[str], epilog: str | None = None) -> Config:
    parser = argparse.ArgumentParser(
        prog="relayd", usage="relayd [COMMAND] [OPTIONS]", description=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return from_args(parser.parse_args(argv))


def replace(config: Config, **changes: Any) -> Config:
    return dataclasses.replace(config, **changes)
