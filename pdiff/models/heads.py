"""A classifier's head as a set of numbers over channels and classes: the last BatchNorm's affine (gamma, beta; C
channels), a ReLU and a linear layer (K x C, and K biases), on the trunk's features at the BatchNorm's input.

The features are read in the trunk's own units: standardised by the BatchNorm's running mean and variance, which
belong to the trunk and stay when a head is swapped. In those units a head is comparable across trunks up to the
order of its channels (a scratch trunk's channels come in any order) and of its classes.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from pdiff.core.params import Layout
from pdiff.models.archs import StagedNet
from pdiff.models.staged import predict


@dataclass(frozen=True)
class HeadForm:
    """The names of a BatchNorm -> ReLU -> Linear head, with its channel and class counts."""
    bn: str
    linear: str
    channels: int
    classes: int
    eps: float = 1e-5

    @property
    def names(self) -> tuple[str, str, str, str]:
        return f"{self.bn}.weight", f"{self.bn}.bias", f"{self.linear}.weight", f"{self.linear}.bias"


def form_of(layout: Layout) -> HeadForm:
    """The head form of a layout [bn.weight (C), bn.bias (C), linear.weight (K, C), linear.bias (K)]; one line if
    the layout is not such a head."""
    shapes = [tuple(s) for _, s in layout]
    names = [n for n, _ in layout]
    ok = (len(layout) == 4 and all(len(s) == 1 for s in (shapes[0], shapes[1], shapes[3])) and len(shapes[2]) == 2
          and shapes[0] == shapes[1] == (shapes[2][1],) and shapes[3] == (shapes[2][0],)
          and names[0].endswith(".weight") and names[1] == names[0][:-len("weight")] + "bias"
          and names[2].endswith(".weight") and names[3] == names[2][:-len("weight")] + "bias")
    if not ok:
        raise ValueError(f"a head generator needs a layout of one BatchNorm's weight and bias and one linear layer's "
                         f"weight and bias; got {[(n, list(s)) for n, s in layout]}")
    return HeadForm(names[0][:-len(".weight")], names[2][:-len(".weight")], shapes[0][0], shapes[2][0])


def head_input(model: StagedNet, form: HeadForm) -> int:
    """The stage where the head begins (its BatchNorm)."""
    return model.stage_of(f"{form.bn}.weight")


@torch.no_grad()
def head_features(model: StagedNet, images: torch.Tensor, form: HeadForm) -> torch.Tensor:
    """(N, C) float32: the trunk's features at the head's BatchNorm input (eval mode); one line if any is not
    finite or the width is not the form's."""
    feats = predict(model, images, 0, head_input(model, form)).flatten(1).float()
    if feats.shape[1] != form.channels:
        raise ValueError(f"the model's features at {form.bn} are {feats.shape[1]} wide; the head generator's are "
                         f"{form.channels}")
    bad = int((~torch.isfinite(feats)).any(1).sum())
    if bad:
        raise ValueError(f"the model's features at {form.bn} are not finite on {bad} of {len(feats)} images")
    return feats


def standardise(features: torch.Tensor, state: dict[str, torch.Tensor], form: HeadForm) -> torch.Tensor:
    """Features in the trunk's own units: minus the BatchNorm's running mean, over its running std."""
    mean = state[f"{form.bn}.running_mean"].float().to(features.device)
    var = state[f"{form.bn}.running_var"].float().to(features.device)
    units = (features - mean) / (var + form.eps).sqrt()
    bad = int((~torch.isfinite(units)).any(0).sum())
    if bad:
        raise ValueError(f"the model's features at {form.bn}, in its running statistics' units, are not finite in "
                         f"{bad} of {units.shape[1]} channels (a running variance below zero or not finite)")
    return units


def head_logits(units: torch.Tensor, heads: dict[str, torch.Tensor], form: HeadForm) -> torch.Tensor:
    """(H, N, K) logits of H heads {name: (H, *shape)} on standardised features `units` (N, C): exactly what the
    model computes from the BatchNorm on, in eval mode."""
    g, b, w, c = (heads[n].float().to(units.device) for n in form.names)
    hidden = torch.relu(g[:, None] * units[None] + b[:, None])  # (H, N, C)
    return torch.einsum("hnc,hkc->hnk", hidden, w) + c[:, None]


def own_head(state: dict[str, torch.Tensor], form: HeadForm) -> dict[str, torch.Tensor]:
    """A model's own head as {name: (1, *shape)}."""
    return {n: state[n][None].float() for n in form.names}
