"""BadNets trigger, poisoning and the backdoor metrics (DESIGN.md section 2)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from pdiff.config import _Dict


TRIGGERS = ("badnets", "blended")


@dataclass
class Trigger(_Dict):
    kind: str = "badnets"       # badnets: white square patch, bottom-right; blended: a random pattern mixed in
    size: int = 3               # badnets patch side
    target: int = 0             # all-to-one target label
    rate: float = 0.1           # share of training images poisoned
    alpha: float = 0.1          # blended: opacity of the pattern
    pattern_seed: int = 0       # blended: the fixed pattern is uniform noise from this seed


def blend_pattern(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """The blended trigger's fixed uint8 pattern (C, H, W), the same for every image."""
    return torch.randint(0, 256, shape, generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def apply_trigger(images: torch.Tensor, trigger: Trigger) -> torch.Tensor:
    """Stamp the trigger on raw uint8 images (N, C, H, W); returns a copy."""
    if trigger.kind == "badnets":
        out = images.clone()
        out[..., -trigger.size:, -trigger.size:] = 255
        return out
    if trigger.kind == "blended":
        pattern = blend_pattern(tuple(images.shape[1:]), trigger.pattern_seed).float()
        mixed = (1 - trigger.alpha) * images.float() + trigger.alpha * pattern
        return mixed.round().clamp(0, 255).to(torch.uint8)
    raise ValueError(f"unknown trigger kind {trigger.kind!r}; use one of {', '.join(TRIGGERS)}")


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
