import torch

from pdiff.baselines import baseline_sets, interpolations, noisy_originals
from pdiff.params import tensor_std

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
    assert set(sets) == {"noise_0.01", "noise_0.05", "noise_0.15", "interpolation"}
    assert all(v.shape == (7, 15) for v in sets.values())
