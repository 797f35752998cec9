"""The CA server process: serves every PV and applies what the workers forward.

One loop, one thread doing the relay's work (a second thread only wakes it, see
`wakeup`):

1. ``cas.process`` lets the CA library answer searches, reads, puts and send monitor
   events. It waits for network traffic up to IDLE seconds, or not at all (two quick
   turns) while ingest data is waiting or an autosave flush is being handed over; the
   wake-up thread interrupts the wait when a worker's up pipe fills.
2. The up pipes are drained for at most INGEST_BUDGET seconds, then CA gets its turn
   again: heavy ingest is interleaved with CA service, it never starves clients. The
   answers the batches asked for are queued and sent down (`replies`), never waiting.
3. What pvAccess's threads queued (new channels, puts: `relayd.pva`) is handled; the
   wake-up thread watches that queue too.
4. Once per second or so: heartbeat to the supervisor, restart counts from it, status
   PVs, pipe backlog.

On SIGTERM the loop goes on until the workers have stopped (`CALoop.may_stop`), then
applies what is still in the pipes (bounded by DRAIN_ON_STOP), saves, and exits.
"""

from __future__ import annotations

import gc
import logging
import os
import time

from pcaspy import cas

from relayd.store.sqlite import Store
from relayd.store.writer import Autosaver
from relayd.ca.access import PutAccess
from relayd.ca import ports
from relayd.ca.apply import PipeIngest
from relayd.ca.feed import attach as attach_feed
from relayd.ca.replies import Replies, outboxes
from relayd.ca.server import CAServer
from relayd.config import Config
from relayd.core.errors import BootError
from relayd.ca.epics_env import raise_max_array_bytes
from relayd.supervise.child import ChildEnv
from relayd.supervise.pipe import PipeReader, backlog
from relayd.ca.wakeup import Wakeup
from relayd.pva import serve as pva
from relayd.logs import serving

log = logging.getLogger("relayd.ca")

IDLE = 0.2  # longest wait in the CA library when nothing happens, seconds
HELD_WAIT = 0.002  # ... while answers wait for an autosave commit (it comes from a thread)
INGEST_BUDGET = 0.002  # longest stretch of applying ingest before serving CA again
PVA_REQUESTS = 500  # most pvAccess requests handled per cycle (within INGEST_BUDGET too)
CYCLE_UPDATES = 2000  # most updates applied between two turns of the CA library
HOUSEKEEPING = 0.5  # seconds between heartbeats and lifeline checks
DRAIN_ON_STOP = 2.0  # seconds allowed to apply what is left in the pipe when stopping
STOP_WAIT_SHARE = 0.7  # of --stop-grace: the longest a stop signal waits for the workers
REPLIES_ON_STOP = 0.5  # seconds the last answers may take to enter the down pipes
# The garbage collector is told to leave the PVs alone (`gc.freeze`) after restore and
# each time the relay holds this many PVs more than ever before.
FREEZE_STEP = 1000


def run(env: ChildEnv) -> None:
    """Serve until told to stop or until the supervisor goes away."""
    loop = CALoop(env)
    try:
        loop.serve()
        loop.drain_on_stop()
    finally:
        loop.close()
    log.info("CA server stopped")


