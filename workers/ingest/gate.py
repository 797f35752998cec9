"""Who may push to the ingest sockets: CurveZMQ keys, an IP allow-list, the safe default.

The same rules hold for both of the worker's sockets, PULL (``--zmq-bind``) and the
acknowledged ROUTER (``--zmq-ack-bind``): `secure` sets up both, with one authenticator.

* Without CURVE, messages travel in clear and anyone who reaches the socket may publish
  and delete. So by default the ingest binds loopback only, and binding any other
  address without CURVE needs ``--insecure`` (and says so in the log).
* With ``--curve-secret-key FILE --curve-authorized-keys DIR`` the socket is a CURVE
  server: traffic is encrypted, and pyzmq's authenticator (a ZAP handler thread in the
  worker) admits only clients whose public key is in DIR. Keys are pyzmq certificate
  files, as ``relayd keygen`` writes them.
* ``--zmq-allow ADDRESS`` (repeatable) admits only those client IP addresses, with or
  without CURVE.

A refused connection never reaches the relay's code. Two places see it: the authenticator
(a client key not in DIR, an address not allowed) and, with CURVE on, the socket's monitor
(a client that speaks no CURVE at all, or encrypts for another server key, fails the
handshake before any authentication). The gate counts both, and the worker reports the
count and the last reason like any other refusal (``status:refused:authDenied``).
"""

from __future__ import annotations

import logging
from typing import Sequence

import zmq
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils.monitor import recv_monitor_message

from relayd.config import Config
from relayd.core.errors import BootError
from relayd.keys import is_local, load_authorized_keys, load_secret_key

log = logging.getLogger("relayd.ingest")

ZAP_DOMAIN = b"relayd"

HANDSHAKE_FAILURES = {
    zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH: "the client does not use CURVE (no keys)",
    zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC:
        "CURVE handshake failed (the client has another server key?)",
}
MONITOR_EVENTS_PER_CALL = 1000  # a flood of bad handshakes cannot hold the worker up


class Gatekeeper(ThreadAuthenticator):
    """pyzmq's ZAP authenticator with our own key list, counting what it turns away.

    The authenticator's thread counts in ``_refused_by_zap``, the worker's thread in
    ``_failed_handshakes``: each counter has one writer, and the worker reads their sum
    (`denied`) and the last text, each replaced whole, so no lock is needed.
    """

    def __init__(self, context: zmq.Context):
        super().__init__(context, log=log.getChild("zap"))
        self._refused_by_zap = 0
        self._failed_handshakes = 0
        self.last_denial = ""
        self.authorised: frozenset[bytes] = frozenset()
        self._address = "?"
        self._key = b""
        self._monitors: list[zmq.Socket] = []

    # --- ZAP (the authenticator's thread) ---

    def callback(self, domain: str, key: bytes) -> bool:
        """pyzmq's credentials-provider hook: is this Z85 client key authorised?"""
        self._key = key
        return key in self.authorised

    async def handle_zap_message(self, msg: list[bytes]) -> None:
        # Frame 3 of a ZAP request is the client's IP address.
        self._address = msg[3].decode(errors="replace") if len(msg) > 3 else "?"
        self._key = b""
        await super().handle_zap_message(msg)

    def _send_zap_reply(self, request_id: bytes, status_code: bytes, status_text: bytes,
                        user_id: str = "anonymous") -> None:
        if status_code != b"200":
            key = f" (public key {self._key.decode(errors='replace')})" if self._key else ""
            self.last_denial = (f"ZMQ connection from {self._address} refused: "
                                f"{status_text.decode(errors='replace')}{key}")
            self._refused_by_zap += 1
        super()._send_zap_reply(request_id, status_code, status_text, user_id)

    @property
    def denied(self) -> int:
        """Connections refused so far, by the authenticator or in the handshake."""
        return self._refused_by_zap + self._failed_handshakes

    # --- handshakes that never reach ZAP (the worker's thread) ---

    def watch(self, sock: zmq.Socket) -> None:
        """Monitor `sock` for failed CURVE handshakes."""
        self._monitors.append(sock.get_monitor_socket(
            zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL))

    def poll_handshakes(self) -> None:
        """Count the failed handshakes reported since the last call."""
        for monitor in self._monitors:
            self._poll_monitor(monitor)

    def _poll_monitor(self, monitor: zmq.Socket) -> None:
        for _ in range(MONITOR_EVENTS_PER_CALL):
            if not monitor.poll(0):
                return
            event = recv_monitor_message(monitor)
            if event["event"] == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
                # The client hung up first: it saw the mismatch before we did.
                why = "the client left during the CURVE handshake (no keys, or not ZMQ?)"
            else:
                why = HANDSHAKE_FAILURES.get(event["value"],
                                             f"protocol error {event['value']:#x}")
            endpoint = event["endpoint"].decode(errors="replace")
            self.last_denial = f"ZMQ connection to {endpoint} refused: {why}"
            self._failed_handshakes += 1

    def stop(self) -> None:
        for monitor in self._monitors:
            monitor.close(linger=0)
        self._monitors = []
        super().stop()


def secure(config: Config, context: zmq.Context, sockets: Sequence[zmq.Socket],
           endpoints: Sequence[str]) -> Gatekeeper | None:
    """Set up CURVE and the allow-list on `sockets` before they bind `endpoints`; None if
    neither is on.

    `BootError` (one line) for unusable keys, and for a non-loopback bind without
    CURVE unless ``--insecure``.
    """
    curve = bool(config.curve_secret_key)
    if not curve:
        exposed = [e for e in endpoints if not is_local(e)]
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
    for sock in sockets:
        sock.zap_domain = ZAP_DOMAIN
    if curve:
        try:
            public, secret = load_secret_key(config.curve_secret_key)
        except ValueError as error:
            gate.stop()
            raise BootError(str(error)) from None
        folder = config.curve_authorized_keys
        try:
            gate.authorised, skipped = load_authorized_keys(folder)
        except NotADirectoryError as error:
            gate.stop()
            raise BootError(str(error)) from None
        for reason in skipped:
            log.warning("authorised key skipped: %s", reason)
        if not gate.authorised:
            log.warning("no usable public keys (*.key) in %s: no client can publish", folder)
        gate.configure_curve_callback(domain=ZAP_DOMAIN.decode(), credentials_provider=gate)
        for sock in sockets:
            sock.curve_server = True
            sock.curve_publickey = public
            sock.curve_secretkey = secret
            gate.watch(sock)
        log.info("CURVE on: %d authorised client key(s) in %s", len(gate.authorised), folder)
    return gate
