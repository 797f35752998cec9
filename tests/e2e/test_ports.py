"""End-to-end: where a relay serves, and never hiding another CA server (issue 11).

* A second relay with the same prefix exits with 3 naming the first one's address (its
  start-up CA search for ``<prefix>:pvlist`` was answered), and the first keeps answering.
* A relay with another prefix on a CA port that is taken serves on a dynamic TCP port,
  says so in one WARNING and in its status PVs, and exits with 3 under --strict-port.
* The start-up log names the CA server's addresses, the ZMQ endpoints with CURVE on or
  off, and the autosave file, one line per way in.

Every relay here has its own CA port from the session's pool (tests/conftest.py), and
every relay's search addresses are that pool: so a relay's start-up search reaches all
the others, as a search on a site's network would.
"""

from __future__ import annotations

import pytest

from tests.e2e._tools import full, status, wait_boot_failure
from tests.harness import wait_for

TAKEN = "is in use by another program: serving on dynamic TCP port"


def test_a_second_relay_with_the_same_prefix_exits_3_while_the_first_answers(
        client, start_relay):
    first = start_relay()
    assert client.put(full(first, "kept_f1"), 1.5)
    second = start_relay("--no-autosave", prefix=first.prefix, wait=False, expect_exit=3)
    reason = wait_boot_failure(second)
    assert reason.endswith(
        f"relayd cannot start: ca-server: a relay with prefix {first.prefix} already runs: "
        f"the CA server at 127.0.0.1:{first.port} answered a search for "
        f"{first.prefix}:pvlist; a second one would hide its PVs"), reason
    assert client.put(full(first, "kept_f1"), 2.5)
    assert client.get(full(first, "kept_f1")) == 2.5
    assert status(client, first, "ca:portTaken") == 0
    assert status(client, first, "ca:port") == first.port


def test_a_relay_on_a_taken_ca_port_warns_and_says_so_in_its_status(caproto_client,
                                                                     start_relay):
    first = start_relay()
    second = start_relay(env={"EPICS_CA_SERVER_PORT": str(first.port)})
    log = second.log_text()
    warnings = [line for line in log.splitlines() if TAKEN in line]
    assert len(warnings) == 1 and " WARNING " in warnings[0], log
    dynamic = int(warnings[0].split(TAKEN)[1].split()[0].rstrip("."))
    assert dynamic != first.port
    assert (f"CA server port {first.port} {TAKEN} {dynamic} instead. CA searches sent to "
            f"this host by unicast") in warnings[0]
    assert "give this relay its own EPICS_CAS_SERVER_PORT" in warnings[0]
    assert f"serving CA on TCP 127.0.0.1:{dynamic}, UDP 127.0.0.1:{first.port} (" in log
    # Its status PVs say so too (the search reaches whichever server gets the datagram:
    # polled until this one answers).
    wait_for(lambda: status(caproto_client, second, "ca:portTaken") == 1,
             what="status:ca:portTaken of the second relay")
    assert status(caproto_client, second, "ca:port") == dynamic


def test_strict_port_makes_a_taken_ca_port_a_boot_failure(start_relay):
    first = start_relay()
    second = start_relay("--strict-port", env={"EPICS_CA_SERVER_PORT": str(first.port)},
                         wait=False, expect_exit=3)
    reason = wait_boot_failure(second)
    assert f"relayd cannot start: ca-server: CA server port {first.port} {TAKEN}" in reason
    assert reason.endswith("(--strict-port refuses to serve so)"), reason


@pytest.mark.parametrize("curve", [False, True], ids=["curve-off", "curve-on"])
def test_the_start_up_log_says_where_the_relay_serves(start_relay, tmp_path, curve):
    from relayd.keys import keygen

    args = []
    if curve:
        keys = tmp_path / "authorized"
        keys.mkdir()
        _, secret = keygen(str(tmp_path / "relay"))
        keygen(str(keys / "publisher"))
        args = ["--curve-secret-key", secret, "--curve-authorized-keys", str(keys)]
    relay = start_relay(*args)
    log = relay.log_text()
    assert (f"relayd.ca: serving CA on TCP 127.0.0.1:{relay.port}, UDP 127.0.0.1:{relay.port} "
            f"(PVs {relay.prefix}:<name>_<dtype><count>; autosave {relay.autosave_path} "
            f"every 1 s)") in log, log
    assert (f"relayd.ingest: serving ZMQ on {relay.endpoint} "
            f"(CURVE {'on' if curve else 'off'})") in log, log
    assert (f"relayd.ingest: serving ZMQ-ack on {relay.ack_endpoint} "
            f"(CURVE {'on' if curve else 'off'})") in log, log
    assert (f"relayd.pva: serving PVA on TCP 127.0.0.1:{relay.pva_port}, "
            f"UDP 127.0.0.1:{relay.pva_search_port} "
            f"(PVs {relay.prefix}:<name>_<dtype><count>)") in log, log
    assert f"relayd.http: serving HTTP on {relay.url} (web page, API, metrics)" in log, log
