"""The data a run uses, derived once from the training split: the validation tail, the BatchNorm images, the budget."""
import pytest
import torch

from pdiff.core.settings import VALIDATION, DataSpec
from pdiff.data.datasets import Split
from pdiff.data.plan import BATCH, RunData, draw_budget


def test_clean_budget_is_a_seeded_share_of_the_training_split(small_train):
    budget = draw_budget(small_train, 0.25, torch.Generator().manual_seed(0))
    assert len(budget.labels) == 256 and budget.dataset == small_train.dataset
    again = draw_budget(small_train, 0.25, torch.Generator().manual_seed(0))
    assert torch.equal(again.images, budget.images)
    # every budget image is a training image; none from the held-out tail
    held = draw_budget(small_train, 0.25, torch.Generator().manual_seed(1), exclude_last=512)
    flat = small_train.images.flatten(1)
    rows = [(flat == img.flatten()).all(1).nonzero().flatten().tolist() for img in held.images[:20]]
    assert all(r and min(r) < 512 for r in rows)
    with pytest.raises(ValueError, match=r"clean budget 2.0 \(2048 images\).*at most the 1024 training images"):
        draw_budget(small_train, 2.0, torch.Generator())
    with pytest.raises(ValueError, match=rf"clean budget 0.05 is 51 images, under one batch \({BATCH}\)"):
        draw_budget(small_train, 0.05, torch.Generator())


def test_validation_bn_images_and_budget_come_from_the_training_split(small_train, small_test):
    data = RunData(small_test, small_train, DataSpec(validation=200, bn_images=64, budget=0.25))
    assert torch.equal(data.validation.images, small_train.images[-200:])
    assert torch.equal(data.bn.images, small_train.images[:64])
    budget = data.budget(torch.Generator().manual_seed(0))
    flat = small_train.images.flatten(1)
    tail = flat[-200:]
    assert len(budget.labels) == 256
    assert not any((tail == img.flatten()).all(1).any() for img in budget.images)  # never a validation image
    assert data.validation is data.validation  # derived once


def test_a_small_split_holds_out_half_and_none_without_training_images(small_train, small_test):
    assert len(RunData(small_test, small_train).validation.labels) == min(VALIDATION, 1024 // 2)
    bare = RunData(small_test)
    assert bare.validation is None and bare.bn is None
    with pytest.raises(ValueError, match="drawn from the training split; none was given"):
        bare.budget(torch.Generator())
    assert RunData(small_test, small_train, DataSpec(validation=0, bn_images=0)).validation is None


@pytest.mark.parametrize("spec, message", [(dict(budget=0), "data.budget must be a share"),
                                           (dict(budget=1.5), "data.budget must be a share"),
                                           (dict(bn_images=-1), "data.bn_images must be a whole number"),
                                           (dict(validation=2.5), "data.validation must be a whole number")])
def test_bad_data_settings_are_refused_by_name(spec, message):
    with pytest.raises(ValueError, match=message):
        DataSpec(**spec)


def test_a_split_keeps_its_normalisation_through_the_budget():
    split = Split(torch.zeros(300, 1, 4, 4), torch.zeros(300, dtype=torch.long), mean=(0.5,), std=(0.25,))
    budget = draw_budget(split, 0.5, torch.Generator().manual_seed(0))
    assert (budget.mean, budget.std) == ((0.5,), (0.25,))
