"""Flatten / unflatten train_layer tensors by name, and per-tensor normalisation.

A layout is the ordered list of (name, shape) that a bundle records. Vectors are always
built and split in that order, so one checkpoint's bias can never be glued to another's
weight: every tensor of row k comes from checkpoint k.
"""
from __future__ import annotations

import math

import torch

Layout = list[tuple[str, tuple[int, ...]]]


def layout_of(state: dict[str, torch.Tensor], names: list[str], stacked: bool = False) -> Layout:
    """The layout of `names` in a state dict (drop the leading K axis if `stacked`)."""
    missing = [n for n in names if n not in state]
    if missing:
        raise ValueError(f"parameters not found: {', '.join(missing)}")
    return [(n, tuple(state[n].shape[1:] if stacked else state[n].shape)) for n in names]


def numel(layout: Layout) -> int:
    return sum(math.prod(shape) for _, shape in layout)


def flatten(stacked: dict[str, torch.Tensor], layout: Layout) -> torch.Tensor:
    """{name: (K, *shape)} -> (K, P), columns in layout order."""
    k = None
    cols = []
    for name, shape in layout:
        t = stacked[name]
        if tuple(t.shape[1:]) != tuple(shape):
            raise ValueError(f"{name}: expected shape (K, {', '.join(map(str, shape))}), got {tuple(t.shape)}")
        if k is not None and t.shape[0] != k:
            raise ValueError(f"{name} has {t.shape[0]} rows, the others {k}")
        k = t.shape[0]
        cols.append(t.reshape(k, -1))
    return torch.cat(cols, dim=1)


def unflatten(vectors: torch.Tensor, layout: Layout) -> dict[str, torch.Tensor]:
    """(K, P) -> {name: (K, *shape)}, the inverse of `flatten`."""
    if vectors.ndim != 2 or vectors.shape[1] != numel(layout):
        raise ValueError(f"expected vectors of shape (K, {numel(layout)}), got {tuple(vectors.shape)}")
    out, i = {}, 0
    for name, shape in layout:
        n = math.prod(shape)
        out[name] = vectors[:, i:i + n].reshape(vectors.shape[0], *shape)
        i += n
    return out


def norm_stats(stacked: dict[str, torch.Tensor], layout: Layout) -> tuple[torch.Tensor, torch.Tensor]:
    """One (mean, std) scalar pair per tensor over all K checkpoints; returns (T,), (T,)."""
    mean = torch.stack([stacked[n].float().mean() for n, _ in layout])
    std = torch.stack([stacked[n].float().std() for n, _ in layout]).clamp(min=1e-8)
    return mean, std


def per_tensor(stat: torch.Tensor, layout: Layout) -> torch.Tensor:
    """Per-tensor scalars -> a length-P vector aligned with the flat layout."""
    sizes = torch.tensor([math.prod(s) for _, s in layout], device=stat.device)
    return torch.repeat_interleave(stat, sizes)


def normalize(vectors: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, layout: Layout) -> torch.Tensor:
    return (vectors - per_tensor(mean, layout)) / per_tensor(std, layout)


def denormalize(vectors: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, layout: Layout) -> torch.Tensor:
    return vectors * per_tensor(std, layout) + per_tensor(mean, layout)
