"""Triggers as data, poisoning and the backdoor metrics (BadNets and blended, as BackdoorBench runs them).

A trigger spec is a small JSON object, one of:
  {"kind": "patch", "corner": "bottom-right", "size": 3, "value": 255}   a size x size square of one pixel value
  {"kind": "patch", "image": ..., "mask": ...}       pixels replaced by `image` where the 0/1 `mask` is 1
  {"kind": "blend", "opacity": 0.1, "seed": 0}       (1 - opacity) * x + opacity * uniform noise drawn from `seed`
  {"kind": "blend", "opacity": 0.1, "image": ...}    the same with a given pattern
each with "target" (the all-to-one target class, default 0), "rate" (share of training images poisoned, default
0.1) and an optional "name" (victim file names use it; a spec file's default is its file stem). Images and masks
are uint8 (H, W) (every channel alike) or (C, H, W), given inline as nested lists or as the path of a .png or .npy
file next to the JSON. The built-in `badnets` and `blended` triggers are two presets of it (PRESETS).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pdiff.core.config import _checked, _Dict
from pdiff.data.datasets import DATASETS

KINDS = ("patch", "blend")
CORNERS = ("top-left", "top-right", "bottom-left", "bottom-right")
PRESETS = {"badnets": {"kind": "patch", "corner": "bottom-right", "size": 3, "value": 255},  # BackdoorBench's
           "blended": {"kind": "blend", "opacity": 0.1, "seed": 0}}
TRIGGERS = tuple(PRESETS)
NO_TRIGGER = "none"  # a trigger choice meaning: no backdoor metrics
_OLD_KINDS = {"badnets": "patch", "blended": "blend"}  # the first reports named the two built-in triggers by kind
_NAME = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.-]*")


@dataclass
class Trigger(_Dict):
    kind: str = "patch"           # patch: pixels replaced; blend: a pattern mixed in
    target: int = 0               # all-to-one target label
    rate: float = 0.1             # share of training images poisoned
    name: str = ""                # "" -> the preset it equals, else its kind
    corner: str = "bottom-right"  # patch without image: where the square sits
    size: int = 3                 # patch without image: the square's side
    value: int = 255              # patch without image: the square's pixel value
    image: list | None = None     # patch: the stamped image (with mask); blend: the pattern (else noise from seed)
    mask: list | None = None      # patch with image: 0/1, 1 where the image replaces the pixels
    opacity: float = 0.1          # blend
    seed: int = 0                 # blend without image: the pattern is uniform noise from this seed

    def __post_init__(self):
        if self.kind in _OLD_KINDS:  # Trigger(kind="blended") is the preset of that name
            self.kind, self.name = _OLD_KINDS[self.kind], self.name or self.kind
        _validate(self)
        same = [p for p, spec in PRESETS.items() if spec == self.stamp()]
        if not self.name:
            self.name = same[0] if same else self.kind
        elif self.name in PRESETS and self.name not in same:
            raise ValueError(f"trigger.name {self.name!r} is a preset's name, but this spec differs from the preset; "
                             "give it another name")

    def stamp(self) -> dict:
        """The fields that decide the pixels, for this kind only."""
        if self.kind == "patch":
            return ({"kind": "patch", "image": self.image, "mask": self.mask} if self.image is not None else
                    {"kind": "patch", "corner": self.corner, "size": self.size, "value": self.value})
        pattern = {"image": self.image} if self.image is not None else {"seed": self.seed}
        return {"kind": "blend", "opacity": self.opacity, **pattern}

    def to_dict(self) -> dict:
        return {"kind": self.kind, "name": self.name, "target": self.target, "rate": self.rate, **self.stamp()}

    @classmethod
    def from_dict(cls, d: dict) -> "Trigger":
        return _checked(cls, _upgrade(d))

    def check(self, dataset: str) -> "Trigger":
        """Refuse a trigger that does not fit the dataset's images or classes; returns itself."""
        spec = DATASETS[dataset]
        if self.target >= spec.classes:
            raise ValueError(f"trigger.target {self.target} is out of range: {dataset} has classes 0 to "
                             f"{spec.classes - 1}")
        self.fit_shape((spec.channels, spec.size, spec.size))
        return self

    def fit_shape(self, shape: tuple[int, ...]) -> None:
        """Refuse an image, mask or square that does not fit images of `shape` (C, H, W)."""
        c, h, w = shape
        if self.kind == "patch" and self.image is None and self.size > min(h, w):
            raise ValueError(f"trigger.size {self.size} is larger than the {h}x{w} images")
        for field, value in (("image", self.image), ("mask", self.mask)):
            if value is not None and tuple(np.shape(value)) not in ((h, w), (c, h, w)):
                raise ValueError(f"trigger.{field} has shape {tuple(np.shape(value))}, but the images are {c}x{h}x{w}: "
                                 f"give ({h}, {w}) or ({c}, {h}, {w})")

    def describe(self) -> str:
        """One line for people: 'badnets: 3x3 square of 255 at bottom-right, target class 0, 10% poisoned'."""
        if self.kind == "patch":
            how = (f"{self.size}x{self.size} square of {self.value} at {self.corner}" if self.image is None else
                   f"image patch over {int(np.count_nonzero(self.mask))} mask pixels")
        else:
            pattern = f"noise from seed {self.seed}" if self.image is None else "an image"
            how = f"blend of {pattern} at opacity {self.opacity:g}"
        return f"{self.name}: {how}, target class {self.target}, {100 * self.rate:g}% poisoned"


