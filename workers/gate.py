"""Who may push to the ingest socket: CurveZMQ keys, an IP allow-list, and the safe default.

* Without CURVE, messages travel in clear and anyone who reaches the socket may publish
  and delete. So by default the ingest binds loopback only, and binding any other
  address without CURVE needs ``--insecure`` (and says so in the log).
* With ``--curve-secret-key FILE --curve-authorized-keys DIR`` the socket is a CURVE
  server: traffic is encrypted, and pyzmq's authenticator (a ZAP handler thread in the
  worker) admits only clients whose public key is in DIR. Keys are pyzmq certificate
  files, as ``relayd keygen`` writes them.
* ``--zmq-allow ADDRESS`` (repeatable) admits only those client IP addresses, with or
  without CURVE.

A refused handshake never reaches the relay's code; the authenticator counts it, and the
worker reports the count and the last reason like any other refusal.
"""

from __future__ import annotations

import logging
from pathlib import Path

import zmq
from zmq.auth.thread import ThreadAuthenticator

from relayd.config import Config
from relayd.errors import BootError
from relayd.keys import is_local, load_secret_key

log = logging.getLogger("relayd.ingest")

ZAP_DOMAIN = b"relayd"


class Gatekeeper(ThreadAuthenticator):
    """pyzmq's ZAP authenticator, counting what it turns away."""

    def __init__(self, context: zmq.Context):
        super().__init__(context, log=log.getChild("zap"))
        self.denied = 0
        self.last_denial = ""
        self._address = "?"

    async def handle_zap_message(self, msg: list[bytes]) -> None:
        # Frame 3 of a ZAP request is the client's IP address.
        self._address = msg[3].decode(errors="replace") if len(msg) > 3 else "?"
        await super().handle_zap_message(msg)

    def _send_zap_reply(self, request_id: bytes, status_code: bytes, status_text: bytes,
                        user_id: str = "anonymous") -> None:
        if status_code != b"200":
            self.denied += 1
            self.last_denial = (f"ZMQ connection from {self._address} refused: "
                                f"{status_text.decode(errors='replace')}")
        super()._send_zap_reply(request_id, status_code, status_text, user_id)


def secure(config: Config, context: zmq.Context, sock: zmq.Socket) -> Gatekeeper | None:
    """Set up CURVE and the allow-list on `sock` before it binds; None if neither is on.

    `BootError` (one line) for unusable keys, and for a non-loopback bind without
    CURVE unless ``--insecure``.
    """
    curve = bool(config.curve_secret_key)
    if not curve:
        exposed = [e for e in config.zmq_bind if not is_local(e)]
        if exposed and not config.insecure:
            raise BootError(
                f"ZMQ endpoint {exposed[0]} is beyond loopback and CURVE is off: anyone "
                "who reaches it could publish and delete PVs; give --curve-secret-key and "
                "--curve-authorized-keys, or --insecure to accept that"
            )
        for endpoint in exposed:
            log.warning("INSECURE: ZMQ ingest on %s accepts unauthenticated, unencrypted "
                        "updates from any host that reaches it (--insecure)", endpoint)
    if not curve and not config.zmq_allow:
        return None
    gate = Gatekeeper(context)
    gate.start()
    if config.zmq_allow:
        gate.allow(*config.zmq_allow)
    sock.zap_domain = ZAP_DOMAIN
    if curve:
        try:
            public, secret = load_secret_key(config.curve_secret_key)
        except ValueError as error:
            gate.stop()
            raise BootError(str(error)) from None
        keys = Path(config.curve_authorized_keys)
        if not keys.is_dir():
            gate.stop()
            raise BootError(f"--curve-authorized-keys {keys} is not a directory")
        count = len(list(keys.glob("*.key")))
        if count == 0:
            log.warning("no public keys (*.key) in %s: no client can publish", keys)
        gate.configure_curve(domain=ZAP_DOMAIN.decode(), location=str(keys))
        sock.curve_server = True
        sock.curve_publickey = public
        sock.curve_secretkey = secret
        log.info("CURVE on: %d authorised client key(s) in %s", count, keys)
    return gate
