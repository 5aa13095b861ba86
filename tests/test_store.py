"""Seed-free results kept between runs (measure.store): the same numbers whether measured, remembered or read from
disk; a file of another bundle or engine is ignored and rewritten, never used."""
import pytest
import torch
from safetensors.torch import load_file, save_file

from helpers import report


def _same(a: dict, b: dict) -> None:
    """Every key of report a equals b's, floats to 1e-9 relative: a sum over many pairs (the mean IoU, a distance)
    may differ in its last bit on another CPU's vector units; the accuracies are pinned exactly below."""
    for key in a:
        if key != "timings_s":
            assert _close(a[key], b[key]), key


def _close(a, b) -> bool:
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(map(_close, a, b))
    if isinstance(a, float) and isinstance(b, (int, float)):
        return b == pytest.approx(a, rel=1e-9, abs=1e-12, nan_ok=True)
    return a == b


def test_results_round_trip_through_a_file(tmp_path):
    from pdiff.measure.store import ResultStore

    g = torch.Generator().manual_seed(0)
    results = {"abc": {"acc": [91.25, 90.0], "wrong": torch.rand(2, 13, generator=g) < 0.3,
                       "asr": [99.5, 3.0], "ra": [0.5, 90.0]},
               "def": {"acc": [50.0], "wrong": torch.ones(1, 13, dtype=torch.bool)}}
    store = ResultStore("d" * 64, "k" * 64, roots=[tmp_path])
    path = store.save(results)
    assert path.parent.parent == tmp_path and not list(path.parent.glob("*.tmp"))  # written whole, atomically
    back = store.load(13)
    assert back.keys() == results.keys()
    for digest, r in results.items():
        assert back[digest]["acc"] == r["acc"] and torch.equal(back[digest]["wrong"], r["wrong"])
        assert back[digest].get("asr") == r.get("asr") and back[digest].get("ra") == r.get("ra")
    assert ResultStore("e" * 64, "k" * 64, roots=[tmp_path]).load(13) == {}  # another bundle's folder


def test_a_stored_cache_gives_the_report_of_none_and_a_stale_one_is_rebuilt(tiny_bundle, small_train, small_test,
                                                                             tmp_path, monkeypatch):
    from pdiff.measure.engine import EngineCache

    kwargs = dict(n=3, sampler="ddim", steps=3, test=small_test, train=small_train, controls_seed=0)
    plain, _ = report(tiny_bundle, "victim", seed=0, **kwargs)
    first = EngineCache(2, stored=True, roots=[tmp_path])
    measured, _ = report(tiny_bundle, "victim", seed=0, engines=first, **kwargs)
    files = sorted(tmp_path.rglob("*.safetensors"))
    # the results and the trunk features on the test and the validation split, and the t-SNE map
    assert sorted(f.name.split("-")[0] for f in files) == ["results", "results", "trunk", "trunk", "tsne"]
    assert all(f.parent.name == tiny_bundle.digest[:16] for f in files)
    again = EngineCache(2, stored=True, roots=[tmp_path])  # another process: everything seed-free from disk
    stored, _ = report(tiny_bundle, "victim", seed=0, engines=again, **kwargs)
    # a third process builds its engine from disk: the trunk runs on one image (its output's size), never on all
    from pdiff.core.splice import select_layers
    from pdiff.measure.targets import resolve_target
    from pdiff.models import staged

    seen = []
    trunk = staged.tail_input
    monkeypatch.setattr(staged, "tail_input", lambda model, images, *a: seen.append(len(images)) or trunk(model, images, *a))
    from pdiff.data.plan import RunData

    bn = RunData(small_test, small_train).bn  # the BatchNorm images the reports' engines were keyed with
    engine = EngineCache(2, stored=True, roots=[tmp_path]).get(tiny_bundle, resolve_target(tiny_bundle, "victim"),
                                                                select_layers(tiny_bundle.layout, []), small_test, "cpu",
                                                                bn)
    assert seen == [1, 1] and len(engine.remembered()) > 0 and engine.clean.features.shape[0] == len(small_test.labels)
    monkeypatch.undo()
    _same(plain, measured)
    _same(plain, stored)

    # a file whose bundle digest differs (a changed bundle, a copied cache) is never used, and is rewritten
    for f in files:
        tensors = load_file(f)
        if f.name.startswith("results-"):
            tensors = {k: torch.zeros_like(v) if k.endswith(".acc") else v for k, v in tensors.items()}
        save_file(tensors, f, metadata={"format": "pdiff-results", "bundle_digest": "0" * 64,
                                        "key": f.stem.split("-", 1)[1], "kind": f.stem.split("-", 1)[0]})
    stale = EngineCache(2, stored=True, roots=[tmp_path])
    rebuilt, _ = report(tiny_bundle, "victim", seed=0, engines=stale, **kwargs)
    _same(plain, rebuilt)
    from safetensors import safe_open

    with safe_open(str(next(f for f in files if f.name.startswith("results-"))), "pt") as f:
        assert f.metadata()["bundle_digest"] == tiny_bundle.digest


