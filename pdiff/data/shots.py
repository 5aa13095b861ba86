"""The images a few-shot condition rests on: K labelled shots per class and a pool of unlabelled images, drawn with a
seed from the images every model trained on (the first N - VALIDATION training images), never from the validation
split or the test split.

A draw is indices into the training split. `exclude` keeps other draws out of it (the images a head generator drew
its training conditions from), so the images that condition a held-out trunk were never seen by the generator.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from pdiff.core.settings import VALIDATION


@dataclass(frozen=True)
class FewShot:
    """A draw: `shots` (classes * k indices, class by class) and `pool` (unlabelled) into the training split."""
    shots: torch.Tensor
    pool: torch.Tensor
    k: int
    seed: int

    def ledger(self) -> dict[str, int]:
        """The clean images a method that uses this draw rests on."""
        return {"labelled": len(self.shots), "unlabelled": len(self.pool)}


def usable(n_train: int, validation: int = VALIDATION) -> int:
    """How many training images (the first ones) a draw may use: every one before the validation split."""
    return n_train - validation


def check_pool(indices: torch.Tensor, n_train: int, validation: int = VALIDATION, split: str = "train") -> None:
    """Refuse, in one line, an unlabelled pool that is not in the training split or reaches into its validation
    images."""
    if split != "train":
        raise ValueError(f"the unlabelled pool must come from the training split, not the {split} split")
    inside = int((indices >= usable(n_train, validation)).sum())
    if inside:
        raise ValueError(f"the unlabelled pool overlaps the validation split (training images "
                         f"{usable(n_train, validation)}..{n_train - 1}) in {inside} images; draw it from the first "
                         f"{usable(n_train, validation)}")


def draw_fewshot(labels: torch.Tensor, k: int, pool: int | torch.Tensor, generator: torch.Generator, classes: int,
                 validation: int = VALIDATION, exclude: torch.Tensor | None = None) -> FewShot:
    """k shots of each class and `pool` unlabelled images, disjoint, from the training split's first
    len(labels) - validation images less `exclude`. The pool does not depend on k and the shots of a smaller k are
    among those of a larger one (same generator seed). `pool` is a size, or the user's own pool (indices into the
    training split), refused in one line where it reaches into the validation split or into `exclude`.
    `generator`'s initial seed is recorded."""
    given = torch.is_tensor(pool)
    if k < 1 or (not given and pool < 0):
        raise ValueError(f"--shots must be at least 1 and the pool at least 0; got shots {k}, pool {pool}")
    allowed = torch.ones(len(labels), dtype=torch.bool)
    allowed[usable(len(labels), validation):] = False
    if exclude is not None:
        allowed[exclude] = False
    if given:
        pool = _given_pool(pool, len(labels), validation, exclude)
        allowed[pool] = False
    candidates = allowed.nonzero().squeeze(1)
    order = candidates[torch.randperm(len(candidates), generator=generator)]
    # the pool first, then the shots from the rest: one seed gives the same pool at every k, and nested shots
    if not given and len(order) < pool:
        raise ValueError(f"an unlabelled pool of {pool} is more than the {len(order)} images there are to draw from")
    pool, rest = (pool, order) if given else (order[:pool], order[pool:])
    shots = []
    for c in range(classes):
        of_class = rest[labels[rest] == c]
        if len(of_class) < k:
            raise ValueError(f"--shots {k} is more than the {len(of_class)} images class {c} has to draw from")
        shots.append(of_class[:k])
    drawn = FewShot(torch.cat(shots), pool, k, generator.initial_seed())
    check_pool(drawn.pool, len(labels), validation)
    return drawn


def _given_pool(pool: torch.Tensor, n_train: int, validation: int, exclude: torch.Tensor | None) -> torch.Tensor:
    """The user's pool, checked: whole indices of distinct training images, none in the validation split or among
    `exclude` (the images a head generator trained its conditions on)."""
    if pool.dtype.is_floating_point or pool.dim() != 1 or not len(pool):
        raise ValueError(f"an unlabelled pool is a non-empty list of training-image indices; got a tensor of shape "
                         f"{list(pool.shape)} and type {pool.dtype}")
    pool = pool.long()
    if int(pool.min()) < 0 or int(pool.max()) >= n_train:
        raise ValueError(f"the unlabelled pool's indices must lie in 0..{n_train - 1} (the training split); got "
                         f"{int(pool.min())}..{int(pool.max())}")
    check_pool(pool, n_train, validation)
    if len(pool.unique()) != len(pool):
        raise ValueError(f"the unlabelled pool repeats {len(pool) - len(pool.unique())} of its images")
    if exclude is not None and torch.isin(pool, exclude).any():
        raise ValueError(f"the unlabelled pool holds {int(torch.isin(pool, exclude).sum())} of the images the head "
                         "generator drew its training conditions from")
    return pool
