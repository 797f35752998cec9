"""``python -m workers.http``: the HTTP worker, as the supervisor starts it."""

from relayd.supervise.child import serve
from workers.http.loop import run

serve("http", run)
