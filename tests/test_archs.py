"""Architectures and their registry: BackdoorBench's PreAct-ResNet-18, torchvision's ResNet-18, register_*."""
import json
import shutil
from pathlib import Path

import pytest
import torch
import torchvision
from helpers import BBPreActResNet18
from torch import nn

from pdiff.models import archs
from pdiff.data import datasets as data
from pdiff.models import tasks
from pdiff.cli import main
from pdiff.core.config import Task
from pdiff.models.loading import TargetError, check_architecture, load_target
from pdiff.models.tasks import build_model, get_task

REPO = Path(__file__).resolve().parent.parent


def _randomised(model: nn.Module) -> nn.Module:
    """Random BatchNorm statistics and affine values, so a wrong mapping cannot hide behind 0/1 defaults."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            for t in (m.weight, m.bias, m.running_mean):
                t.data.copy_(torch.randn(t.shape, generator=g) * 0.2 + (1.0 if t is m.weight else 0.0))
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return model.eval()


def test_a_backdoorbench_preact_state_dict_loads_as_is_and_computes_the_same(tmp_path):
    torch.manual_seed(0)
    theirs = _randomised(BBPreActResNet18())
    task = get_task("cifar10-preact-resnet18")
    assert list(theirs.state_dict()) == list(build_model(task).state_dict())
    torch.save({"model": theirs.state_dict(), "model_name": "preactresnet18", "num_classes": 10}, tmp_path / "bb.pt")
    ours = load_target(task, tmp_path / "bb.pt")
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(ours(x), theirs(x), atol=1e-5)
        start = ours.stage_of("layer4.1.bn1.weight")  # staged: the generated tail starts at layer4.1
        assert torch.allclose(ours(ours(x, 0, start), start), theirs(x), atol=1e-5)


def test_a_torchvision_resnet18_maps_one_to_one_with_the_cifar_stem():
    torch.manual_seed(0)
    tv = torchvision.models.resnet18(num_classes=10)
    tv.conv1, tv.maxpool = nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.Identity()
    tv = _randomised(tv)
    ours = check_architecture(get_task("cifar10-resnet18"), tv.state_dict())
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(ours(x), tv(x))
    assert torch.equal(ours.state_dict()["linear.weight"], tv.fc.weight)


def test_state_dicts_of_other_architectures_are_refused_with_the_first_mismatches():
    imagenet = torchvision.models.resnet18(num_classes=10).state_dict()
    with pytest.raises(TargetError) as err:
        check_architecture(get_task("cifar10-resnet18"), imagenet)
    msg = str(err.value)
    assert "read as a torchvision-style ResNet-18" in msg
    assert "wrong shape: conv1.weight (file (64, 3, 7, 7), resnet18 (64, 3, 3, 3))" in msg and "maxpool" in msg
    with pytest.raises(TargetError) as err:
        check_architecture(get_task("cifar10-resnet18"), BBPreActResNet18().state_dict())
    msg = str(err.value)
    assert msg.startswith("the model does not match task cifar10-resnet18 (resnet18): missing: bn1.weight, bn1.bias")
    assert "and 14 more" in msg and msg.endswith("the file has the names of architecture preact-resnet18: "
                                                 "use a bundle of a task with that architecture")


def test_unknown_names_get_one_line_listing_the_known_ones():
    with pytest.raises(ValueError, match=r"^unknown architecture 'mine'; known: convnet, preact-resnet18, resnet18 "):
        build_model(Task("t", "cifar10", "mine", ["linear.weight"]))
    with pytest.raises(ValueError, match=r"^unknown dataset 'pets'; known: cifar10, cifar100, fashion-mnist, mnist "):
        data.load_split("pets", "test")


def test_an_unknown_architecture_in_a_bundle_is_named_by_the_cli(tmp_path, capsys):
    bundle = tmp_path / "bundle"
    shutil.copytree(REPO / "checkpoints" / "fmnist-convnet" / "bundle", bundle)
    meta = json.loads((bundle / "bundle.json").read_text())
    meta["task"]["arch"] = "mine"
    (bundle / "bundle.json").write_text(json.dumps(meta))
    assert main(["evaluate", "--bundle", str(bundle), "--n", "1", "--json", str(tmp_path / "r.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: unknown architecture 'mine'; known: convnet, preact-resnet18, resnet18")


def test_registered_arch_dataset_and_task_are_used():
    class Tiny(nn.Sequential):
        def __init__(self, in_channels, num_classes):
            super().__init__(nn.Flatten(), nn.Linear(in_channels * 8 * 8, num_classes))

    spec = data.DatasetSpec("dots", 1, 8, 3, (0.5,), (0.25,))
    images = torch.arange(5 * 64, dtype=torch.uint8).view(5, 1, 8, 8)
    try:
        archs.register_arch("tiny", Tiny)
        data.register_dataset(spec, lambda split, data_dir, download: (images, [0, 1, 2, 0, 1]))
        tasks.register_task(Task("dots-tiny", "dots", "tiny", ["1.weight", "1.bias"]))
        model = build_model(get_task("dots-tiny"))
        assert model[1].weight.shape == (3, 64)
        split = data.Split.load("dots", "test")
        assert torch.equal(split.images, images) and split.labels.tolist() == [0, 1, 2, 0, 1]
        with pytest.raises(ValueError, match="architecture 'tiny' is already registered"):
            archs.register_arch("tiny", lambda **kw: Tiny(**kw))
        with pytest.raises(ValueError, match="unknown dataset 'nowhere'"):
            tasks.register_task(Task("x", "nowhere", "tiny", ["1.weight"]))
        data.register_dataset(data.DatasetSpec("bad", 1, 8, 3, (0.5,), (0.25,)),
                              lambda split, data_dir, download: (images.float(), [0] * 5))
        with pytest.raises(ValueError, match=r"the loader's test images must be uint8 N x 1 x 8 x 8"):
            data.load_split("bad", "test")
    finally:
        archs.ARCHS.pop("tiny", None)
        for name in ("dots", "bad"):
            data.DATASETS.pop(name, None)
            data.LOADERS.pop(name, None)
        tasks.TASKS.pop("dots-tiny", None)
