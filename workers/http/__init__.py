"""The HTTP worker: the web page, the JSON API and /metrics (``python -m workers.http``).

It reads the relay's PVs from a mirror the CA process keeps current through a change feed
(`mirror`, `link`), and writes through the same intake and the same verdicts as every
way in (`service`); docs/HTTP.md is the operator's reference.
"""
