"""The Python API: your own model (any nn.Module) and your own tensors, from checkpoints to a report in memory.

    task = pdiff.task(MyNet, ["fc.weight", "fc.bias"], epochs=2, k=50)   # a factory (or a module) + layer names
    train, test = pdiff.Split(x, y, mean=(0.5,), std=(0.5,)), pdiff.Split(x_test, y_test, mean=(0.5,), std=(0.5,))
    coll = pdiff.collect(task, train, test)        # a Collection   (coll.save(folder))
    bundle = pdiff.train(coll, train, test)         # a Bundle       (bundle.save(folder))
    samples = pdiff.sample(bundle, 100)             # Samples        (samples.save(folder))
    report = pdiff.evaluate(samples, test, train=train)  # a Report (report.save(folder)); print(report.text())
    heads = pdiff.heads_for("my-convnet.safetensors", shots=5)   # heads for a new trunk: a HeadsReport

Each step is a thin layer over the functions the CLI runs (`collection.collect.run_collect`,
`generator.recipe.build_bundle`, `generator.sampling.draw`, `studies.report.run_report`), with the CLI's
defaults (core.settings: CollectSpec, TrainSpec, SamplingSpec, ...). A model that is not a StagedNet is evaluated whole (functional_call
under vmap) and its named layers are collected on the whole forward pass, everything else frozen.
"""
from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

from torch import nn

from pdiff.collection.collect import run_collect
from pdiff.collection.folder import MANIFEST_FILE, Collection
from pdiff.core.config import Recipe, Task
from pdiff.core.files import write_json
from pdiff.core.settings import CollectSpec, Condition, DataSpec, EvalSettings, SamplingSpec, TrainSpec
from pdiff.data.datasets import DATASETS, DataError, Split, random_flip
from pdiff.data.plan import RunData
from pdiff.generator.bundle import Bundle
from pdiff.generator.headkit import DEFAULT_KIT, load_kit
from pdiff.generator.locate import load_bundle
from pdiff.generator.recipe import build_bundle
from pdiff.generator.sampling import Samples, draw
from pdiff.measure.targets import resolve_target
from pdiff.models.fit import Augment
from pdiff.models.loading import check_finite, load_state_file
from pdiff.models.tasks import build_model
from pdiff.studies.heads import HeadStudySpec, head_lines, heads_for_target
from pdiff.studies.report import familiar_lines, run_report

REPORT_FILE = "report.json"


def _factory(model) -> Callable[[], nn.Module]:
    """A factory from a module (each fresh model a copy of it) or a callable returning one."""
    if isinstance(model, nn.Module):
        return lambda: copy.deepcopy(model)
    if callable(model):
        return model
    raise ValueError(f"model must be an nn.Module or a callable returning one, got {type(model).__name__}")


def task(model, layers: list[str], name: str = "custom", dataset: str = "custom", **recipe) -> Task:
    """A task for your own model: `model` is a factory (a class or function returning a fresh nn.Module) or
    a module (copied whenever pdiff needs a fresh one); `layers` the ordered names of the parameters (and
    BatchNorm statistics) to generate; `recipe` overrides `config.Recipe`'s fields (epochs, lr, k,
    save_every, collect_lr, ...). The names are checked against the model now."""
    if isinstance(layers, str) or not layers:
        raise ValueError(f"layers must be a non-empty list of parameter names, got {layers!r}")
    factory = _factory(model)
    arch = type(model).__name__ if isinstance(model, nn.Module) else getattr(model, "__name__", type(model).__name__)
    t = Task(name, dataset, arch, list(layers), Recipe.from_dict(recipe))
    t.factory = factory
    build_model(t)  # unknown layer names fail here, before any training
    return t


def collect(task: Task, train: Split, test: Split, seed: int = 0, base=None, augment: Augment | None = random_flip,
            device: str = "cpu", spec: CollectSpec | None = None, **changes) -> Collection:
    """Train a base model from the task's factory (or take `base`, a trained module or state dict), then
    collect K checkpoints of the task's layers with the rest frozen; in memory (`Collection.save(folder)`). `spec`
    (default: the CLI's) with `changes` to its fields: k, trunks, trunk_mode, budget and budget_seed (a budget donor:
    every model trains on that share of `train` alone, recorded as `trained_on`). All of `train` is trained on: a
    split of your own holds no validation images out unless you cut them off."""
    state = base.state_dict() if isinstance(base, nn.Module) else base
    spec = (spec or CollectSpec()).changed(**changes)
    return run_collect(task, RunData(test, train, DataSpec(validation=0)), seed, spec, state, augment, device)


# what each split is read for when a bundle is built (a dataset of your own has no named split to fall back on)
_READ_BY = {"train": " as `data` (the behaviour term and the conditions read it), or autoencoder={'behaviour_weight': 0}",
            "test": " as `test` (the reconstruction check reads it), or reconstruction=False"}


def train(collection: Collection, data: Split | None = None, test: Split | None = None, spec: TrainSpec | None = None,
          seed: int = 0, device: str = "cpu", **changes) -> Bundle:
    """A bundle built as `pdiff train` builds it (generator.recipe.build_bundle): `spec` (default: the CLI's) with
    `changes` to its fields: autoencoder= / ddpm= take dicts of the AEConfig / DDPMConfig fields that change (e.g.
    {"steps": 500}); condition ("acc" or "trunk"), validation, guidance_sampler, guidance_steps, hold_out_trunks,
    clean_model (a collection folder), reconstruction. `data`: the training split (the behaviour term; the conditions
    and the guidance scale on the validation images at its end); `test`: the reconstruction check's; each is the
    task's named dataset where not given and needed. In memory (`Bundle.save(folder)`; bundle.json keeps the spec)."""
    spec = _train_spec(spec or TrainSpec(), changes)
    train_split, test_split = (given if given is not None or name not in spec.splits() else
                               _named_split(collection.task, name, required=True, why=_READ_BY[name])
                               for name, given in (("train", data), ("test", test)))
    return build_bundle(collection, spec, train_split, test_split, seed, device)


