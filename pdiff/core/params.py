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


def layout_to_json(layout: Layout) -> list[list]:
    """The layout as bundle.json, manifest.json and sample files store it: [[name, [dims...]], ...]."""
    return [[n, list(s)] for n, s in layout]


def layout_from_json(items: list) -> Layout:
    return [(str(n), tuple(int(d) for d in s)) for n, s in items]


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


def own_vector(state: dict[str, torch.Tensor], layout: Layout) -> torch.Tensor:
    """A model's own values of the layout's tensors as one (1, P) float32 vector."""
    return flatten({n: state[n][None] for n, _ in layout}, layout).float()


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
    """Centre every number on its mean over the K checkpoints, scale each tensor by the std of those
    deviations: returns the mean (P,) and one std per tensor (T,).

    Centring per number matters once a big tensor is generated (the deep task's conv3): checkpoints
    differ from their mean by about 3% of the weights, and the autoencoder then only has to model
    that difference, not the weights themselves.
    """
    flat = flatten(stacked, layout).float()
    mean = flat.mean(0)
    dev = unflatten(flat - mean, layout)
    std = torch.stack([dev[n].std() for n, _ in layout]).clamp(min=1e-8)
    return mean, std


def tensor_std(vectors: torch.Tensor, layout: Layout) -> torch.Tensor:
    """Each tensor's std over all K vectors and all its numbers (T,): the noise baselines' unit."""
    parts = unflatten(vectors.float(), layout)
    return torch.stack([parts[n].std() for n, _ in layout]).clamp(min=1e-8)


BN_STATISTICS = ("running_mean", "running_var", "num_batches_tracked")


def parameter_columns(layout: Layout) -> torch.Tensor:
    """(P,) 1.0 for columns of trained parameters, 0.0 for BatchNorm statistics: baselines perturb only the former."""
    return per_tensor(torch.tensor([0.0 if n.rsplit(".", 1)[-1] in BN_STATISTICS else 1.0 for n, _ in layout]), layout)


def comparison_space(vectors: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, layout: Layout) -> torch.Tensor:
    """Normalised vectors for distances and t-SNE, without the tensors that have no spread over the K
    originals (their std was clamped; dividing by the clamp would blow them up to 1e6 and more)."""
    keep = per_tensor((std > 1e-8).float(), layout).bool()
    return normalize(vectors, mean, std, layout)[:, keep]


def per_tensor(stat: torch.Tensor, layout: Layout) -> torch.Tensor:
    """Per-tensor scalars -> a length-P vector aligned with the flat layout."""
    sizes = torch.tensor([math.prod(s) for _, s in layout], device=stat.device)
    return torch.repeat_interleave(stat, sizes)


def _mean_vector(mean: torch.Tensor, layout: Layout) -> torch.Tensor:
    # bundles of format 1 made before per-number centring store one mean per tensor (T,)
    return per_tensor(mean, layout) if mean.shape[0] == len(layout) else mean


def normalize(vectors: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, layout: Layout) -> torch.Tensor:
    return (vectors - _mean_vector(mean, layout)) / per_tensor(std, layout)


def denormalize(vectors: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, layout: Layout) -> torch.Tensor:
    return vectors * per_tensor(std, layout) + _mean_vector(mean, layout)
