"""The data-fit controls of a few-shot head, on features with a known class structure: each one runs on the same
images, carries its ledger, and the stitch onto a donor whose channels are the target's in another order gives the
donor's own head's accuracy."""
import torch

from pdiff.measure.fewshot import Donor, FewShotData, accuracy_of, controls, public
from pdiff.models.heads import HeadForm, head_logits

FORM = HeadForm("bn3", "linear", channels=16, classes=4)


def _features(n_per_class, g, centres):
    labels = torch.arange(4).repeat_interleave(n_per_class)
    return centres[labels] + 0.8 * torch.randn(len(labels), 16, generator=g), labels


def _draw(g, shots, pool, test, scale=1.0):
    """Class centres, then (shots, labels), the pool's features, (test features, labels) around them."""
    centres = scale * torch.randn(4, 16, generator=g)
    return centres, _features(shots, g, centres), _features(pool, g, centres)[0], _features(test, g, centres)


def test_every_control_runs_on_the_same_images_with_its_ledger_and_beats_chance():
    centres, (shots, labels), pool, (test, test_labels) = _draw(torch.Generator().manual_seed(0), 5, 100, 200)
    head = {"bn3.weight": torch.ones(1, 16), "bn3.bias": torch.full((1, 16), 5.0),  # linear through the ReLU
            "linear.weight": centres[None], "linear.bias": -0.5 * centres.square().sum(1)[None]}
    donor = Donor("same", pool, head)
    out = controls(FewShotData(shots, labels, pool, 4), test, test_labels, [donor], FORM, seed=0)
    assert set(out) == {"nearest_mean", "nearest_mean_pool", "probe", "lda", "lda_pool", "self_trained", "stitch",
                        "stitch_ensemble", "matched_average"}
    for name, r in out.items():
        assert r["acc"] > 60, (name, r["acc"])
        assert r["logits"].shape == (800, 4)
        assert r["ledger"]["labelled"] in (0, 20) and r["ledger"]["unlabelled"] in (0, 400)
    assert out["probe"]["ledger"] == {"labelled": 20, "unlabelled": 0}
    assert out["stitch"]["ledger"] == {"labelled": 0, "unlabelled": 400}  # the stitch uses no label
    assert out["matched_average"]["ledger"] == {"labelled": 0, "unlabelled": 400}
    assert out["self_trained"]["ledger"] == {"labelled": 20, "unlabelled": 400}
    assert out["probe"]["info"]["cv_folds"] == 5 and out["probe"]["info"]["C"] > 0
    assert "logits" not in public(out)["probe"]


def test_the_stitch_onto_a_permuted_copy_gives_the_donors_own_accuracy():
    g = torch.Generator().manual_seed(1)
    _, (shots, labels), pool, (test, test_labels) = _draw(g, 3, 100, 100)
    perm = torch.randperm(16, generator=g)
    head = {"bn3.weight": torch.rand(1, 16, generator=g) + 0.5, "bn3.bias": torch.rand(1, 16, generator=g),
            "linear.weight": torch.randn(1, 4, 16, generator=g), "linear.bias": torch.randn(1, 4, generator=g)}
    out = controls(FewShotData(shots, labels, pool, 4), test, test_labels, [Donor("p", pool[:, perm], head)], FORM)
    own = accuracy_of(head_logits(test[:, perm], head, FORM)[0], test_labels)
    assert abs(out["stitch"]["acc"] - own) < 0.5 and out["stitch"]["info"]["accs"] == [out["stitch"]["acc"]]
    assert out["matched_average"]["acc"] == own  # the matching finds the permutation: the donor's own head


def test_one_shot_per_class_has_no_cross_validation_and_lda_falls_back_to_the_nearest_mean():
    _, (shots, labels), pool, (test, test_labels) = _draw(torch.Generator().manual_seed(2), 1, 50, 50, scale=3.0)
    out = controls(FewShotData(shots, labels, pool, 4), test, test_labels, [], FORM)
    assert out["probe"]["info"]["cv_folds"] == 0 and out["lda"]["acc"] == out["nearest_mean"]["acc"]
    assert "stitch" not in out
