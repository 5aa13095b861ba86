"""The Space as it would be pushed: exactly its file set (pdiff.app.space) copied into an empty folder, app.py started
from there offline, and the page it serves opens on the shipped example run."""
import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from pdiff.app.space import SPACE_FILES, copy_space
from pdiff.app.ui import free_port

pytestmark = pytest.mark.server
OFFLINE = {"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_OFFLINE": "1"}


def test_a_space_folder_is_refused_unless_empty(tmp_path):
    (tmp_path / "old.txt").write_text("left from before")
    with pytest.raises(ValueError, match="is not empty: a Space's folder holds exactly its files"):
        copy_space(tmp_path)


@pytest.fixture(scope="module")
def space(tmp_path_factory):
    """app.py served from a copy of the Space's files alone, with only the Python packages of this environment."""
    folder = tmp_path_factory.mktemp("space")
    copy_space(folder)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PDIFF_", "PYTHONPATH"))}
    env.update(OFFLINE, GRADIO_SERVER_PORT=str(port), GRADIO_SERVER_NAME="127.0.0.1")
    log = folder.parent / "space.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "app.py"], cwd=folder, env=env, stdout=out, stderr=subprocess.STDOUT)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
    from _server import wait_ready

    url = f"http://127.0.0.1:{port}/"
    try:
        wait_ready(url, proc, log)
        yield folder, url, proc
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_the_space_holds_its_file_set_and_nothing_else(space):
    folder, _, _ = space
    top = {p.name for p in folder.iterdir()}
    assert top == {name.split("/")[0] for name in SPACE_FILES}
    assert (folder / "README.md").read_text().startswith("---\ntitle: pdiff")  # the Space's configuration
    assert sorted(p.name for p in (folder / "checkpoints").iterdir()) == ["fmnist-convnet"]


def test_the_space_serves_the_example_run_on_arrival(space):
    folder, url, proc = space
    config = json.loads(urllib.request.urlopen(url + "config", timeout=30).read())
    values = [c.get("props", {}).get("value") for c in config["components"]]
    status = next(c["props"]["value"] for c in config["components"] if c.get("props", {}).get("elem_id") == "status")
    assert status.startswith("**Example run**") and "on `clean`" in status
    tables = [v for v in values if isinstance(v, dict) and "headers" in v]
    assert tables and all(t["headers"] and t["headers"] != [1, 2, 3] for t in tables)  # no empty "1 2 3" anywhere
    accuracy = next(t for t in tables if "ACC best" in t["headers"])
    assert [row[0] for row in accuracy["data"]][:2] == ["generated", "originals"]
    plots = [v for v in values if isinstance(v, dict) and "plot" in v]
    assert len(plots) >= 3  # the accuracy distribution, the t-SNE and the novelty view are drawn
    assert proc.poll() is None
