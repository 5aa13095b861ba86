"""Architectures as staged Sequentials, and the registry that names them.

Parameter names are the contract between bundles and targets, so they never change.
A model is an `nn.Sequential` whose nested Sequentials (ResNet's `layer1..4`) are flattened
into one list of stages; `forward(x, start, stop)` runs any slice of it. That is what lets
evaluation compute the frozen trunk once and run only the generated tail per model.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import nn

from pdiff.core.registry import Registry


class StagedNet(nn.Sequential):
    def stages(self) -> list[tuple[str, nn.Module]]:
        """(dotted path, module) for every stage, nested Sequentials flattened."""
        out: list[tuple[str, nn.Module]] = []

        def walk(prefix: str, seq: nn.Sequential) -> None:
            for name, child in seq.named_children():
                path = f"{prefix}{name}"
                if type(child) is nn.Sequential:
                    walk(path + ".", child)
                else:
                    out.append((path, child))

        walk("", self)
        return out

    def stage_of(self, param_name: str) -> int:
        """Index of the stage that owns `param_name`."""
        for i, (path, _) in enumerate(self.stages()):
            if param_name.startswith(path + "."):
                return i
        raise ValueError(f"{type(self).__name__} has no parameter {param_name!r}")

    def forward(self, x: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
        for _, module in self.stages()[start:stop]:
            x = module(x)
        return x


class ConvNet(StagedNet):
    """Three conv-BN-ReLU blocks and a linear head; trains on a CPU in minutes."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 32):
        w = width
        super().__init__(OrderedDict([
            ("conv1", nn.Conv2d(in_channels, w, 3, padding=1, bias=False)), ("bn1", nn.BatchNorm2d(w)),
            ("relu1", nn.ReLU()), ("pool1", nn.MaxPool2d(2)),
            ("conv2", nn.Conv2d(w, 2 * w, 3, padding=1, bias=False)), ("bn2", nn.BatchNorm2d(2 * w)),
            ("relu2", nn.ReLU()), ("pool2", nn.MaxPool2d(2)),
            # global max pooling before bn3 keeps the tail's input at 128 numbers per image: the
            # batched evaluation runs N generated (bn3, linear) sets on that cached tensor
            ("conv3", nn.Conv2d(2 * w, 4 * w, 3, padding=1, bias=False)), ("pool3", nn.AdaptiveMaxPool2d(1)),
            ("bn3", nn.BatchNorm2d(4 * w)), ("relu3", nn.ReLU()), ("flatten", nn.Flatten()),
            ("linear", nn.Linear(4 * w, num_classes)),
        ]))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet18(StagedNet):
    """CIFAR-style ResNet-18 of the reference work: 3x3 stem, layer1..layer4, `linear` head."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10):
        layers, in_planes = [], 64
        for i, (planes, stride) in enumerate([(64, 1), (128, 2), (256, 2), (512, 2)]):
            blocks = [BasicBlock(in_planes, planes, stride), BasicBlock(planes, planes, 1)]
            in_planes = planes
            layers.append((f"layer{i + 1}", nn.Sequential(*blocks)))
        super().__init__(OrderedDict([
            ("conv1", nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)),
            ("bn1", nn.BatchNorm2d(64)), ("relu", nn.ReLU()),
            *layers,
            ("pool", nn.AdaptiveAvgPool2d(1)), ("flatten", nn.Flatten()),
            ("linear", nn.Linear(512, num_classes)),
        ]))


class PreActBlock(nn.Module):
    """A pre-activation basic block (He et al. 2016, "Identity Mappings in Deep Residual Networks"):
    BN-ReLU before each conv, the identity path untouched; a projection (a 1x1 conv only, no BN) takes the
    pre-activated input where the shape changes. Attribute names follow BackdoorBench's saved models."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(x))
        skip = self.shortcut(out) if hasattr(self, "shortcut") else x
        out = self.conv2(torch.relu(self.bn2(self.conv1(out))))
        return out + skip


class PreActResNet18(StagedNet):
    """PreAct-ResNet-18 as BackdoorBench trains it (its default model): 3x3 stem, no BN after the stem or
    after layer4 (the blocks carry their own), `linear` head; a BackdoorBench state dict loads as is."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10):
        layers, in_planes = [], 64
        for i, (planes, stride) in enumerate([(64, 1), (128, 2), (256, 2), (512, 2)]):
            layers.append((f"layer{i + 1}", nn.Sequential(PreActBlock(in_planes, planes, stride),
                                                          PreActBlock(planes, planes, 1))))
            in_planes = planes
        super().__init__(OrderedDict([
            ("conv1", nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)),
            *layers,
            ("avgpool", nn.AdaptiveAvgPool2d(1)), ("flatten", nn.Flatten()),
            ("linear", nn.Linear(512, num_classes)),
        ]))


# name -> factory(in_channels=, num_classes=) returning a model; register_arch adds to it
ARCHS: Registry[Callable[..., nn.Module]] = Registry(
    "architecture", "pdiff.register_arch adds one",
    {"convnet": ConvNet, "resnet18": ResNet18, "preact-resnet18": PreActResNet18})

# Classes a whole pickled module may contain; everything else is refused (see models/loading.py).
SAFE_MODULE_CLASSES = [ConvNet, ResNet18, BasicBlock, PreActResNet18, PreActBlock, nn.Sequential, nn.Conv2d,
                       nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Flatten,
                       nn.Linear]


def register_arch(name: str, factory: Callable[..., nn.Module]) -> None:
    """Make `factory(in_channels=..., num_classes=...)` known as architecture `name` (tasks and bundles name it).

    Parameter names are the contract with bundles, so a name is never re-registered to another factory.
    A StagedNet gets the cached-trunk evaluation; other modules are evaluated whole."""
    if not callable(factory):
        raise ValueError(f"architecture {name!r}: the factory must be callable, got {type(factory).__name__}")
    ARCHS.register(name, factory)


get_arch = ARCHS.get_or_fail
