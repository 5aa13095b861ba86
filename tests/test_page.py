"""A real browser (Debian's Chromium, driven by Playwright) opens the app, sees the example run, clicks Run and
watches the results come in stages."""
import os
import shutil
import time
from pathlib import Path

import pytest

from pdiff.app.ui import build_demo, free_port, launch

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]
SCREENSHOT = Path(__file__).resolve().parent.parent / "assets" / "screenshot.png"


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="chromium not installed (apt-get install chromium)")
def test_click_run_draws_both_plots(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    demo = build_demo()
    launch(demo, server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
            page = browser.new_page(viewport={"width": 1500, "height": 1400})
            # "load", not "networkidle": the page holds the shown report in a gr.State, whose heartbeat stays open
            page.goto(demo.local_url, wait_until="load")
            # the first view: a finished example run, its plots drawn before anything is pressed, showing the
            # generated sets, the originals, the average and the Gaussian at their novelty; the rest one tick away
            assert page.locator("#status").inner_text().startswith("Example run")
            page.wait_for_function("document.querySelectorAll('.js-plotly-plot').length >= 3", timeout=60_000)
            first = ["generated", "originals", "average", "gaussian_matched"]
            traces = "Array.from(document.querySelectorAll('.js-plotly-plot')[0].data, t => t.name)"
            assert page.evaluate(traces) == first
            more = page.locator("#more-sources")
            assert more.is_visible() and more.get_by_label("interpolation", exact=True).is_visible()
            # the example's report and parameter files in the download boxes
            files = "Array.from(document.querySelectorAll('a[download]'), a => a.getAttribute('download'))"
            page.wait_for_function(f"{files}.length >= 2", timeout=30_000)
            assert {"report.json", "generated.safetensors"} <= set(page.evaluate(files))
            more.get_by_label("interpolation", exact=True).check()
            page.wait_for_function(f"{traces}.includes('interpolation')", timeout=30_000)
            assert page.evaluate(traces) == [*first, "interpolation"]
            page.get_by_role("button", name="Run", exact=True).click()
            t0 = time.perf_counter()
            # the stages come in: the example's status goes (it stays under gradio's progress overlay until the
            # first stage replaces it), the run's own stays without anything still coming
            status_js = "document.querySelector('#status').innerText"
            page.wait_for_function(f"!{status_js}.includes('Example run') && {status_js}.includes('generated models')"
                                   f" && !{status_js}.includes('Still coming')", timeout=300_000)
            seconds = time.perf_counter() - t0
            page.wait_for_timeout(500)
            assert page.locator(".js-plotly-plot").count() >= 3
            assert page.evaluate(traces) == [*first, "interpolation"]  # the run keeps what was ticked
            more.get_by_label("interpolation", exact=True).uncheck()  # and goes back to the first view
            page.wait_for_function(f"!{traces}.includes('interpolation')", timeout=30_000)
            assert page.evaluate(traces) == first
            status = page.locator("#status").inner_text()
            assert "accuracy best" in status
            out = SCREENSHOT if os.environ.get("PDIFF_UPDATE_SCREENSHOT") else tmp_path / "screenshot.png"
            page.screenshot(path=str(out), full_page=True)
            assert out.stat().st_size > 10_000
            print(f"click-to-plots: {seconds:.1f} s")
            # the victim: the backdoor views appear and get drawn too
            page.get_by_label("victim", exact=True).check()
            page.get_by_role("button", name="Run", exact=True).click()
            page.wait_for_function("document.querySelectorAll('.js-plotly-plot').length >= 5", timeout=900_000)
            page.wait_for_function("document.querySelector('#status').innerText.includes('on victim') && !document.querySelector('#status').innerText.includes('Still coming')", timeout=900_000)
            assert page.locator(".js-plotly-plot").count() == 5
            assert page.get_by_text("Transfer: backdoor removal by method").first.is_visible()
            # an upload: its trigger fields appear beside the upload box
            assert not page.get_by_text("Trigger of the upload").first.is_visible()
            page.get_by_label("upload", exact=True).check()
            page.get_by_text("Trigger of the upload").first.wait_for(state="visible", timeout=10_000)
            assert page.get_by_label("Target class").first.is_visible()
            browser.close()
    finally:
        demo.close()
