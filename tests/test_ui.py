"""The app launched in-process, driven through gradio_client like a real API client."""
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from pdiff.models.tasks import build_model, get_task
from pdiff.app.ui import build_demo, free_port, launch, runs_folder, shipped_bundles

pytestmark = pytest.mark.server



@pytest.fixture(scope="module")
def client():
    assert "fmnist-convnet" in shipped_bundles()
    demo = build_demo()
    launch(demo, server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    try:
        yield Client(demo.local_url, verbose=False)
    finally:
        demo.close()


def _run(client, **kwargs):
    kwargs = {"n": 6, "sampler": "ddim", "steps": 5, "seed": 0, **kwargs}
    return client.predict(**kwargs, api_name="/generate")


def test_generate_on_default_bundle(client):
    out = _run(client)
    report = json.loads(open(out[0]).read())
    assert report["task"] == "fmnist-convnet" and report["settings"]["sampling"]["n"] == 6
    assert len(report["sources"]["generated"]["acc"]) == 6 and len(report["similarity"]["max_iou_to_originals"]) == 6
    assert os.path.getsize(out[1]) > 0  # generated parameters file
    for fig in (out[3], out[5], out[6]):  # accuracy, t-SNE, accuracy-vs-IoU plots
        parsed = json.loads(fig["plot"])
        assert parsed["data"], "plot has no traces"
    assert "generated models" in out[7]
    # the first view: the generated sets, the originals, the average and the Gaussian at their novelty; every
    # other source is in the report and one tick away
    first = ["generated", "originals", "average", "gaussian_matched"]
    assert [row[0] for row in out[2]["data"]] == first
    assert [t["name"] for t in json.loads(out[3]["plot"])["data"]] == first
    assert {t["name"] for t in json.loads(out[5]["plot"])["data"]} == set(first)
    assert {"noise_matched", "interpolation", "gaussian"} <= set(report["sources"]) and out[10]["value"] == []
    assert not any(name.startswith("gaussian_top") for name in report["sources"])  # its scale is 0: no condition


def test_results_come_in_stages(client):
    """The generated models and the originals first, then the baselines, then the t-SNE; the files with the last."""
    job = client.submit(n=6, sampler="ddim", steps=5, seed=1, api_name="/generate")
    job.result(timeout=600)
    stages = job.outputs()
    assert len(stages) == 3
    first, second, last = stages
    assert [row[0] for row in first[2]["data"]] == ["generated", "originals"]
    assert "Still coming: baselines and t-SNE" in first[7] and first[0] is None
    assert [row[0] for row in second[2]["data"]] == ["generated", "originals", "average", "gaussian_matched"]
    assert "Still coming: t-SNE" in second[7] and "computing the t-SNE" in second[5]["plot"]
    assert "Still coming" not in last[7] and last[0] is not None
    assert json.loads(open(last[0]).read())["tsne"]["source"]  # the finished report has its t-SNE
    assert first[2]["data"][0][1:] == last[2]["data"][0][1:]  # the generated row was final from the start
    # every other source is offered under "More sources" (ticking them: tests/test_page.py)
    assert {"interpolation", "noise_0.05", "noise_matched", "gaussian"} <= set(last[10]["choices"][i][0]
                                                                             for i in range(len(last[10]["choices"])))


def test_the_examples_are_the_shipped_bundles_and_refused_when_stale():
    from pdiff.app.examples import load_example
    from pdiff.app.ui import example_views, load_bundle

    digest = load_bundle("fmnist-convnet").digest
    for target in ("clean", "victim"):
        example = load_example("fmnist-convnet", target, digest)
        assert example["report"]["target"]["name"] == target and example["example"]["bundle_digest"] == digest
        shown = example_views("fmnist-convnet", target)
        assert shown[7].startswith("**Example run**")
        # its report and parameter files fill the download boxes
        assert json.loads(Path(shown[0]).read_text()) == example["report"] and Path(shown[1]).stat().st_size > 0
    assert load_example("fmnist-convnet", "clean", "another bundle's digest") is None


def test_the_default_run_is_prepared_ahead_and_a_bad_name_only_logs(monkeypatch, capsys):
    from pdiff.app import ui
    from pdiff.measure.engine import EngineCache

    monkeypatch.setattr(ui, "ENGINES", EngineCache(4))
    ui.warm_default("fmnist-convnet")
    assert len(ui.ENGINES) == 2  # the clean target's engines on the validation and the test split
    built = dict(ui.ENGINES._entries)
    ui.warm_default("fmnist-convnet")  # the same keys a run asks for: found, not rebuilt
    assert {k: v[0] for k, v in ui.ENGINES._entries.items()} == {k: v[0] for k, v in built.items()}
    ui.warm_default("no-such-bundle")
    assert "could not prepare the default run ahead" in capsys.readouterr().err and len(ui.ENGINES) == 2


def test_uploaded_victim_state_dict(client, tmp_path):
    from pdiff.app.ui import load_bundle

    victim = load_bundle("fmnist-convnet").victim_state
    path = tmp_path / "victim.pth"
    torch.save(victim, path)
    out = _run(client, target="upload", victim_file=handle_file(str(path)))
    report = json.loads(open(out[0]).read())
    assert report["target"]["name"] == "victim.pth" and len(report["sources"]["generated"]["asr"]) == 6
    assert report["target"]["asr"] > 50  # the uploaded model is the backdoored one
    assert report["target"]["trigger_source"] == "assumed (no victim report beside the file)"
    assert "assumed (no victim report beside the file)" in out[7]  # the status line says so too
    assert json.loads(out[4]["plot"])["data"]  # ASR plot drawn
    # ACC-vs-ASR: generated, each other source's mean (the first view's), the target
    sources = ["originals", "average", "gaussian_matched"]
    names = [t["name"] for t in json.loads(out[8]["plot"])["data"]]
    assert names[0] == "generated" and names[-1] == "target as-is (victim.pth)"
    assert set(names[1:-1]) == {f"{s} (mean)" for s in sources} and "average (mean)" in names


def test_the_trigger_chosen_beside_the_upload_reaches_the_report(client, tmp_path):
    from pdiff.app.ui import load_bundle

    path = tmp_path / "mine.pth"
    torch.save(load_bundle("fmnist-convnet").victim_state, path)
    out = _run(client, target="upload", victim_file=handle_file(str(path)), trigger_kind="patch", trigger_target=3,
               patch_size=4, patch_corner="top-left", n=2)
    report = json.loads(open(out[0]).read())
    assert report["target"]["trigger"] == {"kind": "patch", "name": "patch", "target": 3, "rate": 0.1,
                                           "corner": "top-left", "size": 4, "value": 255}
    assert report["target"]["trigger_source"] == "given by the user" and "target class 3" in out[7]
    out = _run(client, target="upload", victim_file=handle_file(str(path)), trigger_kind="blend", trigger_target=1,
               blend_opacity=0.2, blend_seed=5, n=2)
    assert json.loads(open(out[0]).read())["target"]["trigger"]["opacity"] == 0.2
    out = _run(client, target="upload", victim_file=handle_file(str(path)), trigger_kind="none", n=2)
    assert json.loads(open(out[0]).read())["backdoor"] == "not applicable: no trigger (given by the user)"
    with pytest.raises(AppError, match=r"trigger\.target 10 is out of range"):
        _run(client, target="upload", victim_file=handle_file(str(path)), trigger_kind="patch", trigger_target=10)


def test_uploaded_pickle_payload_is_refused_and_does_not_run(client, payload_checkpoint):
    path, marker = payload_checkpoint
    with pytest.raises(AppError, match="refusing to load"):
        _run(client, target="upload", victim_file=handle_file(str(path)))
    assert not marker.exists()
    _run(client, n=2)  # and the app keeps serving


def test_uploaded_wrong_architecture_names_layers(client, tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save(build_model(get_task("fmnist-resnet18")).state_dict(), path)
    with pytest.raises(AppError, match="missing: conv2.weight"):
        _run(client, target="upload", victim_file=handle_file(str(path)))


def test_bad_parameters_get_clear_errors(client):
    with pytest.raises(AppError, match="no model file was uploaded"):
        _run(client, target="upload")
    with pytest.raises(AppError, match="layers not in the bundle's train_layer"):
        _run(client, layers=["conv1.weight"])


def test_named_victim_with_the_defences(client):
    out = _run(client, target="finetuned-blended", n=4, defences=True)
    report = json.loads(open(out[0]).read())
    assert report["target"]["name"] == "finetuned-blended" and report["target"]["trigger"]["name"] == "blended"
    transfer = out[9]
    rows = {row[0]: row for row in transfer["data"]}
    assert transfer["headers"][:5] == ["method", "clean images", "model images", "checkpoints", "n"]
    assert rows["finetune"][4] == rows["reinit"][4] == rows["ft"][4] == 1 and rows["generated"][4] == 4
    assert rows["ft"][1] == rows["fp"][1] == rows["finetune"][1] == 3000  # 5 % of the training split
    assert rows["clp"][1] == 0 and rows["clean-layers"][1:4] == [0, 55000, 0]  # the clean model's own layers
    assert rows["clean-model"][1:4] == [0, 55000, 0] and rows["clean-model"][6] < 5  # the control: no backdoor
    assert rows["target as-is (finetuned-blended)"][6] == pytest.approx(report["target"]["asr"], abs=0.01)
    names = [t["name"] for t in json.loads(out[8]["plot"])["data"]]
    assert names == ["generated", *(f"{s} (mean)" for s in ("originals", "average", "gaussian_matched")),
                     "target as-is (finetuned-blended)"]  # the first view; the victim as-is: its own marker
    offered = {choice[0] for choice in out[10]["choices"]}  # every defence and control one tick away
    assert {"finetune", "reinit", "ft", "fp", "clp", "clean-layers", "interpolation"} <= offered


def test_unknown_target_names_the_choices(client):
    # gradio checks the radio's choices first: the bundle's victims by name
    with pytest.raises(AppError, match=r"'nope'.*not in the list of choices.*'finetuned-badnets', 'finetuned-blended'"):
        _run(client, target="nope")


def _refusal(client, bundle) -> str:
    with pytest.raises(AppError) as e:
        _run(client, bundle=bundle, n=2)
    return str(e.value).replace(repr(bundle), "X")


def test_bundle_box_refuses_server_paths_alike(client, tmp_path):
    import shutil

    outside = shutil.copytree(shipped_bundles()["fmnist-convnet"], tmp_path / "bundle")  # a real bundle
    escape = f"{shipped_bundles()['fmnist-convnet']}/{os.path.relpath(outside, shipped_bundles()['fmnist-convnet'])}"
    messages = {_refusal(client, b) for b in (str(tmp_path / "absent"), str(outside), escape, "/etc", "../..")}
    assert messages == {"no shipped bundle or allowed bundle folder named X"}
    out = _run(client, bundle="fmnist-convnet-budget", n=2)  # a shipped name still works
    assert json.loads(open(out[0]).read())["bundle"].endswith("fmnist-convnet-budget/bundle")


def test_bundle_box_takes_folders_under_the_allowed_roots(client, tmp_path, monkeypatch):
    import shutil

    shutil.copytree(shipped_bundles()["fmnist-convnet"], tmp_path / "mine" / "bundle")
    monkeypatch.setenv("PDIFF_BUNDLE_ROOTS", str(tmp_path / "mine"))
    out = _run(client, bundle=str(tmp_path / "mine" / "bundle"), n=2)
    assert json.loads(open(out[0]).read())["task"] == "fmnist-convnet"


def test_bundle_box_with_the_hub_unreachable(client, tmp_path, monkeypatch):
    monkeypatch.setenv("PDIFF_HUB_CACHE", str(tmp_path / "hub"))  # HF_HUB_OFFLINE=1: nothing reaches the Hub
    with pytest.raises(AppError, match=r"^could not reach the Hugging Face Hub for 'someone/big-model': [^\n]*$"):
        _run(client, bundle="someone/big-model", n=2)


def test_uploaded_nonfinite_or_text_file_refused_by_name(client, tmp_path):
    from pdiff.app.ui import load_bundle

    state = {k: v.clone() for k, v in load_bundle("fmnist-convnet").base_state.items()}
    state["conv3.weight"].fill_(float("nan"))
    torch.save(state, tmp_path / "nan.pth")
    (tmp_path / "notes.pth").write_text("not a model\n")
    with pytest.raises(AppError, match=r"nan.pth is not a usable target: tensor 'conv3.weight' has 73728 NaN/inf"):
        _run(client, target="upload", victim_file=handle_file(str(tmp_path / "nan.pth")))
    with pytest.raises(AppError, match=r"notes.pth is not a model checkpoint: expected a safetensors file or a "
                                       r"PyTorch state dict \(torch.save\), found text \('not a model'\)"):
        _run(client, target="upload", victim_file=handle_file(str(tmp_path / "notes.pth")))


def test_four_clients_at_once_all_answered(tmp_path):
    """A small load test against its own server: every client answered; run files are gradio's to remove."""
    demo = build_demo()
    launch(demo, server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    before = set(runs_folder().rglob("*.*"))

    def call(seed):
        c = Client(demo.local_url, verbose=False, download_files=str(tmp_path / f"client{seed}"))
        return c.predict(n=2, sampler="ddim", steps=5, seed=seed, api_name="/generate")

    try:
        with ThreadPoolExecutor(4) as pool:
            outs = list(pool.map(call, range(4)))
        reports = [json.loads(Path(out[0]).read_text()) for out in outs]
        assert [r["settings"]["sampling"]["seed"] for r in reports] == [0, 1, 2, 3]
        assert all(len(r["sources"]["generated"]["acc"]) == 2 for r in reports)
        # this server's files only: gradio's upload folder is shared by every server on the machine
        served = set().union(*demo.temp_file_sets)
        written = {p for p in set(runs_folder().rglob("*.*")) - before if str(p) in served}
        # one report and one parameter file per run, each served from where it was written (no second copy)
        assert sorted(p.name for p in written) == ["generated.safetensors"] * 4 + ["report.json"] * 4
        assert all(sorted(f.name for f in folder.iterdir()) == ["generated.safetensors", "report.json"]
                   for folder in {p.parent for p in written})
    finally:
        demo.close()
    assert not any(p.exists() for p in written)  # gradio removes them at shutdown (delete_cache: after an hour)
