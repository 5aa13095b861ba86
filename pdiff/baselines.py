"""Baseline parameter sets to set beside generated ones: is the generator more than a copier?

Zeng et al. 2025 find weight generators mostly return near-copies or interpolations of their
training checkpoints, so every report shows those too, evaluated by the same engine.
"""
from __future__ import annotations

import torch

from pdiff.params import Layout, per_tensor

NOISE_SIGMAS = (0.01, 0.05, 0.15)  # in units of each tensor's std over the K originals


def noisy_originals(originals: torch.Tensor, tensor_std: torch.Tensor, layout: Layout, sigma: float, count: int,
                    generator: torch.Generator) -> torch.Tensor:
    """Random originals plus Gaussian noise of `sigma` times each tensor's std."""
    idx = torch.randint(0, len(originals), (count,), generator=generator)
    noise = torch.randn(count, originals.shape[1], generator=generator)
    return originals[idx] + sigma * noise * per_tensor(tensor_std, layout)


def interpolations(originals: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """Points on the segments between random pairs of distinct originals, mixing weight uniform in [0, 1]."""
    k = len(originals)
    i = torch.randint(0, k, (count,), generator=generator)
    j = (i + torch.randint(1, max(2, k), (count,), generator=generator)) % k  # never the same checkpoint twice
    w = torch.rand(count, 1, generator=generator)
    return (1 - w) * originals[i] + w * originals[j]


def baseline_sets(originals: torch.Tensor, tensor_std: torch.Tensor, layout: Layout, count: int,
                  generator: torch.Generator) -> dict[str, torch.Tensor]:
    sets = {f"noise_{s:g}": noisy_originals(originals, tensor_std, layout, s, count, generator) for s in NOISE_SIGMAS}
    sets["interpolation"] = interpolations(originals, count, generator)
    return sets
