"""The Python API: your own model (any nn.Module) and your own tensors, from checkpoints to a report in memory.

    task = pdiff.task(MyNet, ["fc.weight", "fc.bias"], epochs=2, k=50)   # a factory (or a module) + layer names
    train, test = pdiff.Split(x, y, mean=(0.5,), std=(0.5,)), pdiff.Split(x_test, y_test, mean=(0.5,), std=(0.5,))
    coll = pdiff.collect(task, train, test)        # a Collection   (coll.save(folder))
    bundle = pdiff.train(coll, train)               # a Bundle       (bundle.save(folder))
    samples = pdiff.sample(bundle, 100)             # Samples        (samples.save(folder))
    report = pdiff.evaluate(samples, test)          # a Report       (report.save(folder)); print(report.text())

Each step is a thin layer over the functions the CLI runs (`collect.run_collect`, `train.train_bundle`,
`sample.sample`, `report.run_report`). A model that is not a StagedNet is evaluated whole (functional_call
under vmap) and its named layers are collected on the whole forward pass, everything else frozen.
"""
from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from pdiff.bundle import Bundle
from pdiff.collect import Augment, run_collect
from pdiff.collection import MANIFEST_FILE, Collection
from pdiff.config import AEConfig, DDPMConfig, Recipe, Task
from pdiff.data import DATASETS, Split, random_flip
from pdiff.files import write_json
from pdiff.params import unflatten
from pdiff.report import familiar_lines, run_report
from pdiff.sample import sample as sample_vectors
from pdiff.sample import save_samples
from pdiff.tasks import build_model
from pdiff.train import train_bundle

SAMPLES_FILE = "samples.safetensors"
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


def collect(task: Task, train: Split, test: Split, seed: int = 0, k: int | None = None, base=None,
            augment: Augment | None = random_flip, device: str = "cpu") -> Collection:
    """Train a base model from the task's factory (or take `base`, a trained module or state dict), then
    collect K checkpoints of the task's layers with the rest frozen; in memory (`Collection.save(folder)`)."""
    state = base.state_dict() if isinstance(base, nn.Module) else base
    return run_collect(task, None, train, test, seed, k, device, base=state, augment=augment)


def train(collection: Collection, data: Split | None = None, autoencoder: dict | None = None,
          ddpm: dict | None = None, seed: int = 0, device: str = "cpu") -> Bundle:
    """The autoencoder and latent DDPM on a collection; `autoencoder` / `ddpm` override `AEConfig` /
    `DDPMConfig` fields (e.g. {"steps": 500}); `data`: training images for the autoencoder's behaviour term
    (needed unless the task's dataset is a named one or that term is off). In memory (`Bundle.save(folder)`)."""
    ae_cfg = AEConfig.from_dict({**AEConfig().to_dict(), **(autoencoder or {})})
    ddpm_cfg = DDPMConfig.from_dict({**DDPMConfig().to_dict(), **(ddpm or {})})
    if data is None and ae_cfg.behaviour_weight > 0 and collection.task.dataset not in DATASETS:
        raise ValueError(f"dataset {collection.task.dataset!r} is not a named one: give the training Split as "
                         "`data` (the behaviour term runs on it), or autoencoder={'behaviour_weight': 0}")
    return train_bundle(collection, ae_cfg, ddpm_cfg, seed, device, data)


@dataclass
class Samples:
    """n generated parameter vectors (n, P) in the bundle's layout, and how they were drawn."""
    vectors: torch.Tensor
    bundle: Bundle
    sampler: str
    steps: int | None
    seed: int

    def params(self) -> dict[str, torch.Tensor]:
        """{name: (n, *shape)}: what goes into a model's state dict."""
        return unflatten(self.vectors, self.bundle.layout)

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / SAMPLES_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        save_samples(path, self.vectors, self.bundle, self.sampler, self.steps, self.seed)
        return path


def sample(bundle: Bundle, n: int = 100, sampler: str = "ddim", steps: int | None = 50, seed: int = 0,
           device: str = "cpu") -> Samples:
    """n new parameter sets from the bundle (DDIM with `steps` steps, or the full DDPM chain)."""
    vectors = sample_vectors(bundle, n, sampler, steps, torch.Generator().manual_seed(seed), device)
    return Samples(vectors, bundle, sampler, steps, seed)


class Report(dict):
    """The evaluate report (the CLI's JSON, accuracies in percent) with `save` and a printout."""

    def text(self) -> str:
        return familiar_lines(self)

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / REPORT_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, dict(self))
        return path


def evaluate(samples: Samples | Bundle, test: Split, target=None, n: int = 100, seed: int = 0,
             baselines: bool = True, tsne: bool = False, device: str = "cpu") -> Report:
    """Generated sets (`samples`, or n new ones from a bundle) beside the originals and the memorisation
    baselines, spliced into `target` (None: the bundle's base model; else a module, a state dict, 'victim'
    or a model file) and measured on `test`."""
    bundle, given, sampler, steps = samples, None, "ddim", 50
    if isinstance(samples, Samples):
        bundle, given, sampler, steps, seed = (samples.bundle, samples.vectors, samples.sampler, samples.steps,
                                               samples.seed)
    report, _ = run_report(bundle, "clean" if target is None else target, n, seed, sampler, steps, device=device,
                           test=test, with_baselines=baselines, with_tsne=tsne, vectors=given)
    return Report(report)


def load(source: str | Path, model=None, device: str = "cpu") -> Bundle | Collection:
    """A saved collection (a folder with manifest.json) or bundle (a folder or a Hub id); `model`, the factory
    or module a task of your own was made from, gives it back its model (bundles record only its name)."""
    is_collection = (Path(source) / MANIFEST_FILE).is_file()
    loaded = Collection.load(source) if is_collection else Bundle.load(source, device)
    if model is not None:
        loaded.task.factory = _factory(model)
        build_model(loaded.task)
    return loaded
