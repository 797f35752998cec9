"""The HTTP worker's pure rules: bodies to updates, verdicts to statuses, who may do what,
the metrics of the status PVs, and the feed's rows. Values only."""

from __future__ import annotations

import math

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from relayd.config import Config
from relayd.core import menus, protocol
from relayd.core.errors import Reason, Refused
from relayd.core.feed import PREVIEW, Row, full_value, json_safe, row
from relayd.core.meta import Meta
from relayd.core.names import Grammar
from relayd.core.pvstate import new_state
from relayd.core.status import STATUS_PVS
from workers.http import answers, bodies
from workers.http.access import Access
from workers.http.metrics import families, metric_for
from workers.http.mirror import Entry

GRAMMAR = Grammar("p")


def spec(name: str):
    return GRAMMAR.spec_for(name)


# --- bodies -------------------------------------------------------------------------------


@pytest.mark.parametrize("body, name, value", [
    (b"21.2", "t_f1", 21.2),
    (b" 7\n", "n_i1", 7),
    (b"1 2 3", "a_f3", [1, 2, 3]),
    (b"1.5,2.5", "a_f3", [1.5, 2.5]),
    (b"[1, 2e-3, nan]", "a_F10", [1, 0.002]),  # nan checked below
    (b"hello world", "m_c20", "hello world"),
    (b"caf\xc3\xa9", "m_c20", "caf\u00e9"),
    (b"\xff\xfe", "m_c20", b"\xff\xfe"),
])
def test_a_plain_text_body_is_the_value_for_its_pv(body, name, value) -> None:
    update = bodies.put_update(name, spec(name), body, "application/x-www-form-urlencoded")
    assert update.pv == name and update.op == protocol.PUT
    if name == "a_F10":
        assert update.value[:2] == value and math.isnan(update.value[2])
    else:
        assert update.value == value


@pytest.mark.parametrize("body", [b"", b"   ", b"twelve", b"1 two", b"\xff"])
def test_a_plain_text_body_that_is_not_numbers_is_a_bad_value(body) -> None:
    with pytest.raises(Refused) as raised:
        bodies.put_update("t_f1", spec("t_f1"), body, None)
    assert raised.value.reason is Reason.BAD_VALUE


def test_a_json_body_is_checked_as_a_zmq_update() -> None:
    json_type = "application/json; charset=utf-8"
    update = bodies.put_update("t_f1", spec("t_f1"), b'{"value": 1.5, "ts": 1700000000, '
                               b'"meta": {"egu": "K"}}', json_type)
    assert (update.value, update.ts, update.meta) == (1.5, 1700000000.0, {"egu": "K"})
    assert bodies.put_update("a_f3", spec("a_f3"), b"[1, 2]", json_type).value == [1, 2]
    assert bodies.put_update("m_c9", spec("m_c9"), b'"hi"', json_type).value == "hi"
    meta_only = bodies.put_update("t_f1", spec("t_f1"), b'{"meta": {"hihi": 5}}', json_type)
    assert meta_only.value is protocol.NO_VALUE
    for bad in (b'{"valeu": 1}', b'{"pv": "x_f1", "value": 1}', b'{"ts": "now", "value": 1}',
                b"{not json", b'{"op": "delete"}'):
        with pytest.raises(Refused) as raised:
            bodies.put_update("t_f1", spec("t_f1"), bad, json_type)
        assert raised.value.reason is Reason.MALFORMED, bad


def test_a_batch_body_is_a_json_array() -> None:
    assert bodies.batch_items(b'[{"pv": "a_f1", "value": 1}]') == [{"pv": "a_f1", "value": 1}]
    for bad in (b'{"pv": "a_f1"}', b"nope", b"[" + b"{}," * 5 + b"{}]"):
        with pytest.raises(Refused) as raised:
            bodies.batch_items(bad, max_updates=5)
        assert raised.value.reason is Reason.MALFORMED


# --- verdicts ------------------------------------------------------------------------------


def test_every_reason_has_an_http_status() -> None:
    assert set(answers.STATUS) == set(Reason)
    assert answers.status_of(answers.accepted("p:t_f1")) == 200
    assert answers.status_of(answers.refused("x", "noSuchPV", "gone")) == 404
    assert answers.status_of(answers.refused("x", "badValue", "no")) == 400
    assert answers.status_of(answers.refused("x", "pvLimit", "full")) == 507
    assert answers.status_of(answers.refused("x", "readOnly", "no")) == 403
    assert answers.batch_status([answers.accepted("a")]) == 200
    assert answers.batch_status([answers.accepted("a"), answers.refused("b", "badName", "")]) \
        == answers.PARTLY


def test_a_pv_as_the_api_shows_it() -> None:
    entry = Entry(Row("p:a_F100", [1.0, math.nan], 40, menus.MINOR, 4, 1_700_000_000_500_000_000,
                      {"egu": "mm", "high": 5.0}, "zmq 127.0.0.1", 12), 0.0)
    shown = answers.pv_json(entry, GRAMMAR, 1.0)
    assert shown["name"] == "p:a_F100" and shown["dtype"] == "f" and shown["buffer"]
    assert shown["count"] == 100 and shown["elements"] == 40 and shown["truncated"]
    assert shown["value"] == [1.0, "NaN"]
    assert (shown["severity"], shown["status"]) == ("MINOR", "HIGH")
    assert shown["ts"] == pytest.approx(1_700_000_000.5)
    assert shown["attributes"]["egu"] == "mm" and shown["attributes"]["hihi"] is None
    assert shown["writer"] == "zmq 127.0.0.1" and shown["updates"] == 12
    whole = answers.pv_json(entry, GRAMMAR, 1.0, list(range(40)), whole=True)
    assert whole["value"] == list(range(40)) and not whole["truncated"]


