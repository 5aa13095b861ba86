import pytest

from pdiff.bundle import Bundle
from pdiff.collect import run_collect
from pdiff.collection import Collection
from pdiff.config import AEConfig, DDPMConfig
from pdiff.tasks import get_task
from pdiff.train import train_bundle
from pdiff.trunks import leave_one_trunk_out, loto_lines


@pytest.fixture(scope="module")
def two_trunks(tmp_path_factory, small_train, small_test):
    task = get_task("fmnist-convnet")
    task.recipe.epochs, task.recipe.trunk_epochs, task.recipe.save_every = 1, 1, 4
    out = tmp_path_factory.mktemp("trunks")
    run_collect(task, out, small_train, small_test, seed=0, k=8, trunks=2)
    return out


def test_leave_one_trunk_out_reports_the_held_out_trunk(two_trunks, small_test, tmp_path):
    bundle = train_bundle(Collection.load(two_trunks, hold_out_trunk=1), AEConfig(channels=[16, 32], steps=20),
                          DDPMConfig(channels=32, blocks=2, steps=20), seed=0)
    assert bundle.meta["held_out_trunk"] == 1 and bundle.meta["trunk_of"] == [0, 0, 0, 0]
    bundle = Bundle.load(bundle.save(tmp_path / "loto"))
    report = leave_one_trunk_out(bundle, two_trunks, n=3, seed=0, test=small_test, steps=3)
    assert report["held_out_trunk"] == 1 and report["trained_on_trunks"] == [0]
    assert len(report["generated"]["acc"]) == 3
    assert len(report["own_checkpoints"]["acc"]) == 4 and len(report["other_trunks_checkpoints"]["acc"]) == 4
    assert "held-out trunk 1" in loto_lines(report)


def test_a_bundle_of_every_trunk_has_nothing_to_leave_out(tiny_bundle, two_trunks, small_test):
    with pytest.raises(ValueError, match="trained on every trunk"):
        leave_one_trunk_out(tiny_bundle, two_trunks, n=1, seed=0, test=small_test)
