"""CurveZMQ keys and endpoint exposure, shared by the relay, the push client and the CLI.

Keys are pyzmq certificate files: ``NAME.key`` holds a public key, ``NAME.key_secret`` the
public and the secret key. ``relayd keygen STEM`` writes such a pair; the relay's public
key goes to every publisher (``--curve-server-key``), each publisher's public key into the
relay's authorised keys folder (``--curve-authorized-keys``).
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit

import zmq.auth


def is_local(endpoint: str) -> bool:
    """True for endpoints only this host can reach (loopback TCP, ipc, inproc)."""
    parts = urlsplit(endpoint)
    if parts.scheme in ("ipc", "inproc"):
        return True
    host = (parts.hostname or "").strip("[]")
    return host in ("localhost", "::1") or host.startswith("127.")


def load_public_key(path: str) -> bytes:
    """The public key in a certificate file (``.key`` or ``.key_secret``); ValueError if none."""
    try:
        public, _ = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read CURVE key {path}: {error}") from None
    if not public:
        raise ValueError(f"{path} holds no public key")
    return public


def load_secret_key(path: str) -> tuple[bytes, bytes]:
    """(public, secret) from a ``.key_secret`` file; ValueError if it has no secret key."""
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read CURVE key {path}: {error}") from None
    if not secret:
        raise ValueError(f"{path} holds no secret key (give the .key_secret file)")
    return public, secret


def keygen(stem: str, force: bool = False) -> tuple[str, str]:
    """Write ``STEM.key`` (public, mode 0644) and ``STEM.key_secret`` (mode 0600)."""
    directory, name = os.path.split(os.path.abspath(stem))
    public = os.path.join(directory, name + ".key")
    secret = os.path.join(directory, name + ".key_secret")
    for path in (public, secret):
        if os.path.exists(path) and not force:
            raise FileExistsError(f"{path} exists (use --force to replace it)")
    os.makedirs(directory, exist_ok=True)
    old_umask = os.umask(0o077)  # the secret is never readable by others, not even briefly
    try:
        zmq.auth.create_certificates(directory, name)
    finally:
        os.umask(old_umask)
    os.chmod(public, 0o644)
    os.chmod(secret, 0o600)
    return public, secret


def keygen_main(argv: list[str]) -> int:
    """``relayd keygen PATH_STEM [--force]``."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(
        prog="relayd keygen",
        description="Write a CurveZMQ key pair: PATH_STEM.key (public, give it out) and "
                    "PATH_STEM.key_secret (keep it private).",
    )
    parser.add_argument("stem", metavar="PATH_STEM")
    parser.add_argument("--force", action="store_true", help="replace existing files")
    args = parser.parse_args(argv)
    try:
        public, secret = keygen(args.stem, args.force)
    except (OSError, FileExistsError) as error:
        print(f"relayd keygen: {error}", file=sys.stderr)
        return 1
    print(f"public key: {public}\nsecret key: {secret}")
    return 0
