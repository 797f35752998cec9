"""The clients the fleet tests run on a lab host, each as a process of its own.

    python -m tests.e2e._lab_clients watch pyepics|caproto NAME...
    python -m tests.e2e._lab_clients publish ROUTES_JSON

* ``watch``: an unmodified CA client (pyepics on libca, or caproto's threading client)
  that knows nothing but the names: it finds each PV with the EPICS environment of its
  host (broadcast search) and monitors it. One JSON object per line on stdout:
  ``{"connected": name, "host": "addr:port"}``, then ``{"value": name, "v": value}`` per
  monitor event. It runs until its stdin closes.
* ``publish``: a `relayd.client.fleet.Fleet` over the routes (a JSON object, prefix ->
  endpoint), driven over stdin: each line is ``{"call": method, "args": [...]}`` and
  gets one line back, ``{"ok": result}`` or ``{"error": class name, "text": message}``.

They run as processes because a process on a lab host must be started inside its
namespace, and because pyepics reads its environment once per process.
"""

from __future__ import annotations

import json
import sys
import threading
from typing import Any, Callable

_print_lock = threading.Lock()


def say(**fields: Any) -> None:
    with _print_lock:
        print(json.dumps(fields), flush=True)


def plain(value: Any) -> Any:
    """A value as JSON can carry it (numpy scalars and arrays become numbers and lists)."""
    return value.tolist() if hasattr(value, "tolist") else value


def watch_pyepics(names: list[str]) -> list[Any]:
    import epics

    pvs = []
    for name in names:
        def on_connection(pvname: str = "", conn: bool = False, pv: Any = None, **_: Any) -> None:
            if conn:
                say(connected=pvname, host=pv.host if pv is not None else None)

        def on_value(pvname: str = "", value: Any = None, **_: Any) -> None:
            say(value=pvname, v=plain(value))

        pvs.append(epics.PV(name, callback=on_value, connection_callback=on_connection,
                            auto_monitor=True))
    return pvs


def watch_caproto(names: list[str]) -> list[Any]:
    from caproto.threading.client import Context

    keep: list[Any] = []
    for pv in Context().get_pvs(*names):
        def on_connection(pv: Any, state: str) -> None:
            if state == "connected":
                host, port = pv.circuit_manager.circuit.address
                say(connected=pv.name, host=f"{host}:{port}")

        def on_value(sub: Any, response: Any, name: str = pv.name) -> None:
            data = response.data
            say(value=name, v=plain(data[0] if len(data) == 1 else data))

        pv.connection_state_callback.add_callback(on_connection, run=True)
        sub = pv.subscribe()
        sub.add_callback(on_value)
        keep += [pv, sub, on_connection, on_value]  # caproto holds callbacks weakly
    return keep


WATCHERS: dict[str, Callable[[list[str]], list[Any]]] = {
    "pyepics": watch_pyepics, "caproto": watch_caproto,
}


def publish(routes: dict[str, str]) -> None:
    from relayd.client.fleet import Fleet

    calls = {"put", "put_many", "delete", "set_meta", "prefix_of"}
    with Fleet(routes, send_timeout=5.0) as fleet:
        for line in sys.stdin:
            request = json.loads(line)
            if request["call"] not in calls:
                say(error="ValueError", text=f"no call {request['call']!r}")
                continue
            try:
                result = getattr(fleet, request["call"])(*request.get("args", ()))
            except Exception as error:  # reported to the test, which decides
                say(error=type(error).__name__, text=str(error))
            else:
                say(ok=result)


def main(argv: list[str]) -> int:
    if argv[:1] == ["watch"] and len(argv) > 2 and argv[1] in WATCHERS:
        keep = WATCHERS[argv[1]](argv[2:])
        sys.stdin.read()  # until the test closes our stdin
        del keep
        return 0
    if argv[:1] == ["publish"] and len(argv) == 2:
        publish(json.loads(argv[1]))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
