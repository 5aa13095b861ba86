"""One request, three entry points: the CLI, the Python API and the app's Run handler give the same report (timings
aside), because each turns its input into the same settings objects and Target once and calls the same study."""
import json
import subprocess
import sys

import pytest
import torch

pytestmark = pytest.mark.slow  # three full reports on the 10k test images

import pdiff
from pdiff.studies import formats
from pdiff.app import ui

REQUEST = {"n": 4, "sampler": "ddim", "steps": 5, "seed": 0}
VOLATILE = ("timings_s",)


def _same(a, b, path: str = "report") -> None:
    """a and b equal at every depth (floats to 1e-9), timings aside; a failure names the first path that differs."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{path}: keys {sorted(a)} against {sorted(b)}"
        for key in a:
            if key not in VOLATILE:
                _same(a[key], b[key], f"{path}/{key}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), f"{path}: {len(a)} items against {len(b) if isinstance(b, list) else b}"
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{path}[{i}]")
    elif isinstance(a, float):
        assert a == pytest.approx(b, abs=1e-9, nan_ok=True), f"{path}: {a} against {b}"
    else:
        assert a == b, f"{path}: {a!r} against {b!r}"


@pytest.fixture(scope="module")
def reports(tmp_path_factory, small_train):  # small_train: the training split is installed (validation, BN images)
    out = tmp_path_factory.mktemp("reports")
    cli = subprocess.run([sys.executable, "-m", "pdiff", "evaluate", "--bundle", "fmnist-convnet", "--target", "victim",
                          *[a for k, v in REQUEST.items() for a in (f"--{k}", str(v))], "--json", str(out / "cli.json")],
                         capture_output=True, text=True, timeout=600)
    assert cli.returncode == 0, cli.stderr
    bundle = pdiff.load("fmnist-convnet")
    api = pdiff.evaluate(pdiff.sample(bundle, **REQUEST), target="victim")
    *_, app_outputs = ui.generate(bundle="fmnist-convnet", target="victim", **REQUEST, progress=lambda *a, **k: None)
    return json.loads((out / "cli.json").read_text()), dict(api), json.loads(open(app_outputs[0]).read())


def test_the_cli_the_api_and_the_app_agree(reports):
    cli, api, app = reports
    assert cli["format"] == "pdiff-report" and cli["format_version"] == formats.VERSION
    # the default bundle is accuracy-conditional: "default" is resolved to what it is for, and the guidance to the
    # scale the bundle chose on validation (0), recorded so and nowhere else differently
    assert cli["settings"]["sampling"] == {"n": 4, "sampler": "ddim", "steps": 5, "seed": 0, "condition": "acc=best",
                                           "guidance": 0.0}
    assert cli["condition"]["asked"] == "acc=best" and cli["condition"]["guidance"] == 0.0
    assert cli["validation"]["size"] == 5000 and cli["target"]["name"] == "victim"
    _same(cli, api)
    # the app draws its controls from one seed for every run (APP_CONTROLS_SEED, 0), and says so; at seed 0 the
    # draws are the CLI's
    assert (cli["settings"]["evaluation"]["controls_seed"], app["settings"]["evaluation"]["controls_seed"]) == (None, 0)
    app["settings"]["evaluation"]["controls_seed"] = None
    _same(cli, app)


def test_the_defaults_are_the_settings_fields():
    """The CLI's options default to the dataclasses' fields; the app differs only where it says so."""
    from pdiff.app.request import APP_SAMPLING, FORM
    from pdiff.cli import build_parser
    from pdiff.core.settings import DataSpec, SamplingSpec

    args = build_parser().parse_args(["evaluate", "--bundle", "b", "--json", "r.json"])
    assert (args.n, args.sampler, args.steps, args.seed) == (SamplingSpec.n, SamplingSpec.sampler, SamplingSpec.steps,
                                                             SamplingSpec.seed)
    assert (args.validation, args.bn_images) == (DataSpec.validation, DataSpec.bn_images)
    assert (FORM["n"], FORM["sampler"], FORM["steps"]) == (APP_SAMPLING.n, APP_SAMPLING.sampler, APP_SAMPLING.steps)
    assert APP_SAMPLING != SamplingSpec()  # the app's differences, stated where they are made
    from pdiff.app.request import APP_DEFENCES
    from pdiff.core.settings import DefenceSettings

    assert APP_DEFENCES.anp_iterations < DefenceSettings().anp_iterations  # a browser waits; nothing else differs
    assert {**vars(APP_DEFENCES), "anp_iterations": 0} == {**vars(DefenceSettings()), "anp_iterations": 0}


def test_the_cli_and_the_api_build_the_same_bundle(tiny_collection, small_train, fmnist_test, tmp_path):
    """`pdiff train` and `pdiff.train` run one recipe (generator.recipe.build_bundle) over one TrainSpec: the same
    spec and seed give the same bundle.json, timings aside, and the same tensors in every file. The spec asks for an
    accuracy condition (guidance chosen on validation), the clean-model reference and the reconstruction check."""
    from safetensors.torch import load_file

    from pdiff.cli import main

    flags = ["--ae-steps", "20", "--ddpm-steps", "20", "--latent-channels", "8", "--behaviour-images", "64",
             "--ddpm-channels", "32", "--condition", "acc", "--validation", "200", "--guidance-sampler", "ddim",
             "--guidance-steps", "3", "--clean-model", str(tiny_collection), "--seed", "1"]
    assert main(["train", "--collection", str(tiny_collection), "--out", str(tmp_path / "cli"), *flags,
                 "--train-subset", "1024", "--test-subset", "300", "--device", "cpu"]) == 0
    spec = pdiff.TrainSpec(autoencoder={**pdiff.AEConfig().to_dict(), "steps": 20, "latent_channels": 8,
                                        "behaviour_images": 64},
                           ddpm=pdiff.DDPMConfig(steps=20, channels=32), condition="acc", validation=200,
                           guidance_sampler="ddim", guidance_steps=3, clean_model=str(tiny_collection))
    api = pdiff.train(pdiff.load(tiny_collection), small_train, fmnist_test.subset(300), spec, seed=1)
    api.save(tmp_path / "api")
    cli_meta, api_meta = (json.loads((tmp_path / name / "bundle.json").read_text()) for name in ("cli", "api"))
    assert cli_meta["train_spec"] == spec.to_dict() and cli_meta["format_version"] == 4
    assert cli_meta["condition"]["guidance_on_validation"]["steps"] == 3
    assert "reconstruction" in cli_meta["training"] and cli_meta["references"]["clean-model"]["acc"] > 0
    _same(cli_meta, api_meta, "bundle.json")
    for name in cli_meta["files"]:
        cli_tensors, api_tensors = load_file(tmp_path / "cli" / name), load_file(tmp_path / "api" / name)
        assert cli_tensors.keys() == api_tensors.keys(), name
        assert all(torch.equal(cli_tensors[k], api_tensors[k]) for k in cli_tensors), name
