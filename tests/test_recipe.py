"""The recipe for a bundle (generator.recipe.build_bundle) over a TrainSpec: the spec is checked by name, kept whole
in bundle.json with the trunks held out, a budget donor's generator reads back exactly the budget its collection
drew, and a split the recipe needs is asked for. Tiny synthetic collections of untrained ConvNets (test_guidance's)."""
import json

import pytest
import torch
from test_guidance import _collection

from pdiff.core.config import AEConfig, DDPMConfig
from pdiff.core.settings import DataSpec, TrainSpec
from pdiff.data.plan import RunData
from pdiff.generator.bundle import BUNDLE_JSON, Bundle
from pdiff.generator.recipe import _behaviour_images, build_bundle

TINY = TrainSpec(AEConfig(channels=[16, 32], steps=3, behaviour_images=16), DDPMConfig(channels=32, blocks=2, steps=3))


def test_the_spec_round_trips_and_refuses_bad_settings_by_name():
    spec = TrainSpec(condition="trunk", validation=100, guidance_sampler="ddim", hold_out_trunks=[2, 3],
                     clean_model="checkpoints/fmnist-convnet")
    assert spec.hold_out_trunks == (2, 3) and TrainSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert TrainSpec().splits() == ("train", "test") and TrainSpec(reconstruction=False).splits() == ("train",)
    assert TrainSpec(AEConfig(behaviour_weight=0), reconstruction=False).splits() == ()
    for bad, message in (({"condition": "accuracy"}, "train.condition must be none, acc or trunk"),
                         ({"autoencoder": {"steps": 0}}, "AEConfig.steps must be at least 1, got 0"),
                         ({"ddpm": {"channels": 0}}, "DDPMConfig.channels must be at least 1"),
                         ({"condition": "acc", "validation": 0}, "train.validation must be a whole number of at least 1"),
                         ({"guidance_sampler": "euler"}, "train.guidance_sampler must be one of ddpm, ddim"),
                         ({"hold_out_trunks": (-1,)}, "train.hold_out_trunks must be a whole number")):
        with pytest.raises(ValueError, match=message):
            TrainSpec(**bad)
    with pytest.raises(ValueError, match=r"TrainSpec: unknown keys \['fold'\]"):
        TrainSpec.from_dict({"fold": 16})
    with pytest.raises(ValueError, match=r"TrainSpec: unknown settings \['ae_steps'\]"):
        TrainSpec().changed(ae_steps=3)


def test_the_bundle_keeps_its_spec_and_every_trunk_held_out(small_test, tmp_path):
    coll = _collection(3).without_trunk(1)  # loaded without trunk 1, as `Collection.load(folder, [1])` gives it
    bundle = build_bundle(coll, TINY.changed(hold_out_trunks=(2,)), train=small_test, test=small_test.subset(100))
    assert bundle.info.held_out_trunks == [1, 2] and bundle.info.train_spec.hold_out_trunks == (1, 2)
    assert set(bundle.info.trunk_of) == {0} and len(bundle.info.training["reconstruction"]["acc"]) == 3
    again = Bundle.load(bundle.save(tmp_path / "b"))
    assert again.info.train_spec == bundle.info.train_spec and again.info.train_spec.autoencoder.channels == [16, 32]
    meta = json.loads((tmp_path / "b" / BUNDLE_JSON).read_text())
    assert meta["format_version"] == 4 and meta["train_spec"]["autoencoder"]["fold"] == 0  # as asked
    assert meta["autoencoder"]["fold"] == 16  # as resolved


def test_a_split_the_recipe_needs_is_asked_for(small_test):
    with pytest.raises(ValueError, match="this bundle's recipe reads the test split"):
        build_bundle(_collection(1), TINY, train=small_test)
    with pytest.raises(ValueError, match="reads the train and test split"):
        build_bundle(_collection(1), TINY)
    with pytest.raises(ValueError, match="cannot hold out trunk 4"):
        build_bundle(_collection(2), TINY.changed(hold_out_trunks=(4,)), small_test, small_test)


def test_a_budget_donor_s_generator_reads_back_the_budget_its_collection_drew(small_train):
    """collect --train-on budget records its draw (RunData.budget_only); the behaviour term of the donor's bundle
    sees those images and no other clean image."""
    donor_data, trained_on = RunData(None, small_train, DataSpec(validation=None)).budget_only(0.25, 3)
    assert trained_on == {"what": "the clean budget", "validation": None, "bn_images": 512, "budget": 0.25,
                          "budget_seed": 3, "images": 256}
    coll = _collection(1)
    coll.info["trained_on"] = trained_on
    images = _behaviour_images(coll, TINY, small_train)
    assert torch.equal(images.images, donor_data.train.images) and torch.equal(images.labels, donor_data.train.labels)
    coll.info.pop("trained_on")
    assert _behaviour_images(coll, TINY, small_train) is small_train  # not a donor: the training split
    assert _behaviour_images(coll, TINY.changed(autoencoder=AEConfig(behaviour_weight=0)), small_train) is None
