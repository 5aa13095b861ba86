"""The head study on tiny real pieces: three ConvNet trunks (two train a tiny head generator and lend their heads to
the stitch, one is held out), real Fashion-MNIST images; every source at every K with its family and ledger."""
import pytest
import torch

from pdiff.generator.equivariant import HeadGenConfig, train_heads
from pdiff.models.archs import ConvNet
from pdiff.models.heads import HeadForm
from pdiff.models.tasks import get_task
from pdiff.studies.heads import FeatureCache, HeadStudySpec, Trunk, generator_images, head_lines, head_study, \
    training_examples

FORM = HeadForm("bn3", "linear", 128, 10)


def _trunk(seed):
    torch.manual_seed(seed)
    state = ConvNet().state_dict()
    heads = torch.randn(2, 2 * 128 + 10 * 128 + 10, generator=torch.Generator().manual_seed(seed)) * 0.1
    return Trunk(f"trunk-{seed}", state, heads)


@pytest.mark.parametrize("prior", [pytest.param("none", marks=pytest.mark.slow), "matched"])
def test_the_study_reports_every_source_at_every_k_with_its_ledger(small_train, small_test, prior):
    train, test = small_train, small_test.subset(200)
    cache = FeatureCache(get_task("fmnist-convnet"), FORM)
    donors, held = [_trunk(1), _trunk(2)], [_trunk(3)]
    images = generator_images(train.labels, 10, 10, seed=0, validation=512)
    assert int(torch.cat(images).max()) < 512
    cfg = HeadGenConfig(width=8, depth=1, steps=2, batch_size=2, shots=(1, 2), pool=30, pools_per_trunk=1,
                        timesteps=20, refine=True, prior=prior)
    model = train_heads(training_examples(donors, cache, train, images), FORM, cfg, torch.Generator().manual_seed(0))
    spec = HeadStudySpec(ks=(1, 2), pool=60, n=2, steps=2, checks_at=2, validation=512)
    report = head_study(model, held, donors, (train, test), spec, cache, exclude=torch.cat(images))
    one = report["trunks"]["trunk-3"]["k"]
    controls = {"nearest_mean", "nearest_mean_pool", "probe", "lda", "lda_pool", "self_trained", "stitch",
                "stitch_ensemble", "matched_average"}
    assert set(one["1"]) == {"own_head", "own_checkpoints", "generated", "generator_mean"} | controls
    assert set(one["2"]) - set(one["1"]) == {"unconditional", "swap", "random", "retrieval", "retrieval_matched"}
    assert len(one["2"]["generated"]["acc"]) == 2 and one["2"]["generated"]["family"] == "generated"
    assert one["2"]["generated"]["ledger"] == {"labelled": 20, "unlabelled": 60}
    assert one["1"]["probe"]["ledger"] == {"labelled": 10, "unlabelled": 0}
    assert one["1"]["stitch"]["family"] == "control" and one["2"]["swap"]["family"] == "check"
    assert one["2"]["swap"]["info"]["trunk"] == "trunk-1"  # one held-out trunk: a donor's condition
    assert set(report["summary"]["2"]) == set(one["2"])
    assert report["draw"]["excluded_images"] == 200 and "trunk-3" in head_lines(report)
