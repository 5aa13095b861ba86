"""The equivariant head generator: permuting a trunk's channels or classes permutes what it generates the same way;
the condition is built from the shots and the pool; a tiny run trains, samples, saves and loads."""
import pytest
import torch

from pdiff.generator.equivariant import (RANK, CondShape, EquivariantDenoiser, HeadGenConfig, HeadGenerator,
                                         HeadScale, TrunkExamples, condition, match_channels, matched_average, matched_prior,
                                         pack_heads, permute_channels, permute_heads, refined_means, train_heads,
                                         unpack_heads)
from pdiff.models.heads import HeadForm

FORM = HeadForm("bn3", "linear", channels=12, classes=4)
P = 2 * 12 + 4 * 12 + 4


def _shots(g, n_per_class=3):
    labels = torch.arange(FORM.classes).repeat_interleave(n_per_class)
    return torch.randn(len(labels), FORM.channels, generator=g), labels, torch.randn(50, FORM.channels, generator=g)


@pytest.mark.parametrize("refine,prior", [(False, False), (True, True)])
def test_permuting_channels_and_classes_permutes_the_noise_the_same_way(refine, prior):
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    cfg = HeadGenConfig(width=16, depth=2, refine=refine, prior="matched" if prior else "none", quality=prior)
    shape = CondShape.of(FORM, cfg)
    net = EquivariantDenoiser(FORM, cfg).eval()
    for p in net.parameters():  # the output layers start at PyTorch's init; make every path count
        p.data.add_(0.05 * torch.randn(p.shape, generator=g))
    x = torch.randn(3, P, generator=g)
    cond = torch.stack([condition(*_shots(g), shape, torch.randn(P + 12, generator=g) if prior else None)
                        for _ in range(3)])
    t = torch.tensor([5, 500, 900])
    pk, pc = torch.randperm(FORM.classes, generator=g), torch.randperm(FORM.channels, generator=g)
    with torch.no_grad():
        out = net(x, t, cond)
        moved = net(permute_heads(x, FORM, pk, pc), t, shape.permute(cond, pk, pc))
        null = net(x, t)
        null_moved = net(permute_heads(x, FORM, pk, pc), t)
    assert torch.allclose(moved, permute_heads(out, FORM, pk, pc), atol=1e-5)
    assert torch.allclose(null_moved, permute_heads(null, FORM, pk, pc), atol=1e-5)
    assert not torch.allclose(out, null, atol=1e-3)  # the condition is read


@pytest.mark.parametrize("refine", [False, True])
def test_the_condition_permutes_with_the_features_and_refuses_a_class_without_shots(refine):
    g = torch.Generator().manual_seed(1)
    shape = CondShape(FORM.classes, FORM.channels, refine=refine)
    shots, labels, pool = _shots(g, 2)
    pk, pc = torch.randperm(FORM.classes, generator=g), torch.randperm(FORM.channels, generator=g)
    a = condition(shots, labels, pool, shape)
    assert a.shape == (shape.dim,)
    # class i of the permuted trunk is old class pk[i]: relabel old class pk[i] as i
    b = condition(shots[:, pc], torch.argsort(pk)[labels], pool[:, pc], shape)
    moved = shape.unpack(shape.permute(a[None], pk, pc))
    for i, (x, y) in enumerate(zip(shape.unpack(b[None]), moved)):
        if i == 3:  # the correlation's eigenvectors, each up to its sign: compare mix @ mix.T
            assert x.shape == (1, 12, RANK)
            x, y = x @ x.transpose(1, 2), y @ y.transpose(1, 2)
        assert torch.allclose(x, y, atol=1e-5), i
    with pytest.raises(ValueError, match="every class needs a shot"):
        condition(shots[labels != 0], labels[labels != 0], pool, shape)


def test_refined_means_pull_the_shots_means_towards_the_pools_clusters():
    g = torch.Generator().manual_seed(5)
    centres = 4 * torch.randn(4, 12, generator=g)
    labels = torch.arange(4)
    shots = centres + torch.randn(4, 12, generator=g)  # one noisy shot per class
    pool_labels = torch.arange(4).repeat(50)
    pool = centres[pool_labels] + torch.randn(200, 12, generator=g)
    means, assigned = refined_means(shots, labels, pool, 4)
    assert (means - centres).norm() < (shots - centres).norm() / 2
    assert (assigned == pool_labels).float().mean() > 0.95


def test_matching_finds_a_permuted_copy_and_the_matched_average_is_in_the_trunks_order():
    g = torch.Generator().manual_seed(4)
    pool = torch.randn(300, 12, generator=g)
    perm = torch.randperm(12, generator=g)  # the donor's channel j is the trunk's channel perm[j]
    head = torch.randn(P, generator=g)
    assert torch.equal(perm[match_channels(pool, pool[:, perm])], torch.arange(12))
    pulled = matched_average(pool, [(pool[:, perm], head), (pool[:, perm], head)], FORM)
    assert torch.allclose(pulled, permute_channels(head[None], FORM, match_channels(pool, pool[:, perm]))[0])
    _, quality = matched_prior(pool, [(pool[:, perm], head)], FORM)
    assert torch.allclose(quality, torch.ones(12), atol=1e-4)  # a permuted copy matches perfectly
    g1, _, w1, _ = unpack_heads(pulled[None], FORM).values()
    g0, _, w0, _ = unpack_heads(head[None], FORM).values()
    assert torch.allclose(g1[0][perm], g0[0]) and torch.allclose(w1[0][:, perm], w0[0])


def test_heads_pack_unpack_and_scale_round_trip():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(5, P, generator=g)
    assert torch.equal(pack_heads(unpack_heads(x, FORM), FORM), x)
    scale = HeadScale.fit(x, FORM)
    assert torch.allclose(scale.restore(scale.normalise(x, FORM), FORM), x, atol=1e-5)


@pytest.mark.parametrize("prior", ["none", "matched"])
def test_a_tiny_run_trains_samples_saves_and_loads(tmp_path, prior):
    g = torch.Generator().manual_seed(3)
    pool = torch.randn(60, 12, generator=g)
    trunks = [TrunkExamples(torch.randn(40, 12, generator=g), torch.arange(4).repeat(10),
                            pool[:, torch.randperm(12, generator=g)], torch.randn(3, P, generator=g), str(i))
              for i in range(3)]
    cfg = HeadGenConfig(width=8, depth=1, steps=5, batch_size=4, shots=(1, 2), pool=30, pools_per_trunk=2,
                        timesteps=50, refine=True, prior=prior, quality=prior == "matched")
    model = train_heads(trunks, FORM, cfg, g)
    shots, labels, _ = _shots(g)
    donors = [(t.pool, t.lent) for t in trunks]
    asked = model.ask(shots, labels, pool, donors)
    heads = model.sample(asked, 3, torch.Generator().manual_seed(0), guidance=2.0, steps=5)
    assert [tuple(v.shape) for v in heads.values()] == [(3, 12), (3, 12), (3, 4, 12), (3, 4)]
    assert all(torch.isfinite(v).all() for v in heads.values())
    model.save(tmp_path)
    again = HeadGenerator.load(tmp_path).sample(asked, 3, torch.Generator().manual_seed(0), guidance=2.0, steps=5)
    assert all(torch.allclose(heads[n], again[n], atol=1e-6) for n in heads)  # the same seed, the same heads
    assert model.meta["heads"] == 9
    if prior == "matched":
        with pytest.raises(ValueError, match="give donors"):
            model.ask(shots, labels, pool)
