"""Run settings as small frozen dataclasses, as nanoGPT's GPTConfig: what one collection, bundle build, sampling,
evaluation, defence or stitch was asked to do. The CLI takes its defaults from these fields, the app states where it differs, and every
report records them (`settings_dict`), so the three entry points cannot drift apart silently.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import torch

from pdiff.core.config import AEConfig, DDPMConfig
from pdiff.core.splice import ALL_LAYERS

SAMPLERS = ("ddpm", "ddim")
CONDITION_KINDS = ("acc", "trunk")  # what a conditional bundle can be asked for (generator.conditions)
VALIDATION = 5000       # the last training images, held out: selection, matched noise, every choice
BN_IMAGES = 512         # clean training images BatchNorm statistics after a generated layer are re-estimated on
CLEAN_BUDGET = 0.05     # share of the training split the defences and the stitch may use (BackdoorBench's ratio)
DEFENCE_EPOCHS = 10     # ft and fp fine-tuning epochs on the budget (BackdoorBench: 100; see measure.defences)


class _Settings:
    def to_dict(self) -> dict:
        """The fields as JSON writes them (tuples as lists): a report in memory equals one read back from disk."""
        return json.loads(json.dumps(asdict(self)))

    def changed(self, **changes):
        """A copy with `changes` (None values ignored: an option the user left out); unknown names refused."""
        unknown = sorted(set(changes) - {f.name for f in fields(self)})
        if unknown:
            raise ValueError(f"{type(self).__name__}: unknown settings {unknown}")
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


def _whole(owner: str, name: str, value, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{owner}.{name} must be a whole number of at least {low}, got {value!r}")


@dataclass(frozen=True)
class Condition:
    """What a conditional bundle is asked for, parsed once from its text where a request enters (generator.conditions
    resolves it against a bundle where sampling starts): `default` (what the bundle is for), `none` (its
    unconditional model), `acc=VALUE` (percent) or `acc=best`, `trunk=target` (the model the sets go into) or
    `trunk=FILE` (another model's file). str() gives the text back."""
    kind: str = "default"       # default, none, or one of CONDITION_KINDS
    value: str | None = None    # acc: "best" or the percent as asked; trunk: "target" or a model file

    @classmethod
    def parse(cls, text: "str | Condition") -> "Condition":
        if isinstance(text, Condition):
            return text
        if text in ("none", "default"):
            return cls(text)
        kind, _, value = text.partition("=") if isinstance(text, str) else ("", "", "")
        if kind not in CONDITION_KINDS or not value:
            raise ValueError(f"sampling.condition must be default, none, acc=VALUE, acc=best, trunk=target or trunk=FILE, "
                             f"got {text!r}")
        if kind == "acc" and value != "best":
            try:
                float(value)
            except ValueError:
                raise ValueError(f"condition {text!r}: acc takes a number (percent) or best") from None
        return cls(kind, value)

    def __str__(self) -> str:
        return self.kind if self.value is None else f"{self.kind}={self.value}"


@dataclass(frozen=True)
class SamplingSpec(_Settings):
    """How to draw parameter sets from a bundle: n of them, DDPM (all T steps) or DDIM with `steps`, from `seed`."""
    n: int = 200
    sampler: str = "ddpm"
    steps: int = 50         # DDIM steps; DDPM always runs the bundle's T
    seed: int = 0
    # what a conditional bundle is asked for (Condition; its text is parsed here) and the guidance scale (None: the
    # one the bundle chose on validation). Resolved where sampling starts (generator.conditions.resolve): "default"
    # becomes what the bundle is for, the guidance the scale sampling uses (None where no condition is used)
    condition: Condition = Condition()
    guidance: float | None = None

    def __post_init__(self):
        _whole("sampling", "n", self.n, 1)
        object.__setattr__(self, "condition", Condition.parse(self.condition))  # frozen: set once, here
        if self.guidance is not None and (isinstance(self.guidance, bool) or not self.guidance >= 0):
            raise ValueError(f"sampling.guidance must be at least 0 (0: the unconditional model), got {self.guidance!r}")
        _whole("sampling", "steps", self.steps, 1)
        _whole("sampling", "seed", self.seed, 0)
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampling.sampler must be one of {', '.join(SAMPLERS)}, got {self.sampler!r}")

    def to_dict(self) -> dict:
        return {**super().to_dict(), "condition": str(self.condition)}  # the condition as it is written

    def generator(self) -> torch.Generator:
        """The generator every draw of this sampling comes from (library functions take it, never a seed)."""
        return torch.Generator().manual_seed(self.seed)

    def chain_steps(self, timesteps: int) -> int:
        """How many denoiser calls the reverse chain makes: DDIM's steps, or the bundle's T for DDPM."""
        return self.steps if self.sampler == "ddim" else timesteps


def _share(owner: str, name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise ValueError(f"{owner}.{name} must be a share of the training split between 0 and 1, got {value!r}")


@dataclass(frozen=True)
class CollectSpec(_Settings):
    """How many checkpoints to collect, on how many trunks, and on what (collection.collect.run_collect)."""
    k: int | None = None            # checkpoints in all; None: the task recipe's k
    trunks: int = 1                 # trunk 0 is the base; the others are derived from it (trunk_mode)
    trunk_mode: str = "finetune"    # finetune, reinit or scratch (collection.collect.TRUNK_MODES)
    # a budget donor: every model trains on this share of the training split only, drawn once with budget_seed from
    # the images the validation split leaves (the clean model a defender holding only the budget can train); the
    # collection records it as `trained_on`. None: on the training split less the validation images
    budget: float | None = None
    budget_seed: int = 0

    def __post_init__(self):
        _whole("collect", "trunks", self.trunks, 1)
        if self.k is not None:
            _whole("collect", "k", self.k, 1)
            if self.k < self.trunks:
                raise ValueError(f"{self.k} checkpoints cannot be spread over {self.trunks} trunks")
        if self.budget is not None:
            _share("collect", "budget", self.budget)
        _whole("collect", "budget_seed", self.budget_seed, 0)


@dataclass(frozen=True)
class DataSpec(_Settings):
    """Which parts of the training split a run uses besides the test split (data.plan.RunData derives them)."""
    validation: int | None = None   # the last N training images; None: VALIDATION, or half a smaller split; 0: none
    bn_images: int = BN_IMAGES      # re-estimate BatchNorm statistics after a generated layer on these (0: splice)
    budget: float = CLEAN_BUDGET    # the clean budget, a share of the training split, drawn from the rest of it
    budget_seed: int | None = None  # None: drawn per seed; a value: one fixed draw (a budget donor's images)

    def __post_init__(self):
        if self.validation is not None:
            _whole("data", "validation", self.validation, 0)
        _whole("data", "bn_images", self.bn_images, 0)
        if self.budget_seed is not None:
            _whole("data", "budget_seed", self.budget_seed, 0)
        _share("data", "budget", self.budget)


@dataclass(frozen=True)
class DefenceSettings(_Settings):
    """The defences' training lengths; their other hyper-parameters are measure.defences' constants."""
    epochs: int = DEFENCE_EPOCHS    # ft, fp and fst fine-tuning epochs on the clean budget
    k: int | None = None            # checkpoints along a finetune / reinit run (None: the bundle's K)
    anp_iterations: int = 2000      # ANP's mask steps (BackdoorBench's default)
    anp_threshold: float | None = None  # prune below this mask value; None: the budget-accuracy rule (fine-pruning's)

    def __post_init__(self):
        _whole("defence", "epochs", self.epochs, 1)
        _whole("defence", "anp_iterations", self.anp_iterations, 1)
        if self.anp_threshold is not None and (isinstance(self.anp_threshold, bool) or not isinstance(
                self.anp_threshold, (int, float)) or not 0 < self.anp_threshold <= 1):
            raise ValueError(f"defence.anp_threshold must be a mask value in (0, 1], got {self.anp_threshold!r}")
        if self.k is not None:
            _whole("defence", "k", self.k, 1)


@dataclass(frozen=True)
class EvalSettings(_Settings):
    """What an evaluate report measures besides the generated sets and the originals."""
    layers: tuple[str, ...] = ()    # the bundle's layers to splice; empty (or "all"): all of them
    baselines: bool = True          # the memorisation baselines (average, Gaussian, noise, interpolation)
    curves: bool = False            # the Gaussian baseline at every temperature (its accuracy-novelty curve)
    tsne: bool = True
    defences: DefenceSettings | None = None  # for a backdoored target: the defences on the clean budget (None: none)
    # the seed the controls are drawn with (the baselines, the matched-noise and matched-Gaussian searches and
    # draws): None, the run's own seed (the CLI: each seed its own draws); a number, the same draws for every seed,
    # measured once and kept (the app)
    controls_seed: int | None = None

    def __post_init__(self):
        # one spelling of "every layer", whichever entry point wrote it
        object.__setattr__(self, "layers", () if ALL_LAYERS in self.layers else tuple(self.layers))
        if self.controls_seed is not None:
            _whole("evaluation", "controls_seed", self.controls_seed, 0)


@dataclass(frozen=True)
class StitchSettings(_Settings):
    """The 1x1 stitch from a victim's features to the clean model's (measure.stitch)."""
    shrink: float | str = 0.0       # a uniform ridge penalty, or "auto": chosen on the clean budget
    epochs: int = 0                 # cross-entropy epochs through the clean tail after the least squares

    def __post_init__(self):
        if self.shrink != "auto" and (isinstance(self.shrink, bool) or not isinstance(self.shrink, (int, float))
                                      or not self.shrink >= 0):
            raise ValueError(f"stitch.shrink must be 'auto' or a number of at least 0, got {self.shrink!r}")
        _whole("stitch", "epochs", self.epochs, 0)


@dataclass(frozen=True)
class TransferSettings(_Settings):
    """A transfer run: which methods, over which seeds, with which defence and stitch settings."""
    methods: tuple[str, ...] = ()   # empty: every method (studies.transfer.METHODS)
    seeds: tuple[int, ...] = (0,)
    defence: DefenceSettings = field(default_factory=DefenceSettings)
    stitch: StitchSettings = field(default_factory=StitchSettings)
    revived: int = 5                # the revival attack runs on the first this many models of each method (0: none)

    def __post_init__(self):
        _whole("transfer", "revived", self.revived, 0)
        if not self.seeds:
            raise ValueError("transfer.seeds: give at least one seed")
        for seed in self.seeds:
            _whole("transfer", "seeds", seed, 0)


@dataclass(frozen=True)
class TrainSpec(_Settings):
    """How a bundle is built from a collection (generator.recipe.build_bundle), kept whole in its bundle.json
    (`train_spec`) as nanoGPT keeps its config beside the weights. The autoencoder and DDPM settings are recorded as
    asked; bundle.json's `autoencoder` and `ddpm` hold them as resolved (the fold, the condition's size)."""
    autoencoder: AEConfig = field(default_factory=AEConfig)
    ddpm: DDPMConfig = field(default_factory=DDPMConfig)
    # none, or what the DDPM is conditioned on for classifier-free guidance: acc (each checkpoint's accuracy on the
    # validation split) or trunk (its trunk's signature); the default guidance scale is then chosen on validation
    condition: str = "none"
    validation: int | None = None   # the last N training images conditions and guidance are measured on (DataSpec's)
    guidance_sampler: str = SamplingSpec.sampler  # the sampler the scale is chosen with: the reports' by default
    guidance_steps: int = SamplingSpec.steps      # its DDIM steps (DDPM runs the bundle's T)
    hold_out_trunks: tuple[int, ...] = ()  # trunks whose checkpoints the bundle never sees (leave-one-trunk-out)
    clean_model: str | None = None  # a collection folder whose base the bundle keeps as the `clean-model` control
    reconstruction: bool = True     # decode the originals and report their test accuracy beside the originals'

    def __post_init__(self):
        for name, cls in (("autoencoder", AEConfig), ("ddpm", DDPMConfig)):  # a dict: the config as JSON holds it
            value = getattr(self, name)
            object.__setattr__(self, name, cls.from_dict(value) if isinstance(value, dict) else value)
            if not isinstance(getattr(self, name), cls):
                raise ValueError(f"train.{name} must be a {cls.__name__} or a dict of its fields, got {value!r}")
        if self.condition not in ("none", *CONDITION_KINDS):
            raise ValueError(f"train.condition must be none, {' or '.join(CONDITION_KINDS)}, got {self.condition!r}")
        if self.validation is not None:
            _whole("train", "validation", self.validation, 0 if self.condition == "none" else 1)
        if self.guidance_sampler not in SAMPLERS:
            raise ValueError(f"train.guidance_sampler must be one of {', '.join(SAMPLERS)}, got {self.guidance_sampler!r}")
        _whole("train", "guidance_steps", self.guidance_steps, 1)
        object.__setattr__(self, "hold_out_trunks", tuple(self.hold_out_trunks))
        for trunk in self.hold_out_trunks:
            _whole("train", "hold_out_trunks", trunk, 0)
        if self.clean_model is not None:
            object.__setattr__(self, "clean_model", str(Path(self.clean_model)))

    @classmethod
    def from_dict(cls, d: dict) -> "TrainSpec":
        """The spec as bundle.json holds it; an unknown key is refused."""
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"TrainSpec: unknown keys {unknown}")
        return cls(**d)

    def splits(self) -> tuple[str, ...]:
        """The dataset splits building reads: the training split for the behaviour term and the conditions, the
        test split for the reconstruction check."""
        train = self.autoencoder.behaviour_weight > 0 or self.condition != "none"
        return ("train",) * train + ("test",) * self.reconstruction


def settings_dict(*objects: _Settings) -> dict:
    """{"sampling": ..., "data": ..., ...}: the settings a report records, by their class."""
    names = {CollectSpec: "collect", TrainSpec: "train", SamplingSpec: "sampling", DataSpec: "data", EvalSettings: "evaluation", DefenceSettings: "defence",
             StitchSettings: "stitch", TransferSettings: "transfer"}
    return {names[type(o)]: o.to_dict() for o in objects}

