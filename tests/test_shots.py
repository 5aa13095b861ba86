"""Few-shot draws: K shots per class and an unlabelled pool from the images every model trained on, never the
validation split; one line for too many shots or a pool that reaches into the validation split."""
import pytest
import torch

from pdiff.data.shots import check_pool, draw_fewshot, usable

LABELS = torch.arange(10).repeat(120)  # 1,200 images, 120 per class; the last 200 are the validation split


def test_a_draw_is_disjoint_inside_the_usable_images_nested_over_k_and_reproducible():
    draws = {k: draw_fewshot(LABELS, k, 300, torch.Generator().manual_seed(4), 10, validation=200) for k in (1, 5, 20)}
    d = draws[20]
    assert len(d.shots) == 200 and len(d.pool) == 300 and d.seed == 4
    assert not torch.isin(d.shots, d.pool).any()
    assert int(torch.cat([d.shots, d.pool]).max()) < usable(len(LABELS), 200)
    assert torch.equal(LABELS[d.shots], torch.arange(10).repeat_interleave(20))  # class by class
    assert d.ledger() == {"labelled": 200, "unlabelled": 300}
    for k in (1, 5):  # the same pool at every k; the first k shots of each class are the smaller draw's
        assert torch.equal(draws[k].pool, d.pool)
        assert torch.equal(draws[k].shots, d.shots.view(10, 20)[:, :k].flatten())
    again = draw_fewshot(LABELS, 20, 300, torch.Generator().manual_seed(4), 10, validation=200)
    assert torch.equal(again.shots, d.shots) and torch.equal(again.pool, d.pool)


def test_excluded_images_are_never_drawn():
    exclude = torch.arange(0, 500)
    d = draw_fewshot(LABELS, 5, 100, torch.Generator().manual_seed(0), 10, validation=200, exclude=exclude)
    assert not torch.isin(torch.cat([d.shots, d.pool]), exclude).any()


def test_too_many_shots_or_an_overlapping_pool_is_refused_in_one_line():
    with pytest.raises(ValueError, match=r"--shots 101 is more than the 100 images class \d has") as e:
        draw_fewshot(LABELS, 101, 0, torch.Generator().manual_seed(0), 10, validation=200)
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="overlaps the validation split") as e:
        check_pool(torch.tensor([3, 1100, 1199]), len(LABELS), validation=200)
    assert "in 2 images" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ValueError, match="must come from the training split, not the test split"):
        check_pool(torch.tensor([3]), len(LABELS), validation=200, split="test")
    with pytest.raises(ValueError, match="pool of 5000"):
        draw_fewshot(LABELS, 1, 5000, torch.Generator().manual_seed(0), 10, validation=200)
