"""Processes and their plumbing: the supervisor parent, the children's common start-up,
the child lifecycle, the lifelines and the internal pipe. No pcaspy, no ZMQ."""
