import copy

import pytest
import torch

from pdiff.app import plots
from pdiff.data.triggers import der
from pdiff.core.settings import DataSpec, DefenceSettings
from pdiff.data.datasets import Split
from pdiff.data.plan import RunData
from pdiff.studies.report import NOT_APPLICABLE, familiar_lines
from pdiff.studies.transfer import table_rows

from helpers import report, sources, with_recipe

QUICK = DefenceSettings(epochs=1, anp_iterations=20)  # the defences, short: their wiring is what is tested here




def test_report_has_every_key_with_lists_of_length_n(victim_report):
    r = victim_report
    for key in ("task", "target", "n", "seed", "layers", "generated", "originals", "baselines", "summary",
                "similarity", "tsne", "timings_s", "device"):
        assert key in r, key
    assert r["n"] == 7 and r["generated"]["nonfinite"] == 0
    for key in ("acc", "asr", "ra", "der"):
        assert len(r["generated"][key]) == 7
    for key in ("acc", "asr", "ra"):
        assert len(r["originals"][key]) == 8
    assert {"acc", "asr"} <= set(r["target"])
    assert set(r["baselines"]) == {"noise_0.01", "noise_0.05", "noise_0.15", "interpolation", "average", "gaussian",
                                   "clean-layers"}  # the control a backdoored target gets
    assert "needs at least 16 originals" in r["unavailable"]["average-16"]  # K = 8: said in its place
    assert len(r["similarity"]["max_iou_to_originals"]) == 7
    assert set(r["similarity"]["mean_iou"]) == {"oo", "gg", "og"}
    assert len(r["tsne"]["x"]) == len(r["tsne"]["source"]) == 7 + 8 + 4 * 7 + 1 + 7 + 1  # + clean-layers
    assert set(r["summary"]["generated"]) == {"best", "mean", "median", "min", "std"}
    assert set(r["timings_s"]) == {"sample", "evaluate", "tsne"}  # the t-SNE is the slow stage the app waits on


def test_der_follows_the_formula(victim_report):
    r = victim_report
    expected = der(r["target"]["acc"], r["target"]["asr"], r["generated"]["acc"], r["generated"]["asr"])
    assert r["generated"]["der"] == pytest.approx(expected)
    for value, acc, asr in zip(r["generated"]["der"], r["generated"]["acc"], r["generated"]["asr"]):
        by_hand = (max(0.0, r["target"]["asr"] - asr) / 100 - max(0.0, r["target"]["acc"] - acc) / 100 + 1) / 2
        assert value == pytest.approx(by_hand)


def test_originals_in_the_clean_target_match_the_collection(tiny_bundle, small_test):
    r, _ = report(tiny_bundle, "clean", n=3, sampler="ddim", steps=3, test=small_test, tsne=False)
    assert r["originals"]["acc"] == pytest.approx(tiny_bundle.meta["originals_acc"], abs=1e-6)
    assert r["backdoor"] == NOT_APPLICABLE and "asr" not in r["generated"] and "asr" not in r["target"]
    assert "average:" in familiar_lines(r)


def _broken(bundle, value):
    """A copy of the bundle whose decoder emits `value` (nan or inf) in every vector."""
    broken = copy.copy(bundle)
    broken.autoencoder = copy.deepcopy(bundle.autoencoder)
    with torch.no_grad():
        broken.autoencoder.decoder[-1].bias[0] = value
    return broken


def test_nonfinite_parameter_sets_are_counted_not_spliced(tiny_bundle, small_test):
    r, vectors = report(_broken(tiny_bundle, float("nan")), "clean", n=4, sampler="ddim", steps=3, test=small_test, tsne=False)
    assert r["generated"]["nonfinite"] == 4 and r["generated"]["acc"] == []
    assert r["summary"]["generated"]["mean"] is None and torch.isnan(vectors).any()


