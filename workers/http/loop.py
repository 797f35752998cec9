"""The HTTP worker's life: bind, serve with uvicorn, keep the mirror, beat, stop.

One asyncio loop runs everything: uvicorn's server on the sockets bound here (one per
``--http-bind``, so that a port in use is a boot failure with its own one-line reason,
exit code 3), the down pipe from the CA process (`Link.readable`, on the loop's reader
callback), and a housekeeping task (heartbeats, the worker's counters, the feed's
silence check, the stop flag). uvicorn's own signal handling is off: the child's
`StopFlag` (`relayd.supervise.child`) is the one place a SIGTERM lands, and the
housekeeping task turns it into uvicorn's graceful shutdown. Open event streams end on
the same signal, so a stop takes well under a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import ssl
import time
from typing import Any, Iterator

import uvicorn

from relayd.config import Config, split_host_port
from relayd.core.errors import BootError
from relayd.logs import serving
from relayd.supervise.child import ChildEnv
from workers.http.access import Access
from workers.http.app import build
from workers.http.link import Link
from workers.http.mirror import Mirror
from workers.http.service import Service

log = logging.getLogger("relayd.http")
loop_time = time.monotonic

HOUSEKEEPING = 0.5  # seconds between heartbeats, counters and checks
STOP_CHECK = 0.05  # seconds between looks at the stop flag
GRACE = 1.0  # seconds open connections get to finish when the worker stops
BACKLOG = 128


def bind(endpoints: tuple) -> list[socket.socket]:
    """A listening socket for each ``HOST:PORT``; `BootError` naming the one that fails."""
    sockets: list[socket.socket] = []
    try:
        for text in endpoints:
            host, port = split_host_port(text)
            try:
                family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
                sock = socket.socket(family, socket.SOCK_STREAM)
                sockets.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind((host, port))
                sock.listen(BACKLOG)
            except OSError as error:
                reason = os.strerror(error.errno) if error.errno else str(error)
                if error.errno == errno.EADDRINUSE:
                    reason += " (another relay or program listens there)"
                raise BootError(f"cannot listen on HTTP {text}: {reason}") from None
            sock.setblocking(False)
    except BootError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


class Server(uvicorn.Server):
    """uvicorn's server without its signal handlers (the child's StopFlag has them)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def server_config(app: Any, config: Config) -> uvicorn.Config:
    """uvicorn's settings: no logging of its own beyond warnings, TLS if asked for."""
    settings = uvicorn.Config(
        app, lifespan="off", log_config=None, access_log=False, server_header=False,
        timeout_graceful_shutdown=int(GRACE) or 1,
        ssl_certfile=config.http_cert or None, ssl_keyfile=config.http_key or None,
    )
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
    try:
        settings.load()
    except (OSError, ssl.SSLError) as error:
        raise BootError(f"cannot use the HTTP TLS certificate or key: {error}") from None
    return settings


def run(env: ChildEnv) -> None:
    """Serve until told to stop or the supervisor goes away."""
    config = env.config
    access = Access.from_config(config)
    sockets = bind(config.http_bind)
    try:
        asyncio.run(serve(env, access, sockets))
    finally:
        for sock in sockets:
            sock.close()
    log.info("HTTP worker stopped")


async def serve(env: ChildEnv, access: Access, sockets: list[socket.socket]) -> None:
    config = env.config
    mirror = Mirror(config.prefix)
    link = Link(env.channel, mirror)
    service = Service(config, access, mirror, link)
    stopping = asyncio.Event()
    server = Server(server_config(build(service, stopping, os.getppid()), config))
    loop = asyncio.get_running_loop()
    loop.add_reader(link.reader.fileno(), link.readable)
    link.ask_sync()
    keeper = asyncio.create_task(housekeeping(env, server, service, stopping))
    try:
        await server.serve(sockets=sockets)
    finally:
        stopping.set()
        keeper.cancel()
        loop.remove_reader(link.reader.fileno())


async def housekeeping(env: ChildEnv, server: Server, service: Service,
                       stopping: asyncio.Event) -> None:
    """Ready once serving; then beats, counters, feed checks; the stop when it comes."""
    while not server.started and not server.should_exit:
        await asyncio.sleep(0.01)
    scheme = "https" if env.config.http_cert else "http"
    where = [f"{scheme}://{text}" for text in env.config.http_bind]
    log.info("%s", serving("HTTP", where, "web page, API, metrics"))
    env.lifeline.send(ready=True)
    next_beat = 0.0
    while not env.stopping():
        now = loop_time()
        if now >= next_beat:
            next_beat = now + HOUSEKEEPING
            env.lifeline.send(beat=True)
            env.lifeline.receive()
            if env.lifeline.closed:
                log.warning("the supervisor has gone; stopping")
                break
            counters = service.take_counters()
            if counters and not service.link.send_counters(counters):
                service.restore_counters(counters)
            service.link.check()
        await asyncio.sleep(STOP_CHECK)
    stopping.set()
    server.should_exit = True
