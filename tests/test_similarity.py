
import pytest
import torch

from pdiff.measure.similarity import iou_matrix, mean_offdiag, TsneMap



def test_iou_by_matrices_equals_brute_force():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(5, 40, generator=g) < 0.3
    b = torch.rand(4, 40, generator=g) < 0.5
    m = iou_matrix(a, b)
    for i in range(5):
        for j in range(4):
            sa = {k for k in range(40) if a[i, k]}
            sb = {k for k in range(40) if b[j, k]}
            assert m[i, j].item() == pytest.approx(len(sa & sb) / len(sa | sb))
    assert mean_offdiag(iou_matrix(a, a)) == pytest.approx(
        sum(iou_matrix(a, a)[i, j].item() for i in range(5) for j in range(5) if i != j) / 20)


def test_tsne_map_is_seeded_fixed_and_handles_tiny_inputs():
    x = torch.randn(40, 30, generator=torch.Generator().manual_seed(0))
    new = torch.randn(5, 30, generator=torch.Generator().manual_seed(1))
    fitted = TsneMap(x, seed=1)
    assert torch.equal(fitted.points, TsneMap(x, seed=1).points) and fitted.points.shape == (40, 2)
    # a map rebuilt from stored coordinates places new vectors exactly as the fit it came from, and the
    # reference never moves
    stored = TsneMap(x, seed=1, coordinates=fitted.coordinates)
    assert torch.equal(stored.place(new), fitted.place(new)) and stored.place(new).shape == (5, 2)
    assert torch.equal(stored.points, fitted.points)
    assert TsneMap(x[:2]).points.shape == (2, 2) and TsneMap(x[:2]).place(new).shape == (5, 2)
    assert TsneMap(x[:4]).place(new[:0]).shape == (0, 2)


def test_coverage_on_constructed_masks():
    from pdiff.measure.similarity import similarity

    g = torch.Generator().manual_seed(0)
    originals = torch.rand(6, 300, generator=g) < 0.2
    copies = similarity({"originals": originals, "copies": originals.clone()})
    assert copies["copies"]["coverage"] == 1.0 and copies["copies"]["max_iou_mean"] == 1.0
    one = similarity({"originals": originals, "one": originals[:1].clone()})
    assert one["one"]["coverage"] == pytest.approx(1 / 6)  # one model can only cover the original it copies
    assert len(copies["originals"]["nearest_other_iou"]) == 6


def test_comparison_space_leaves_out_tensors_without_spread():
    from pdiff.core.params import comparison_space, flatten, norm_stats

    # a generated conv, a BatchNorm whose running statistics are frozen (no spread over the K), and a head
    layout = [("conv3.weight", (8, 4, 3, 3)), ("bn3.weight", (8,)), ("bn3.running_mean", (8,)),
              ("bn3.running_var", (8,)), ("linear.weight", (10, 8))]
    g = torch.Generator().manual_seed(0)
    stacked = {name: torch.randn(40, *shape, generator=g) for name, shape in layout}
    # stored as float16, like a deep collection's: their mean over the K is exact
    stacked["bn3.running_mean"] = torch.randn(8, generator=g).half().float().expand(40, 8)
    stacked["bn3.running_var"] = (torch.rand(8, generator=g) + 0.5).half().float().expand(40, 8)
    vectors = flatten(stacked, layout)
    mean, std = norm_stats(stacked, layout)
    space = comparison_space(vectors, mean, std, layout)
    assert space.shape[1] == vectors.shape[1] - 2 * 8  # bn3's running statistics are constant
    xy = TsneMap(space[:20], seed=0).points
    assert torch.isfinite(xy).all() and xy.abs().max() < 1000 and space.abs().max() < 100
