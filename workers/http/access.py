"""Who may read and who may write over HTTP. No I/O once the token is read.

The rules (docs/HTTP.md, docs/SECURITY.md):

* Reads (the page, the API's GETs, /metrics) from loopback, from a ``--http-read-from``
  or ``--http-write-from`` network, or with the token.
* Writes (PUT, POST, DELETE) from a ``--http-write-from`` network, or with the token;
  from loopback too when no token file is given. With ``--http-token-file`` every
  write must carry ``Authorization: Bearer TOKEN`` (compared in constant time), from
  loopback as from anywhere: on a shared host, loopback is every local user.

A request beyond these rules is refused with reason ``authDenied``: 401 (with
``WWW-Authenticate: Bearer``) when a token would let it in and it carried none or a
wrong one, 403 when nothing would.
"""

from __future__ import annotations

import hmac
import ipaddress
from dataclasses import dataclass

from relayd.config import Config, network
from relayd.core.errors import BootError, Reason, Refused

LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))


def read_token(path: str) -> bytes:
    """The token in `path` (surrounding white space dropped); `BootError` if unusable."""
    try:
        with open(path, "rb") as handle:
            token = handle.read().strip()
    except OSError as error:
        raise BootError(f"cannot read the HTTP token file {path}: {error.strerror}") from None
    if len(token) < 16:
        raise BootError(f"the HTTP token in {path} is shorter than 16 characters")
    return token


def _address(host: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(host or "")
    except ValueError:
        return None
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:10.0.0.5 is 10.0.0.5
    return mapped or address


@dataclass(frozen=True)
class Access:
    """The read and write rules of one HTTP worker."""

    readers: tuple  # networks allowed to read without a token
    writers: tuple  # networks allowed to write without a token
    token: bytes | None

    @classmethod
    def from_config(cls, config: Config) -> "Access":
        token = read_token(config.http_token_file) if config.http_token_file else None
        writers = tuple(network(text) for text in config.http_write_from)
        if token is None:
            writers = LOOPBACK + writers
        readers = LOOPBACK + tuple(network(text) for text in config.http_read_from) + writers
        return cls(readers, writers, token)

    def _token_ok(self, authorization: str | None) -> bool:
        if self.token is None or not authorization:
            return False
        scheme, _, given = authorization.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            given.strip().encode("utf-8", "replace"), self.token)

    def check(self, host: str | None, authorization: str | None, write: bool
              ) -> tuple[int, Refused] | None:
        """None if the request may go ahead; else (HTTP status, the refusal)."""
        address = _address(host)
        allowed = self.writers if write else self.readers
        if address is not None and any(address in net for net in allowed):
            return None
        if self._token_ok(authorization):
            return None
        what = "write" if write else "read"
        if self.token is not None:
            why = "a wrong token" if authorization else "no token"
            return 401, Refused(Reason.AUTH_DENIED,
                                f"HTTP {what} from {host} with {why} (Authorization: Bearer)")
        return 403, Refused(Reason.AUTH_DENIED, f"HTTP {what} from {host}: not allowed "
                            f"(see --http-{what}-from)")
