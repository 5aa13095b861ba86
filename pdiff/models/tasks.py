"""Named tasks: dataset + architecture + ordered train_layer + recipe."""
from __future__ import annotations

from torch import nn

from pdiff.core.registry import Registry
from pdiff.models.archs import get_arch
from pdiff.core.config import Recipe, Task
from pdiff.data.datasets import get_dataset

_R18_BN = ["layer4.1.bn1.weight", "layer4.1.bn1.bias", "layer4.1.bn2.weight", "layer4.1.bn2.bias"]
_R18_RECIPE = Recipe(epochs=30, lr=1e-3, save_every=200)

TASKS: Registry[Task] = Registry("task", "pdiff.register_task adds one", {
    # the default: the last BatchNorm and the linear head of a small ConvNet
    "fmnist-convnet": Task("fmnist-convnet", "fashion-mnist", "convnet",
                           ["bn3.weight", "bn3.bias", "linear.weight", "linear.bias"]),
    # the last block too: a fine-tuned victim's backdoor lives in conv3, so the generated part must reach it.
    # bn3's running statistics travel with the generated conv3 they were measured on.
    "fmnist-convnet-deep": Task("fmnist-convnet-deep", "fashion-mnist", "convnet",
                                ["conv3.weight", "bn3.weight", "bn3.bias", "bn3.running_mean", "bn3.running_var",
                                 "linear.weight", "linear.bias"],
                                Recipe(k=40, collect_lr=0.01, save_every=50, storage_dtype="float16")),
    "fmnist-resnet18": Task("fmnist-resnet18", "fashion-mnist", "resnet18", list(_R18_BN), _R18_RECIPE),
    "mnist-resnet18": Task("mnist-resnet18", "mnist", "resnet18", list(_R18_BN), _R18_RECIPE),
    "cifar10-resnet18": Task("cifar10-resnet18", "cifar10", "resnet18", list(_R18_BN), Recipe(epochs=100, lr=1e-3)),
    "cifar100-resnet18": Task("cifar100-resnet18", "cifar100", "resnet18", list(_R18_BN), Recipe(epochs=100, lr=1e-3)),
    # BackdoorBench's default model: its last block's two BatchNorms carry the same names
    "cifar10-preact-resnet18": Task("cifar10-preact-resnet18", "cifar10", "preact-resnet18", list(_R18_BN),
                                    Recipe(epochs=100, lr=1e-3)),
    "cifar100-preact-resnet18": Task("cifar100-preact-resnet18", "cifar100", "preact-resnet18", list(_R18_BN),
                                     Recipe(epochs=100, lr=1e-3)),
})
DEFAULT_TASK = "fmnist-convnet"


def get_task(name: str) -> Task:
    """A copy of the task registered as `name`, which the caller may change."""
    return Task.from_dict(TASKS.get_or_fail(name).to_dict())


def register_task(task: Task) -> Task:
    """Make `task` known by its name (`get_task`, the CLI's --task); its dataset and architecture must be known."""
    get_dataset(task.dataset)
    get_arch(task.arch)
    TASKS.register(task.name, Task.from_dict(task.to_dict()))  # Task equality: every field but the factory
    return task


def arch_args(task: Task) -> dict:
    """The constructor arguments of the task's architecture (bundle.json records them)."""
    if task.factory is not None:
        return {}  # a user's factory takes no arguments
    spec = get_dataset(task.dataset)
    return {"in_channels": spec.channels, "num_classes": spec.classes}


def build_model(task: Task) -> nn.Module:
    """A freshly initialised model of the task's architecture (or its factory's), with its train_layer checked."""
    model = task.factory() if task.factory is not None else get_arch(task.arch)(**arch_args(task))
    if not isinstance(model, nn.Module):
        raise ValueError(f"the model factory of task {task.name} returned a {type(model).__name__}, not an nn.Module")
    names = {n for n, v in model.state_dict().items() if v.is_floating_point()}  # parameters and BN statistics
    missing = [n for n in task.train_layer if n not in names]
    if missing:
        raise ValueError(f"train_layer names not in {task.arch}: {', '.join(missing)}")
    if not any(n in dict(model.named_parameters()) for n in task.train_layer):
        raise ValueError("train_layer names only buffers; it needs at least one trainable parameter")
    if len(set(task.train_layer)) != len(task.train_layer):
        raise ValueError("train_layer lists a parameter twice")
    return model
