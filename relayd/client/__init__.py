"""Publishers' side of relayd: the push client (`push`, `acked`) and the ``relay-push``
command.

Needs only pyzmq and msgpack, so that a script on a host without EPICS (or numpy) can
publish::

    from relayd.client import Client
"""

from relayd.client.acked import Ticket
from relayd.client.errors import (
    BatchRefused, NotDurable, ProtocolError, RelayError, RelayUnreachable, UpdateRefused,
)
from relayd.client.fleet import Fleet, FleetBatch, FleetSendError, UnknownPrefix
from relayd.client.push import Batch, Client

__all__ = ["Batch", "BatchRefused", "Client", "Fleet", "FleetBatch", "FleetSendError",
           "NotDurable", "ProtocolError", "RelayError", "RelayUnreachable", "Ticket",
           "UnknownPrefix", "UpdateRefused"]
