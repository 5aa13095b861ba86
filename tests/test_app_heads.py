"""The app's panel for a trunk the head generator never saw (pdiff/app/heads.py): the shipped held-out trunks are
offered, a refusal is one line in the page, and a run on a held-out trunk gives the table, the report and a status."""
import json

import gradio as gr
import pytest

from pdiff.app.heads import HEADERS, UPLOAD, heads_run, held_out_trunks
from pdiff.generator.headkit import shipped_kits

pytestmark = pytest.mark.skipif("fmnist-convnet-trunks" not in shipped_kits(), reason="no shipped head generator")


def test_the_held_out_trunks_are_offered_in_order():
    assert list(held_out_trunks()) == [f"trunk-{t}" for t in (16, 17, 18, 19, 44, 45, 46, 47)]


@pytest.mark.parametrize("target, file, shots, expected", [
    (UPLOAD, None, 5, "upload a model file"),
    ("trunk-3", None, 5, "target must be one of trunk-16"),
    ("trunk-44", None, 40, "shots must be 1..20"),
])
def test_a_refusal_is_one_line_in_the_page(target, file, shots, expected):
    with pytest.raises(gr.Error, match=expected) as e:
        heads_run(target, file, shots)
    assert "\n" not in str(e.value)


def test_an_upload_of_another_width_is_refused(tmp_path):
    from pdiff.core.files import write_safetensors
    from pdiff.models.archs import ConvNet

    path = tmp_path / "wide.safetensors"
    write_safetensors(path, ConvNet(width=48).state_dict())
    with pytest.raises(gr.Error, match="features at bn3 are 192 wide; the head generator's are 128"):
        heads_run(UPLOAD, str(path), 5)


@pytest.mark.slow
def test_a_run_on_a_held_out_trunk():
    table, report_file, status = heads_run("trunk-44", None, shots=1, n=2, seed=0)
    assert table["headers"] == HEADERS
    rows = {r[0]: r for r in table["data"]}
    assert rows["generated"][2] == "10 / 1000" and rows["stitch_ensemble"][2] == "0 / 1000"
    assert rows["own_head"][3] > 90
    report = json.loads(open(report_file).read())
    assert report["target"] == "trunk-44" and report["condition"] == "trunk=target"
    assert "best control on the same images" in status


@pytest.mark.server
def test_the_page_serves_heads_beside_generate():
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    from pdiff.app.ui import build_demo, free_port, launch

    demo = build_demo()
    launch(demo, server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    try:
        client = Client(demo.local_url, verbose=False)
        endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
        assert {"/generate", "/heads"} <= set(endpoints)
        with pytest.raises(AppError, match="upload a model file"):
            client.predict(UPLOAD, None, 5, 2, 0, api_name="/heads")
    finally:
        demo.close()


def test_the_panel_opens_on_the_shipped_run_and_never_on_a_stale_one(tmp_path, monkeypatch):
    import pdiff.app.heads as panel

    first = panel.example("trunk-47")
    assert first is not None and first["target"] == "trunk-47"
    assert "trunk-47" in panel._status(first) and panel.heads_table(first)["data"]
    stale = tmp_path / "heads"
    stale.mkdir()
    for f in shipped_kits()["fmnist-convnet-trunks"].iterdir():
        (stale / f.name).write_bytes(f.read_bytes())
    (stale / "denoiser_ema.safetensors").write_bytes(b"other weights")
    monkeypatch.setattr(panel, "shipped_kits", lambda: {"fmnist-convnet-trunks": stale})
    assert panel.example("trunk-47") is None
