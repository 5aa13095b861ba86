import torch

import pytest

from pdiff.measure.baselines import (average, baseline_sets, gaussian, interpolations, match_level, noisy_originals, 
                             subset_averages)
from pdiff.core.params import tensor_std

LAYOUT = [("w", (3, 4)), ("b", (3,))]


def _originals(k=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.cat([torch.randn(k, 12, generator=g) * 2.0, torch.randn(k, 3, generator=g) * 0.1], dim=1)


def test_noise_at_sigma_zero_returns_originals_and_scales_per_tensor():
    orig = _originals()
    std = tensor_std(orig, LAYOUT)
    same = noisy_originals(orig, std, LAYOUT, 0.0, 20, torch.Generator().manual_seed(1))
    assert all(any(torch.equal(row, o) for o in orig) for row in same)
    noisy = noisy_originals(orig, std, LAYOUT, 0.5, 4000, torch.Generator().manual_seed(1))
    # subtract the original each row came from: redraw the same indices with the same seed
    idx = torch.randint(0, len(orig), (4000,), generator=torch.Generator().manual_seed(1))
    noise = noisy - orig[idx]
    assert abs(noise[:, :12].std().item() / (0.5 * std[0].item()) - 1) < 0.05
    assert abs(noise[:, 12:].std().item() / (0.5 * std[1].item()) - 1) < 0.05


def test_interpolations_lie_between_two_distinct_originals():
    a, b = _originals(2).unbind()
    mixes = interpolations(torch.stack([a, b]), 50, torch.Generator().manual_seed(0))
    d = b - a
    for m in mixes:
        w = ((m - a) @ d / (d @ d)).item()
        assert -1e-6 <= w <= 1 + 1e-6
        assert torch.allclose(a + w * d, m, atol=1e-5)  # on the segment, not beside it


def test_baseline_sets_name_every_source_and_count():
    orig = _originals()
    sets = baseline_sets(orig, tensor_std(orig, LAYOUT), LAYOUT, 7, torch.Generator().manual_seed(0))
    sets, unavailable = baseline_sets(orig, tensor_std(orig, LAYOUT), LAYOUT, 7, torch.Generator().manual_seed(0))
    assert set(sets) == {"noise_0.01", "noise_0.05", "noise_0.15", "interpolation", "average", "gaussian"}
    assert set(unavailable) == {"average-16"}  # 6 originals: it says why instead of failing
    assert all(v.shape == (7, 15) for k, v in sets.items() if k != "average") and sets["average"].shape == (1, 15)


def test_average_and_subset_averages_are_means_of_originals():
    orig = _originals(20)
    assert torch.allclose(average(orig)[0], orig.mean(0))
    subs = subset_averages(orig, 5, torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(0)
    for row in subs:  # each is the mean of 16 distinct originals, drawn as the function draws them
        picks = torch.randperm(20, generator=g)[:16]
        assert torch.allclose(row, orig[picks].mean(0))
    with pytest.raises(ValueError, match="needs at least 16 originals"):
        subset_averages(orig[:10], 1, g)


def test_gaussian_has_the_fitted_mean_and_std_and_leaves_bn_statistics_alone():
    orig = _originals(30)
    draws = gaussian(orig, LAYOUT, 20000, torch.Generator().manual_seed(0), temperature=0.5)
    assert torch.allclose(draws.mean(0), orig.mean(0), atol=0.02)
    assert torch.allclose(draws.std(0), 0.5 * orig.std(0), rtol=0.05)
    assert torch.equal(gaussian(orig, LAYOUT, 3, torch.Generator(), temperature=0.0), orig.mean(0).expand(3, -1))
    bn = [("bn.weight", (12,)), ("bn.running_var", (3,))]
    with_stats = gaussian(orig, bn, 5, torch.Generator().manual_seed(0))
    assert torch.equal(with_stats[:, 12:], orig.mean(0)[12:].expand(5, -1))  # statistics are never perturbed
    assert not torch.equal(with_stats[:, :12], orig.mean(0)[:12].expand(5, -1))
    noisy = noisy_originals(orig, tensor_std(orig, bn), bn, 0.5, 5, torch.Generator().manual_seed(0))
    idx = torch.randint(0, 30, (5,), generator=torch.Generator().manual_seed(0))
    assert torch.equal(noisy[:, 12:], orig[idx][:, 12:])


def test_matched_noise_lands_on_its_target():
    # a toy task: accuracy falls smoothly with sigma; bisection must find the sigma that gives the target
    def accuracy_at(sigma):
        return 92.0 - 3.0 * sigma ** 2

    sigma = match_level(accuracy_at, 91.5)
    assert abs(accuracy_at(sigma) - 91.5) < 0.1
    assert match_level(accuracy_at, 92.5) is None  # above what even sigma 0 gives: no match
    assert abs(accuracy_at(match_level(accuracy_at, 60.0)) - 60.0) < 0.1  # beyond the first bracket
