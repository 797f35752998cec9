"""Two real pvAccess clients for end-to-end tests, with one small API (as CA's in harness).

* `P4PClient`: p4p's threaded client (pvxs, the C++ library relayd's server also uses),
  with its normative-type unwrapping for values, and a second context without it for
  whole structures (raw p4p `Value`s: display, control, valueAlarm).
* `PvapyClient`: pvapy, on pvAccessCPP, EPICS base's own C++ implementation of the
  protocol: independent of pvxs on the client side, as caproto is of libca for CA.
  (pvxslibs ships no command line tools, so pvget/pvmonitor are not an option.)

Both find relays through the environment conftest.py sets (EPICS_PVA_ADDR_LIST lists the
search port of every relay the session may start). Events are `harness.Event`s; for PVA
their `status` is the alarm message (``"HIHI"``, ``"UDF"``), their timestamp POSIX
seconds.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from tests.harness import DEFAULT_TIMEOUT, Event, Monitor


def plain(value: Any) -> Any:
    """A value as plain Python: float, int, str or a numpy array of its own."""
    if isinstance(value, np.ndarray):
        return np.array(value, copy=True)
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)  # p4p's ntstr prints its time stamp too
    for kind in (int, float):
        if isinstance(value, kind):
            return kind(value)
    if isinstance(value, (list, tuple)):
        return np.array(value)
    return value


class P4PClient:
    """p4p's threaded client."""

    label = "p4p"

    def __init__(self) -> None:
        from p4p.client.thread import Context, Disconnected, RemoteError

        # The environment without its name servers: p4p finds relays by UDP search
        # (pvapy needs the name servers) and would log every one not running.
        conf = {key: value for key, value in os.environ.items()
                if key.startswith("EPICS_PVA_") and key != "EPICS_PVA_NAME_SERVERS"}
        self.context = Context("pva", conf=conf, useenv=False)
        self.raw = Context("pva", conf=conf, useenv=False, nt=False)
        self.Disconnected = Disconnected
        self.RemoteError = RemoteError
        self.last_error = ""

    def close(self) -> None:
        self.context.close()
        self.raw.close()

    def get(self, name: str, timeout: float = DEFAULT_TIMEOUT) -> Any:
        return plain(self.context.get(name, timeout=timeout))

    def get_raw(self, name: str, timeout: float = DEFAULT_TIMEOUT) -> Any:
        """The whole structure, as a p4p Value."""
        return self.raw.get(name, timeout=timeout)

    def get_meta(self, name: str) -> Event:
        value = self.get_raw(name)
        return _event(value)

    def put(self, name: str, value: Any, timeout: float = DEFAULT_TIMEOUT) -> bool:
        """Put `value` (or, given a dict, the fields it names); True when accepted, else
        False with the server's error text in `last_error`."""
        self.last_error = ""
        try:
            self.raw.put(name, value if isinstance(value, dict) else {"value": value},
                         timeout=timeout)
        except self.RemoteError as error:
            self.last_error = str(error)
            return False
        return True

    def monitor(self, name: str) -> Monitor:
        monitor = Monitor(name)

        def on_update(value: Any) -> None:
            if isinstance(value, self.Disconnected):
                monitor.add(Event(connected=False))
            elif isinstance(value, Exception):
                monitor.add(Event(connected=False))
            else:
                if not monitor.connection_changes() or not monitor.connection_changes()[-1]:
                    monitor.add(Event(connected=True))
                monitor.add(_event(value))

        subscription = self.raw.monitor(name, on_update, notify_disconnect=True)

        def close() -> None:
            subscription.close()
            self.raw.disconnect(name)  # p4p caches channels: let this one close

        monitor.closer = close
        return monitor


def _event(value: Any) -> Event:
    stamp = value["timeStamp"]
    return Event(plain(value["value"]), value["alarm.severity"], value["alarm.message"],
                 stamp["secondsPastEpoch"] + stamp["nanoseconds"] * 1e-9)


class PvapyClient:
    """pvapy (pvAccessCPP)."""

    label = "pvapy"

    def __init__(self) -> None:
        import pvaccess

        self.pvaccess = pvaccess
        self._channels: dict[str, Any] = {}
        self.last_error = ""

    def channel(self, name: str) -> Any:
        channel = self._channels.get(name)
        if channel is None:
            channel = self._channels[name] = self.pvaccess.Channel(name)
            channel.setTimeout(DEFAULT_TIMEOUT)
        return channel

    def get_structure(self, name: str) -> Any:
        """Every field (pvapy's default request asks for value, alarm and time only)."""
        return self.channel(name).get("field()")

    def get(self, name: str) -> Any:
        return plain(self.get_structure(name)["value"])

    def get_meta(self, name: str) -> Event:
        value = self.get_structure(name)
        stamp = value["timeStamp"]
        return Event(plain(value["value"]), value["alarm"]["severity"],
                     value["alarm"]["message"],
                     stamp["secondsPastEpoch"] + stamp["nanoseconds"] * 1e-9)

    def put(self, name: str, value: Any) -> bool:
        """Put a value; True when accepted, else False with the error in `last_error`."""
        self.last_error = ""
        channel = self.channel(name)
        try:
            if isinstance(value, np.ndarray) or isinstance(value, (list, tuple)):
                channel.putScalarArray([v.item() if hasattr(v, "item") else v for v in value])
            else:
                channel.put(value)
        except self.pvaccess.PvaException as error:
            self.last_error = str(error)
            return False
        return True

    def monitor(self, name: str) -> Monitor:
        monitor = Monitor(name)
        channel = self.pvaccess.Channel(name)  # one of its own, closed with the monitor

        def on_connection(connected: bool) -> None:
            monitor.add(Event(connected=bool(connected)))

        def on_update(value: Any) -> None:
            # pvapy's arrays view memory it reuses: copy before the callback returns.
            stamp = value["timeStamp"]
            monitor.add(Event(plain(value["value"]), value["alarm"]["severity"],
                              value["alarm"]["message"],
                              stamp["secondsPastEpoch"] + stamp["nanoseconds"] * 1e-9))

        channel.setConnectionCallback(on_connection)
        channel.subscribe("test", on_update)
        channel.startMonitor("field()")

        def close() -> None:
            channel.stopMonitor()
            channel.unsubscribe("test")

        monitor.closer = close
        monitor.channel = channel  # keep it (and its callbacks) alive
        return monitor
