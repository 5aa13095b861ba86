import pytest
import torch

from pdiff.models.tasks import TASKS, build_model, get_task


def test_parameter_names_are_the_stable_contract():
    convnet = dict(build_model(get_task("fmnist-convnet")).named_parameters())
    assert list(convnet) == ["conv1.weight", "bn1.weight", "bn1.bias", "conv2.weight", "bn2.weight", "bn2.bias",
                             "conv3.weight", "bn3.weight", "bn3.bias", "linear.weight", "linear.bias"]
    resnet = dict(build_model(get_task("cifar10-resnet18")).named_parameters())
    assert "layer4.1.bn2.bias" in resnet and "layer2.0.shortcut.0.weight" in resnet
    assert resnet["linear.weight"].shape == (10, 512) and resnet["conv1.weight"].shape == (64, 3, 3, 3)
    assert build_model(get_task("cifar100-resnet18")).linear.out_features == 100
    assert build_model(get_task("mnist-resnet18")).conv1.in_channels == 1


@pytest.mark.parametrize("name", sorted(TASKS))
def test_any_stage_split_equals_the_whole_forward(name):
    task = get_task(name)
    torch.manual_seed(0)
    model = build_model(task).eval()
    size = 28 if "mnist" in name else 32
    x = torch.randn(2, model.stages()[0][1].in_channels, size, size)
    start = model.stage_of(task.train_layer[0])
    with torch.no_grad():
        assert torch.allclose(model(model(x, 0, start), start), model(x), atol=1e-5)
    # the trunk ends right before the block that owns the first generated layer
    first = {"fmnist-convnet": "bn3", "fmnist-convnet-deep": "conv3"}.get(name, "layer4.1")
    assert model.stages()[start][0] == first


def test_get_task_returns_a_copy_and_rejects_unknown():
    task = get_task("fmnist-convnet")
    task.train_layer.append("x")
    assert "x" not in get_task("fmnist-convnet").train_layer
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        get_task("nope")
