"""The CA status of every refusal (relayd.ca.server.PUT_STATUS): ECA_PUTFAIL for every client.

pcas answers a refused plain put with an exception message whose ECA code it derives from
the status: S_cas_noMemory, S_cas_noConvert and S_cas_badType become ECA_ALLOCMEM,
ECA_NOCONVERT and ECA_BADTYPE, every other status ECA_PUTFAIL (pcas's
``casStrmClient::writeActionSendFailureStatus``). tests/e2e/test_ca_status.py sees the
codes through real clients; this checks that no reason can slip to one of the three.
"""

from __future__ import annotations

import pytest
from pcaspy import cas

from relayd.ca.server import PUT_STATUS
from relayd.core.errors import Reason

NOT_PUTFAIL = {cas.S_cas_noMemory, cas.S_cas_noConvert, cas.S_cas_badType}


@pytest.mark.parametrize("reason", list(Reason), ids=lambda reason: reason.code)
def test_every_reason_has_a_status_that_clients_see_as_putfail(reason: Reason) -> None:
    status = PUT_STATUS[reason]
    assert status not in NOT_PUTFAIL
    assert status != cas.S_casApp_success