def _train_spec(spec: TrainSpec, changes: dict) -> TrainSpec:
    """`spec` with `changes`; autoencoder= and ddpm= may be dicts of the fields that change."""
    for name in ("autoencoder", "ddpm"):
        if isinstance(changes.get(name), dict):
            changes[name] = getattr(spec, name).changed(**changes[name])
    return spec.changed(**changes)


def sample(bundle: Bundle, n: int = SamplingSpec.n, sampler: str = SamplingSpec.sampler,
           steps: int = SamplingSpec.steps, seed: int = SamplingSpec.seed, condition: "str | Condition" = SamplingSpec.condition,
           guidance: float | None = SamplingSpec.guidance, device: str = "cpu") -> Samples:
    """n new parameter sets from the bundle (the full DDPM chain, or DDIM with `steps` steps): the same defaults
    as the CLI's `sample` (core.settings.SamplingSpec). A conditional bundle is asked for `condition` ("default":
    what it is for; "none", "acc=VALUE", "acc=best", "trunk=FILE") with classifier-free guidance `guidance`
    (None: the scale it chose on its validation split)."""
    return draw(bundle, SamplingSpec(n, sampler, steps, seed, condition, guidance), device)


class Report(dict):
    """The evaluate report (the CLI's JSON, accuracies in percent) with `save` and a printout."""

    def text(self) -> str:
        return familiar_lines(self)

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / REPORT_FILE
        write_json(path, dict(self))
        return path


def _named_split(task: Task, split: str, required: bool, why: str = "") -> Split | None:
    """The task's dataset split, as the CLI loads it: None for a dataset of your own, or a missing optional one."""
    if task.dataset not in DATASETS:
        if required:
            raise ValueError(f"dataset {task.dataset!r} is not a named one: give the {split} Split{why}")
        return None
    try:
        return Split.load(task.dataset, split)
    except DataError:
        if required:
            raise
        return None


def evaluate(samples: Samples | Bundle, test: Split | None = None, target=None, train: Split | None = None,
             settings: EvalSettings = EvalSettings(), data: DataSpec = DataSpec(), device: str = "cpu") -> Report:
    """Generated sets (`samples`, or SamplingSpec's default draw from a bundle) beside the originals and the
    memorisation baselines, spliced into `target` (None: the bundle's clean model; else a module, a state dict,
    'victim' or a model file) and measured on `test`. The same request as `python -m pdiff evaluate` gives the
    same report: `test` and `train` default to the bundle dataset's splits as the CLI loads them (the training
    split, where available, gives the validation split and the BatchNorm images)."""
    bundle = samples.bundle if isinstance(samples, Samples) else samples
    sampling = samples if isinstance(samples, Samples) else SamplingSpec()
    test = test if test is not None else _named_split(bundle.task, "test", required=True)
    train = train if train is not None else _named_split(bundle.task, "train", required=settings.defences)
    target = resolve_target(bundle, "clean" if target is None else target)
    report, _ = run_report(bundle, target, RunData(test, train, data), sampling, settings, device=device)
    return Report(report)


class HeadsReport(Report):
    """The heads report (`python -m pdiff heads`'s JSON) with `save` and a printout."""

    def text(self) -> str:
        return head_lines(self)


def heads_for(target, shots: int = 5, generator: str | Path = DEFAULT_KIT, pool=None, train: Split | None = None,
              test: Split | None = None, device: str = "cpu", **changes) -> HeadsReport:
    """Heads for a trunk the head generator never saw, as `python -m pdiff heads` makes them: `target` a model file,
    a state dict or a module of the generator's task; `shots` labelled images per class; `pool` None (HeadStudySpec's
    size, drawn with the seed), a size, or your own unlabelled pool (a tensor of training-split indices); `changes`
    to HeadStudySpec's n, seed, guidance, sampler, steps, validation. `train` / `test` default to the task's
    splits."""
    kit = load_kit(generator)
    if isinstance(target, nn.Module):
        target = target.state_dict()
    if isinstance(target, dict):
        check_finite(target, "the target")
    else:
        target = load_state_file(target, kit.task)
    given = pool if pool is not None and not isinstance(pool, int) else None
    size = HeadStudySpec.pool if pool is None else pool if given is None else len(given)
    spec = HeadStudySpec(ks=(shots,), pool=size, checks_at=shots, **changes)
    splits = tuple(s if s is not None else _named_split(kit.task, name, required=True)
                   for name, s in (("train", train), ("test", test)))
    return HeadsReport(heads_for_target(kit, target, splits, spec, given, device))


def load(source: str | Path, model=None, device: str = "cpu") -> Bundle | Collection:
    """A saved collection (a folder with manifest.json) or bundle (a shipped name, a folder or a Hub id); `model`,
    the factory or module a task of your own was made from, gives it back its model (bundles record only its
    name)."""
    is_collection = (Path(source) / MANIFEST_FILE).is_file()
    loaded = Collection.load(source) if is_collection else load_bundle(source, device)
    if model is not None:
        loaded.task.factory = _factory(model)
        build_model(loaded.task)
    return loaded
