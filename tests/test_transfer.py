import pytest
import torch

from pdiff.baselines import _reinit_
from pdiff.transfer import METHODS, run_transfer, table
from pdiff.targets import check_architecture

from helpers import with_recipe


@pytest.fixture(scope="module")
def transfer_report(tiny_bundle, small_train, small_test):
    return run_transfer(with_recipe(tiny_bundle, save_every=3), "scratch", n=4, seeds=0, train=small_train,
                        test=small_test, sampler="ddim", steps=3, k_defence=5, clean_budget=0.25)


def test_every_method_returns_the_report_keys(transfer_report):
    r = transfer_report
    assert set(r["victim"]) >= {"acc", "asr", "ra"} and r["victim"]["trigger"]["kind"] == "badnets"
    assert list(r["methods"]) == list(METHODS)
    sizes = {"generated": 4, "originals": 8, "finetune": 5, "reinit": 5, "stitch+generated": 4, "stitch+clean-layers": 1}
    for name, m in r["methods"].items():
        for key in ("acc", "asr", "ra", "der"):
            assert len(m[key]) == sizes[name], (name, key)
        assert set(m["summary"]) == {"acc", "asr", "ra", "der"}
        assert set(m["summary"]["der"]) == {"best", "mean", "median", "min", "std"}
    assert "finetune" in table(r) and "reinit" in table(r)


def test_der_of_each_method_is_the_formula(transfer_report):
    v = transfer_report["victim"]
    for m in transfer_report["methods"].values():
        for d, acc, asr in zip(m["der"], m["acc"], m["asr"]):
            assert d == pytest.approx((max(0.0, v["asr"] - asr) / 100 - max(0.0, v["acc"] - acc) / 100 + 1) / 2)


def test_reinit_touches_only_the_named_parameters(tiny_bundle):
    model = check_architecture(tiny_bundle.task, tiny_bundle.victim_state)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _reinit_(model, tiny_bundle.names, torch.Generator().manual_seed(0))
    after = model.state_dict()
    for k, v in before.items():
        if k in tiny_bundle.names:
            assert not torch.equal(after[k], v), k
        else:  # the trunk and every BatchNorm running statistic stay the victim's
            assert torch.equal(after[k], v), k
    assert torch.equal(after["bn3.weight"], torch.ones(128)) and torch.equal(after["bn3.bias"], torch.zeros(128))


def test_several_seeds_report_a_spread_and_the_originals_once(tiny_bundle, small_test):
    r = run_transfer(tiny_bundle, "finetuned", n=3, seeds=[0, 1], train=None, test=small_test, sampler="ddim",
                     steps=3, methods=("generated", "originals"))
    assert r["victim"]["name"] == "finetuned-blended" and r["seeds"] == [0, 1]
    gen, orig = r["methods"]["generated"], r["methods"]["originals"]
    assert len(gen["acc"]) == 6 and len(gen["per_seed"]["acc"]) == 2
    assert len(orig["acc"]) == 8 and len(orig["per_seed"]["acc"]) == 1  # the same K sets whatever the seed
    means = torch.tensor(gen["per_seed"]["der"], dtype=torch.float64)
    assert gen["spread"]["der"]["mean"] == pytest.approx(means.mean().item())
    assert gen["spread"]["der"]["std"] == pytest.approx(means.std().item())
    assert gen["per_seed"]["acc"][0] == pytest.approx(sum(gen["acc"][:3]) / 3)
    assert "±" in table(r)
    with pytest.raises(ValueError, match="unknown methods"):
        run_transfer(tiny_bundle, "scratch", n=1, seeds=[0], train=None, test=small_test, methods=("nope",))
