import pytest

from pdiff.bundle import Bundle
from pdiff.collect import derive_trunk, early_layers, run_collect
from pdiff.collection import Collection
from pdiff.config import AEConfig, DDPMConfig
from pdiff.targets import check_architecture
from pdiff.tasks import get_task
from pdiff.train import train_bundle
from pdiff.trunks import leave_one_trunk_out, loto_lines


@pytest.fixture(scope="module")
def two_trunks(tmp_path_factory, small_train, small_test):
    """Two trunks that differ for real: trunk 1 has its first conv block re-initialised and retrained."""
    task = get_task("fmnist-convnet")
    task.recipe.epochs, task.recipe.trunk_epochs, task.recipe.save_every = 1, 1, 4
    out = tmp_path_factory.mktemp("trunks")
    run_collect(task, out, small_train, small_test, seed=0, k=8, trunks=2, trunk_mode="reinit")
    return out


@pytest.fixture(scope="module")
def loto_bundle(two_trunks, tmp_path_factory):
    bundle = train_bundle(Collection.load(two_trunks, hold_out_trunk=1), AEConfig(channels=[16, 32], steps=20),
                          DDPMConfig(channels=32, blocks=2, steps=20), seed=0)
    assert bundle.meta["held_out_trunk"] == 1 and bundle.meta["trunk_of"] == [0, 0, 0, 0]
    return Bundle.load(bundle.save(tmp_path_factory.mktemp("loto") / "bundle"))


def test_leave_one_trunk_out_reports_the_held_out_trunk_as_it_is(loto_bundle, two_trunks, small_test):
    report = leave_one_trunk_out(loto_bundle, two_trunks, n=3, seed=0, test=small_test, steps=3)
    assert report["held_out_trunk"] == 1 and report["trained_on_trunks"] == [0] and report["trunk_mode"] == "reinit"
    assert len(report["generated"]["acc"]) == 3
    assert len(report["own_checkpoints"]["acc"]) == 4 and len(report["other_trunks_checkpoints"]["acc"]) == 4
    # one model: the trunk with its own layers, scored as collect scored it
    assert report["trunk_as_is"]["acc"] == [pytest.approx(report["trunk_acc"])]
    assert "held-out trunk 1" in loto_lines(report) and "trunk_as_is" in loto_lines(report)
    assert "stitch+generated" not in report


def test_leave_one_trunk_out_through_a_stitch(loto_bundle, two_trunks, small_train, small_test):
    report = leave_one_trunk_out(loto_bundle, two_trunks, n=3, seed=0, test=small_test, steps=3,
                                 stitch_budget=small_train.subset(256))
    assert report["stitch"]["onto_trunk"] == 0 and report["stitch"]["images"] == 256
    assert len(report["stitch+generated"]["acc"]) == 3 and len(report["stitch+clean-layers"]["acc"]) == 1
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
        leave_one_trunk_out(tiny_bundle, two_trunks, n=1, seed=0, test=small_test)
