"""What the benches that start `python app.py` share: its resident memory, and waiting until it serves."""
from __future__ import annotations

import subprocess
import time
import urllib.request
from pathlib import Path


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def wait_ready(url: str, proc: subprocess.Popen, log: Path | None = None) -> None:
    """Return once `url` answers 200; stop the bench if the server exits first."""
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            if proc.poll() is not None:
                tail = ":\n" + log.read_text()[-2000:] if log is not None else ""
                raise SystemExit("app.py exited before it served the page" + tail)
            time.sleep(0.1)
