import subprocess
import sys

import pytest
import torch
from torch import nn

from pdiff.data.triggers import triggered_test_set
from pdiff.data.datasets import normalize
from pdiff.measure.engine import BatchNormEstimator, TargetEngine
from pdiff.models.staged import predict
from pdiff.core.splice import splice
from pdiff.measure.stitch import fit_stitch, splice_stage, stitched_engine
from pdiff.measure.targets import Target, resolve_target
from pdiff.models.loading import check_architecture
from pdiff.studies.transfer import STITCHED

from helpers import stitched, transfer


def _features(bundle, state, images):
    model = check_architecture(bundle.task, state)
    return predict(model, images.normalized(), 0, splice_stage(model, bundle.layout))


def test_a_trunk_stitched_to_itself_is_the_identity(tiny_bundle, small_train, small_test):
    base = Target("clean", tiny_bundle.base_state, None)
    feats = _features(tiny_bundle, base.state, small_train)
    stitch = fit_stitch(feats, feats)
    assert torch.allclose(stitch.weight, torch.eye(len(stitch.weight)), atol=2e-3)
    assert stitch.bias.abs().max() < 2e-3 * feats.abs().max()
    engine, info = stitched(tiny_bundle, base, small_test, small_train)
    plain = TargetEngine(tiny_bundle.task, tiny_bundle.layout, base, small_test)
    assert info["r2"] > 0.9999 and info["images"] == len(small_train.labels)
    assert torch.equal(engine.run(tiny_bundle.originals[:3])["wrong"], plain.run(tiny_bundle.originals[:3])["wrong"])


def test_a_stitch_undoes_a_channel_permutation_and_scale(tiny_bundle, small_train, small_test):
    g = torch.Generator().manual_seed(0)
    perm, scale = torch.randperm(128, generator=g), 0.5 + torch.rand(128, generator=g)
    victim = dict(tiny_bundle.base_state)
    # positive scales commute with the max pooling after conv3: the victim's features are scale * base[perm]
    victim["conv3.weight"] = tiny_bundle.base_state["conv3.weight"][perm] * scale[:, None, None, None]
    stitch = fit_stitch(_features(tiny_bundle, victim, small_train), _features(tiny_bundle, victim | {
        "conv3.weight": tiny_bundle.base_state["conv3.weight"]}, small_train))
    expected = torch.zeros(128, 128)
    expected[perm, torch.arange(128)] = 1 / scale
    assert torch.allclose(stitch.weight, expected, atol=2e-3)
    target = Target("permuted", victim, None)
    engine, _ = stitched(tiny_bundle, target, small_test, small_train)
    plain = TargetEngine(tiny_bundle.task, tiny_bundle.layout, Target("clean", tiny_bundle.base_state, None), small_test)
    assert torch.equal(engine.run(tiny_bundle.originals[:3])["wrong"], plain.run(tiny_bundle.originals[:3])["wrong"])


def test_features_of_another_spatial_size_cannot_be_stitched():
    with pytest.raises(ValueError, match=r"\(10, 4, 7, 7\) to \(10, 4, 14, 14\)"):
        fit_stitch(torch.randn(10, 4, 7, 7), torch.randn(10, 4, 14, 14))


def test_the_stitched_engine_equals_a_plain_forward_of_the_stitched_model(tiny_bundle, small_train, small_test):
    victim = resolve_target(tiny_bundle, "victim")
    plain = TargetEngine(tiny_bundle.task, tiny_bundle.layout, victim, small_test)
    engine, info = stitched_engine(plain, tiny_bundle.base_state, small_train)
    assert engine.as_is() == plain.as_is()  # DER is measured against the victim as it is, not the stitched one
    start, vectors = info["stage"], tiny_bundle.originals[[0, 5]]
    out = engine.run(vectors)
    trunk = check_architecture(tiny_bundle.task, victim.state)
    stitch = engine.feature_map.fn
    conv = nn.Conv2d(*stitch.weight.shape[::-1], 1)
    conv.weight.data, conv.bias.data = stitch.weight[:, :, None, None], stitch.bias
    images, _ = triggered_test_set(small_test.images, small_test.labels, victim.trigger)
    for i, vector in enumerate(vectors):
        tail = check_architecture(tiny_bundle.task, splice(tiny_bundle.base_state, vector, tiny_bundle.layout))
        model = nn.Sequential(*[m for _, m in trunk.stages()[:start]], conv, *[m for _, m in tail.stages()[start:]])
        with torch.no_grad():
            clean = model.eval()(small_test.normalized()).argmax(-1)
            trig = model(normalize(images, small_test.dataset)).argmax(-1)
        assert torch.equal(out["wrong"][i], clean != small_test.labels)
        assert out["asr"][i] == pytest.approx(100.0 * (trig == victim.trigger.target).double().mean().item())


