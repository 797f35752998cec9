"""Where the CA server serves, and making sure it hides no other server (issue 11).

Several CA servers on one host is normal EPICS practice: they share the UDP port (pcas
binds it with SO_REUSEADDR), the later ones get a dynamic TCP port from pcas, and
broadcast searches reach them all. What must never pass silently:

* **a second relay with our prefix**, which would answer for our PVs. Before the CA
  server exists (`check_before_serving`), the CA process searches for
  ``<prefix>:pvlist`` where a CA client of this host would (EPICS_CA_ADDR_LIST, the
  interfaces' broadcast addresses unless EPICS_CA_AUTO_ADDR_LIST=NO, and this host at the
  server port), with a few lines of CA: a CA_PROTO_VERSION and a CA_PROTO_SEARCH in one UDP
  datagram. Any answer is another server serving our prefix: `BootError`, naming it.
* **a taken TCP port**. pcas then serves on a dynamic port, and searches sent to this host
  by unicast reach only one of the servers on the shared UDP port. After the server is
  made (`check_served`), the sockets it bound are read from /proc; a taken port is one
  WARNING naming both ports and the consequence, or with ``--strict-port`` a `BootError`.

A UDP port held by a program that does not share it makes pcas abort the process; the
same bind, tried first (`check_udp_port`), turns that into a `BootError` too.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import select
import socket
import struct
import sys
import time
from dataclasses import dataclass
from typing import Iterable, Mapping

from relayd.core.errors import BootError

log = logging.getLogger("relayd.ca")

DEFAULT_PORT = 5064
SEARCH_WAIT = 0.5  # seconds an answer to the start-up search is waited for
CA_MINOR_VERSION = 13
_HEADER = struct.Struct(">HHHHII")  # command, payload size, data type, count, p1, p2
_VERSION, _SEARCH, _NOT_FOUND = 0, 6, 14
_DONT_REPLY = 5  # a search flag: a server without the name stays silent
_SEARCH_ID = 0x52454C59  # "RELY": the id our search asks the answers to carry
_ANY_ADDRESS = 0xFFFFFFFF  # "the address this reply came from"
_SIOCGIFFLAGS, _SIOCGIFBRDADDR = 0x8913, 0x8919
_IFF_UP, _IFF_BROADCAST, _IFF_LOOPBACK = 0x1, 0x2, 0x8


@dataclass(frozen=True)
class CAEnv:
    """The EPICS environment of the CA server and of a CA client on this host."""

    server_port: int  # where the server serves (EPICS_CAS_SERVER_PORT, or the client's)
    client_port: int  # where clients search by default (EPICS_CA_SERVER_PORT)
    interfaces: tuple[str, ...]  # EPICS_CAS_INTF_ADDR_LIST, default every interface
    addr_list: tuple[str, ...]  # EPICS_CA_ADDR_LIST: host or host:port entries
    auto_addr_list: bool  # EPICS_CA_AUTO_ADDR_LIST is not NO: broadcasts are searched

    @classmethod
    def read(cls, environ: Mapping[str, str] = os.environ) -> "CAEnv":
        client = _port(environ.get("EPICS_CA_SERVER_PORT"), DEFAULT_PORT)
        return cls(
            server_port=_port(environ.get("EPICS_CAS_SERVER_PORT"), client),
            client_port=client,
            interfaces=tuple(environ.get("EPICS_CAS_INTF_ADDR_LIST", "").split())
            or ("0.0.0.0",),
            addr_list=tuple(environ.get("EPICS_CA_ADDR_LIST", "").split()),
            auto_addr_list=environ.get("EPICS_CA_AUTO_ADDR_LIST", "YES").upper() != "NO",
        )

    def search_targets(self, broadcasts: Iterable[str] = ()) -> list[tuple[str, int]]:
        """Where a search for our prefix goes, each address once, in this order: the
        client's address list, the broadcast addresses (if automatic), then this host at
        the server port (its interfaces; 127.0.0.1 for every interface)."""
        targets = [_host_port(entry, self.client_port) for entry in self.addr_list]
        if self.auto_addr_list:
            targets += [(address, self.client_port) for address in broadcasts]
        targets += [("127.0.0.1" if host == "0.0.0.0" else host, self.server_port)
                    for host, _ in (_host_port(i, 0) for i in self.interfaces)]
        return list(dict.fromkeys(targets))


def _port(text: str | None, default: int) -> int:
    try:
        return int(text) if text else default
    except ValueError:
        return default


def _host_port(entry: str, default_port: int) -> tuple[str, int]:
    host, _, port = entry.partition(":")
    return host, _port(port, default_port)


# --- CA search packets: pure ---------------------------------------------------------------


def search_request(name: str) -> bytes:
    """One datagram: CA_PROTO_VERSION, then CA_PROTO_SEARCH for `name` (NUL-padded to 8)."""
    payload = name.encode() + b"\0"
    payload += b"\0" * (-len(payload) % 8)
    return (_HEADER.pack(_VERSION, 0, 0, CA_MINOR_VERSION, 0, 0)
            + _HEADER.pack(_SEARCH, len(payload), _DONT_REPLY, CA_MINOR_VERSION,
                           _SEARCH_ID, _SEARCH_ID) + payload)


def search_answers(datagram: bytes, sender: str) -> list[str]:
    """``host:port`` of every server that says, in `datagram`, that it has our name."""
    found = []
    offset = 0
    while offset + _HEADER.size <= len(datagram):
        command, size, port, _, address, search_id = _HEADER.unpack_from(datagram, offset)
        offset += _HEADER.size + size
        # An answer carries 8 bytes (the server's minor version); a search carries the
        # name, never under 16 bytes here (prefix:pvlist and its NUL, padded).
        if command == _SEARCH and size == 8 and search_id == _SEARCH_ID:
            host = sender if address == _ANY_ADDRESS else socket.inet_ntoa(
                struct.pack(">I", address))
            found.append(f"{host}:{port}")
    return found


# --- before the CA server exists ---------------------------------------------------------


def broadcast_addresses() -> list[str]:
    """The broadcast addresses of the interfaces that are up (not loopback), as libca's
    automatic address list has them."""
    found = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        for _, name in socket.if_nameindex():
            request = struct.pack("256s", name.encode()[:15])
            try:
                flags = struct.unpack_from("H", fcntl.ioctl(probe, _SIOCGIFFLAGS, request),
                                           16)[0]
                wanted = _IFF_UP | _IFF_BROADCAST
                if flags & _IFF_LOOPBACK or (flags & wanted) != wanted:
                    continue
                answer = fcntl.ioctl(probe, _SIOCGIFBRDADDR, request)
            except OSError:
                continue  # no IPv4 address, or no broadcast
            found.append(socket.inet_ntoa(answer[20:24]))
    return found


def find_server(name: str, targets: list[tuple[str, int]], wait: float = SEARCH_WAIT
                ) -> str | None:
    """The first server that answers a CA search for `name` at `targets`, or None.

    The search goes out three times (at 0, a fifth and half of `wait`), as libca repeats
    its searches: a datagram may be lost, and a busy server may answer late.
    """
    request = search_request(name)
    started = time.monotonic()
    sends = [started, started + wait / 5, started + wait / 2]
    with _search_socket({port for _, port in targets}) as sock:
        while (now := time.monotonic()) < started + wait:
            if sends and now >= sends[0]:
                _send(sock, request, name, targets, warn=len(sends) == 3)
                sends.pop(0)
            until = sends[0] if sends else started + wait
            if not select.select([sock], [], [], max(0.0, until - now))[0]:
                continue
            datagram, (host, _) = sock.recvfrom(65536)
            if datagram == request:  # our own search, come back: never an answer
                continue
            answers = search_answers(datagram, host)
            if answers:
                return answers[0]
    return None


def _search_socket(target_ports: set[int]) -> socket.socket:
    """A UDP socket for the search, on a port none of the targets is at.

    The CA server port is not bound yet when the search goes out, so the kernel may give
    its number to this socket: the search sent to this host at that port then came back
    to it, and was taken for another relay's answer (CI saw it: "the CA server at
    82.69.76.89:5", our own search id and reply flag read as an address).
    """
    for _ in range(20):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        sock.bind(("0.0.0.0", 0))
        if sock.getsockname()[1] not in target_ports:
            return sock
        sock.close()
    raise OSError("no UDP port for the CA search apart from the search targets' ports")


def _send(sock: socket.socket, request: bytes, name: str, targets: list[tuple[str, int]],
          warn: bool) -> None:
    for target in targets:
        try:
            sock.sendto(request, target)
        except OSError as error:
            if warn:
                log.warning("CA search for %s cannot be sent to %s:%d: %s", name, *target,
                            os.strerror(error.errno or 0) or error)


def check_udp_port(env: CAEnv) -> None:
    """Fail with a one-line reason if pcas could not bind its UDP port.

    pcas aborts the whole process (an uncaught C++ exception) when it cannot bind, which
    the supervisor could not tell from a crash. Binding the same way first (with
    SO_REUSEADDR, as pcas does, so that several CA servers may share the port) turns
    that into a clear boot failure.
    """
    for interface in env.interfaces:
        host = interface.split(":")[0]
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, env.server_port))
        except OSError as error:
            reason = os.strerror(error.errno) if error.errno else str(error)
            if error.errno == errno.EADDRINUSE:
                reason += " by a program that does not share it"
            raise BootError(f"cannot use CA port {host}:{env.server_port}: {reason}") from None
        finally:
            probe.close()


def check_before_serving(prefix: str, env: CAEnv) -> frozenset:
    """Everything to check before the CA server is made; the sockets bound until then.

    `BootError` if the UDP port cannot be shared, or if a server already answers for
    our prefix: two relays with one prefix would hide each other's PVs (a duplicated
    supervisord entry, a second relay started by hand).
    """
    check_udp_port(env)
    name = f"{prefix}:pvlist"
    other = find_server(name, env.search_targets(broadcast_addresses()
                                                 if env.auto_addr_list else ()))
    if other is not None:
        raise BootError(f"a relay with prefix {prefix} already runs: the CA server at {other} "
                        f"answered a search for {name}; a second one would hide its PVs")
    return bound_sockets()


# --- after the CA server is made ---------------------------------------------------------


@dataclass(frozen=True)
class Served:
    """Where the CA server serves: its TCP listeners and UDP sockets, as the kernel has
    them; `port` is the TCP port (0 if it could not be read); `taken`: not the one
    configured, which another program holds."""

    tcp: tuple[str, ...]
    udp: tuple[str, ...]
    port: int
    taken: bool

    def where(self) -> list[str]:
        return [f"TCP {a}" for a in self.tcp] + [f"UDP {a}" for a in self.udp]


def check_served(before: frozenset, env: CAEnv, strict: bool) -> Served:
    """What the new CA server bound (the sockets not in `before`); a taken TCP port is
    one WARNING, or with `strict` a `BootError`."""
    new = bound_sockets() - before
    tcp = sorted((port, address) for kind, address, port in new if kind == "TCP")
    udp = sorted((port, address) for kind, address, port in new if kind == "UDP")
    ports = sorted({port for port, _ in tcp})
    dynamic = [port for port in ports if port != env.server_port]  # on some interface
    served = Served(tuple(f"{a}:{p}" for p, a in tcp), tuple(f"{a}:{p}" for p, a in udp),
                    (dynamic or ports or [0])[0], bool(dynamic))
    if served.taken:
        message = (
            f"CA server port {env.server_port} is in use by another program: serving on "
            f"dynamic TCP port {', '.join(map(str, dynamic))} instead. CA searches sent "
            f"to this host by unicast (an EPICS_CA_ADDR_LIST entry naming it) reach only "
            f"one of the servers sharing UDP port {env.server_port}, so clients may miss "
            f"this relay or the other server; give clients broadcast search addresses, or "
            f"give this relay its own EPICS_CAS_SERVER_PORT")
        if strict:
            raise BootError(message + " (--strict-port refuses to serve so)")
        log.warning("%s", message)
    return served


def bound_sockets() -> frozenset:
    """(TCP or UDP, address, port) of the TCP listeners and UDP sockets of this process.

    From /proc (Linux): the sockets of the network namespace, kept when one of this
    process's file descriptors is theirs. Empty where /proc cannot tell.
    """
    inodes = set()
    try:
        for fd in os.listdir("/proc/self/fd"):
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:
        return frozenset()
    found = set()
    for table in ("tcp", "tcp6", "udp", "udp6"):
        try:
            with open(f"/proc/self/net/{table}") as handle:
                rows = handle.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if fields[9] in inodes and (table.startswith("udp") or fields[3] == "0A"):
                found.add((table[:3].upper(), *_proc_address(fields[1])))
    return frozenset(found)


def _proc_address(text: str) -> tuple[str, int]:
    """``0100007F:B813`` (/proc/net/tcp: host-order words in hex) as ("127.0.0.1", 47123)."""
    host, port = text.split(":")
    raw = bytes.fromhex(host)
    if sys.byteorder == "little":
        raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    family = socket.AF_INET if len(raw) == 4 else socket.AF_INET6
    return socket.inet_ntop(family, raw), int(port, 16)
