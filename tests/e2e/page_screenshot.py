"""Make docs/screenshot.png: a real relayd with demo PVs, its page in headless Chromium.

By hand, from the repository root (Debian's chromium installed):

    python -m tests.e2e.page_screenshot docs/screenshot.png
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
import time
from pathlib import Path

from relayd.client import Client
from tests.e2e.test_http_page import CHROMIUM, CHROMIUM_FLAGS
from tests.harness import RelayProcess, free_port, wait_for


def demo(client: Client) -> None:
    """PVs as a lab might have them, some in alarm."""
    client.put("temperature_lab_f1", 21.2, meta={"egu": "C", "prec": 1, "high": 25.0,
                                                 "hihi": 30.0})
    client.put("temperature_oven_f1", 27.4, meta={"egu": "C", "prec": 1, "high": 25.0,
                                                  "hihi": 30.0})
    client.put("temperature_cryo_f1", 4.21, meta={"egu": "K", "prec": 2, "low": 3.0})
    client.put("pressure_main_f1", 3.2e-7, meta={"egu": "mbar", "hihi": 1e-6})
    client.put("pressure_log_F500", [1e-7 * (1 + 0.3 * math.sin(i / 9)) for i in range(400)],
               meta={"egu": "mbar"})
    client.put("beam_current_f1", 38.2, meta={"egu": "mA", "prec": 1, "low": 50.0,
                                              "lolo": 40.0})
    client.put("fit_results_f4", [23.0, 0.1, 3231.123, 1e-4])
    client.put("spectrum_f256", [1000 * math.exp(-((i - 128) / 20) ** 2) for i in range(256)])
    client.put("motd_c200", "The sun is shining, go outside!")
    client.put("runs_i1", 7)
    client.put("interlock_i1", 1, meta={"hihi": 0.5, "hhsv": "INVALID"})
    for index in range(12):
        client.put(f"magnet_{index:02d}_current_f1", 120 + 3 * math.sin(index),
                   meta={"egu": "A", "prec": 2})


def main(out: str) -> int:
    from playwright.sync_api import sync_playwright

    workdir = Path(tempfile.mkdtemp(prefix="relayd-shot-"))
    os.environ.update(EPICS_CAS_INTF_ADDR_LIST="127.0.0.1", EPICS_CA_AUTO_ADDR_LIST="NO")
    relay = RelayProcess("5trap:relay", free_port(), workdir, ["--no-autosave"]).start()
    try:
        with Client(relay.endpoint) as client:
            demo(client)
            time.sleep(1.5)
            for step in range(30):  # a little history for the rates
                client.put("temperature_lab_f1", 21.2 + 0.1 * math.sin(step))
                client.put("magnet_03_current_f1", 120 + math.sin(step))
                time.sleep(0.1)
        with sync_playwright() as playwright:
            context = playwright.chromium.launch_persistent_context(
                str(workdir / "profile"), headless=True, executable_path=str(CHROMIUM),
                args=CHROMIUM_FLAGS, viewport={"width": 1280, "height": 820})
            page = context.new_page()
            page.goto(relay.url)
            wait_for(lambda: page.inner_text("#sync").startswith("live"))
            page.click("summary")
            page.wait_for_timeout(1500)
            page.screenshot(path=out)
            context.close()
    finally:
        relay.stop()
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "docs/screenshot.png"))