# --- access --------------------------------------------------------------------------------


def test_without_a_token_loopback_reads_and_writes_and_nothing_else(tmp_path) -> None:
    access = Access.from_config(Config())
    for host in ("127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"):
        assert access.check(host, None, write=True) is None
    status, refused = access.check("10.1.2.3", None, write=False)
    assert status == 403 and refused.reason is Reason.AUTH_DENIED
    assert access.check("10.1.2.3", "Bearer anything", write=True)[0] == 403
    assert access.check(None, None, write=False)[0] == 403


def test_networks_open_reads_and_writes(tmp_path) -> None:
    access = Access.from_config(Config(http_read_from=("10.0.0.0/8",),
                                       http_write_from=("192.168.1.7",)))
    assert access.check("10.9.9.9", None, write=False) is None
    assert access.check("10.9.9.9", None, write=True)[0] == 403
    assert access.check("192.168.1.7", None, write=True) is None
    assert access.check("192.168.1.7", None, write=False) is None  # a writer may read
    assert access.check("192.168.1.8", None, write=False)[0] == 403


def test_with_a_token_every_write_needs_it(tmp_path) -> None:
    path = tmp_path / "token"
    path.write_text("s3cret-token-of-some-length\n")
    access = Access.from_config(Config(http_token_file=str(path)))
    assert access.check("127.0.0.1", None, write=False) is None  # loopback still reads
    status, refused = access.check("127.0.0.1", None, write=True)
    assert status == 401 and "no token" in refused.detail
    status, refused = access.check("127.0.0.1", "Bearer wrong", write=True)
    assert status == 401 and "wrong token" in refused.detail
    assert access.check("127.0.0.1", "Bearer s3cret-token-of-some-length", write=True) is None
    assert access.check("10.0.0.1", "bearer s3cret-token-of-some-length", write=True) is None
    assert access.check("10.0.0.1", "Basic s3cret-token-of-some-length", write=False)[0] == 401


def test_an_unusable_token_file_is_a_boot_error(tmp_path) -> None:
    from relayd.core.errors import BootError

    with pytest.raises(BootError, match="cannot read"):
        Access.from_config(Config(http_token_file=str(tmp_path / "missing")))
    (tmp_path / "short").write_text("abc")
    with pytest.raises(BootError, match="shorter than 16"):
        Access.from_config(Config(http_token_file=str(tmp_path / "short")))


def test_http_options_are_checked() -> None:
    for bad in ({"http_bind": ("8080",)}, {"http_bind": ()}, {"http_bind": ("h:99999",)},
                {"http_read_from": ("ten.0.0.0/8",)}, {"http_cert": "c.pem"},
                {"http_max_body": 0}):
        with pytest.raises(ValueError):
            Config(**bad)
    assert Config(http_bind=("[::1]:8081",)).http_url == "http://[::1]:8081"
    assert Config(http_bind=("0.0.0.0:9000",), http_cert="c", http_key="k").http_url == \
        "https://127.0.0.1:9000"


# --- metrics -------------------------------------------------------------------------------


def test_every_numeric_status_pv_is_a_metric_of_its_own_name() -> None:
    numeric = [pv for pv in STATUS_PVS if pv.kind.value != "c"]
    status = {pv.suffix: index for index, pv in enumerate(numeric)}
    made = families(status)
    samples = {(sample.name, tuple(sorted(sample.labels.items())))
               for family in made for sample in family.samples}
    assert len(samples) == len(numeric)  # one sample each, none sharing a name and labels
    for family in made:
        assert family.name.startswith("relayd_") and family.documentation
    assert metric_for("status:refused:badName").label == ("reason", "badName")
    assert metric_for("status:restarts:ca").label == ("process", "ca-server")
    assert metric_for("status:somethingNew:countIt").name == "relayd_something_new_count_it"


def test_the_metrics_text_is_prometheus_format() -> None:
    class Made:
        def collect(self):
            return families({"status:pvs": 3, "status:refused:badValue": 2.0,
                             "status:accepted": 10})

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Made())
    text = generate_latest(registry).decode()
    assert "# HELP relayd_pvs number of PVs the relay holds" in text
    assert "# TYPE relayd_accepted_updates_total counter" in text
    assert 'relayd_refusals_by_reason_total{reason="badValue"} 2.0' in text
    assert "relayd_pvs 3.0" in text


# --- the feed's rows -----------------------------------------------------------------------


def test_rows_cut_arrays_to_a_preview_and_keep_everything_else() -> None:
    state = new_state(spec("p:trace_F1000"), Meta(egu="V"))
    state.put(np.arange(300, dtype=np.float64), 5)
    made = row(state, "http 127.0.0.1", 3)
    assert made.value == list(range(300 - PREVIEW, 300)) and made.elements == 300
    assert made.meta == {"egu": "V"} and made.writer == "http 127.0.0.1"
    assert full_value(state) == list(range(300))
    array = new_state(spec("p:fit_f40"))
    array.put(np.arange(40, dtype=np.float64), 5)
    assert row(array).value == list(range(PREVIEW)) and row(array).meta is None
    text = new_state(spec("p:motd_c500"))
    text.put(b"x" * 400, 1)
    assert len(row(text).value) < 400 and full_value(text) == "x" * 400
    assert row(new_state(spec("p:never_f1"))).value is None
    assert json_safe([1.0, math.inf, -math.inf]) == [1.0, "Infinity", "-Infinity"]
