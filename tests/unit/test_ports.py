"""The pure parts of relayd.ca.ports: the EPICS environment read, and CA search packets.

The packets are checked against caproto's protocol core, an independent implementation
of CA, so a mistake in both directions at once cannot pass.
"""

from __future__ import annotations

import struct

import caproto
from caproto._commands import read_datagram
import pytest

from relayd.ca.ports import CAEnv, search_answers, search_request
from relayd.logs import serving


def test_the_environment_with_nothing_set_is_libcas_default() -> None:
    env = CAEnv.read({})
    assert env == CAEnv(5064, 5064, ("0.0.0.0",), (), True)
    assert env.search_targets(["10.0.0.255"]) == [("10.0.0.255", 5064), ("127.0.0.1", 5064)]


def test_search_targets_follow_the_address_list_and_the_server_port() -> None:
    env = CAEnv.read({"EPICS_CA_SERVER_PORT": "5070", "EPICS_CAS_SERVER_PORT": "5080",
                      "EPICS_CA_ADDR_LIST": "10.0.0.5 10.0.0.6:6000 10.0.0.5",
                      "EPICS_CA_AUTO_ADDR_LIST": "no",
                      "EPICS_CAS_INTF_ADDR_LIST": "127.0.0.1 10.0.0.7"})
    assert (env.server_port, env.client_port) == (5080, 5070)
    assert env.search_targets(["10.0.0.255"]) == [
        ("10.0.0.5", 5070), ("10.0.0.6", 6000), ("127.0.0.1", 5080), ("10.0.0.7", 5080)]


@pytest.mark.parametrize("value", ["", "x", "-"])
def test_a_port_that_is_not_a_number_is_the_default(value: str) -> None:
    assert CAEnv.read({"EPICS_CA_SERVER_PORT": value}).server_port == 5064


@pytest.mark.parametrize("name", ["p:pvlist", "5trap:relay:pvlist", "a" * 63, "a" * 64])
def test_a_search_request_is_a_version_and_a_search_as_caproto_reads_them(name: str) -> None:
    data = search_request(name)
    assert len(data) % 8 == 0
    commands = read_datagram(data, ("127.0.0.1", 5064), caproto.CLIENT)  # sent by a client
    assert [type(c).__name__ for c in commands] == ["VersionRequest", "SearchRequest"]
    version, search = commands
    assert version.version == 13
    assert search.name == name and search.version == 13
    assert search.reply == caproto.NO_REPLY


def _reply(address: int, port: int, search_id: int) -> bytes:
    """A search reply as pcas sends it: a version header, then the search response."""
    return (struct.pack(">HHHHII", 0, 0, 0, 13, 0, 0)
            + struct.pack(">HHHHII", 6, 8, port, 0, address, search_id) + b"\0\x0d" + b"\0" * 6)


def test_an_answer_names_the_server_at_the_address_it_gives_or_it_came_from() -> None:
    search_id = struct.unpack_from(">I", search_request("x"), 16 + 12)[0]
    assert search_answers(_reply(0xFFFFFFFF, 41234, search_id), "127.0.0.1") == [
        "127.0.0.1:41234"]
    assert search_answers(_reply(0x0A000005, 5064, search_id), "127.0.0.1") == [
        "10.0.0.5:5064"]


def test_an_answer_as_caproto_writes_it() -> None:
    search_id = struct.unpack_from(">I", search_request("x"), 16 + 12)[0]
    for ip, shown in (("255.255.255.255", "127.0.0.1"), ("10.1.2.3", "10.1.2.3")):
        datagram = b"".join(bytes(part) for part in (
            caproto.VersionResponse(13),
            caproto.SearchResponse(port=41234, ip=ip, cid=search_id, version=13)))
        assert search_answers(datagram, "127.0.0.1") == [f"{shown}:41234"]


def test_answers_to_other_searches_and_other_messages_are_not_answers() -> None:
    search_id = struct.unpack_from(">I", search_request("x"), 16 + 12)[0]
    assert search_answers(_reply(0xFFFFFFFF, 5064, search_id + 1), "127.0.0.1") == []
    assert search_answers(struct.pack(">HHHHII", 13, 0, 0, 0, 0, 0), "h") == []  # a beacon
    assert search_answers(b"\0\x06", "h") == []  # cut short
    assert search_answers(b"", "h") == []


def test_the_serving_line() -> None:
    assert serving("CA", ["TCP 127.0.0.1:5064", "UDP 127.0.0.1:5064"], "PVs p:x", "a") == (
        "serving CA on TCP 127.0.0.1:5064, UDP 127.0.0.1:5064 (PVs p:x; a)")
    assert serving("ZMQ", ("tcp://127.0.0.1:5555",)) == "serving ZMQ on tcp://127.0.0.1:5555"
    assert serving("PVA", []) == "serving PVA on nothing"
