"""BadNets trigger, poisoning and the backdoor metrics (DESIGN.md section 2)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from pdiff.config import _Dict


@dataclass
class Trigger(_Dict):
    kind: str = "badnets"       # white square patch, bottom-right corner
    size: int = 3
    target: int = 0             # all-to-one target label
    rate: float = 0.1           # share of training images poisoned


def apply_trigger(images: torch.Tensor, trigger: Trigger) -> torch.Tensor:
    """Stamp the trigger on raw uint8 images (N, C, H, W); returns a copy."""
    if trigger.kind != "badnets":
        raise ValueError(f"unknown trigger kind {trigger.kind!r}")
    out = images.clone()
    out[..., -trigger.size:, -trigger.size:] = 255
    return out


def poison(images: torch.Tensor, labels: torch.Tensor, trigger: Trigger,
           generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Trigger a random `rate` share of the images and relabel them to the target."""
    n = len(images)
    idx = torch.randperm(n, generator=generator)[: int(round(trigger.rate * n))]
    images, labels = images.clone(), labels.clone()
    images[idx] = apply_trigger(images[idx], trigger)
    labels[idx] = trigger.target
    return images, labels, idx


def triggered_test_set(images: torch.Tensor, labels: torch.Tensor, trigger: Trigger):
    """Triggered copies of the test images whose true class is not the target, with their true labels."""
    keep = labels != trigger.target
    return apply_trigger(images[keep], trigger), labels[keep]


def asr_ra(pred: torch.Tensor, true: torch.Tensor, target: int) -> tuple[float, float]:
    """On triggered non-target images: ASR = share predicted as target, RA = share still correct (percent)."""
    if (true == target).any():
        raise ValueError("ASR/RA take only images whose true class is not the target")
    return (100.0 * (pred == target).double().mean(-1)).tolist(), (100.0 * (pred == true).double().mean(-1)).tolist()


def der(acc_before: float, asr_before: float, acc_after, asr_after):
    """Defense effectiveness rating: (max(0, ASR drop) - max(0, ACC drop) + 1) / 2, in [0, 1]."""
    acc_after, asr_after = torch.as_tensor(acc_after, dtype=torch.float64), torch.as_tensor(asr_after, dtype=torch.float64)
    asr_drop = (asr_before - asr_after).clamp(min=0) / 100.0
    acc_drop = (acc_before - acc_after).clamp(min=0) / 100.0
    return ((asr_drop - acc_drop + 1) / 2).tolist()