def test_batchnorm_reestimation_sees_the_stitched_features(tiny_bundle, small_train):
    victim = resolve_target(tiny_bundle, "victim")
    engine, info = stitched(tiny_bundle, victim, small_train.subset(200), small_train)
    model = check_architecture(tiny_bundle.task, victim.state)
    bn = BatchNormEstimator(model, small_train.subset(200).normalized(), info["stage"], [], "cpu", engine.feature_map.fn)
    assert torch.equal(bn.features, engine.clean.features)


def test_transfer_reports_the_stitch_methods(tiny_bundle, small_train, small_test):
    r = transfer(tiny_bundle, "scratch", small_train, small_test, seeds=[0, 1], methods=("generated", *STITCHED),
                 budget=0.25)
    assert r["stitch"]["images"] == 256 and r["stitch"]["clean_images"] == 256
    assert r["timings_s"]["per_method"]["stitch+generated"] > 0
    assert len(r["sources"]["stitch+generated"]["acc"]) == 6
    # the stitch is refitted on every seed's budget: its own layers behind it are measured per seed too
    assert len(r["sources"]["stitch+clean-layers"]["acc"]) == 2 and len(r["stitch_per_seed"]) == 2
    v = r["victim"]
    for m in r["sources"].values():
        for d, acc, asr in zip(m["der"], m["acc"], m["asr"]):
            assert d == pytest.approx((max(0.0, v["asr"] - asr) / 100 - max(0.0, v["acc"] - acc) / 100 + 1) / 2)


def test_the_cli_refuses_a_clean_budget_under_one_batch_in_one_line(tmp_path):
    out = subprocess.run([sys.executable, "-m", "pdiff", "transfer", "--bundle", "checkpoints/fmnist-convnet/bundle",
                          "--methods", "stitch+generated", "--clean-budget", "0.001", "--train-subset", "20000",
                          "--test-subset", "100", "--json", str(tmp_path / "t.json")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and out.stderr.strip() == ("error: clean budget 0.001 is 20 images, under one batch "
                                                          "(128); raise it")
    assert not (tmp_path / "t.json").exists()


def test_a_stitch_on_a_model_that_runs_whole_is_refused_by_name(tiny_bundle):
    from torch import nn

    whole = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    with pytest.raises(ValueError, match="a stitch needs a staged model; Sequential runs whole"):
        splice_stage(whole, [("1.weight", (10, 784))])
    model = check_architecture(tiny_bundle.task, tiny_bundle.base_state)
    assert splice_stage(model, tiny_bundle.layout) == model.stage_of(tiny_bundle.names[0])


def test_shrink_quiets_a_channel_that_is_nearly_dormant_on_clean_data():
    g = torch.Generator().manual_seed(0)
    source = torch.randn(2000, 3, generator=g)
    source[:, 1] *= 1e-2  # nearly dormant on clean data, yet the target leans on it
    target = (source @ torch.tensor([[1.0, 100.0, 0.5], [0.5, 0.0, 1.0]]).T)
    plain, shrunk = fit_stitch(source, target), fit_stitch(source, target, shrink=1.0)
    assert plain.weight[0, 1] == pytest.approx(100.0, rel=1e-3)  # least squares follows it
    assert shrunk.weight[0, 1].abs() < 1.0  # the same penalty on every channel all but silences it
    assert shrunk.weight[1, 2] > 0.5  # a channel with the usual variance keeps most of its weight


def test_auto_shrink_is_the_largest_within_the_accuracy_drop(tiny_bundle, small_train):
    from pdiff.measure.stitch import SHRINK_GRID, choose_shrink

    victim = resolve_target(tiny_bundle, "scratch")
    source, target = _features(tiny_bundle, victim.state, small_train), _features(tiny_bundle, tiny_bundle.base_state,
                                                                                  small_train)
    base = check_architecture(tiny_bundle.task, tiny_bundle.base_state)
    start = splice_stage(base, tiny_bundle.layout)
    chosen, accs = choose_shrink(source, target, base, start, small_train.labels)
    assert set(accs) == set(SHRINK_GRID) and chosen in accs
    assert accs[chosen] >= accs[0.0] - 1.0
    assert all(accs[s] < accs[0.0] - 1.0 for s in accs if s > chosen)
    strict, _ = choose_shrink(source, target, base, start, small_train.labels, max_drop=1000.0)
    assert strict == max(SHRINK_GRID)  # any drop allowed: the largest value
    r = transfer(tiny_bundle, "scratch", small_train, small_train, n=2, methods=STITCHED, budget=0.25, shrink="auto")
    assert r["stitch"]["shrink"] in SHRINK_GRID and set(r["stitch"]["shrink_budget_acc"]) == set(map(str, SHRINK_GRID))


def test_the_cli_refuses_a_negative_shrink_in_one_line(tmp_path):
    out = subprocess.run([sys.executable, "-m", "pdiff", "transfer", "--bundle", "checkpoints/fmnist-convnet/bundle",
                          "--methods", "stitch+generated", "--stitch-shrink", "-1", "--json", str(tmp_path / "t.json")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "--stitch-shrink: must be at least 0, got -1" in out.stderr
    assert "Traceback" not in out.stderr and not (tmp_path / "t.json").exists()
