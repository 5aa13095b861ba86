"""The recipe for a bundle: a collection and a TrainSpec in, a Bundle out. `pdiff train` and `pdiff.train` both
call `build_bundle`; the bundle keeps the spec (Bundle.info.train_spec; bundle.json's `train_spec`).

In order: the spec's trunks held out; every original's condition (its accuracy on the validation split, or its
trunk's signature on a probe set of the training images no model held out); the autoencoder and the latent DDPM
(generator.training), whose behaviour term sees only a budget donor's budget where the collection is a donor's; the
guidance scale chosen on the validation split; the clean-model reference; the reconstruction check on the test split.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from pdiff.collection.folder import Collection
from pdiff.core.settings import DataSpec, TrainSpec
from pdiff.data.datasets import Split
from pdiff.data.plan import RunData, donor_spec
from pdiff.generator.bundle import Bundle
from pdiff.generator.conditions import Conditions, acc_conditions, probe_set, trunk_conditions
from pdiff.generator.guidance import GUIDANCE_SAMPLING, set_guidance
from pdiff.generator.training import reconstruction_report, train_bundle


def build_bundle(collection: Collection, spec: TrainSpec = TrainSpec(), train: Split | None = None,
                 test: Split | None = None, seed: int = 0, device="cpu") -> Bundle:
    """The bundle `spec` describes, built from `collection` with `seed`. `train`: the training split (the behaviour
    term's images, and the validation split at its end for the conditions and the guidance scale); `test`: the
    reconstruction check's images. Each is needed where `spec.splits()` names it. Held-out trunks are taken out here
    unless the collection was loaded without them; the bundle's spec records every trunk held out."""
    collection = _held_out(collection, spec.hold_out_trunks)
    missing = [name for name, split in (("train", train), ("test", test)) if name in spec.splits() and split is None]
    if missing:
        raise ValueError(f"this bundle's recipe reads the {' and '.join(missing)} split: give it (the behaviour term "
                         "and the conditions read the training split, the reconstruction check the test split)")
    conditions, validation = _conditions(collection, spec, train, device)
    bundle = train_bundle(collection, spec.autoencoder, spec.ddpm, seed, device, _behaviour_images(collection, spec, train),
                          conditions)
    if conditions is not None:
        set_guidance(bundle, validation, device, GUIDANCE_SAMPLING.changed(sampler=spec.guidance_sampler,
                                                                           steps=spec.guidance_steps))
    if spec.clean_model is not None:
        keep_reference(bundle, Collection.load(spec.clean_model, trunks=False), Path(spec.clean_model).name)
    if spec.reconstruction:
        bundle.info.training["reconstruction"] = reconstruction_report(bundle, test, device, collection.trunks)
    bundle.info.train_spec = replace(spec, hold_out_trunks=collection.held_out_trunks)
    return bundle


def _held_out(collection: Collection, trunks: tuple[int, ...]) -> Collection:
    """The collection less every checkpoint of `trunks` it still holds."""
    for trunk in trunks:
        if trunk not in collection.held_out_trunks:
            collection = collection.without_trunk(trunk)
    return collection


def _conditions(collection: Collection, spec: TrainSpec, train: Split | None,
                device) -> tuple[Conditions | None, Split | None]:
    """Every original's condition and the validation split the guidance scale is chosen on (None, None: an
    unconditional bundle)."""
    if spec.condition == "none":
        return None, None
    data = RunData(None, train, DataSpec(validation=spec.validation))
    if spec.condition == "acc":
        return acc_conditions(collection, data.validation, device), data.validation
    return trunk_conditions(collection, probe_set(data.fit), device), data.validation


def _behaviour_images(collection: Collection, spec: TrainSpec, train: Split | None) -> Split | None:
    """The images the behaviour term is measured on: the training split, or a budget donor's budget (its generator
    sees no clean image beyond the donor's); None where the term is off."""
    if spec.autoencoder.behaviour_weight == 0:
        return None
    donor = collection.info.get("trained_on")
    return RunData(None, train, donor_spec(donor)).budget(torch.Generator()) if donor else train


def keep_reference(bundle: Bundle, reference: Collection, name: str) -> None:
    """Keep `reference`'s base model beside the bundle as the clean-model control, with what it was trained on (a
    budget donor's bundle keeps the full clean model so that its tables can show it beside the donor)."""
    bundle.references["clean-model"] = reference.base
    bundle.info.references = {"clean-model": {"train_size": reference.info.get("train_size"),
                                              "acc": reference.trunk_accs[0], "from": name}}


def replace_victims(folder: str | Path, collection: Collection) -> Bundle:
    """Train nothing: the bundle at `folder` with the collection's victims in place of its own, saved again (after
    victims were rebuilt; the generator does not depend on them)."""
    bundle = Bundle.load(folder)
    if bundle.task.to_dict() != collection.task.to_dict():
        raise ValueError(f"the bundle at {folder} was trained on task {bundle.task.name}, the collection holds "
                         f"{collection.task.name} (or another recipe)")
    bundle.set_victims(collection.victims)
    bundle.save(folder)
    return bundle
