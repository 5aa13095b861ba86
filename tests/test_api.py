"""The Python API for any nn.Module: the example end to end, whole-model against staged evaluation, float
data, collection on a module that is not staged, and the error for a layer the module does not have."""
import json
import os
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from torch import nn

import pdiff
from pdiff.models.archs import ResNet18
from pdiff.collection.collect import collect_checkpoints
from pdiff.models.staged import BatchedEvaluator
from pdiff.core.params import unflatten

ROOT = Path(__file__).resolve().parent.parent
NORM = {"mean": (0.286,), "std": (0.353,)}


def small_cnn():
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(4),
                         nn.Flatten(), nn.Linear(8 * 7 * 7, 32), nn.ReLU(), nn.Linear(32, 10))


def example_cnn():  # the architecture of examples/own_model.py
    return nn.Sequential(nn.Conv2d(1, 8, 5, stride=2, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(8 * 7 * 7, 64), nn.ReLU(), nn.BatchNorm1d(64), nn.Linear(64, 10))


def plain(model: nn.Module) -> nn.Sequential:
    """The same modules (same names, same tensors) in a plain nn.Sequential: not a StagedNet, so it runs whole."""
    return nn.Sequential(OrderedDict(model.named_children()))


def perturbed(model: nn.Module, names: list[str], n: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state = model.state_dict()
    return {k: state[k][None] + 0.3 * state[k].std() * torch.randn((n, *state[k].shape), generator=g) for k in names}


@pytest.mark.slow  # the example end to end, in a subprocess: half a minute
def test_the_example_runs_end_to_end_and_saves_what_it_made(tmp_path, small_test):
    # one thread: on this shared 2-core machine two OpenMP threads wait on busy cores (40x slower per step). No
    # PYTHONPATH: the example runs from the checkout as a newcomer runs it
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "own_model.py"), str(tmp_path)], env=env,
                         capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("summary: "))
    summary = json.loads(line.removeprefix("summary: "))
    assert summary["originals"]["mean"] > 60  # ten classes: chance is 10%
    assert summary["generated"]["mean"] > 50 and summary["generated"]["best"] <= 100
    code = (ROOT / "examples" / "own_model.py").read_text().split('"""', 2)[2]  # after the docstring
    lines = [ln for ln in code.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    assert len(lines) <= 25, lines
    # everything saved reads back; a bundle of your own model evaluates again once given the model
    collection = pdiff.load(tmp_path / "collection")
    assert collection.k == 30 and collection.task.train_layer == ["6.weight", "6.bias", "7.weight", "7.bias"]
    from safetensors.torch import load_file
    saved = load_file(tmp_path / "samples" / "samples.safetensors")
    assert saved["7.weight"].shape == (50, 10, 64) and saved["6.bias"].shape == (50, 64)
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["sources"]["generated"]["summary"]["acc"]["mean"] == pytest.approx(summary["generated"]["mean"])
    # loaded without its model, it still saves again whole (bundle.json keeps the constructor arguments)
    pdiff.load(tmp_path / "bundle").save(tmp_path / "bundle-again")
    assert (json.loads((tmp_path / "bundle-again" / "bundle.json").read_text())["files"]
            == json.loads((tmp_path / "bundle" / "bundle.json").read_text())["files"])
    bundle = pdiff.load(tmp_path / "bundle-again", model=example_cnn)
    test = pdiff.Split(small_test.images[:300], small_test.labels[:300], **NORM)
    again = pdiff.evaluate(pdiff.sample(bundle, 8, "ddim", 10), test, settings=pdiff.EvalSettings(baselines=False))
    generated = again["sources"]["generated"]
    assert len(generated["acc"]) == 8 and generated["summary"]["acc"]["mean"] > 50


def test_whole_model_evaluation_equals_the_staged_one(small_test):
    from pdiff.models.tasks import build_model, get_task

    bundle = pdiff.load(ROOT / "checkpoints" / "fmnist-convnet" / "bundle")
    model = build_model(get_task("fmnist-convnet"))
    model.load_state_dict(bundle.base_state)
    images = small_test.normalized()[:400]
    vectors = torch.cat([pdiff.sample(bundle, 4, steps=10, seed=3).vectors, bundle.originals[:2]])
    stacked = unflatten(vectors, bundle.layout)
    staged = BatchedEvaluator(model, images, bundle.names).predict_many(stacked)
    whole = BatchedEvaluator(plain(model), images, bundle.names).predict_many(stacked)
    assert whole.shape == (6, 400) and torch.equal(staged, whole)
    assert (staged == small_test.labels[:400]).double().mean() > 0.7

    # a ResNet-18 (nested Sequentials) with its last block's BatchNorm perturbed
    torch.manual_seed(0)
    resnet = ResNet18(in_channels=1, num_classes=10).eval()
    names = ["layer4.1.bn1.weight", "layer4.1.bn1.bias", "layer4.1.bn2.weight", "layer4.1.bn2.bias"]
    sets = perturbed(resnet, names, 3, seed=1)
    staged = BatchedEvaluator(resnet, images[:40], names).predict_many(sets)
    assert torch.equal(staged, BatchedEvaluator(plain(resnet), images[:40], names).predict_many(sets))


def test_float_images_give_the_same_input_as_uint8(small_test):
    raw = small_test.subset(50)
    as_float = pdiff.Split(raw.images.float() / 255, raw.labels, "fashion-mnist")
    assert torch.allclose(as_float.normalized(), raw.normalized(), atol=1e-6)
    own = pdiff.Split(raw.images, raw.labels, **NORM)  # a dataset pdiff does not know, its own normalisation
    assert torch.allclose(own.normalized(), (raw.images.float() / 255 - 0.286) / 0.353)
    assert torch.equal(pdiff.Split(raw.images, raw.labels).normalized(), raw.images.float() / 255)
    with pytest.raises(ValueError, match="one label per image"):
        pdiff.Split(raw.images, raw.labels[:3])


def test_collect_on_a_plain_module_trains_only_the_named_layers(small_train, small_test):
    train = pdiff.Split(small_train.images.float() / 255, small_train.labels, **NORM)
    test = pdiff.Split(small_test.images[:200].float() / 255, small_test.labels[:200], **NORM)
    task = pdiff.task(small_cnn, ["7.weight", "7.bias"], epochs=1, k=4, save_every=5)
    collection = pdiff.collect(task, train, test, seed=0, augment=None)
    assert collection.base is not None and min(collection.accs) > 30

    model = small_cnn()
    model.load_state_dict(collection.base)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params, accs = collect_checkpoints(model, task, train, test, torch.Generator().manual_seed(1), k=3)
    after = model.state_dict()
    for name, value in before.items():
        if name in task.train_layer:
            assert not torch.equal(value, after[name]), name
        else:
            assert torch.equal(value, after[name]), name  # frozen, BatchNorm statistics included
    assert params["7.weight"].shape == (3, 10, 32) and not torch.equal(params["7.weight"][0], params["7.weight"][2])
    assert len(accs) == 3


def test_a_layer_the_module_does_not_have_is_named():
    with pytest.raises(ValueError, match=r"train_layer names not in .*: 9\.weight"):
        pdiff.task(small_cnn, ["7.weight", "9.weight"])
    with pytest.raises(ValueError, match="non-empty list"):
        pdiff.task(small_cnn, "7.weight")
    with pytest.raises(ValueError, match="unknown keys"):
        pdiff.task(small_cnn, ["7.weight"], epoch=3)


def test_a_module_in_memory_is_a_target(small_train, small_test):
    train = pdiff.Split(small_train.images[:512], small_train.labels[:512], **NORM)
    test = pdiff.Split(small_test.images[:200], small_test.labels[:200], **NORM)
    base = small_cnn()
    task = pdiff.task(base, ["7.weight", "7.bias"], epochs=1, k=6, save_every=4)
    collection = pdiff.collect(task, train, test, seed=0, base=base)  # base given: no base training
    assert all(torch.equal(v, base.state_dict()[k]) for k, v in collection.base.items())
    bundle = pdiff.train(collection, train, test, autoencoder={"steps": 20, "channels": [8, 16]},
                         ddpm={"steps": 20, "channels": 16}, seed=0)
    # the CLI's recipe: the spec kept whole, the reconstructions checked on `test` (the whole model, not staged)
    assert bundle.info.train_spec == pdiff.TrainSpec(pdiff.AEConfig(steps=20, channels=[8, 16]),
                                                pdiff.DDPMConfig(steps=20, channels=16))
    assert len(bundle.info.training["reconstruction"]["acc"]) == 6
    report = pdiff.evaluate(pdiff.sample(bundle, 4, "ddim", 5), test, target=base,
                            settings=pdiff.EvalSettings(baselines=False))
    assert report["target"]["name"] == "Sequential" and len(report["sources"]["generated"]["acc"]) == 4
    with pytest.raises(ValueError, match="not a named one: give the train Split as `data`"):
        pdiff.train(collection)
    with pytest.raises(ValueError, match="not a named one: give the test Split as `test` .*reconstruction=False"):
        pdiff.train(collection, train)
    with pytest.raises(ValueError, match=r"TrainSpec: unknown settings \['epochs'\]"):
        pdiff.train(collection, train, test, epochs=3)
