"""Baseline parameter sets to set beside generated ones: is the generator more than a copier?

Zeng et al. 2025 find weight generators mostly return near-copies or interpolations of their
training checkpoints, so every report shows those too, evaluated by the same engine. The defences
(fine-tuning, pruning, ...) live in `defences`.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from pdiff.core.params import Layout, parameter_columns, per_tensor

NOISE_SIGMAS = (0.01, 0.05, 0.15)  # in units of each tensor's std over the K originals
GAUSSIAN_TEMPERATURES = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5)  # the accuracy-novelty sweep; 0 is the average
SUBSET = 16                        # average-16: means of 16 random originals
TOP_FRACTIONS = (0.10, 0.25, 0.50)  # the top-q Gaussians: the fair control for an accuracy-conditional generator
TOP_TEMPERATURES = (0.0, 0.5, 1.0)  # their temperatures in a report without curves


def noisy_originals(originals: torch.Tensor, tensor_std: torch.Tensor, layout: Layout, sigma: float, count: int,
                    generator: torch.Generator) -> torch.Tensor:
    """Random originals plus Gaussian noise of `sigma` times each tensor's std (BatchNorm statistics untouched)."""
    idx = torch.randint(0, len(originals), (count,), generator=generator)
    noise = torch.randn(count, originals.shape[1], generator=generator)
    return originals[idx] + sigma * noise * per_tensor(tensor_std, layout) * parameter_columns(layout)


def interpolations(originals: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """Points on the segments between random pairs of distinct originals, mixing weight uniform in [0, 1]."""
    k = len(originals)
    i = torch.randint(0, k, (count,), generator=generator)
    j = (i + torch.randint(1, max(2, k), (count,), generator=generator)) % k  # never the same checkpoint twice
    w = torch.rand(count, 1, generator=generator)
    return (1 - w) * originals[i] + w * originals[j]


def average(originals: torch.Tensor) -> torch.Tensor:
    """The weight average of all K originals: one model (1, P)."""
    return originals.mean(0, keepdim=True)


def subset_averages(originals: torch.Tensor, count: int, generator: torch.Generator, size: int = SUBSET) -> torch.Tensor:
    """Means of `size` distinct random originals, `count` of them."""
    if len(originals) < size:
        raise ValueError(f"average-{size} needs at least {size} originals; this bundle has {len(originals)}")
    picks = torch.stack([torch.randperm(len(originals), generator=generator)[:size] for _ in range(count)])
    return originals[picks].mean(1)


def gaussian(originals: torch.Tensor, layout: Layout, count: int, generator: torch.Generator,
             temperature: float = 1.0) -> torch.Tensor:
    """Every number drawn on its own from a normal fitted to it over the K originals, the std scaled by
    `temperature` (0: the average). BatchNorm statistics stay at their mean."""
    mean, std = originals.mean(0), originals.std(0) * parameter_columns(layout)
    return mean + temperature * std * torch.randn(count, originals.shape[1], generator=generator)


def baseline_sets(originals: torch.Tensor, tensor_std: torch.Tensor, layout: Layout, count: int,
                  generator: torch.Generator) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The memorisation baselines (Zeng et al. 2025), `count` sets each (the average: one):
    ({name: (M, P)}, {name: why it could not be made})."""
    sets = {f"noise_{s:g}": noisy_originals(originals, tensor_std, layout, s, count, generator) for s in NOISE_SIGMAS}
    sets["interpolation"] = interpolations(originals, count, generator)
    sets["average"] = average(originals)
    unavailable = {}
    try:
        sets[f"average-{SUBSET}"] = subset_averages(originals, count, generator)
    except ValueError as e:
        unavailable[f"average-{SUBSET}"] = str(e)
    sets["gaussian"] = gaussian(originals, layout, count, generator)
    return sets, unavailable


def gaussian_sweep(originals: torch.Tensor, layout: Layout, count: int, generator: torch.Generator,
                   temperatures=GAUSSIAN_TEMPERATURES) -> dict[str, torch.Tensor]:
    """The Gaussian baseline at each temperature: its accuracy-novelty curve."""
    return {f"gaussian_t{t:g}": gaussian(originals, layout, count if t else 1, generator, t) for t in temperatures}


def top_gaussians(originals: torch.Tensor, layout: Layout, scores: torch.Tensor, count: int,
                  generator: torch.Generator, temperatures=TOP_TEMPERATURES) -> dict[str, torch.Tensor]:
    """A Gaussian fitted on the top q of the originals by `scores` (their validation accuracies), for each q of
    TOP_FRACTIONS and each temperature: what a generator asked for high accuracy must beat without any network."""
    order = scores.flatten().argsort(descending=True)
    sets = {}
    for q in TOP_FRACTIONS:
        top = originals[order[:max(2, round(q * len(originals)))]]
        sets.update({f"gaussian_top{round(q * 100)}_t{t:g}": gaussian(top, layout, count if t else 1, generator, t)
                     for t in temperatures})
    return sets


def match_level(measure_at: Callable[[float], float], target: float, hi: float = 1.0,
                iterations: int = 12) -> float | None:
    """The level (a noise sigma, a Gaussian temperature) at which a measure that falls as the level grows equals
    `target`, by bisection; None when even level 0 (the originals, the average) measures below it.
    `measure_at(level)`: the mean accuracy of noisy originals, or the mean max-IoU of Gaussian draws, on a
    validation split."""
    if measure_at(0.0) < target:
        return None
    lo = 0.0
    while measure_at(hi) > target and hi < 64:
        lo, hi = hi, hi * 2
    for _ in range(iterations):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if measure_at(mid) > target else (lo, mid)
    return (lo + hi) / 2
