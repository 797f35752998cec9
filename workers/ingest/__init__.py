"""The ZMQ ingest worker: pushed updates in, validated batches out to the CA process.

`validate` (the rules, no sockets), `loop` (the PULL socket, the pipe, the lifeline),
`gate` (CURVE and the IP allow-list). Run as ``python -m workers.ingest``.
"""
