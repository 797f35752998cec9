"""Waking the CA loop the moment ingest data arrives.

The CA process spends its idle time inside pcas's ``fdManager::process``, waiting in
select/poll on the CA sockets only; pcaspy offers no way to add the pipes to that wait.
Polling the pipes with a short timeout would cost either latency or idle CPU. Instead a
thread waits on them (every worker's up pipe, and any other descriptor the loop must
react to at once) and, when one becomes readable while the main thread is waiting,
sends the main thread SIGUSR2: the signal interrupts the wait (EINTR),
``process()`` returns, and the loop drains the pipes. The handler does nothing;
SA_RESTART is set so that no other system call of the CA library is disturbed (select
and poll are never restarted, which is the point).

The main loop says when it is about to wait and when it is done (`waiting`). While it
is busy, the thread does not run at all (it waits on a condition): it would only take
the GIL from the loop doing the work. A signal that lands just before the loop enters
its wait is lost, so while the loop is still waiting the thread repeats the signal
every `RESEND` seconds: a lost wake-up costs at most that much latency.
"""

from __future__ import annotations

import os
import select
import signal
import threading
from typing import Sequence

WAKE_SIGNAL = signal.SIGUSR2
RESEND = 0.0005


class Wakeup:
    """Interrupts the main thread's CA wait whenever one of `fds` is readable."""

    def __init__(self, fds: Sequence[int]):
        self._fds = list(fds)
        self._main = threading.main_thread().ident
        self._condition = threading.Condition()
        self._waiting = False
        self._stopping = False
        self._stop_r, self._stop_w = os.pipe()
        signal.signal(WAKE_SIGNAL, _ignore)
        signal.siginterrupt(WAKE_SIGNAL, False)
        self._thread = threading.Thread(target=self._run, name="relayd-wakeup", daemon=True)

    def start(self) -> "Wakeup":
        self._thread.start()
        return self

    def waiting(self, flag: bool) -> None:
        """The main loop is about to wait in the CA library (True), or is back (False)."""
        with self._condition:
            self._waiting = flag
            self._condition.notify()

    def stop(self) -> None:
        with self._condition:
            self._stopping = True
            self._condition.notify()
        os.write(self._stop_w, b"x")
        self._thread.join(2.0)
        os.close(self._stop_r)
        os.close(self._stop_w)

    def _run(self) -> None:
        while True:
            readable, _, _ = select.select([*self._fds, self._stop_r], [], [])
            if self._stop_r in readable:
                return
            with self._condition:
                # Data waits. A busy loop will drain it anyway: only a waiting one
                # needs waking, so sleep until it waits.
                while not self._waiting and not self._stopping:
                    self._condition.wait()
                if self._stopping:
                    return
            if not select.select(self._fds, [], [], 0)[0]:
                continue  # drained before the loop began to wait: nothing to wake for
            with self._condition:
                while self._waiting and not self._stopping:
                    signal.pthread_kill(self._main, WAKE_SIGNAL)
                    self._condition.wait(RESEND)


def _ignore(signum: int, frame: object) -> None:
    """The wake-up signal's only job is to interrupt a wait."""
