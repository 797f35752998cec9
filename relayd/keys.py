"""CurveZMQ keys and endpoint exposure, shared by the relay, the push client and the CLI.

Keys are pyzmq certificate files: ``NAME.key`` holds a public key, ``NAME.key_secret`` the
public and the secret key. ``relayd keygen STEM`` writes such a pair; the relay's public
key goes to every publisher (``--curve-server-key``), each publisher's public key into the
relay's authorised keys folder (``--curve-authorized-keys``).
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

import zmq.auth
from zmq.utils import z85

KEY_LENGTH = 40  # a CURVE key is 32 bytes, 40 characters in Z85


def is_local(endpoint: str) -> bool:
    """True for endpoints only this host can reach (loopback TCP, ipc, inproc)."""
    parts = urlsplit(endpoint)
    if parts.scheme in ("ipc", "inproc"):
        return True
    host = (parts.hostname or "").strip("[]")
    return host in ("localhost", "::1") or host.startswith("127.")


def _check_key(path: str, which: str, key: bytes) -> bytes:
    """`key` if it is a usable Z85 CURVE key; ValueError naming `path` otherwise.

    libzmq refuses a key of the wrong length only when it is set on a socket, with a bare
    "Invalid argument": checked here, the operator learns which file is wrong.
    """
    try:
        usable = len(key) == KEY_LENGTH and len(z85.decode(key)) == 32
    except (ValueError, KeyError, TypeError):
        usable = False
    if not usable:
        raise ValueError(f"{path}: the {which} key is not a {KEY_LENGTH}-character Z85 "
                         "CURVE key (write keys with relayd keygen)")
    return key


def _read_certificate(path: str) -> tuple[bytes | None, bytes | None]:
    """(public, secret) as pyzmq reads a certificate file; ValueError naming the file.

    ``~`` is expanded, as a shell would: key paths come from scripts and config files.
    """
    try:
        return zmq.auth.load_certificate(os.path.expanduser(path))
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read CURVE key {path}: {error}") from None


def load_public_key(path: str) -> bytes:
    """The public key in a certificate file (``.key`` or ``.key_secret``); ValueError if none."""
    public, _ = _read_certificate(path)
    if not public:
        raise ValueError(f"{path} holds no public key")
    return _check_key(path, "public", public)


def load_secret_key(path: str) -> tuple[bytes, bytes]:
    """(public, secret) from a ``.key_secret`` file; ValueError if it has no secret key."""
    public, secret = _read_certificate(path)
    if not secret:
        raise ValueError(f"{path} holds no secret key (give the .key_secret file)")
    return _check_key(path, "public", public), _check_key(path, "secret", secret)


def load_authorized_keys(folder: str) -> tuple[frozenset[bytes], list[str]]:
    """The public keys of every ``*.key`` file in `folder`, and a line per file skipped.

    One unreadable file must not lock every publisher out (pyzmq's own loader gives up
    on the whole folder at the first bad file), nor stop a relay that is running: it is
    skipped, and the caller logs why. NotADirectoryError if `folder` is not a folder.
    """
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise NotADirectoryError(f"--curve-authorized-keys {folder} is not a directory")
    keys, skipped = set(), []
    for path in sorted(root.glob("*.key")):
        try:
            keys.add(load_public_key(str(path)))
        except ValueError as error:
            skipped.append(str(error))
    return frozenset(keys), skipped


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
