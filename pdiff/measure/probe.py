"""A linear probe: logistic regression on a model's own features at the splice point, fitted on the clean budget.

The control that asks how far the clean budget alone gets with the victim's features: if a linear head fitted on
3,000 clean images already keeps the victim's accuracy and drops its backdoor, generated layers must beat it to
mean anything. The probe replaces every stage from the splice point on; it sees the features standardised with
the budget's mean and std.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pdiff.data.datasets import Split
from pdiff.models.staged import predict

PROBE_ITERS, PROBE_L2 = 200, 1e-3  # L-BFGS iterations on the whole budget; a small ridge on the weights


class Probe(nn.Module):
    """Flatten, standardise, one linear layer: (N, *features) -> (N, classes) logits."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, classes: int):
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.linear = nn.Linear(len(mean), classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear((features.flatten(1) - self.mean) / self.std)


def fit_probe(features: torch.Tensor, labels: torch.Tensor, classes: int) -> Probe:
    """Logistic regression (cross-entropy, L-BFGS, a small ridge) on features (N, ...) of the budget's images."""
    flat = features.flatten(1).float()
    probe = Probe(flat.mean(0), flat.std(0).clamp(min=1e-6), classes).to(flat.device)
    opt = torch.optim.LBFGS(probe.parameters(), max_iter=PROBE_ITERS, line_search_fn="strong_wolfe")
    labels = labels.to(flat.device)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(probe(flat), labels) + PROBE_L2 * probe.linear.weight.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    return probe.eval()


def probe_for(model: nn.Module, start: int, budget: Split, classes: int, device="cpu") -> Probe:
    """A probe fitted on `model`'s features (its stages before `start`) of the budget's images."""
    return fit_probe(predict(model.to(device), budget.normalized(device), 0, start), budget.labels, classes)


class NearestMean(nn.Module):
    """Nearest class mean on standardised features: logits are minus the squared distance to each class's mean."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, centres: torch.Tensor):
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.register_buffer("centres", centres)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        z = (features.flatten(1) - self.mean) / self.std
        return -torch.cdist(z, self.centres).square()


def fit_nearest_mean(features: torch.Tensor, labels: torch.Tensor, classes: int) -> NearestMean:
    """Each class's mean of the standardised features (N, ...) of a few labelled clean images."""
    flat = features.flatten(1).float()
    mean, std = flat.mean(0), flat.std(0).clamp(min=1e-6)
    z = (flat - mean) / std
    labels = labels.to(flat.device)
    centres = torch.stack([z[labels == c].mean(0) if (labels == c).any() else torch.full((z.shape[1],), float("inf"))
                           for c in range(classes)])
    return NearestMean(mean, std, centres).eval()
