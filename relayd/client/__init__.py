"""Publishers' side of relayd: the push client (`push`) and the ``relay-push`` command.

Needs only pyzmq and msgpack, so that a script on a host without EPICS (or numpy) can
publish::

    from relayd.client import Client
"""

from relayd.client.fleet import Fleet, FleetBatch, FleetSendError, UnknownPrefix
from relayd.client.push import Batch, Client, RelayError, RelayUnreachable

__all__ = ["Batch", "Client", "Fleet", "FleetBatch", "FleetSendError", "RelayError",
           "RelayUnreachable", "UnknownPrefix"]
