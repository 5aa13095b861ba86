"""The data one run uses: the test split, the training split, and the parts derived from it once.

From the training split: the validation split (its last images, held out of every model's training: selection,
matched noise and every choice use it; the test split only reports), what models train on (the rest), the
BatchNorm images (its first few hundred) and the clean budget (a random share of the rest, drawn per seed by the
caller's generator, or one fixed draw: the images a budget donor was trained on).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cached_property

import torch

from pdiff.core.settings import VALIDATION, DataSpec
from pdiff.data.datasets import Split

BATCH = 128  # a clean budget must fill one training batch of the defences


def draw_budget(train: Split, fraction: float, generator: torch.Generator, exclude_last: int = 0) -> Split:
    """`fraction` of the training split, drawn at random from it less its last `exclude_last` images (a held-out
    validation split)."""
    pool = len(train.labels) - exclude_last
    count = round(fraction * len(train.labels))
    if not fraction > 0 or count > pool:
        raise ValueError(f"clean budget {fraction} ({count} images) must be above 0 and at most the {pool} "
                         "training images the defences may use")
    if count < BATCH:
        raise ValueError(f"clean budget {fraction} is {count} images, under one batch ({BATCH}); raise it")
    idx = torch.randperm(pool, generator=generator)[:count]
    return replace(train, images=train.images[idx], labels=train.labels[idx])  # keeps a split's own mean/std


def donor_spec(trained_on: dict) -> DataSpec:
    """The data plan a budget donor's record (`RunData.budget_only`'s) was drawn with: its budget, drawn again, gives
    the same images."""
    return DataSpec(validation=trained_on["validation"], budget=trained_on["budget"],
                    budget_seed=trained_on["budget_seed"])


@dataclass
class RunData:
    """The splits of one run. Without a training split there is no validation, BatchNorm re-estimation or budget;
    without a test split only the training side is used (a budget donor's bundle training on the donor's budget)."""
    test: Split | None
    train: Split | None = None
    spec: DataSpec = field(default_factory=DataSpec)

    @cached_property
    def validation(self) -> Split | None:
        """The last `spec.validation` training images (default VALIDATION, at most half the split, so a small
        training subset still leaves images to train on); None for 0 or without a training split."""
        n = self.spec.validation
        if self.train is None or n == 0:
            return None
        return self.train.last(min(VALIDATION, len(self.train.labels) // 2) if n is None else n)

    @cached_property
    def fit(self) -> Split | None:
        """What models train on: the training split less the validation images, which no model ever sees."""
        if self.train is None or self.validation is None:
            return self.train
        return self.train.subset(len(self.train.labels) - len(self.validation.labels))

    @cached_property
    def bn(self) -> Split | None:
        """The first `spec.bn_images` training images (None for 0 or without a training split)."""
        return self.train.subset(self.spec.bn_images) if self.train is not None and self.spec.bn_images else None

    def budget(self, generator: torch.Generator) -> Split:
        """A clean budget: `spec.budget` of the training split, drawn from it less the validation images with
        `generator`, or, where spec.budget_seed is set (a donor's budget), the same draw every time."""
        if self.train is None:
            raise ValueError("a clean budget is drawn from the training split; none was given")
        held = len(self.validation.labels) if self.validation is not None else 0
        if self.spec.budget_seed is not None:
            generator = torch.Generator().manual_seed(self.spec.budget_seed)
        return draw_budget(self.train, self.spec.budget, generator, exclude_last=held)

    def budget_only(self, budget: float, budget_seed: int) -> tuple["RunData", dict]:
        """A budget donor's data: `budget` of the training split, drawn once with `budget_seed` from the images the
        validation split leaves, as the whole training split (nothing held out of it); and the record of that draw
        (`trained_on`: what transfer and a donor's bundle read back)."""
        plan = replace(self.spec, budget=budget, budget_seed=budget_seed)
        images = RunData(self.test, self.train, plan).budget(torch.Generator())
        record = {"what": "the clean budget", **plan.to_dict(), "images": len(images.labels)}
        return RunData(self.test, images, DataSpec(validation=0)), record
