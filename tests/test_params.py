import torch

from pdiff.core.params import denormalize, flatten, layout_of, norm_stats, normalize, numel, unflatten


def _stacked(k=5):
    # every value encodes (checkpoint, tensor): a row that mixes checkpoints is visible at once
    shapes = {"a.weight": (3, 2), "a.bias": (3,), "b.weight": (4,)}
    return {name: torch.full((k, *shape), 0.0) + torch.arange(k).view(-1, *[1] * len(shape)) * 10 + i
            for i, (name, shape) in enumerate(shapes.items())}


def test_roundtrip_keeps_names_order_values():
    stacked = _stacked()
    layout = layout_of(stacked, ["b.weight", "a.weight", "a.bias"], stacked=True)
    flat = flatten(stacked, layout)
    assert flat.shape == (5, numel(layout)) == (5, 13)
    back = unflatten(flat, layout)
    assert list(back) == ["b.weight", "a.weight", "a.bias"]
    for name in stacked:
        assert torch.equal(back[name], stacked[name])


def test_rows_never_mix_checkpoints():
    flat = flatten(_stacked(), layout_of(_stacked(), ["a.weight", "a.bias", "b.weight"], stacked=True))
    # row k holds only values 10k + tensor index: an off-by-one glue would put 10(k+1) in row k
    for k, row in enumerate(flat):
        assert set((row // 10).tolist()) == {k}


def test_normalisation_centres_each_number_scales_each_tensor_and_inverts():
    g = torch.Generator().manual_seed(0)
    stacked = {"w": torch.randn(50, 8, generator=g) * 5 + torch.arange(8.0), "b": torch.randn(50, 2, generator=g) * 0.01 - 1}
    layout = layout_of(stacked, ["w", "b"], stacked=True)
    mean, std = norm_stats(stacked, layout)
    assert mean.shape == (10,) and std.shape == (2,)
    x = normalize(flatten(stacked, layout), mean, std, layout)
    parts = unflatten(x, layout)
    for name in ("w", "b"):
        assert parts[name].mean(0).abs().max().item() < 1e-4  # every number centred, not only each tensor
        assert abs(parts[name].std().item() - 1) < 1e-4
    assert torch.allclose(denormalize(x, mean, std, layout), flatten(stacked, layout), atol=1e-5)
    # a bundle of the earlier format keeps one mean per tensor and still inverts
    old_mean = torch.tensor([stacked["w"].mean().item(), stacked["b"].mean().item()])
    y = normalize(flatten(stacked, layout), old_mean, std, layout)
    assert torch.allclose(denormalize(y, old_mean, std, layout), flatten(stacked, layout), atol=1e-5)