def _validate(t: Trigger) -> None:
    """Each field on its own (the image shape against a dataset is `Trigger.check`); errors name the field."""
    def whole(field, low, high=None):
        value = getattr(t, field)
        if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
            span = f"from {low}" if high is None else f"from {low} to {high}"
            raise ValueError(f"trigger.{field} must be a whole number {span}, got {value!r}")

    if t.kind not in KINDS:
        raise ValueError(f"trigger.kind must be one of {', '.join(KINDS)} (or a preset: {', '.join(PRESETS)}), "
                         f"got {t.kind!r}")
    if t.name and not _NAME.fullmatch(t.name):
        raise ValueError(f"trigger.name may hold only letters, digits, '.', '_' and '-', got {t.name!r}")
    if t.corner not in CORNERS:
        raise ValueError(f"trigger.corner must be one of {', '.join(CORNERS)}, got {t.corner!r}")
    for field, low, high in (("target", 0, None), ("size", 1, None), ("value", 0, 255), ("seed", 0, None)):
        whole(field, low, high)
    for field, low, high in (("rate", 0, 1), ("opacity", 0, 1)):
        value = getattr(t, field)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high \
                or (field == "rate" and value in (0, 1)):
            raise ValueError(f"trigger.{field} must be {'between 0 and 1' if field == 'rate' else 'from 0 to 1'}, "
                             f"got {value!r}")
    _check_pixels(t)


def _check_pixels(t: Trigger) -> None:
    """image: whole numbers 0..255, 2 or 3 dimensions; mask: 0/1, only beside a patch image, of its height/width."""
    for field, allowed in (("image", None), ("mask", (0, 1))):
        value = getattr(t, field)
        if value is None:
            continue
        a = np.asarray(value)
        if a.dtype == object or a.ndim not in (2, 3) or not np.issubdtype(a.dtype, np.number):
            raise ValueError(f"trigger.{field} must be an (H, W) or (C, H, W) array of numbers")
        if allowed and not np.isin(a, allowed).all():
            found = sorted(set(np.unique(a).tolist()) - {0, 1})[:5]
            raise ValueError(f"trigger.{field} must hold only 0 and 1, found {found}")
        if not allowed and ((a != np.round(a)).any() or a.min() < 0 or a.max() > 255):
            raise ValueError(f"trigger.{field} must hold whole pixel values from 0 to 255")
    if t.kind == "patch" and (t.image is None) != (t.mask is None):
        raise ValueError("trigger.mask and trigger.image go together in a patch: give both, or neither (then "
                         "corner, size and value)")
    if t.kind == "blend" and t.mask is not None:
        raise ValueError("trigger.mask applies to a patch only; a blend mixes its whole image in")
    if t.mask is not None and np.shape(t.mask)[-2:] != np.shape(t.image)[-2:]:
        raise ValueError(f"trigger.mask has shape {np.shape(t.mask)}, unlike trigger.image {np.shape(t.image)}")


def _upgrade(d: dict) -> dict:
    """A trigger dict as the first victim reports wrote it (kind badnets/blended, size, alpha, pattern_seed)
    in today's fields; any other dict as it is. The one place old reports are read."""
    if d.get("kind") not in _OLD_KINDS or "name" in d:
        return d
    out = {"kind": _OLD_KINDS[d["kind"]], "target": d.get("target", 0), "rate": d.get("rate", 0.1)}
    if d["kind"] == "badnets":
        return {**out, "size": d.get("size", 3)}
    return {**out, "opacity": d.get("alpha", 0.1), "seed": d.get("pattern_seed", 0)}


def preset(name: str, **changes) -> Trigger:
    """A built-in trigger by name (badnets, blended), with e.g. target= or rate= changed."""
    if name not in PRESETS:
        raise ValueError(f"unknown trigger preset {name!r}; presets: {', '.join(PRESETS)}")
    return Trigger.from_dict({**PRESETS[name], "name": name, **changes})


