"""The equivariant head generator: permuting a trunk's channels or classes permutes what it generates the same way;
the condition is built from the shots and the pool; a tiny run trains and samples."""
import pytest
import torch

from pdiff.generator.equivariant import (EquivariantDenoiser, HeadGenConfig, HeadScale, TrunkExamples, condition,
                                         condition_dim, pack_heads, permute_condition, permute_heads, train_heads,
                                         unpack_heads)
from pdiff.models.heads import HeadForm

FORM = HeadForm("bn3", "linear", channels=12, classes=4)


def _condition(g, n_per_class=3):
    labels = torch.arange(FORM.classes).repeat_interleave(n_per_class)
    shots = torch.randn(len(labels), FORM.channels, generator=g)
    return condition(shots, labels, torch.randn(50, FORM.channels, generator=g), FORM.classes)


def test_permuting_channels_and_classes_permutes_the_noise_the_same_way():
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    net = EquivariantDenoiser(FORM, HeadGenConfig(width=16, depth=2)).eval()
    for p in net.parameters():  # the output layers start at PyTorch's init; make every path count
        p.data.add_(0.05 * torch.randn(p.shape, generator=g))
    x = torch.randn(3, 2 * 12 + 4 * 12 + 4, generator=g)
    cond = torch.stack([_condition(g) for _ in range(3)])
    t = torch.tensor([5, 500, 900])
    pk, pc = torch.randperm(FORM.classes, generator=g), torch.randperm(FORM.channels, generator=g)
    with torch.no_grad():
        out = net(x, t, cond)
        moved = net(permute_heads(x, FORM, pk, pc), t, permute_condition(cond, FORM.classes, FORM.channels, pk, pc))
        null = net(x, t)
        null_moved = net(permute_heads(x, FORM, pk, pc), t)
    assert torch.allclose(moved, permute_heads(out, FORM, pk, pc), atol=1e-5)
    assert torch.allclose(null_moved, permute_heads(null, FORM, pk, pc), atol=1e-5)
    assert not torch.allclose(out, null, atol=1e-3)  # the condition is read


def test_the_condition_permutes_with_the_features_and_refuses_a_class_without_shots():
    g = torch.Generator().manual_seed(1)
    labels = torch.arange(FORM.classes).repeat_interleave(2)
    shots, pool = torch.randn(len(labels), FORM.channels, generator=g), torch.randn(40, FORM.channels, generator=g)
    pk, pc = torch.randperm(FORM.classes, generator=g), torch.randperm(FORM.channels, generator=g)
    a = condition(shots, labels, pool, FORM.classes)
    assert a.shape == (condition_dim(FORM.classes, FORM.channels),)
    # class i of the permuted trunk is old class pk[i]: relabel old class pk[i] as i
    inverse = torch.argsort(pk)
    b = condition(shots[:, pc], inverse[labels], pool[:, pc], FORM.classes)
    assert torch.allclose(b, permute_condition(a[None], FORM.classes, FORM.channels, pk, pc)[0], atol=1e-5)
    with pytest.raises(ValueError, match="every class needs a shot"):
        condition(shots[labels != 0], labels[labels != 0], pool, FORM.classes)


def test_heads_pack_unpack_and_scale_round_trip():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(5, 2 * 12 + 4 * 12 + 4, generator=g)
    assert torch.equal(pack_heads(unpack_heads(x, FORM), FORM), x)
    scale = HeadScale.fit(x, FORM)
    assert torch.allclose(scale.restore(scale.normalise(x, FORM), FORM), x, atol=1e-5)


def test_a_tiny_run_trains_and_samples_finite_heads_of_the_right_shapes():
    g = torch.Generator().manual_seed(3)
    trunks = [TrunkExamples(torch.randn(40, 12, generator=g), torch.arange(4).repeat(10),
                            torch.randn(60, 12, generator=g), torch.randn(3, 2 * 12 + 4 * 12 + 4, generator=g), str(i))
              for i in range(2)]
    cfg = HeadGenConfig(width=8, depth=1, steps=5, batch_size=4, shots=(1, 2), pool=30, pools_per_trunk=2,
                        timesteps=50)
    model = train_heads(trunks, FORM, cfg, g)
    cond = _condition(g)
    heads = model.sample(cond, 3, torch.Generator().manual_seed(0), guidance=2.0, steps=5)
    assert [tuple(v.shape) for v in heads.values()] == [(3, 12), (3, 12), (3, 4, 12), (3, 4)]
    assert all(torch.isfinite(v).all() for v in heads.values())
    again = model.sample(cond, 3, torch.Generator().manual_seed(0), guidance=2.0, steps=5)
    assert all(torch.equal(heads[n], again[n]) for n in heads)  # the same seed, the same heads
    assert model.meta["heads"] == 6
