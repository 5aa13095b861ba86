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


def draw_fewshot(labels: torch.Tensor, k: int, pool: int, generator: torch.Generator, classes: int,
                 validation: int = VALIDATION, exclude: torch.Tensor | None = None) -> FewShot:
    """k shots of each class and `pool` unlabelled images, disjoint, from the training split's first
    len(labels) - validation images less `exclude`. The pool does not depend on k and the shots of a smaller k are
    among those of a larger one (same generator seed). `generator`'s initial seed is recorded."""
    if k < 1 or pool < 0:
        raise ValueError(f"--shots must be at least 1 and the pool at least 0; got shots {k}, pool {pool}")
    allowed = torch.ones(len(labels), dtype=torch.bool)
    allowed[usable(len(labels), validation):] = False
    if exclude is not None:
        allowed[exclude] = False
    candidates = allowed.nonzero().squeeze(1)
    order = candidates[torch.randperm(len(candidates), generator=generator)]
    # the pool first, then the shots from the rest: one seed gives the same pool at every k, and nested shots
    if len(order) < pool:
        raise ValueError(f"an unlabelled pool of {pool} is more than the {len(order)} images there are to draw from")
    rest = order[pool:]
    shots = []
    for c in range(classes):
        of_class = rest[labels[rest] == c]
        if len(of_class) < k:
            raise ValueError(f"--shots {k} is more than the {len(of_class)} images class {c} has to draw from")
        shots.append(of_class[:k])
    drawn = FewShot(torch.cat(shots), order[:pool], k, generator.initial_seed())
    check_pool(drawn.pool, len(labels), validation)
    return drawn
