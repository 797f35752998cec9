"""The Channel Access shell: the pcaspy server process that owns every PV.

The only package that imports pcaspy. `process` is the CA process's main loop, `server`
the pcas ``caServer``, `pvs` the PVs as pcas sees them, `gdd` the values as pcas carries
them, `control` the relay's own PVs, `apply` what the ingest worker forwards, `wakeup`
the thread that interrupts pcas's wait, `epics_env` the environment set for pcas.
"""
