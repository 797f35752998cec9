"""``python -m workers.ingest``: the ZMQ ingest worker, as the supervisor starts it."""

from relayd.supervise.child import serve
from workers.ingest.loop import run

serve("ingest", run)
