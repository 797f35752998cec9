"""End-to-end: the web page in a real headless browser (Debian's Chromium, driven by
Playwright) against a real relayd fed over ZMQ.

Chromium comes from Debian (`.ci/run` installs it): Playwright cannot download its own
browsers here. Without /usr/bin/chromium these tests fail, saying so, rather than skip.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Iterator

import pytest

from relayd.client import Client
from tests.e2e._tools import full
from tests.harness import RelayProcess

pytestmark = pytest.mark.timeout(120)

CHROMIUM = Path("/usr/bin/chromium")
# The flags this machine's Chromium needs (no sandbox as root, no network of its own).
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync"]
YELLOW = "rgb(245, 217, 10)"  # --minor in style.css
GREEN = "rgb(27, 138, 47)"  # --ok


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """A persistent Chromium context with a fresh profile, for this module's pages."""
    if not CHROMIUM.exists():
        pytest.fail("the page tests need Debian's Chromium: apt-get install -y chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), headless=True,
            executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS,
            viewport={"width": 1280, "height": 900})
        yield context
        context.close()


@pytest.fixture
def page(browser) -> Iterator:
    opened = browser.new_page()
    yield opened
    opened.close()


@pytest.fixture
def relay(start_relay) -> Iterator[RelayProcess]:
    yield start_relay()


@pytest.fixture
def publisher(relay: RelayProcess) -> Iterator[Client]:
    with Client(relay.endpoint) as client:
        yield client


def row(relay: RelayProcess, base: str) -> str:
    return f'#pvs tr[data-name="{full(relay, base)}"]'


def test_a_pv_pushed_over_zmq_appears_within_a_second(relay, publisher, page) -> None:
    publisher.put("first_f1", 1.0)
    page.goto(relay.url)
    page.wait_for_selector(row(relay, "first_f1"), timeout=10_000)
    assert page.inner_text("#sync").startswith("live")
    pushed = time.monotonic()
    publisher.put("second_f1", 42.5)
    page.wait_for_selector(row(relay, "second_f1"), timeout=1_000)
    assert time.monotonic() - pushed < 1.0
    assert page.inner_text(row(relay, "second_f1") + " td.value") == "42.5"
    publisher.put("second_f1", 43.0)
    page.wait_for_function(f"document.querySelector('{row(relay, 'second_f1')} td.value')"
                           ".textContent === '43'", timeout=1_000)


def test_the_filter_shows_only_matching_pvs(relay, publisher, page) -> None:
    publisher.put_many({f"temp_{index}_f1": float(index) for index in range(5)}
                       | {f"volt_{index}_f1": float(index) for index in range(7)})
    page.goto(relay.url)
    page.wait_for_function("document.querySelectorAll('#pvs tbody tr').length === 12",
                           timeout=10_000)
    page.fill("#filter", "volt")
    page.wait_for_function("document.querySelectorAll('#pvs tbody tr').length === 7",
                           timeout=5_000)
    shown = page.eval_on_selector_all("#pvs tbody tr", "rows => rows.map(r => r.dataset.name)")
    assert all(":volt_" in name for name in shown)
    assert "1–7 of 7" in page.inner_text("#range")
    page.fill("#filter", "temp_[23]*")
    page.wait_for_function("document.querySelectorAll('#pvs tbody tr').length === 2",
                           timeout=5_000)


def test_a_buffer_is_plotted_on_its_pv_page(relay, publisher, page) -> None:
    publisher.put("wave_F200", [float(i % 20) for i in range(150)])
    page.goto(f"{relay.url}/#/pv/{full(relay, 'wave_F200')}")
    page.wait_for_selector("#plot canvas", timeout=10_000)
    page.wait_for_function("document.querySelector('#plot-note').textContent.includes('150')",
                           timeout=5_000)
    drawn = page.evaluate("""() => {
        const canvas = document.querySelector('#plot canvas');
        const data = canvas.getContext('2d').getImageData(0, 0, canvas.width,
                                                           canvas.height).data;
        let blue = 0;   // the trace's colour, #0b5cad
        for (let i = 0; i < data.length; i += 4)
            if (data[i] < 60 && data[i + 2] > 140 && data[i + 3] > 0) blue++;
        return {width: canvas.width, height: canvas.height, blue};
    }""")
    assert drawn["width"] > 300 and drawn["height"] > 200 and drawn["blue"] > 200, drawn
    assert "TIMEOUT" not in page.inner_text("#pv-alarm")


def test_the_severity_colour_changes_when_a_limit_is_crossed(relay, publisher, page) -> None:
    publisher.put("heat_f1", 5.0, meta={"high": 10.0, "hihi": 20.0})
    page.goto(relay.url)
    cell = row(relay, "heat_f1") + " td.value"
    page.wait_for_selector(cell, timeout=10_000)
    assert page.eval_on_selector(cell, "c => getComputedStyle(c).color") == GREEN
    publisher.put("heat_f1", 15.0)
    page.wait_for_function(f"getComputedStyle(document.querySelector('{cell}'))"
                           f".backgroundColor === '{YELLOW}'", timeout=2_000)
    assert page.inner_text(row(relay, "heat_f1") + " td.severity") == "MINOR"
    publisher.put("heat_f1", 25.0)
    page.wait_for_function(f"document.querySelector('{row(relay, 'heat_f1')} td.severity')"
                           ".textContent === 'MAJOR'", timeout=2_000)
