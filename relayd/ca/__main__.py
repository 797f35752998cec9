"""``python -m relayd.ca``: the CA server process, as the supervisor starts it."""

from relayd.ca.process import run
from relayd.supervise.child import serve

serve("ca-server", run)
