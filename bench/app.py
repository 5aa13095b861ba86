"""The app as a user meets it: `python app.py` import-to-ready time, idle memory, and click-to-plots.

Starts app.py in a subprocess on a free port, polls until the page answers, reads its resident
memory after a few idle seconds, then (if Chromium and Playwright are here) clicks Run with
the defaults (N = 100, DDIM 50) and times until the first stage shows (the generated models' table and accuracy
plot) and until every plot of the finished run is drawn; with --api, the same run through the API (/generate,
streamed by gradio_client) instead, timed to its first and its last stage. Prints one JSON line.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from _server import rss_mb, wait_ready  # bench/ is on sys.path when a bench runs

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


STATUS = "document.querySelector('#status').innerText"


def _click_to_plots(url: str) -> dict | None:
    """Seconds from clicking Run (the defaults: N = 100, DDIM-50) to the first stage on the page (the generated
    models' table and accuracy plot) and to every plot of the finished run; None without a browser."""
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return None
    if not os.path.exists(chromium):
        return None
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=flags, headless=True)
        page = browser.new_page()
        page.goto(url, wait_until="load")  # not networkidle: the page's gr.State keeps a heartbeat open
        page.wait_for_function("document.querySelectorAll('.js-plotly-plot').length >= 3", timeout=600_000)
        page.get_by_role("button", name="Run", exact=True).click()
        t0 = time.perf_counter()
        # the example's text stays in the status (under gradio's progress overlay) until the run's first stage
        # replaces it: "Example run" anywhere in it means the run has not shown yet
        mine = f"!{STATUS}.includes('Example run') && {STATUS}.includes('generated models')"
        page.wait_for_function(mine, timeout=600_000)
        first = time.perf_counter() - t0
        page.wait_for_function(f"{mine} && !{STATUS}.includes('Still coming')", timeout=600_000)
        page.wait_for_function("document.querySelectorAll('.js-plotly-plot').length >= 3", timeout=600_000)
        every = time.perf_counter() - t0
        browser.close()
    return {"click_to_first_stage_s": round(first, 2), "click_to_plots_s": round(every, 2)}


def _api_stages(url: str) -> dict:
    """Seconds from submitting the page's defaults to /generate until its first stage and its last arrive."""
    from gradio_client import Client

    client = Client(url, verbose=False, download_files=False, httpx_kwargs={"timeout": 600})  # a busy server
    t0 = time.perf_counter()
    job = client.submit(api_name="/generate")
    first = None
    for _ in job:  # each stage as it streams in
        first = first if first is not None else time.perf_counter() - t0
    job.result()
    return {"click_to_first_stage_s": round(first, 2), "click_to_plots_s": round(time.perf_counter() - t0, 2)}


def main() -> None:
    import argparse

    from pdiff.app.ui import free_port

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--no-warm", action="store_true", help="launch with PDIFF_WARM=0: the default run's engines are "
                                                            "built on the first click, not at launch")
    ap.add_argument("--api", action="store_true", help="time the run through the API (/generate, streamed), not a "
                                                        "browser's click")
    args = ap.parse_args()
    port = free_port()
    env = {**os.environ, "GRADIO_SERVER_PORT": str(port), "GRADIO_ANALYTICS_ENABLED": "False",
           "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "PDIFF_WARM": "0" if args.no_warm else "1"}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_ready(url, proc)
        ready_s = time.perf_counter() - t0
        time.sleep(5)
        idle_rss = rss_mb(proc.pid)
        click_s = _api_stages(url) if args.api else _click_to_plots(url)
        after_rss = rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    import torch

    print(json.dumps({"name": "app", "device": "cuda" if torch.cuda.is_available() else "cpu",
                      "ready_s": round(ready_s, 2), "idle_rss_mb": round(idle_rss, 1),
                      **(click_s or {"click_to_first_stage_s": None, "click_to_plots_s": None}),
                      "n": 100, "sampler": "ddim50", "warm": not args.no_warm, "via": "api" if args.api else "browser",
                      "rss_after_run_mb": round(after_rss, 1)}))


if __name__ == "__main__":
    main()