def test_fixed_controls_change_no_prediction(tiny_bundle, small_train, small_test):
    """The app draws the controls from one seed for every run (controls_seed): seed 0's report is the CLI's, and on
    any seed the generated sets and the originals are measured exactly as without it."""
    kwargs = dict(n=3, sampler="ddim", steps=3, test=small_test, train=small_train, tsne=False)
    cli, _ = report(tiny_bundle, "clean", seed=0, **kwargs)
    app, _ = report(tiny_bundle, "clean", seed=0, controls_seed=0, **kwargs)
    app["settings"]["evaluation"]["controls_seed"] = None
    _same(cli, app)
    cli, vectors = report(tiny_bundle, "clean", seed=3, **kwargs)
    app, same_vectors = report(tiny_bundle, "clean", seed=3, controls_seed=0, **kwargs)
    assert torch.equal(vectors, same_vectors)
    for name in ("generated", "originals"):
        assert app["sources"][name] == cli["sources"][name], name
    assert app["validation"]["selected"] == cli["validation"]["selected"]


@pytest.mark.parametrize("guidance, joins", [(None, False), (0.0, False), (1.0, True)])
def test_top_q_gaussians_only_where_the_condition_is_used(guidance, joins):
    from pdiff.core.settings import SamplingSpec
    from pdiff.generator.conditions import resolve
    from pdiff.generator.locate import load_bundle
    from pdiff.studies.report import _guided

    bundle = load_bundle("fmnist-convnet")  # accuracy-conditional, its own scale 0
    assert bundle.conditions.meta["guidance"] == 0
    asked = resolve(SamplingSpec(condition="acc=best", guidance=guidance), bundle.conditions)
    assert asked.guidance == (guidance if guidance is not None else 0.0) and _guided(bundle, asked) is joins
    assert not _guided(bundle, resolve(SamplingSpec(condition="none", guidance=1.0), bundle.conditions))


BEFORE_CACHE = "aeadec7911078b2700318d6e3c4c1ce7df487a2e345069c58275a4088de97408"


@pytest.mark.slow  # the app's default run on the 10,000 test images
def test_the_default_run_from_the_shipped_cache_is_the_shipped_example(tmp_path):
    """The example was measured from scratch when it was written; the same request now reads the originals', the
    controls' and the t-SNE map's results from assets/cache/: every number of the report is the same."""
    from pdiff.app.examples import load_example
    from pdiff.app.request import RunRequest
    from pdiff.core.settings import DataSpec
    from pdiff.data.datasets import Split
    from pdiff.data.plan import RunData
    from pdiff.generator.locate import load_bundle
    from pdiff.measure.engine import EngineCache
    from pdiff.measure.store import shipped_cache
    from pdiff.studies.report import run_report

    bundle = load_bundle("fmnist-convnet")
    example = load_example("fmnist-convnet", "clean", bundle.digest)
    assert example is not None, "the shipped example is stale: python -m pdiff.app.examples"
    request = RunRequest.from_form({"bundle": "fmnist-convnet", "target": "clean"}, bundle)
    data = RunData(Split.load(bundle.task.dataset, "test"), Split.load(bundle.task.dataset, "train"), DataSpec())
    engines = EngineCache(2, stored=True, roots=[shipped_cache(), tmp_path])  # reads the shipped files, writes here
    report, _ = run_report(bundle, request.target, data, request.sampling, request.settings, engines)
    report["bundle"] = "fmnist-convnet"
    _same(example["report"], report)
    assert not list(tmp_path.rglob("results-*"))  # nothing the shipped cache lacked was measured again
    # and every accuracy the example made before this cache existed had (commit 14b5779's
    # assets/examples/fmnist-convnet-clean.json; its top-q Gaussians are no longer drawn at guidance 0)
    import hashlib
    import json

    shared = ["noise_0.01", "noise_0.05", "noise_0.15", "interpolation", "average", "average-16", "gaussian",
              "noise_matched"]
    accs = {"generated": report["sources"]["generated"]["acc"], "originals": report["sources"]["originals"]["acc"],
            **{name: report["sources"][name]["acc"] for name in shared}}
    assert hashlib.sha256(json.dumps(accs, sort_keys=True).encode()).hexdigest() == BEFORE_CACHE