def test_report_with_the_defences_beside_the_generator(tiny_bundle, small_train, small_test):
    bundle = with_recipe(tiny_bundle, save_every=2)
    train = Split(small_train.images[:640], small_train.labels[:640], small_train.dataset)  # 5%: 32 images, too few
    with pytest.raises(ValueError, match="under one batch"):
        report(bundle, "victim", tsne=False, defences=QUICK, data=RunData(small_test, train, DataSpec(validation=0)))
    big = Split(small_train.images.repeat(3, 1, 1, 1), small_train.labels.repeat(3), small_train.dataset)  # 5%: 154
    data = RunData(small_test, big, DataSpec(validation=0, bn_images=0))
    r, _ = report(bundle, "victim", n=3, sampler="ddim", steps=3, tsne=False, data=data, defences=QUICK)
    clean, _ = report(bundle, "clean", n=3, sampler="ddim", steps=3, tsne=False, data=data, defences=QUICK)
    for name in ("finetune", "reinit"):  # the final checkpoint, with every backdoor metric and its clean data
        assert len(r["baselines"][name]["acc"]) == len(r["baselines"][name]["der"]) == 1
        assert r["baselines"][name]["clean_images"] == 154
    assert list(r["defences"]) == ["ft", "fp", "fst", "clp", "anp"] and r["defences"]["clp"]["clean_images"] == 0
    assert r["defences"]["anp"]["details"]["prune_rule"]["name"] == "budget-accuracy"
    assert r["defences"]["anp"]["details"]["iterations"] == 20 and r["defences"]["anp"]["clean_images"] == 154
    assert list(r["controls"]) == ["clean-model"]  # the clean model as it is; no donor: not a donor's bundle
    assert r["controls"]["clean-model"]["clean_resources"] == {"images": 0, "model_images": 1024, "checkpoints": 0}
    for m in r["defences"].values():  # whole models, measured by the same engine: DER against the victim as-is
        assert m["der"] == pytest.approx(der(r["target"]["acc"], r["target"]["asr"], m["acc"], m["asr"]))
    rows = {row[0]: row for row in table_rows(r["target"], sources(r))}
    assert {"finetune", "reinit", "ft", "fp", "clp", "anp", "clean-layers", "clean-model"} <= set(rows)
    assert rows["ft"][1:4] == [154, None, 0] and rows["clean-model"][1:4] == [0, 1024, 0]
    names = [t.name for t in plots.acc_vs_asr(r).data]
    assert {"ft (mean)", "fp (mean)", "clp (mean)", "clean-layers (mean)"} <= set(names)
    assert "finetune" not in clean["baselines"] and not clean["defences"] and not clean["controls"]  # no backdoor


def test_nonfinite_sets_on_a_victim_keep_every_key(tiny_bundle, small_test):
    r, _ = report(_broken(tiny_bundle, float("inf")), "victim", n=3, sampler="ddim", steps=3, test=small_test, tsne=False)
    assert r["generated"]["nonfinite"] == 3 and r["generated"]["finite_index"] == []
    assert r["generated"]["asr"] == [] and r["generated"]["der"] == []
    assert r["summary_asr"]["generated"]["mean"] is None and len(r["originals"]["asr"]) == 8


def test_a_victim_file_brings_its_own_trigger(tiny_bundle, tiny_collection, small_train, small_test, tmp_path):
    import shutil

    from pdiff.data.triggers import Trigger
    from pdiff.collection.victims import run_victim

    shutil.copy(tiny_collection / "base.safetensors", tmp_path)  # a victim of its own, beside its own copy of the base
    task = with_recipe(tiny_bundle, finetune_epochs=1).task
    meta = run_victim(task, Trigger(kind="blend", opacity=0.15), tmp_path, RunData(small_test, small_train,
                                                                                  DataSpec(validation=0)), 2,
                      kind="finetuned")
    r, _ = report(tiny_bundle, str(tmp_path / meta["file"]), n=3, sampler="ddim", steps=3, test=small_test,
                      tsne=False)
    assert r["target"]["trigger"]["kind"] == "blend" and r["target"]["trigger"]["opacity"] == 0.15
    assert r["target"]["trigger_source"] == "from the victim report beside the file"
    assert r["target"]["asr"] == pytest.approx(meta["asr"]) and r["target"]["acc"] == pytest.approx(meta["acc"])
