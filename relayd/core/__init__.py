"""The pure core: relayd's rules, with no I/O and no pcaspy.

Names and their grammar (`names`), values and conversions (`values`), attributes and
their fields (`meta`, `menus`), alarms (`alarms`), PV state (`pvstate`, `ring`), the PV
table (`registry`), the write logic (`writes`), counters (`stats`, `status`), staleness
(`staleness`), the ZMQ wire format (`protocol`) and refusals (`errors`). Every shell
(CA, the ingest worker, the store, the client) applies these rules; none re-states them.
"""
