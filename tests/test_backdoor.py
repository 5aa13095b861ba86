import pytest
import torch

from pdiff.data.triggers import Trigger, apply_trigger, asr_ra, der, poison, triggered_test_set


def test_trigger_stamps_bottom_right_square_only(fmnist_test):
    img = fmnist_test.images[:1]
    out = apply_trigger(img, Trigger(size=3))
    assert (out[0, 0, -3:, -3:] == 255).all()
    changed = (out != img).nonzero()[:, 2:]
    assert changed.numel() and (changed >= 25).all()  # nothing outside rows/cols 25..27 changes
    assert torch.equal(out[0, 0, :25], img[0, 0, :25]) and torch.equal(out[0, 0, :, :25], img[0, 0, :, :25])
    assert not torch.equal(img[0, 0, -3:, -3:], torch.full((3, 3), 255, dtype=torch.uint8))  # input untouched


def test_poison_flips_labels_of_a_tenth(fmnist_test):
    g = torch.Generator().manual_seed(0)
    images, labels = fmnist_test.images[:1000], fmnist_test.labels[:1000]
    p_images, p_labels, idx = poison(images, labels, Trigger(target=3, rate=0.1), g)
    assert len(idx) == 100
    assert (p_labels[idx] == 3).all() and (p_images[idx][..., -3:, -3:] == 255).all()
    rest = torch.ones(1000, dtype=torch.bool)
    rest[idx] = False
    assert torch.equal(p_labels[rest], labels[rest]) and torch.equal(p_images[rest], images[rest])


def test_asr_excludes_target_class(fmnist_test):
    trig = Trigger(target=0)
    images, labels = triggered_test_set(fmnist_test.images, fmnist_test.labels, trig)
    assert len(labels) == 9000 and (labels != 0).all()
    pred = torch.where(torch.arange(len(labels)) % 2 == 0, torch.zeros_like(labels), labels)
    asr, ra = asr_ra(pred, labels, 0)
    assert asr == pytest.approx(50.0) and ra == pytest.approx(50.0)
    with pytest.raises(ValueError):
        asr_ra(torch.zeros(3, dtype=torch.long), torch.tensor([0, 1, 2]), 0)


def test_der_hand_computed():
    # ASR 95 -> 5 (drop 0.9), ACC 90 -> 88 (drop 0.02): (0.9 - 0.02 + 1) / 2 = 0.94
    assert der(90.0, 95.0, [88.0], [5.0])[0] == pytest.approx(0.94)
    # no ASR drop and an ACC gain: (0 - 0 + 1) / 2
    assert der(90.0, 95.0, [91.0], [99.0])[0] == pytest.approx(0.5)
    # accuracy collapse with ASR gone: (0.95 - 0.8 + 1) / 2
    assert der(90.0, 95.0, [10.0], [0.0])[0] == pytest.approx(0.575)


def test_blended_trigger_equals_the_formula(fmnist_test):
    from pdiff.data.triggers import blend_pattern

    img = fmnist_test.images[:2]
    trig = Trigger(kind="blend", opacity=0.2, seed=7)
    out = apply_trigger(img, trig)
    pattern = blend_pattern((1, 28, 28), 7)
    expected = (0.8 * img.float() + 0.2 * pattern.float()).round().to(torch.uint8)
    assert torch.equal(out, expected)
    assert torch.equal(apply_trigger(img, trig), out)  # the same pattern every call
    assert not torch.equal(apply_trigger(img, Trigger(kind="blend", opacity=0.2, seed=8)), out)
    changed = (out != img).float().mean().item()
    assert changed > 0.5  # the whole image is touched, not a patch
    with pytest.raises(ValueError, match="trigger.kind must be one of patch, blend"):
        Trigger(kind="sig")
