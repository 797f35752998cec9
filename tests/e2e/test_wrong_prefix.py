"""End-to-end: a name under another relay's prefix never makes a nested PV (issue 11).

``other:prefix:x_f1`` pushed to relay ``<...>:relay`` used to create
``<...>:relay:other:prefix:x_f1``. The rule (relayd.core.names.Grammar.foreign, documented
in docs/PVS.md): a name sent without the prefix that has as many ':'-separated parts
before its last one as the prefix has parts is refused as wrongPrefix. Real relays with a
two-part prefix, pushes from a publisher process, reads and delpv puts through both CA
clients.
"""

from __future__ import annotations

from tests.e2e._tools import full, listed, run_snippet, status, wait_listed, wait_status_is
from tests.harness import unique_prefix


def test_a_pushed_name_of_another_relay_is_refused_and_creates_nothing(caproto_client,
                                                                      start_relay):
    relay = start_relay(prefix=unique_prefix() + ":relay")
    run_snippet(relay.endpoint, """
        with Client(endpoint) as r:
            r.put("motor:pos_f1", 1.5)              # relative: fewer parts than the prefix
            r.put("other:prefix:x_f1", 2.5)         # shaped like another relay's PV
            r.delete("other:prefix:y_f1")
        """)
    wait_status_is(caproto_client, relay, "refused:wrongPrefix", 2)
    last = caproto_client.get(full(relay, "status:lastRefusal"), as_string=True)
    assert last == (f"ZMQ update: wrongPrefix: 'other:prefix:y_f1' looks like a PV of a "
                    f"relay with prefix 'other:prefix', not {relay.prefix!r}; to mean this "
                    f"relay's PV, send '{relay.prefix}:other:prefix:y_f1'")
    wait_listed(caproto_client, relay, full(relay, "motor:pos_f1"))
    assert listed(caproto_client, relay) == [full(relay, "motor:pos_f1")]
    assert "refused ZMQ update: wrongPrefix: 'other:prefix:x_f1'" in relay.log_text()

    # Spelled out with the prefix, the same name is this relay's, nested as asked.
    run_snippet(relay.endpoint, f"""
        with Client(endpoint) as r:
            r.put("{relay.prefix}:other:prefix:x_f1", 3.5)
        """)
    wait_listed(caproto_client, relay, full(relay, "other:prefix:x_f1"))
    assert status(caproto_client, relay, "refused") == 2


def test_delpv_refuses_a_name_of_another_relay(client, start_relay):
    relay = start_relay(prefix=unique_prefix() + ":relay")
    nested = full(relay, "other:prefix:x_f1")
    assert client.put(nested, 1.0)
    assert not client.put(full(relay, "delpv"), "other:prefix:x_f1")  # relative: refused
    wait_status_is(client, relay, "refused:wrongPrefix", 1)
    assert listed(client, relay) == [nested]
    assert client.put(full(relay, "delpv"), nested)                    # in full: deleted
    wait_status_is(client, relay, "deleted", 1)
