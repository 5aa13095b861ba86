"""Dataclasses that travel with the weights: tasks, recipes, autoencoder and DDPM settings."""
from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any


def _checked(cls, d: dict):
    unknown = sorted(set(d) - {f.name for f in fields(cls)})
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown keys {unknown}")
    return cls(**d)


def _at_least(obj, low, *names: str) -> None:
    """Refuse a setting below `low` by its name (a count of steps or channels, a weight)."""
    for name in names:
        value = getattr(obj, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= low:
            raise ValueError(f"{type(obj).__name__}.{name} must be at least {low}, got {value!r}")


class _Dict:
    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict):
        return _checked(cls, d)

    def changed(self, **changes):
        """A checked copy with `changes` (None values ignored: an option the user left out); unknown names refused."""
        return self.from_dict({**self.to_dict(), **{k: v for k, v in changes.items() if v is not None}})


@dataclass
class Recipe(_Dict):
    epochs: int = 8                 # base model training
    batch_size: int = 128
    lr: float = 2e-3                # Adam, cosine decay
    weight_decay: float = 5e-4
    k: int = 200                    # checkpoints to collect
    collect_lr: float = 0.05        # SGD on train_layer only, trunk frozen
    collect_batch_size: int = 128
    save_every: int = 100           # steps between saved checkpoints
    finetune_epochs: int = 2        # "finetuned" victims: clean base trained on poisoned data
    trunk_epochs: int = 1           # multi-trunk collections: each extra trunk is the base fine-tuned this long
    storage_dtype: str = "float32"  # checkpoints on disk; float16 halves a deep collection (accuracies use the stored values)

    def __post_init__(self):
        _at_least(self, 1, "epochs", "k", "save_every")


@dataclass
class Task(_Dict):
    name: str
    dataset: str
    arch: str
    train_layer: list[str]
    recipe: Recipe = field(default_factory=Recipe)
    # a user's own model: a callable returning a fresh nn.Module (pdiff.task sets it). It does not travel with
    # the weights (bundle.json records `arch` as a label); pdiff.load takes it again.
    factory: Callable[[], Any] | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict:
        return {f.name: asdict(v) if f.name == "recipe" else copy.deepcopy(v)
                for f in fields(self) if f.name != "factory" for v in [getattr(self, f.name)]}

    @classmethod
    def from_dict(cls, d: dict) -> "Task":
        d = dict(d)
        d["recipe"] = Recipe.from_dict(d.get("recipe", {}))
        return _checked(cls, d)


@dataclass
class AEConfig(_Dict):
    channels: list[int] = field(default_factory=lambda: [32, 64, 128])
    latent_channels: int = 32       # 4 kept only the checkpoints' common drift: 99% of reconstructions were closer
                                    # in behaviour to another original than to their own (issue 12)
    fold: int = 0                   # vector folded into `fold` channels before the convs; 0: auto_fold(P)
    input_noise: float = 1e-3       # p-diff: both noises are needed
    latent_noise: float = 0.1
    behaviour_weight: float = 3.0   # weight of train.BehaviourLoss (logits of reconstructions vs originals); 0: off
    behaviour_images: int = 256     # first n training images it is measured on
    steps: int = 4000
    lr: float = 2e-3
    batch_size: int = 100

    def __post_init__(self):
        _at_least(self, 1, "steps", "latent_channels", "behaviour_images")
        _at_least(self, 0, "fold", "behaviour_weight")

    @classmethod
    def from_dict(cls, d: dict) -> "AEConfig":
        # bundles written before the behaviour term existed were trained without it
        return _checked(cls, {"behaviour_weight": 0.0, **d})


def auto_fold(num_params: int, max_length: int = 256) -> int:
    """The smallest power of two (at least 16) that folds P numbers into at most `max_length` positions:
    16 for the default task's 1.5k, 512 for the deep ConvNet task's 75k, so AE cost grows slowly with P."""
    fold = 16
    while -(-num_params // fold) > max_length:
        fold *= 2
    return fold


@dataclass
class DDPMConfig(_Dict):
    timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 2e-2
    channels: int = 64              # 64 x 2 samples 4x faster than 128 x 4 and spreads wider at equal accuracy
    blocks: int = 2
    steps: int = 12000
    lr: float = 1e-3
    batch_size: int = 100
    ema_decay: float = 0.999
    latent_scale: str = "per_dim"   # latent standardisation before the DDPM: "per_dim" or "scalar" (train.latent_stats)
    # classifier-free guidance (generator/conditions.py): the condition's size (0: unconditional) and the share of
    # training samples that see the null condition instead, so one network is both the conditional and the
    # unconditional model
    condition_dim: int = 0
    condition_drop: float = 0.1

    def __post_init__(self):
        _at_least(self, 1, "steps", "channels", "blocks")

    @classmethod
    def from_dict(cls, d: dict) -> "DDPMConfig":
        # bundles written before latent_scale existed standardised their latents with one scalar pair
        return _checked(cls, {"latent_scale": "scalar", **d})
