"""relayd's worker processes (started by the relayd supervisor, never by hand)."""
