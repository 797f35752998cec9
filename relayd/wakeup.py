"""Waking the CA loop the moment ingest data arrives.

The CA process spends its idle time inside pcas's ``fdManager::process``, waiting in
select/poll on the CA sockets only; pcaspy offers no way to add the pipe to that wait.
Polling the pipe with a short timeout would cost either latency or idle CPU. Instead a
thread waits on the pipe and, when it becomes readable, sends the main thread SIGUSR2:
the signal interrupts the wait (EINTR), ``process()`` returns, and the loop drains the
pipe. The handler does nothing; SA_RESTART is set so that no other system call of the
CA library is disturbed (select and poll are never restarted, which is the point).

A signal that lands while the main thread is not waiting is harmless but would not wake
the next wait, so until the loop reports the pipe drained the thread repeats the signal
every `RESEND` seconds: a lost wake-up costs at most that much latency.
"""

from __future__ import annotations

import os
import select
import signal
import threading

WAKE_SIGNAL = signal.SIGUSR2
RESEND = 0.0005


class Wakeup:
    """Interrupts the main thread's CA wait whenever `fd` is readable."""

    def __init__(self, fd: int):
        self._fd = fd
        self._main = threading.main_thread().ident
        self._drained = threading.Event()
        self._stop_r, self._stop_w = os.pipe()
        signal.signal(WAKE_SIGNAL, _ignore)
        signal.siginterrupt(WAKE_SIGNAL, False)
        self._thread = threading.Thread(target=self._run, name="relayd-wakeup", daemon=True)

    def start(self) -> "Wakeup":
        self._thread.start()
        return self

    def drained(self) -> None:
        """Called by the main loop after it found the pipe empty."""
        self._drained.set()

    def stop(self) -> None:
        os.write(self._stop_w, b"x")
        self._drained.set()
        self._thread.join(2.0)
        os.close(self._stop_r)
        os.close(self._stop_w)

    def _run(self) -> None:
        while True:
            readable, _, _ = select.select([self._fd, self._stop_r], [], [])
            if self._stop_r in readable:
                return
            self._drained.clear()
            signal.pthread_kill(self._main, WAKE_SIGNAL)
            while not self._drained.wait(RESEND):
                signal.pthread_kill(self._main, WAKE_SIGNAL)


def _ignore(signum: int, frame: object) -> None:
    """The wake-up signal's only job is to interrupt a wait."""
