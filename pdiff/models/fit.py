"""Training a whole model: the one training loop of base models, victims, trunks and the fine-tuning defences."""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from pdiff.core.config import Recipe, Task
from pdiff.core.runtime import optimizer_step, seeded_from
from pdiff.data.datasets import Split, random_flip
from pdiff.models.staged import accuracy, predict
from pdiff.models.tasks import build_model


Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]  # raw images, generator -> augmented images
BatchHook = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]      # indices, augmented images -> images trained on


@dataclass(frozen=True)
class Objective:
    """What a training run does beyond the cross-entropy of each batch. batch_hook(indices into the split, the batch's
    augmented images) -> the images trained on (a victim stamps its trigger there, after augmentation, so it learns
    the trigger it is scored on); penalty() -> a term added to every batch's loss; after_step() runs after every
    optimiser step (a projection, as FST's norm constraint)."""
    batch_hook: BatchHook | None = None
    penalty: Callable[[], torch.Tensor] | None = None
    after_step: Callable[[], None] | None = None


@dataclass(frozen=True)
class Schedule:
    """One training run's optimiser and length: AdamW, or SGD with `momentum`, under cosine decay."""
    epochs: int
    lr: float
    batch_size: int = 128
    weight_decay: float = 5e-4
    momentum: float | None = None   # None: AdamW

    @classmethod
    def of(cls, recipe: Recipe, epochs: int | None = None, lr: float | None = None) -> "Schedule":
        """The recipe's base training, with `epochs` or `lr` changed where given."""
        return cls(recipe.epochs if epochs is None else epochs, recipe.lr if lr is None else lr, recipe.batch_size,
                   recipe.weight_decay)


def fit(model: nn.Module, train: Split, schedule: Schedule, generator: torch.Generator, device: str = "cpu",
        desc: str = "train", augment: Augment | None = random_flip, objective: Objective = Objective()) -> nn.Module:
    """Train the whole model on `train` as `schedule` says; returns it in eval mode.

    `augment(images, generator)` changes each raw batch before normalisation (None: no augmentation); `objective`
    adds to the loop what a victim or a defence needs (see Objective)."""
    s, o = schedule, objective
    model.to(device).train()
    opt = (torch.optim.AdamW(model.parameters(), lr=s.lr, weight_decay=s.weight_decay) if s.momentum is None else
           torch.optim.SGD(model.parameters(), lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay))
    steps_per_epoch = math.ceil(len(train.labels) / s.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, s.epochs * steps_per_epoch))
    bar = tqdm(total=s.epochs * steps_per_epoch, desc=desc, unit="step", leave=False)
    for _ in range(s.epochs):
        order = torch.randperm(len(train.labels), generator=generator)
        for i in range(0, len(order), s.batch_size):
            idx = order[i:i + s.batch_size]
            images = train.images[idx]
            images = augment(images, generator) if augment is not None else images
            x = train.prepare(images if o.batch_hook is None else o.batch_hook(idx, images), device)
            loss = F.cross_entropy(model(x), train.labels[idx].to(device))
            optimizer_step(loss if o.penalty is None else loss + o.penalty(), opt, sched)
            if o.after_step is not None:
                o.after_step()
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    bar.close()
    return model.eval()


def init_model(task: Task, generator: torch.Generator) -> nn.Module:
    """A fresh model whose initialisation comes from `generator` (global RNG left untouched)."""
    with seeded_from(generator):
        return build_model(task)


def test_accuracy(model: nn.Module, test: Split, device: str = "cpu") -> float:
    return accuracy(predict(model.to(device), test.normalized(device)).cpu(), test.labels)
