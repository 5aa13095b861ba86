"""The budget-only threat model from the command line: a donor trained on the clean budget alone, its bundle keeping
the full clean model beside it, and a transfer run whose every method uses the donor's budget and states its clean
resources."""
import json
import subprocess
import sys

import pytest

from pdiff.generator.locate import load_bundle

pytestmark = pytest.mark.slow  # a donor, its bundle and a transfer run, end to end
SMALL = ["--train-subset", "1024", "--test-subset", "300", "--device", "cpu"]


def _run(*args):
    out = subprocess.run([sys.executable, "-m", "pdiff", *args], capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def donor(tmp_path_factory):
    root = tmp_path_factory.mktemp("donor")
    _run("collect", "--train-on", "budget", "--clean-budget", "0.25", "--budget-seed", "3", "--epochs", "2", "--k",
         "6", "--save-every", "5", "--out", str(root / "donor"), *SMALL)
    _run("train", "--collection", str(root / "donor"), "--out", str(root / "donor" / "bundle"), "--ae-steps", "20",
         "--ddpm-steps", "20", "--clean-model", "checkpoints/fmnist-convnet", "--no-recon-eval", *SMALL)
    return root / "donor"


def test_the_donor_trains_on_the_budget_alone_and_keeps_the_clean_model_beside_it(donor):
    manifest = json.loads((donor / "manifest.json").read_text())
    # 1,024 images, the last 512 held out as the validation split: a budget of 0.25 x 1,024 from the first 512
    assert manifest["train_size"] == 256
    assert manifest["trained_on"] == {"what": "the clean budget", "validation": None, "bn_images": 512, "budget": 0.25,
                                      "budget_seed": 3, "images": 256}
    bundle = load_bundle(donor / "bundle")
    assert bundle.budget_donor["budget_seed"] == 3 and bundle.train_size == 256
    state, images = bundle.clean_model()
    assert images == 55000 and state is bundle.references["clean-model"]  # the shipped clean model, 55,000 images


def test_transfer_with_the_donor_uses_its_budget_and_states_every_method_s_resources(donor, tmp_path):
    out = _run("transfer", "--bundle", str(donor / "bundle"), "--victim", "checkpoints/fmnist-convnet/victim.safetensors",
               "--sets", "2", "--sampler", "ddim", "--steps", "2", "--seeds", "0", "1", "--methods",
               "generated,donor,clean-model,probe,ft,stitch+generated,stitch+victim-tail", "--defence-epochs", "1",
               "--revived", "1", "--json", str(tmp_path / "t.json"), *SMALL)
    r = json.loads((tmp_path / "t.json").read_text())
    assert "once, with seed 3" in r["clean_budget"]["drawn"] and r["clean_budget"]["images"] == 256
    m = r["sources"]
    assert m["donor"]["clean_resources"] == {"images": 0, "model_images": 256, "checkpoints": 0}
    assert m["clean-model"]["clean_resources"] == {"images": 0, "model_images": 55000, "checkpoints": 0}
    assert m["generated"]["clean_resources"] == {"images": 0, "model_images": 256, "checkpoints": 6}
    assert m["probe"]["clean_resources"] == {"images": 256, "model_images": None, "checkpoints": 0}
    assert m["stitch+generated"]["clean_resources"] == {"images": 256, "model_images": 256, "checkpoints": 6}
    # the same budget for both seeds: the stitch, refitted per seed, comes out the same
    assert r["stitch_per_seed"][0]["r2"] == r["stitch_per_seed"][1]["r2"]
    assert len(m["donor"]["acc"]) == len(m["clean-model"]["acc"]) == 1  # measured once: they do not depend on the seed
    # the revival attack on the first model of each method, every seed it was measured with
    assert len(m["ft"]["revived"]["asr"]) == len(m["generated"]["revived"]["asr"]) == 2
    assert len(m["donor"]["revived"]["asr"]) == 1
    # the attack's length is calibrated on the validation split, and the line says how long it ran
    steps = r["revival"]["steps"]
    assert "\ndonor " in out.stdout and f"revived: ASR after {steps} SGD steps" in out.stdout


def test_a_budget_that_differs_from_the_donor_s_is_refused(donor, tmp_path):
    out = subprocess.run([sys.executable, "-m", "pdiff", "transfer", "--bundle", str(donor / "bundle"), "--victim",
                          "checkpoints/fmnist-convnet/victim.safetensors", "--clean-budget", "0.1", "--json",
                          str(tmp_path / "t.json"), *SMALL], capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "this bundle's donor was trained on a budget of 0.25" in out.stderr
    assert not (tmp_path / "t.json").exists()
