"""The original experiment's configuration end to end, at tiny scale on a CIFAR-10 folder in the official
layout: ResNet-18 (base trained here) and BackdoorBench's PreAct-ResNet-18 (collection started from the
user's own clean checkpoint), collect -> train -> evaluate -> transfer onto a victim file, all by the CLI."""
import json

import pytest
import torch
import torchvision
from helpers import BBPreActResNet18, write_cifar
from torch import nn

from pdiff.cli import main

pytestmark = pytest.mark.slow

# a few hundred images exist; the commands use 64 training and 32 test images (ResNet-18 on this CPU is slow)
SMALL = ["--device", "cpu", "--train-subset", "64", "--test-subset", "32"]
SAMPLING = ["--n", "3", "--sampler", "ddim", "--steps", "3"]


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    write_cifar(root, per_batch=40, n_test=40)
    return root


def _torchvision_victim(path):
    """A torchvision ResNet-18 with the CIFAR stem, saved as its users save one."""
    torch.manual_seed(1)
    model = torchvision.models.resnet18(num_classes=10)
    model.conv1, model.maxpool = nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.Identity()
    torch.save(model.state_dict(), path)


def _backdoorbench_file(path, seed):
    """A PreAct-ResNet-18 saved as BackdoorBench saves its models (state dict under "model")."""
    torch.manual_seed(seed)
    torch.save({"model_name": "preactresnet18", "num_classes": 10, "model": BBPreActResNet18().state_dict()}, path)


@pytest.mark.parametrize("task", ["cifar10-resnet18", "cifar10-preact-resnet18"])
def test_collect_train_evaluate_transfer(task, cifar_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("PDIFF_DEBUG", "1")  # a failure shows its traceback
    data = ["--data-dir", str(cifar_dir), *SMALL]
    coll, bundle = tmp_path / "collection", tmp_path / "bundle"
    collect = ["collect", "--task", task, "--out", str(coll), "--k", "4", "--save-every", "2", *data]
    if task == "cifar10-resnet18":
        victim = tmp_path / "victim.pth"
        _torchvision_victim(victim)
        collect += ["--epochs", "1"]
    else:
        victim = tmp_path / "attack_result.pt"
        _backdoorbench_file(tmp_path / "clean.pt", seed=0)
        _backdoorbench_file(victim, seed=1)
        collect += ["--from-base", str(tmp_path / "clean.pt")]
    assert main(collect) == 0
    manifest = json.loads((coll / "manifest.json").read_text())
    assert manifest["task"]["name"] == task and len(manifest["accs"]) == 4
    # of a 64-image subset, the last half is the validation split no model trains on (data.plan.RunData)
    assert manifest["train_size"] == 32 and manifest["base_given"] == (task != "cifar10-resnet18")

    assert main(["train", "--collection", str(coll), "--out", str(bundle), "--ae-steps", "10", "--ddpm-steps", "10",
                 "--ddpm-channels", "16", "--ddpm-blocks", "1", "--behaviour-images", "16", *data]) == 0
    meta = json.loads((bundle / "bundle.json").read_text())
    assert meta["task"]["arch"] == task.split("-", 1)[1] and "reconstruction" in meta["training"]

    report_path = tmp_path / "evaluate.json"
    assert main(["evaluate", "--bundle", str(bundle), "--target", "clean", *SAMPLING, "--json", str(report_path),
                 "--no-tsne", "--validation", "16", "--bn-images", "0", *data]) == 0
    report = json.loads(report_path.read_text())
    assert report["settings"]["sampling"]["n"] == 3 and report["task"] == task
    assert len(report["sources"]["generated"]["acc"]) == 3

    transfer_path = tmp_path / "transfer.json"
    assert main(["transfer", "--bundle", str(bundle), "--victim", str(victim), *SAMPLING, "--methods",
                 "generated,originals,finetune", "--k-defence", "2", "--json", str(transfer_path), *data,
                 "--train-subset", "200", "--validation", "0", "--clean-budget", "0.7",  # one batch for a defence
                 "--revived", "1"]) == 0  # the revival attack on one ResNet-18 per method: minutes on a CPU otherwise
    transfer = json.loads(transfer_path.read_text())
    assert transfer["victim"]["name"] == victim.name and transfer["victim"]["trigger"]["name"] == "badnets"
    assert {k: len(transfer["sources"][k]["der"]) for k in transfer["sources"]} == {
        "generated": 3, "originals": 4, "finetune": 1}  # a defence: its final checkpoint
    assert all(0 <= v <= 100 for m in transfer["sources"].values() for v in m["acc"] + m["asr"])
    assert all(len(m["revived"]["asr"]) == 1 for m in transfer["sources"].values())
