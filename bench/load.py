"""The app under load: N clients call /generate at once against a real server. Prints one JSON line.

Starts app.py in a subprocess on a free loopback port (its own gradio temp folder), makes one
warm-up call (none with --cold: the clients arrive as soon as the page answers, while the server still prepares
the default run), then N gradio_client clients, one per thread, call /generate together, `--rounds`
times each. Reports answered, rejected ("Queue is full"), failed, p50 and max latency of the
answered calls (seconds, queueing included), the server's resident memory when ready, after the
warm-up call and after the load, and the run files still kept for download (2 per call, removed
by gradio an hour after they were written).

    python bench/load.py --clients 20 --n 10 --steps 20
    python bench/load.py --clients 20 --cold          # on a server that has just started
    python bench/load.py --clients 5 --rounds 10      # memory after 51 calls against after 1
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _server import rss_mb, wait_ready  # bench/ is on sys.path when a bench runs

ENV = {"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
TIMEOUT = {"timeout": 600}  # a client of a busy server waits for its config, not 5 s
os.environ.update(ENV)
ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=20)
    p.add_argument("--rounds", type=int, default=1, help="calls per client, one after another")
    p.add_argument("--n", type=int, default=10)
    p.add_argument("--steps", type=int, default=20, help="DDIM steps")
    p.add_argument("--target", default="clean")
    p.add_argument("--cold", action="store_true", help="no warm-up call: the clients call as soon as the page answers")
    args = p.parse_args()

    from gradio_client import Client

    sys.path.insert(0, str(ROOT))
    from pdiff.app.ui import free_port

    port, tmp = free_port(), tempfile.TemporaryDirectory(prefix="pdiff-load-")
    log = Path(tmp.name) / "server.log"
    env = {**os.environ, **ENV, "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port),
           "GRADIO_TEMP_DIR": str(Path(tmp.name) / "gradio")}
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    kwargs = {"target": args.target, "n": args.n, "sampler": "ddim", "steps": args.steps, "api_name": "/generate"}
    try:
        wait_ready(url, proc, log)
        rss_ready = rss_mb(proc.pid)
        t0 = time.perf_counter()
        if not args.cold:
            Client(url, verbose=False, download_files=False, httpx_kwargs=TIMEOUT).predict(seed=0, **kwargs)
        warmup_s, rss_after_1 = time.perf_counter() - t0, rss_mb(proc.pid)

        start = threading.Barrier(args.clients)

        def client(i: int) -> list[tuple[str, float, str]]:
            c = Client(url, verbose=False, download_files=False, httpx_kwargs=TIMEOUT)
            start.wait()  # every client connected; all submit together
            results = []
            for r in range(args.rounds):
                t = time.perf_counter()
                try:
                    out = c.predict(seed=1 + i * args.rounds + r, **kwargs)
                    results.append(("answered" if out and out[0] else "failed", time.perf_counter() - t, ""))
                except Exception as e:  # the client's "Queue is full! Please try again." is a rejection
                    kind = "rejected" if "queue is full" in str(e).lower() else "failed"
                    results.append((kind, time.perf_counter() - t, f"{type(e).__name__}: {e}"))
            return results

        with ThreadPoolExecutor(args.clients) as pool:
            results = [r for rs in pool.map(client, range(args.clients)) for r in rs]
        rss_after = rss_mb(proc.pid)
        run_files = [f.stat().st_size for f in (Path(tmp.name) / "gradio" / "pdiff-runs").rglob("*") if f.is_file()]
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        tmp.cleanup()
    latencies = [s for kind, s, _ in results if kind == "answered"]
    errors = sorted({e for kind, _, e in results if kind == "failed"})
    import torch

    print(json.dumps({
        "name": "load", "device": "cuda" if torch.cuda.is_available() else "cpu", "clients": args.clients,
        "rounds": args.rounds, "n": args.n, "sampler": f"ddim{args.steps}", "target": args.target, "cold": args.cold,
        "answered": len(latencies), "rejected": sum(k == "rejected" for k, _, _ in results),
        "failed": sum(k == "failed" for k, _, _ in results), "first_error": errors[0] if errors else None,
        "p50_s": round(statistics.median(latencies), 1) if latencies else None,
        "max_s": round(max(latencies), 1) if latencies else None,
        "warmup_s": None if args.cold else round(warmup_s, 1),
        "rss_ready_mb": rss_ready, "rss_after_1_mb": rss_after_1, "rss_after_mb": rss_after,
        "calls": 1 + len(results), "run_files_kept": len(run_files),
        "run_files_mb": round(sum(run_files) / 2**20, 1)}))


if __name__ == "__main__":
    main()
