"""The scenarios, in the order run.py runs them.

A scenario is a function ``run(ctx) -> (figures, runs)``: it starts the servers it needs
through ``ctx`` (so that run.py can stop everything afterwards), measures relayd and its
baselines ``ctx.reps`` times each, and returns `bench.report.Figure` rows plus the raw
results of every run for the JSON file. A new scenario is one module and one line here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from bench.scenarios.acks import acks
from bench.scenarios.arrays import arrays
from bench.scenarios.autosave import autosave
from bench.scenarios.buffers import buffers
from bench.scenarios.ca_puts import ca_puts
from bench.scenarios.caget_under_load import caget_under_load
from bench.scenarios.conflation import conflation
from bench.scenarios.fleet import fleet
from bench.scenarios.http_overhead import http_overhead
from bench.scenarios.http_paging import http_paging
from bench.scenarios.latency import latency
from bench.scenarios.pva import pva_arrays, pva_ca_cost, pva_scalars
from bench.scenarios.scale import scale
from bench.scenarios.soak import soak
from bench.scenarios.zmq_throughput import zmq_batch100, zmq_single


@dataclass(frozen=True)
class Scenario:
    name: str
    run: Callable
    quick: bool = True  # part of --quick (the CI smoke run)
    summary: str = ""


SCENARIOS = (
    Scenario("zmq_batch100", zmq_batch100, summary="ZMQ batches of 100 -> C monitor, updates/s"),
    Scenario("zmq_single", zmq_single, summary="ZMQ one update per message -> C monitor, msgs/s"),
    Scenario("conflation", conflation, summary="10 hot PVs, accepted updates/s, last value kept"),
    Scenario("arrays", arrays, summary="10 x 10,000 float64 via ZMQ, MB/s"),
    Scenario("latency", latency, summary="push -> event and CA put -> event latency at 1k/s"),
    Scenario("ca_puts", ca_puts, summary="CA puts/s from one C client vs plain pcaspy"),
    Scenario("scale", scale, summary="100k PVs (10k quick): creation, RSS, connect, CA creation"),
    Scenario("caget_under_load", caget_under_load, summary="CA read latency during heavy ingest"),
    Scenario("soak", soak, quick=False, summary="50k updates/s for --soak-minutes, RSS growth"),
    Scenario("autosave", autosave, summary="autosave cost and restore time (skipped without autosave)"),
    Scenario("fleet", fleet, quick=False,
             summary="1, 2, 3 relays on hosts of their own (netns): aggregate updates/s, CPU"),
    Scenario("buffers", buffers, quick=False,
             summary="RSS of 20,000 full _F1000 buffers against their data"),
    Scenario("pva_scalars", pva_scalars, summary="1000 PVs via ZMQ -> PVA monitor vs bare p4p, updates/s"),
    Scenario("pva_arrays", pva_arrays, summary="10 x 10,000 float64 via ZMQ -> PVA monitor vs bare p4p, MB/s"),
    Scenario("pva_ca_cost", pva_ca_cost, summary="CA updates/s with PVA served vs --no-pva"),
    Scenario("acks", acks, summary="acknowledged updates/s (1 and 64 in flight) vs fire-and-forget"),
    Scenario("http_overhead", http_overhead,
             summary="100 PVs pushed with the web page open on them vs --no-http"),
    Scenario("http_paging", http_paging,
             summary="GET of the first page of 100k PVs (quick: 20k) vs of 1,000, ms"),
)

BY_NAME = {scenario.name: scenario for scenario in SCENARIOS}
