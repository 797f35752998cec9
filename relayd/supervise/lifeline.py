"""The control channel between the supervisor and one child process.

One ``SOCK_SEQPACKET`` socket pair per child; each packet is one small JSON object.

Child to supervisor:
  ``{"ready": true}``          booted and serving (until then a death counts as a boot failure)
  ``{"fatal": "reason"}``      cannot boot; the reason is one line; the child then exits
  ``{"beat": true}``           heartbeat, at least every second while the child is healthy
  ``{"stopping": true}``       the CA server got a stop signal: may it stop? (counts as a beat)

Supervisor to child:
  ``{"restarts": {...}}``      restart counts of every child, for the status PVs
  ``{"stop": true}``           to the CA server: every worker has stopped (or the stop
                               signal was for the CA server alone): stop now

The child also learns from this channel that its parent is gone: the socket reads as
closed (EOF) the moment the supervisor dies, however it died.
"""

from __future__ import annotations

import json
import socket
from typing import Any

MAX_PACKET = 65536


class Lifeline:
    """One end of a control channel. Never blocks: a full channel drops the packet."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        sock.setblocking(False)
        self.closed = False

    @classmethod
    def pair(cls) -> tuple[socket.socket, socket.socket]:
        """(supervisor end, child end) of a new channel."""
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        child.set_inheritable(True)
        return parent, child

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, **message: Any) -> bool:
        try:
            self.sock.send(json.dumps(message).encode())
            return True
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            self.closed = True
            return False

    def receive(self) -> list[dict[str, Any]]:
        """Every packet waiting; sets `closed` when the other end has gone.

        Reads on after a failed `send`: a child that died leaves its last words (a boot
        failure's reason) queued, and a send to it fails before they are read.
        """
        messages = []
        while True:
            try:
                packet = self.sock.recv(MAX_PACKET)
            except (BlockingIOError, InterruptedError):
                break
            except ConnectionResetError:
                # The other end closed with packets of ours unread (a child that failed
                # to boot before reading its restart counts). Linux reports that once,
                # *before* the packets it sent last (its boot failure's reason): read on.
                continue
            except OSError:
                self.closed = True
                break
            if not packet:
                self.closed = True
                break
            try:
                message = json.loads(packet)
            except (ValueError, RecursionError):
                continue
            if isinstance(message, dict):
                messages.append(message)
        return messages

    def close(self) -> None:
        self.sock.close()
        self.closed = True
