import copy

import pytest
import torch

from pdiff.app import plots
from pdiff.data.triggers import der
from pdiff.core.settings import DataSpec, DefenceSettings
from pdiff.data.datasets import Split
from pdiff.data.plan import RunData
from pdiff.measure.sources import of_family
from pdiff.studies.report import NOT_APPLICABLE, familiar_lines
from pdiff.studies.transfer import table_rows

from helpers import report, with_recipe

QUICK = DefenceSettings(epochs=1, anp_iterations=20)  # the defences, short: their wiring is what is tested here




def test_report_has_every_key_with_lists_of_length_n(victim_report):
    r = victim_report
    for key in ("task", "target", "settings", "chain_steps", "layers", "sources", "similarity", "tsne", "timings_s",
                "device"):
        assert key in r, key
    # sampling recorded once; every source in one block, filed by the registry's family
    assert not {"n", "seed", "sampler", "steps", "generated", "originals", "baselines", "controls", "defences",
                "summary"} & set(r)
    generated, originals = r["sources"]["generated"], r["sources"]["originals"]
    assert r["settings"]["sampling"]["n"] == 7 and generated["nonfinite"] == 0 and r["chain_steps"] == 5
    for key in ("acc", "asr", "ra", "der"):
        assert len(generated[key]) == 7
    for key in ("acc", "asr", "ra"):
        assert len(originals[key]) == 8
    assert {"acc", "asr"} <= set(r["target"])
    assert list(r["sources"]) == ["generated", "originals", "average", "clean-layers", "clean-model", "noise_0.01",
                                  "noise_0.05", "noise_0.15", "gaussian", "interpolation"]  # the registry's order
    assert {name: (e["family"], e["kind"]) for name, e in r["sources"].items() if e["family"] != "baseline"} == {
        "generated": ("generated", "layers"), "originals": ("control", "layers"), "average": ("control", "layers"),
        "clean-layers": ("control", "layers"), "clean-model": ("control", "whole")}  # the controls a victim gets
    assert all(set(e["summary"]) == {"acc", "asr", "ra", "der"} and "clean_resources" in e
               for e in r["sources"].values())
    assert "needs at least 16 originals" in r["unavailable"]["average-16"]  # K = 8: said in its place
    assert len(r["similarity"]["max_iou_to_originals"]) == 7
    assert set(r["similarity"]["mean_iou"]) == {"oo", "gg", "og"}
    assert len(r["tsne"]["x"]) == len(r["tsne"]["source"]) == 7 + 8 + 4 * 7 + 1 + 7 + 1  # + clean-layers
    assert set(generated["summary"]["acc"]) == {"best", "mean", "median", "min", "std"}
    assert generated["summary"]["der"]["mean"] == pytest.approx(sum(generated["der"]) / 7)
    assert set(r["timings_s"]) == {"sample", "evaluate", "tsne"}  # the t-SNE is the slow stage the app waits on


def test_der_follows_the_formula(victim_report):
    r, g = victim_report, victim_report["sources"]["generated"]
    expected = der(r["target"]["acc"], r["target"]["asr"], g["acc"], g["asr"])
    assert g["der"] == pytest.approx(expected)
    for value, acc, asr in zip(g["der"], g["acc"], g["asr"]):
        by_hand = (max(0.0, r["target"]["asr"] - asr) / 100 - max(0.0, r["target"]["acc"] - acc) / 100 + 1) / 2
        assert value == pytest.approx(by_hand)


def test_originals_in_the_clean_target_match_the_collection(tiny_bundle, small_test):
    r, _ = report(tiny_bundle, "clean", n=3, sampler="ddim", steps=3, test=small_test, tsne=False)
    assert r["sources"]["originals"]["acc"] == pytest.approx(tiny_bundle.info.originals_acc, abs=1e-6)
    assert r["backdoor"] == NOT_APPLICABLE and "asr" not in r["sources"]["generated"] and "asr" not in r["target"]
    assert "clean-layers" not in r["sources"] and "clean-model" not in r["sources"]  # no backdoor: no controls
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
    g = r["sources"]["generated"]
    assert g["nonfinite"] == 4 and g["acc"] == []
    assert g["summary"]["acc"]["mean"] is None and torch.isnan(vectors).any()


def test_report_with_the_defences_beside_the_generator(tiny_bundle, small_train, small_test):
    bundle = with_recipe(tiny_bundle, save_every=2)
    train = Split(small_train.images[:640], small_train.labels[:640], small_train.dataset)  # 5%: 32 images, too few
    with pytest.raises(ValueError, match="under one batch"):
        report(bundle, "victim", tsne=False, defences=QUICK, data=RunData(small_test, train, DataSpec(validation=0)))
    big = Split(small_train.images.repeat(3, 1, 1, 1), small_train.labels.repeat(3), small_train.dataset)  # 5%: 154
    data = RunData(small_test, big, DataSpec(validation=0, bn_images=0))
    r, _ = report(bundle, "victim", n=3, sampler="ddim", steps=3, tsne=False, data=data, defences=QUICK)
    clean, _ = report(bundle, "clean", n=3, sampler="ddim", steps=3, tsne=False, data=data, defences=QUICK)
    defences, controls = of_family(r["sources"], "defence"), of_family(r["sources"], "control")
    for name in ("finetune", "reinit"):  # the final checkpoint, with every backdoor metric and its clean data
        assert len(defences[name]["acc"]) == len(defences[name]["der"]) == 1 and defences[name]["kind"] == "layers"
        assert defences[name]["clean_images"] == 154
    assert list(defences) == ["finetune", "reinit", "ft", "fp", "fst", "clp", "anp"]
    assert defences["clp"]["clean_images"] == 0 and defences["anp"]["clean_resources"]["images"] == 154
    assert defences["anp"]["details"]["prune_rule"]["name"] == "budget-accuracy"
    assert defences["anp"]["details"]["iterations"] == 20 and defences["anp"]["clean_images"] == 154
    # the clean model as it is; no donor: not a donor's bundle
    assert [n for n, e in controls.items() if e["kind"] == "whole"] == ["clean-model"]
    assert controls["clean-model"]["clean_resources"] == {"images": 0, "model_images": 1024, "checkpoints": 0}
    for name in ("ft", "fp", "fst", "clp", "anp"):  # whole models, the same engine: DER against the victim as-is
        m = defences[name]
        assert m["der"] == pytest.approx(der(r["target"]["acc"], r["target"]["asr"], m["acc"], m["asr"]))
    rows = {row[0]: row for row in table_rows(r["target"], r["sources"])}
    assert {"finetune", "reinit", "ft", "fp", "clp", "anp", "clean-layers", "clean-model"} <= set(rows)
    assert rows["ft"][1:4] == [154, None, 0] and rows["clean-model"][1:4] == [0, 1024, 0]
    names = [t.name for t in plots.acc_vs_asr(r).data]
    assert {"ft (mean)", "fp (mean)", "clp (mean)", "clean-layers (mean)"} <= set(names)
    assert not of_family(clean["sources"], "defence") and "clean-model" not in clean["sources"]  # no backdoor


def test_nonfinite_sets_on_a_victim_keep_every_key(tiny_bundle, small_test):
    r, _ = report(_broken(tiny_bundle, float("inf")), "victim", n=3, sampler="ddim", steps=3, test=small_test, tsne=False)
    g = r["sources"]["generated"]
    assert g["nonfinite"] == 3 and g["finite_index"] == []
    assert g["asr"] == [] and g["der"] == []
    assert g["summary"]["asr"]["mean"] is None and len(r["sources"]["originals"]["asr"]) == 8


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
