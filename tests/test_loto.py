import pytest

from pdiff.core.settings import CollectSpec, DataSpec, SamplingSpec
from pdiff.data.plan import RunData

from pdiff.generator.bundle import Bundle
from pdiff.collection.collect import derive_trunk, early_layers, run_collect
from pdiff.collection.folder import Collection
from pdiff.core.config import AEConfig, DDPMConfig
from pdiff.models.loading import check_architecture
from pdiff.models.tasks import get_task
from pdiff.generator.training import train_bundle
from pdiff.studies.loto import leave_one_trunk_out, loto_lines


ALL = DataSpec(validation=0)  # these tiny models train on every image of the split


@pytest.fixture(scope="module")
def two_trunks(tmp_path_factory, small_train, small_test):
    """Two trunks that differ for real: trunk 1 has its first conv block re-initialised and retrained."""
    task = get_task("fmnist-convnet")
    task.recipe.epochs, task.recipe.trunk_epochs, task.recipe.save_every = 1, 1, 4
    out = tmp_path_factory.mktemp("trunks")
    run_collect(task, RunData(small_test, small_train, ALL), 0, CollectSpec(k=8, trunks=2, trunk_mode="reinit"), out=out)
    return out


@pytest.fixture(scope="module")
def loto_bundle(two_trunks, tmp_path_factory):
    bundle = train_bundle(Collection.load(two_trunks, hold_out_trunk=1), AEConfig(channels=[16, 32], steps=20),
                          DDPMConfig(channels=32, blocks=2, steps=20), seed=0)
    assert bundle.info.held_out_trunk == 1 and bundle.info.trunk_of == [0, 0, 0, 0]
    return Bundle.load(bundle.save(tmp_path_factory.mktemp("loto") / "bundle"))


def test_leave_one_trunk_out_reports_the_held_out_trunk_as_it_is(loto_bundle, two_trunks, small_test):
    report = leave_one_trunk_out(loto_bundle, two_trunks, RunData(small_test), SamplingSpec(3, "ddim", 3))
    assert report["held_out_trunk"] == 1 and report["trained_on_trunks"] == [0] and report["trunk_mode"] == "reinit"
    assert len(report["sources"]["generated"]["acc"]) == 3
    assert len(report["sources"]["own_checkpoints"]["acc"]) == 4 and len(report["sources"]["other_trunks_checkpoints"]["acc"]) == 4
    # one model: the trunk with its own layers, scored as collect scored it
    assert report["sources"]["trunk_as_is"]["acc"] == [pytest.approx(report["trunk_acc"])]
    assert "held-out trunk 1" in loto_lines(report) and "trunk_as_is" in loto_lines(report)
    assert "stitch+generated" not in report["sources"] and not {"generated", "trunk_as_is"} & set(report)
    assert report["sources"]["other_trunks_checkpoints"]["family"] == "trunk"  # filed by the registry


def test_leave_one_trunk_out_through_a_stitch(loto_bundle, two_trunks, small_train, small_test):
    data = RunData(small_test, small_train, DataSpec(validation=0, budget=0.25))
    report = leave_one_trunk_out(loto_bundle, two_trunks, data, SamplingSpec(3, "ddim", 3), stitch=True)
    assert report["stitch"]["onto_trunk"] == 0 and report["stitch"]["images"] == 256
    assert len(report["sources"]["stitch+generated"]["acc"]) == 3 and len(report["sources"]["stitch+clean-layers"]["acc"]) == 1
    assert "stitch onto trunk 0" in loto_lines(report)


def test_reinit_trunks_differ_in_their_first_layers(two_trunks, small_train):
    coll = Collection.load(two_trunks)
    model = check_architecture(coll.task, coll.base)
    assert early_layers(model, coll.task.train_layer) == [model.conv1, model.bn1]
    assert (coll.trunks[1]["conv1.weight"] - coll.base["conv1.weight"]).abs().mean() > 0.05
    with pytest.raises(ValueError, match="unknown trunk mode 'nope'"):
        derive_trunk(coll.base, coll.task, small_train, None, mode="nope")


def test_a_bundle_of_every_trunk_has_nothing_to_leave_out(tiny_bundle, two_trunks, small_test):
    with pytest.raises(ValueError, match="trained on every trunk"):
        leave_one_trunk_out(tiny_bundle, two_trunks, RunData(small_test), SamplingSpec(n=1))
