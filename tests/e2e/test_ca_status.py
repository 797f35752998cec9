"""End-to-end: the CA status a client gets for a refused put, with both put kinds.

A refusal must reach every CA client as ECA_PUTFAIL, as an IOC answers a put it will not
take (issue 11: plain puts got ECA_NOCONVERT, or ECA_ALLOCMEM when the relay was full).
Two kinds of put, two clients each:

* a put with completion (``caput -c``, pyepics ``wait=True``, caproto ``wait=True``): its
  completion status;
* a plain put (``caput``, ``wait=False``): CA has no reply for a put that worked, so a
  refusal comes back as an exception message (CA_PROTO_ERROR) carrying the status.

pyepics' status comes from libca itself: a put callback and an exception handler
installed through pyepics' own libca binding. caproto's threading client only logs the
exception messages it receives (at DEBUG, on ``caproto.circ``), so they are read there.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from typing import Any, Iterator

import pytest

from tests.e2e._tools import full
from tests.harness import DEFAULT_TIMEOUT, RelayProcess, wait_for

ECA_PUTFAIL = 160  # CA_K_WARNING, message 20
DBR_DOUBLE, DBR_LONG = 6, 5


class _ExceptionArgs(ctypes.Structure):
    """libca's ``struct exception_handler_args``, handed to the handler by value."""

    _fields_ = [("usr", ctypes.c_void_p), ("chid", ctypes.c_void_p),
                ("type", ctypes.c_long), ("count", ctypes.c_long),
                ("addr", ctypes.c_void_p), ("stat", ctypes.c_long), ("op", ctypes.c_long),
                ("ctx", ctypes.c_char_p), ("pFile", ctypes.c_char_p),
                ("lineNo", ctypes.c_uint)]


class LibcaExceptions:
    """ECA codes of the exception messages libca receives, while installed."""

    HANDLER = ctypes.CFUNCTYPE(None, _ExceptionArgs)

    def __init__(self, client: Any):
        self.libca = client.ca.libca
        self.codes: list[int] = []
        self._lock = threading.Lock()
        self._handler = self.HANDLER(self._on_exception)

    def _on_exception(self, args: _ExceptionArgs) -> None:
        with self._lock:
            self.codes.append(int(args.stat))

    def __enter__(self) -> "LibcaExceptions":
        self.libca.ca_add_exception_event(self._handler, None)
        return self

    def __exit__(self, *exc: object) -> None:
        self.libca.ca_add_exception_event(None, None)  # libca's default handler again


class CaprotoErrors(logging.Handler):
    """ECA codes of the ErrorResponses caproto's threading client receives, while installed."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.codes: list[int] = []
        self._logger = logging.getLogger("caproto.circ")

    def emit(self, record: logging.LogRecord) -> None:
        from caproto import ErrorResponse

        for arg in record.args if isinstance(record.args, tuple) else ():
            if isinstance(arg, ErrorResponse):
                self.codes.append(int(arg.header.parameter2))

    def __enter__(self) -> "CaprotoErrors":
        self._level = self._logger.level
        self._logger.setLevel(logging.DEBUG)
        self._logger.addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        self._logger.removeHandler(self)
        self._logger.setLevel(self._level)


def plain_put_status(client: Any, name: str, value: float) -> int:
    """The ECA code of the exception a plain put of `value` to `name` brings back."""
    if client.label == "caproto":
        pv = client.pv(name)
        with CaprotoErrors() as errors:
            pv.write([value], wait=False)
            wait_for(lambda: errors.codes, what=f"an exception message for {name}")
        return errors.codes[0]
    chid = client.pv(name).chid
    ftype = client.ca.field_type(chid)
    data = (1 * client.epics.dbr.Map[ftype])(value)
    with LibcaExceptions(client) as errors:
        assert client.ca.libca.ca_array_put(ftype, 1, chid, data) == 1
        client.ca.flush_io()
        wait_for(lambda: errors.codes, what=f"an exception message for {name}")
    return errors.codes[0]


def callback_put_status(client: Any, name: str, value: float) -> int:
    """The completion status of a put with callback of `value` to `name`."""
    if client.label == "caproto":
        response = client.pv(name).write([value], wait=True, timeout=DEFAULT_TIMEOUT)
        return int(response.header.parameter1)
    ftype = client.ca.field_type(client.pv(name).chid)
    data = (1 * client.epics.dbr.Map[ftype])(value)
    with LibcaExceptions(client):  # pcas adds an exception message: keep it off stderr
        return client.put_dbr_status(name, ftype, 1, data)


PUT_KINDS = {"plain": plain_put_status, "callback": callback_put_status}


@pytest.fixture(scope="module")
def full_relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    """A relay that holds one PV at most, so that a second name is refused (pvLimit)."""
    from tests.conftest import PORTS
    from tests.harness import unique_prefix

    relay = RelayProcess(unique_prefix(), PORTS.take(), tmp_path_factory.mktemp("full"),
                         ["--max-pvs", "1", "--no-autosave"])
    relay.start()
    yield relay
    code = relay.stop()
    PORTS.give_back(relay.port)
    assert code == 0, relay.log_text()


@pytest.mark.parametrize("kind", PUT_KINDS)
def test_a_bad_value_is_putfail(client, shared_relay, name, kind):
    """A field value the relay refuses (badValue): PREC 18."""
    pv = full(shared_relay, name("prec_f1"))
    assert client.put(pv, 1.0)
    assert PUT_KINDS[kind](client, f"{pv}.PREC", 18) == ECA_PUTFAIL
    assert client.get(f"{pv}.PREC") == 0


@pytest.mark.parametrize("kind", PUT_KINDS)
def test_a_put_to_a_read_only_pv_is_putfail(client, shared_relay, kind):
    assert PUT_KINDS[kind](client, full(shared_relay, "status:pvs"), 5) == ECA_PUTFAIL


@pytest.mark.parametrize("kind", PUT_KINDS)
def test_a_put_beyond_the_pv_limit_is_putfail(client, full_relay, name, kind):
    """pvLimit answered ECA_ALLOCMEM to a plain put ("unable to allocate memory")."""
    assert client.put(full(full_relay, "first_f1"), 1.0) or True  # the one PV it holds
    pv = full(full_relay, name("beyond_f1"))
    assert PUT_KINDS[kind](client, pv, 2.0) == ECA_PUTFAIL
