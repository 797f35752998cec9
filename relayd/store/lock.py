"""The lock that says an autosave file is in use: ``<file>.lock`` beside it.

A relay's CA process holds it for its whole life (an exclusive `fcntl.flock`, with its
pid written in the file), so that a second relay pointed at the same file refuses to
start, naming the holder, instead of writing the file too (the first one would later
restore the second one's PVs); and ``relayd autosave import`` refuses to write under a
running relay. Export takes no lock: SQLite lets a reader in beside the writer.

The kernel lets go of a flock when its holder dies, however it dies: a CA process that
its supervisor restarts after a crash takes the lock again at once, and the file a
killed holder leaves behind means nothing. A clean release deletes the file (after
`take` checked that the file it locked is still the one at the path, which makes that
safe against a taker racing with the release).
"""

from __future__ import annotations

import fcntl
import os

from relayd.core.errors import BootError


class InUse(BootError):
    """Another process holds the store's lock."""

    def __init__(self, path: str, pid: str):
        super().__init__(f"autosave file {path} is in use by another relay (pid {pid})")
        self.path = path
        self.pid = pid


class StoreLock:
    """The held lock of one store; `take` it, `release` it."""

    def __init__(self, store_path: str, fd: int):
        self.store_path = store_path
        self.path = f"{store_path}.lock"
        self.fd = fd

    @classmethod
    def take(cls, store_path: str) -> "StoreLock":
        """Lock `store_path`, or raise `InUse` naming the holder's pid; OSError if the
        lock file cannot be made."""
        path = f"{store_path}.lock"
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
                os.close(fd)
                raise InUse(store_path, holder if holder.isdigit() else "unknown") from None
            except BaseException:
                os.close(fd)
                raise
            lock = cls(store_path, fd)
            if lock.intact():
                break
            os.close(fd)  # released and deleted between our open and flock: again
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return lock

    def intact(self) -> bool:
        """Whether the lock file at the path is still the one locked (not deleted, not
        replaced): otherwise another relay could take a new one there."""
        try:
            at_path = os.stat(self.path)
        except OSError:  # gone, or its directory gone
            return False
        held = os.fstat(self.fd)
        return (at_path.st_dev, at_path.st_ino) == (held.st_dev, held.st_ino)

    def renew(self) -> "StoreLock":
        """A lock on a new lock file at the path, for one that was deleted or replaced;
        this one is let go once the new one is held. `InUse` if another took it."""
        new = StoreLock.take(self.store_path)
        os.close(self.fd)
        self.fd = -1
        return new

    def release(self) -> None:
        """Delete the lock file (if still ours) and let go of the lock."""
        if self.fd < 0:
            return
        if self.intact():
            os.unlink(self.path)
        os.close(self.fd)
        self.fd = -1
