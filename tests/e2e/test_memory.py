"""End-to-end: memory a deleted PV held is given back (issue 11).

A deleted PV that had a staleness timeout stayed referenced, with its whole array, until
its deadline passed: with a large TMO, for ever. Creating and deleting a large array PV
again and again grew the CA process by hundreds of MB, unseen by --max-total-bytes, which
counts only the PVs that exist. Every structure that refers to a PV must let go of it on
delete; this measures the CA process's resident memory over many such cycles.
"""

from __future__ import annotations

import pytest

from tests.e2e._tools import run_snippet, wait_status_is

ELEMENTS = 1_000_000  # 8 MB of doubles per PV
WARM_UP, CYCLES = 4, 40  # 40 cycles held 320 MB before the fix
ALLOWED_GROWTH_KIB = 80 * 1024

CYCLE = """
import numpy as np
count = int(sys.argv[2])
with Client(endpoint) as relay:
    for i in range(count):
        relay.put("big_f%d" % {elements}, np.full({elements}, float(i)), meta={{"tmo": 1e6}})
        relay.delete("big_f%d" % {elements})
""".format(elements=ELEMENTS)


def cycles(relay, count: int, done: int, reader) -> int:
    """`count` more create/delete cycles; returns the deletes done in all, once applied."""
    run_snippet(relay.endpoint, CYCLE, str(count))
    wait_status_is(reader, relay, "deleted", done + count)
    return done + count


@pytest.mark.parametrize("autosave", [False, True], ids=["no-autosave", "autosave"])
def test_deleted_pvs_with_a_staleness_timeout_give_their_memory_back(caproto_client,
                                                                    start_relay, autosave):
    """With autosave on, its dirty map and the writer's pending rows are in play too."""
    options = ["--autosave-interval", "0.2"] if autosave else ["--no-autosave"]
    relay = start_relay(*options, "--max-total-bytes", str(2 * 8 * ELEMENTS))
    done = cycles(relay, WARM_UP, 0, caproto_client)
    before = relay.rss_kib()
    done = cycles(relay, CYCLES, done, caproto_client)
    growth = relay.rss_kib() - before
    assert growth < ALLOWED_GROWTH_KIB, (
        f"the CA process grew by {growth // 1024} MB over {CYCLES} create/delete cycles "
        f"of an {8 * ELEMENTS // 10**6} MB PV")
