"""The sources a run asks for, assembled by the registry's families: the one place the evaluate report and the
transfer study take their controls and defences from (measure.sources says what each name is).

- control: clean weights from the bundle, as layout vectors (`originals`, `average`, `clean-layers`) or as whole
  models (`clean-model`: the bundle's reference model, else its base; `donor`: a budget donor's base);
- defence: each run on the target with the clean budget, in the registry's order (the order the budget's generator
  is drawn from), its outcome or why it could not give a model.
The sources that need an engine of their own (the probe, the stitch) and the sampled ones (generated, the
memorisation baselines) are the studies' to make.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch

from pdiff.core.params import own_vector
from pdiff.core.settings import DefenceSettings
from pdiff.data.datasets import Split
from pdiff.measure.baselines import average
from pdiff.measure.defences import Defended, DefenceFailed, run_defence
from pdiff.measure.sources import clean_resources, ordered, source

# the control family's clean weights, by name: what each is, taken from a bundle (None: this bundle has none)
CLEAN_WEIGHTS: dict[str, Callable] = {
    "originals": lambda b: b.originals,
    "average": lambda b: average(b.originals),
    "clean-layers": lambda b: own_vector(b.base_state, b.layout),
    "clean-model": lambda b: b.clean_model()[0],
    "donor": lambda b: b.base_state if b.budget_donor else None,
}


@dataclass
class Failed:
    """A defence that ran but could not give a model (defences.DefenceFailed): its one-line reason and wall time."""
    name: str
    reason: str
    seconds: float


@dataclass
class Assembled:
    """What `assemble` made: layout vectors to splice into the target (a layer defence: every checkpoint along its
    run, the last being the defence), whole models' state dicts, and each defence's outcome (Defended) or failure."""
    layers: dict[str, torch.Tensor] = field(default_factory=dict)
    whole: dict[str, dict] = field(default_factory=dict)
    defences: dict[str, Defended | Failed] = field(default_factory=dict)


def assemble(bundle, names, target_state: dict | None = None, budget: Split | None = None,
             generator: torch.Generator | None = None, defence: DefenceSettings = DefenceSettings(), device="cpu",
             done: Callable[[str], None] | None = None) -> Assembled:
    """The control and defence sources among `names`, in the registry's order (other names are left to the caller).
    The defences run on `target_state` with `budget`, drawing from `generator`; `defence.k` None is the bundle's K.
    `done(name)` is called after each defence, failed or not."""
    out = Assembled()
    defence = bundle_defence(bundle, defence)
    for name in ordered(set(names)):
        s = source(name)
        if s.family == "control" and name in CLEAN_WEIGHTS:
            value = CLEAN_WEIGHTS[name](bundle)
            if value is not None:
                (out.whole if s.whole else out.layers)[name] = value
        elif s.family == "defence":
            t0 = time.perf_counter()
            try:
                d = run_defence(name, bundle.task, bundle.layout, target_state, budget, generator, defence, device)
            except DefenceFailed as e:  # the caller marks it; the others go on
                out.defences[name] = Failed(name, str(e), time.perf_counter() - t0)
                continue
            finally:
                if done is not None:
                    done(name)
            out.defences[name] = d
            if d.vectors is not None:
                out.layers[name] = d.vectors
            else:
                out.whole[name] = d.state
    return out


def bundle_defence(bundle, defence: DefenceSettings) -> DefenceSettings:
    """The defence settings as they run on this bundle: K checkpoints along a layer defence's run, the bundle's K
    unless set."""
    return replace(defence, k=defence.k or len(bundle.originals))


def ledger(bundle, name: str, budget_images: int) -> dict:
    """One source's clean resources (sources.clean_resources) for a bundle: the clean-model control's images are
    its reference model's, every other clean weight's the bundle's own."""
    model_images = bundle.clean_model()[1] if name == "clean-model" else bundle.train_size
    return clean_resources(name, budget_images, model_images, len(bundle.originals), bundle.conditions)
