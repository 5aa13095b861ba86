"""Is a repaired model's low ASR superficial? A few fine-tuning steps on a handful of poisoned images mixed into clean
ones revive many repaired backdoors (Min et al., NeurIPS 2024). `revived` runs that attack on a copy of a repaired
model and measures it again; its ASR and ACC stand beside the ASR after the repair.

The recipe (REVIVAL): SGD steps (lr 0.01, momentum 0.9) on batches of 128 clean-budget images of which 10, of
classes other than the target, carry the trigger and the target label; every parameter trains, in train mode. Every
model meets the same batches (one generator seed). Too many steps implant the backdoor afresh in any model, one that
never held it too, so the number of steps is calibrated (`calibrate`) on the validation split: the fewest steps of
CALIBRATION_LADDER at which the victim repaired by fine-pruning returns to CALIBRATION_ASR; a model that never held the
backdoor (the budget donor, or the clean model) under the same attack gives the floor, and each method's revived ASR
is reported as its excess over that floor. The revived model is measured on the first 2,000 test images. A
repaired model of any kind is one nn.Module here: a state dict of the task's architecture, a victim's trunk through
a stitch into a tail (`Composed`), or a victim's trunk with a probe.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from pdiff.core.runtime import optimizer_step
from pdiff.data.datasets import Split
from pdiff.data.triggers import Trigger, apply_trigger, asr_ra, triggered_test_set
from pdiff.models.archs import StagedNet
from pdiff.models.staged import accuracy, predict

# the attack's recipe, and the test images a revived model is measured on (the first 2,000: ASR within a point)
REVIVAL = {"steps": 20, "batch": 128, "poisoned": 10, "lr": 0.01, "momentum": 0.9, "test_images": 2000}
CALIBRATION_LADDER = (1, 2, 3, 5, 8, 12, 20, 30, 50)  # poisoned steps tried, fewest first
CALIBRATION_ASR = 90.0                                 # the repaired victim's validation ASR the attack must reach
CALIBRATION_IMAGES = 2000                              # validation images the calibration measures on


class Stages(nn.Module):
    """The stages of a StagedNet from `start` on, as a module of their own."""

    def __init__(self, model: StagedNet, start: int):
        super().__init__()
        self.model, self.start = model, start

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x, self.start)


class Composed(nn.Module):
    """A staged trunk's first `start` stages, then `middle` (a stitch, or None), then `rest` (the tail's stages, or a
    probe): a repaired model that trains and predicts as one module."""

    def __init__(self, trunk: StagedNet, start: int, middle: nn.Module | None, rest: nn.Module):
        super().__init__()
        self.trunk, self.start, self.middle, self.rest = trunk, start, middle, rest

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.trunk(x, 0, self.start)
        return self.rest(self.middle(h) if self.middle is not None else h)


def revival_batch(budget: Split, trigger: Trigger, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch of the attack: clean budget images, then a few images of other classes with the trigger stamped and
    the target label: (raw images, labels)."""
    others = (budget.labels != trigger.target).nonzero().flatten()
    if len(others) < REVIVAL["poisoned"]:
        raise ValueError(f"the budget holds {len(others)} images of classes other than the target; revival needs "
                         f"{REVIVAL['poisoned']}")
    clean = torch.randint(0, len(budget.labels), (REVIVAL["batch"] - REVIVAL["poisoned"],), generator=generator)
    poisoned = others[torch.randint(0, len(others), (REVIVAL["poisoned"],), generator=generator)]
    images = torch.cat([budget.images[clean], apply_trigger(budget.images[poisoned], trigger)])
    return images, torch.cat([budget.labels[clean], torch.full((len(poisoned),), trigger.target)])


def attack_steps(model: nn.Module, budget: Split, trigger: Trigger, seed: int, steps: int, device="cpu"):
    """The attack on a copy of `model`, one step at a time: yields (steps taken, the copy in eval mode) after each
    step. Every model attacked with the same seed meets the same batches."""
    generator = torch.Generator().manual_seed(seed)
    model = copy.deepcopy(model).to(device).requires_grad_(True)
    opt = torch.optim.SGD(model.parameters(), lr=REVIVAL["lr"], momentum=REVIVAL["momentum"])
    for step in range(1, steps + 1):
        images, labels = revival_batch(budget, trigger, generator)
        optimizer_step(F.cross_entropy(model.train()(budget.prepare(images, device)), labels.to(device)), opt)
        yield step, model.eval()


def revive(model: nn.Module, budget: Split, trigger: Trigger, seed: int, steps: int = REVIVAL["steps"],
           device="cpu") -> nn.Module:
    """A copy of `model` fine-tuned by the REVIVAL recipe for `steps` steps on the budget with a few triggered images
    per batch."""
    out = model
    for _, out in attack_steps(model, budget, trigger, seed, steps, device):
        pass
    return out


@torch.no_grad()
def measured(model: nn.Module, test: Split, trigger: Trigger, device="cpu") -> dict[str, float]:
    """ACC on the clean test images, ASR and RA on the triggered ones of other classes (percent)."""
    model = model.to(device).eval()
    acc = accuracy(predict(model, test.normalized(device)).cpu(), test.labels)
    images, labels = triggered_test_set(test.images, test.labels, trigger)
    asr, ra = asr_ra(predict(model, test.prepare(images, device)).argmax(-1).cpu(), labels, trigger.target)
    return {"acc": acc, "asr": asr, "ra": ra}


def revived(models: list[nn.Module], budget: Split, test: Split, trigger: Trigger, seed: int,
            steps: int = REVIVAL["steps"], device="cpu") -> dict[str, list[float]]:
    """ACC, ASR and RA of each model after the revival attack of `steps` steps: lists in the models' order."""
    out = {"acc": [], "asr": [], "ra": []}
    test = test.subset(REVIVAL["test_images"])
    for model in models:
        for key, value in measured(revive(model, budget, trigger, seed, steps, device), test, trigger, device).items():
            out[key].append(value)
    return out


def calibrate(repaired_victim: nn.Module, never_held: nn.Module, budget: Split, validation: Split, trigger: Trigger,
              seed: int, device="cpu") -> dict:
    """The attack's length, chosen on the validation split: the fewest steps of CALIBRATION_LADDER at which the
    repaired victim's ASR returns to CALIBRATION_ASR (the longest, marked not reached, if none does), and the ASR and
    ACC that a model which never held the backdoor reaches under that attack (the floor)."""
    validation = validation.subset(CALIBRATION_IMAGES)
    curve, steps = {}, None
    for step, model in attack_steps(repaired_victim, budget, trigger, seed, CALIBRATION_LADDER[-1], device):
        if step in CALIBRATION_LADDER:
            curve[step] = measured(model, validation, trigger, device)["asr"]
            if curve[step] >= CALIBRATION_ASR:
                steps = step
                break
    reached = steps is not None
    steps = steps if reached else CALIBRATION_LADDER[-1]
    floor = measured(revive(never_held, budget, trigger, seed, steps, device), validation, trigger, device)
    return {"steps": steps, "reached": reached, "target_asr": CALIBRATION_ASR, "victim_asr_by_steps": curve,
            "floor_asr": floor["asr"], "floor_acc": floor["acc"], "validation_images": len(validation.labels),
            "ladder": list(CALIBRATION_LADDER)}