class CALoop:
    """The CA process's one loop: CA turns, ingest stretches, timers (see the module doc)."""

    def __init__(self, env: ChildEnv):
        config = self.config = env.config
        self.env = env
        raise_max_array_bytes(config)
        ca_env = ports.CAEnv.read()
        bound = ports.check_before_serving(config.prefix, ca_env)
        load_access_security(config)
        self.store = open_store(config)
        server = self.server = CAServer(config)
        self.served = ports.check_served(bound, ca_env, config.strict_port)
        server.relay.stats.ca_port = self.served.port
        server.relay.stats.ca_port_taken = self.served.taken
        if self.store is not None:
            saved = self.store.load()
            server.restore(saved, progress=lambda: env.lifeline.send(beat=True))
            pvs = server.relay.registry.pvs
            server.autosaver = Autosaver(self.store, config.autosave_interval,
                                         lambda: [pv.state for pv in pvs.values()],
                                         [item.name for item in saved])
            del saved
            server.relay.stats.autosave = server.autosaver.status
        # PVs live long, and a PV is freed by reference counting when it is deleted (it
        # is in no reference cycle): keep the garbage collector from walking them again
        # and again. A full collection over 100,000 PVs' objects takes tens of
        # milliseconds, which showed in CA creation rates and read latencies while the
        # relay grew. Freezing only at new highs bounds what a freeze could ever pin (a
        # cycle that happened to be garbage at that moment) to a few hundred freezes
        # over the relay's life.
        gc.collect()
        gc.freeze()
        self.frozen_at = len(server.relay.registry.pvs)
        channels = env.channels
        self.replies = Replies(outboxes({role: c.down for role, c in channels.items()}),
                               server.relay.stats, server.autosaver)
        readers = {role: PipeReader(channel.up) for role, channel in channels.items()}
        self.ingest = PipeIngest(server, readers, self.replies.verdicts, self.replies.send)
        # pvAccess starts once the PVs are restored, as CA answers only after them.
        access = PutAccess() if config.access_security else None
        self.pva = server.pva = pva.start(config, server, access)
        pva_fds = [self.pva.fileno()] if self.pva is not None else []
        self.wakeup = Wakeup([reader.fileno() for reader in readers.values()]
                             + pva_fds).start()
        server.relay.stats.pva = self.pva.status if self.pva is not None else None
        self.feed = attach_feed(server, self.ingest, self.replies.outboxes)
        self.next_housekeeping = 0.0
        self.next_refresh = time.monotonic() + config.status_interval
        self.stop_asked: float | None = None  # when a stop signal came
        self.stop_told = False  # the supervisor says the workers have stopped

    def serve(self) -> None:
        """Turn until told to stop or the supervisor has gone."""
        config = self.config
        saved = (f"autosave {config.autosave_path} every {config.autosave_interval:g} s"
                 if self.store is not None else "autosave off")
        log.info("%s", serving("CA", self.served.where(),
                               f"PVs {config.prefix}:<name>_<dtype><count>", saved))
        self.env.lifeline.send(ready=True)
        empty = True
        while not self.may_stop():
            deadline = self.server.stale_watch.next_deadline()
            wait = IDLE if empty and not self.saving() else 0.0
            self.ca_turn(min(wait, HELD_WAIT) if self.replies.pending() else wait, deadline)
            empty = self.ingest.drain(CYCLE_UPDATES, INGEST_BUDGET)
            if self.pva is not None:
                empty = self.pva.drain(PVA_REQUESTS, INGEST_BUDGET) and empty
            if self.feed is not None and self.feed.busy:
                empty = False  # a sync is streaming: no idle wait
            now = time.monotonic()
            self.after_cycle(now, deadline)
            if now >= self.next_housekeeping and not self.housekeeping(now):
                break
            if now >= self.next_refresh:
                self.refresh_status(now)

    def saving(self) -> bool:
        """An autosave flush is being handed to the writer, one part per cycle."""
        autosaver = self.server.autosaver
        return autosaver is not None and autosaver.handing

    def ca_turn(self, wait: float, deadline: float | None) -> None:
        """Let the CA library work: wait up to `wait` (or to a stale deadline) for traffic."""
        if deadline is not None:
            wait = max(0.0, min(wait, deadline - time.monotonic()))
        if wait > 0:
            self.wakeup.waiting(True)
            cas.process(wait)
            self.wakeup.waiting(False)
        else:
            # Busy with ingest: two turns of the CA library, because pcas reads a
            # request in one turn and sends the answer in the next; one turn per ingest
            # stretch would make every read wait one stretch more.
            cas.process(0.0)
            cas.process(0.0)

    def after_cycle(self, now: float, deadline: float | None) -> None:
        """What follows every cycle: GC freezes, staleness, autosave, freeing deleted PVs."""
        server = self.server
        count = len(server.relay.registry.pvs)
        if count >= self.frozen_at + FREEZE_STEP:
            gc.freeze()
            self.frozen_at = count
        if deadline is not None and now >= deadline:
            server.check_stale(now)
        if server.autosaver is not None:
            server.autosaver.tick(now)
        if self.feed is not None:
            self.feed.cycle(now)
        self.replies.cycle(now)
        server.end_cycle()

    def may_stop(self) -> bool:
        """False until a stop signal came; then True once the workers are done.

        The loop goes on applying what the workers forward until the supervisor says
        they have stopped (``stop`` on the lifeline; asked with ``stopping``), or has
        gone, or STOP_WAIT_SHARE of the grace has passed: a signal to the whole process
        group (supervisord's stopasgroup) must not end the CA process before the workers
        have forwarded what they received.
        """
        if not self.env.stopping():
            return False
        now = time.monotonic()
        if self.stop_asked is None:
            self.stop_asked = now
            self.env.lifeline.send(stopping=True)
        self.listen()
        return (self.stop_told or self.env.lifeline.closed
                or now - self.stop_asked > STOP_WAIT_SHARE * self.config.stop_grace)

    def listen(self) -> None:
        """What the supervisor said: restart counts, and whether to stop."""
        for message in self.env.lifeline.receive():
            if "restarts" in message:
                self.server.relay.stats.restarts = dict(message["restarts"])
            self.stop_told |= message.get("stop") is True

    def housekeeping(self, now: float) -> bool:
        """Heartbeat, what the supervisor said; False once the supervisor has gone."""
        self.next_housekeeping = now + HOUSEKEEPING
        lifeline = self.env.lifeline
        lifeline.send(beat=True)
        self.listen()
        if lifeline.closed:
            log.warning("the supervisor has gone; stopping")
            return False
        return True

    def refresh_status(self, now: float) -> None:
        self.next_refresh = now + self.config.status_interval
        self.server.relay.stats.pipe_backlog = sum(
            backlog(channel.up_writer) for channel in self.env.channels.values()
            if channel.up_writer is not None)
        self.server.control.refresh(time.time_ns())
        if self.pva is not None:
            self.pva.refresh(now)

    def drain_on_stop(self) -> None:
        """Apply what is still in the pipe, for at most DRAIN_ON_STOP seconds."""
        deadline = time.monotonic() + DRAIN_ON_STOP
        while (not self.ingest.drain(CYCLE_UPDATES, INGEST_BUDGET)
               and time.monotonic() < deadline):
            cas.process(0.0)
            self.replies.cycle(time.monotonic())
        if self.pva is not None:  # puts already queued are applied and answered
            self.pva.drain(PVA_REQUESTS, max(0.0, deadline - time.monotonic()))
        self.replies.cycle(time.monotonic())

    def close(self) -> None:
        """Stop pvAccess, write what autosave still holds, then drop every PV."""
        self.wakeup.stop()
        if self.pva is not None:
            self.pva.stop()
        autosaver, store = self.server.autosaver, self.store
        saved = True
        if autosaver is not None and store is not None:
            saved = autosaver.stop()
            if saved:
                log.info("autosave: every change written to %s", store.path)
            else:
                log.error("autosave: changes could not be written to %s: %s",
                          store.path, autosaver.status.last_error)
        self.replies.finish(saved, REPLIES_ON_STOP)
        self.server.close()


def load_access_security(config: Config) -> None:
    """Load the ACF, if one is given, before any PV exists; `BootError` if it will not load."""
    if not config.access_security:
        return
    path = config.access_security
    if not os.path.isfile(path):
        raise BootError(f"access security file {path} does not exist")
    status = cas.asInitFile(path, "")
    if status != 0:
        raise BootError(f"access security file {path} could not be loaded (see the "
                        f"messages above; asInitFile status {status})")
    cas.asCaStart()
    log.info("CA access security from %s", path)


def open_store(config: Config) -> Store | None:
    """The autosave store, or None when autosave is off; `BootError` if unusable."""
    path = config.autosave_path
    if path is None:
        log.info("autosave is off")
        return None
    store = Store.open(path, reset=config.autosave_reset, lock=True)
    log.info("autosave: %s, written every %.1f s", path, config.autosave_interval)
    return store
