"""pdiff: neural-network parameter diffusion (p-diff) as a library, CLI and Gradio app.

The Python API, for any nn.Module and data given as tensors (examples/own_model.py): `task` (a model factory or
module + the names of the layers to generate), `Split` (images as uint8 or float tensors, labels, optional
mean/std), then `collect` -> `train` -> `sample` -> `evaluate`, in memory; each returns an object with `.save`
(`Collection`, `Bundle`, `Samples`, `Report`), and `load` reads them back. `heads_for` writes heads for a trunk the
shipped head generator never saw from a few labelled images per class (a `HeadsReport`).

The package follows the pipeline's stages; each imports only the ones before it (tests/test_layout.py):
`core` (config and settings dataclasses, parameter layouts, splicing by name, files, one Registry) ->
`data` (datasets as uint8 `Split`s, triggers as data, the splits a run derives) -> `models` (architectures as
staged Sequentials, tasks, safe checkpoint loading, the staged forward, the training loop) -> `collection`
(a base trained, K checkpoints of its train_layer on the frozen trunk, victims beside it) -> `generator` (the
parameter autoencoder and latent DDPM, their training and sampling, the bundle and the Hub) -> `measure` (the
engine that runs many parameter sets on one target, similarity, the targets, the sources a report compares:
baselines, defences, the stitch) -> `studies` (the evaluate report, transfer, leave-one-trunk-out: short
compositions of `measure`) -> `app` (the Gradio UI and its plots). `api` and `cli` are the edges, where user
input becomes typed objects (a `Target`, a `SamplingSpec`, ...) once.
"""
from pdiff.core.version import __version__
from pdiff.api import HeadsReport, Report, collect, evaluate, heads_for, load, sample, task, train
from pdiff.collection.folder import Collection
from pdiff.core.config import AEConfig, DDPMConfig, Recipe, Task
from pdiff.core.settings import CollectSpec, DataSpec, EvalSettings, SamplingSpec, TrainSpec
from pdiff.data.datasets import DatasetSpec, Split, register_dataset
from pdiff.generator.bundle import Bundle
from pdiff.generator.sampling import Samples
from pdiff.models.archs import register_arch
from pdiff.models.tasks import register_task

__all__ = ["task", "collect", "train", "sample", "evaluate", "load", "Split", "Task", "Recipe", "AEConfig",
           "DDPMConfig", "CollectSpec", "TrainSpec", "SamplingSpec", "EvalSettings", "DataSpec", "Collection", "Bundle",
           "Samples", "Report", "heads_for", "HeadsReport", "register_arch", "register_dataset", "DatasetSpec",
           "register_task", "__version__"]