def load_trigger(value: str | Path) -> Trigger | str:
    """A --trigger value: a preset's name, 'none' (NO_TRIGGER), or the path of a spec (.json)."""
    if str(value) == NO_TRIGGER:
        return NO_TRIGGER
    if str(value) in PRESETS:
        return preset(str(value))
    path = Path(value)
    if not path.is_file():
        raise ValueError(f"trigger {str(value)!r} is neither a preset ({', '.join([*PRESETS, NO_TRIGGER])}) nor a "
                         "spec file")
    try:
        spec = json.loads(path.read_text())
    except ValueError as e:
        raise ValueError(f"trigger spec {path} is not valid JSON: {e}") from None
    if not isinstance(spec, dict):
        raise ValueError(f"trigger spec {path} must hold a JSON object, found {type(spec).__name__}")
    for field in ("image", "mask"):
        if isinstance(spec.get(field), str):
            spec[field] = read_image(path.parent / spec[field], field)
    return Trigger.from_dict({"name": re.sub(r"[^A-Za-z0-9_.-]", "_", path.stem), **spec})


def read_image(path: Path, field: str) -> list:
    """A spec's image or mask from a .png (H, W) or (H, W, C) or a .npy (H, W) or (C, H, W), as nested lists."""
    if not path.is_file():
        raise ValueError(f"trigger.{field}: no file {path}")
    if path.suffix.lower() == ".npy":
        return np.load(path, allow_pickle=False).tolist()
    if path.suffix.lower() == ".png":
        from PIL import Image

        a = np.asarray(Image.open(path))
        return (a.transpose(2, 0, 1) if a.ndim == 3 else a).tolist()
    raise ValueError(f"trigger.{field}: {path} must be a .png or .npy file")


def trigger_from_fields(kind: str, target=0, size=3, corner: str = "bottom-right", opacity=0.1,
                        seed=0) -> Trigger | str | None:
    """The app's trigger fields -> None (not given: the target's own or an assumed one), 'none', or a Trigger."""
    if kind in (None, "", "assumed"):
        return None
    if kind == NO_TRIGGER:
        return NO_TRIGGER
    numbers = {}
    for field, value in (("target", target), ("size", size), ("seed", seed)):
        try:
            numbers[field] = int(value) if float(value) == int(float(value)) else float(value)
        except (TypeError, ValueError):
            raise ValueError(f"trigger.{field} must be a whole number, got {value!r}") from None
    if kind == "patch":
        return Trigger(kind="patch", target=numbers["target"], size=numbers["size"], corner=corner)
    if kind == "blend":
        opacity = float(opacity) if isinstance(opacity, (int, float, str)) and opacity != "" else opacity
        return Trigger(kind="blend", target=numbers["target"], opacity=opacity, seed=numbers["seed"])
    raise ValueError(f"trigger kind must be assumed, patch, blend or none, got {kind!r}")


def trigger_line(target: dict) -> str | None:
    """A report's target (or victim) block -> 'trigger badnets: 3x3 square of 255 at bottom-right, target class
    0, 10% poisoned (assumed (no victim report beside the file))'; None where it has no trigger."""
    if not target.get("trigger"):
        return None
    return f"trigger {Trigger.from_dict(target['trigger']).describe()} ({target.get('trigger_source') or 'unstated'})"


def _pixels(value: list, shape: tuple[int, ...]) -> torch.Tensor:
    """A spec's (H, W) or (C, H, W) image as a uint8 tensor of `shape` (C, H, W)."""
    t = torch.tensor(np.asarray(value, dtype=np.uint8))
    return t.expand(shape) if t.ndim == 2 else t


def blend_pattern(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """The blended trigger's fixed uint8 pattern (C, H, W), the same for every image."""
    return torch.randint(0, 256, shape, generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def apply_trigger(images: torch.Tensor, trigger: Trigger) -> torch.Tensor:
    """Stamp the trigger on raw uint8 images (N, C, H, W); returns a copy."""
    shape = tuple(images.shape[1:])
    trigger.fit_shape(shape)
    if trigger.kind == "patch" and trigger.image is None:
        rows = slice(-trigger.size, None) if trigger.corner.startswith("bottom") else slice(0, trigger.size)
        cols = slice(-trigger.size, None) if trigger.corner.endswith("right") else slice(0, trigger.size)
        out = images.clone()
        out[..., rows, cols] = trigger.value
        return out
    if trigger.kind == "patch":
        return torch.where(_pixels(trigger.mask, shape).bool(), _pixels(trigger.image, shape), images)
    pattern = (blend_pattern(shape, trigger.seed) if trigger.image is None else _pixels(trigger.image, shape)).float()
    mixed = (1 - trigger.opacity) * images.float() + trigger.opacity * pattern
    return mixed.round().clamp(0, 255).to(torch.uint8)


def poison_indices(n: int, rate: float, generator: torch.Generator) -> torch.Tensor:
    """The random `rate` share of n training images that get the trigger and the target label."""
    return torch.randperm(n, generator=generator)[: int(round(rate * n))]


def poison(images: torch.Tensor, labels: torch.Tensor, trigger: Trigger,
           generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Trigger a random `rate` share of the images and relabel them to the target."""
    idx = poison_indices(len(images), trigger.rate, generator)
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
