"""State dicts saved by other code: recognised by their names and shapes, renamed to an architecture's names
where they map one to one, or described when they do not.

torchvision's ResNet-18 names its projection `downsample` and its head `fc`, where ours says `shortcut` and
`linear`; block for block the parameters are the same. Its ImageNet stem (7x7 stride-2 conv1, then a
max-pool) is another function than the CIFAR stem (3x3 stride-1 conv1, no max-pool), so only a 3x3 conv1
is accepted; a state dict cannot say whether the max-pool was removed, so the ACC measured on the loaded
model is the check that it was. BackdoorBench's PreAct-ResNet-18 needs no renaming: `preact-resnet18`
uses its names.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from pdiff.models.archs import ARCHS
from pdiff.core.runtime import seeded_from


@dataclass(frozen=True)
class Family:
    name: str                           # what messages call such a file
    arch: str                           # our architecture it loads as
    marker: str                         # a name only this family's files have
    renames: tuple[tuple[str, str], ...]  # (their name part, ours), applied to "."-delimited parts
    hint: str                           # said when the renamed file's `hint_when` tensor does not fit
    hint_when: str = "conv1.weight"


FAMILIES = [
    Family("torchvision-style ResNet-18", "resnet18", "fc.weight", (("fc", "linear"), ("downsample", "shortcut")),
           "a torchvision ResNet-18 loads only with the CIFAR stem: conv1 a 3x3 stride-1 conv and the max-pool "
           "removed (model.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False); model.maxpool = nn.Identity())"),
]


def _rename(key: str, renames: tuple[tuple[str, str], ...]) -> str:
    parts = key.split(".")
    table = dict(renames)
    return ".".join(table.get(p, p) for p in parts)


def family_of(state: dict[str, torch.Tensor], arch: str) -> Family | None:
    """The foreign family `state` belongs to that loads as `arch`, if any."""
    for fam in FAMILIES:
        if fam.arch == arch and fam.marker in state:
            return fam
    return None


def translate(state: dict[str, torch.Tensor], arch: str) -> tuple[dict[str, torch.Tensor], Family | None]:
    """`state` under `arch`'s names when it is a known foreign family's file, else unchanged."""
    fam = family_of(state, arch)
    if fam is None:
        return state, None
    return {_rename(k, fam.renames): v for k, v in state.items()}, fam


def looks_like(state: dict[str, torch.Tensor], skip: str) -> str | None:
    """Another registered architecture whose parameter names `state` has (after its family's renaming), if any."""
    for name in sorted(set(ARCHS) - {skip}):
        try:
            with seeded_from(torch.Generator().manual_seed(0)):  # building one draws from the global RNG
                expected = set(ARCHS[name]().state_dict())
        except Exception:  # a registered factory that needs arguments: not one to compare with
            continue
        if set(translate(state, name)[0]) == expected:
            return name
    return None
