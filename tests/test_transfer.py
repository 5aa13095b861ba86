import pytest
import torch

from pdiff.data.triggers import der
from pdiff.measure.sources import source
from pdiff.studies.transfer import FIRST_LOOK, METHODS, TABLE_HEADERS, check_methods, table, table_rows

from helpers import transfer, with_recipe


@pytest.fixture(scope="module")
def transfer_report(tiny_bundle, small_train, small_test):
    return transfer(with_recipe(tiny_bundle, save_every=3), "scratch", small_train, small_test, n=4, k=5, budget=0.25,
                    epochs=1, methods=("all",))


def test_every_method_returns_the_report_keys(transfer_report):
    r = transfer_report
    assert set(r["victim"]) >= {"acc", "asr", "ra"} and r["victim"]["trigger"]["name"] == "badnets"
    assert list(r["sources"]) == [m for m in METHODS if m != "donor"]  # no donor: the bundle is not a budget donor's
    assert r["clean_budget"]["images"] == 256 and r["defence_settings"]["epochs"] == 1 and r["defence_settings"]["k"] == 5
    assert r["defence_settings"]["lr"] == 0.01 and r["defence_settings"]["clp_u"] == 3.0
    # every control and defence: one model (a defence's final checkpoint)
    sizes = {"generated": 4, "originals": 8, "stitch+generated": 4}
    for name, m in r["sources"].items():
        assert (m["family"], m["kind"]) == (source(name).family, source(name).kind)  # filed by the registry
        for key in ("acc", "asr", "ra", "der"):
            assert len(m[key]) == sizes.get(name, 1), (name, key)
        assert set(m["summary"]) == {"acc", "asr", "ra", "der"}
        assert set(m["summary"]["der"]) == {"best", "mean", "median", "min", "std"}
        assert set(m["model_std"]) == {"acc", "asr", "ra", "der"}
        assert m["clean_images"] == (256 if source(name).budget else 0)
        ledger = m["clean_resources"]  # what the method used: budget images, the clean model's images, checkpoints
        assert ledger["images"] == m["clean_images"] and ledger["checkpoints"] == (8 if source(name).checkpoints else 0)
        assert (ledger["model_images"] is None) == (not (source(name).model or source(name).checkpoints))
        assert len(m["revived"]["asr"]) == (1 if name != "clp" else 1)  # the revival attack: the first model of each
    assert r["sources"]["generated"]["clean_data"] == "0 (+ clean checkpoints)"
    assert r["sources"]["clean-layers"]["clean_data"] == "0 (+ clean model)"
    assert r["sources"]["ft"]["clean_data"] == "256 images" and r["sources"]["clp"]["clean_data"] == "0"
    generated = r["sources"]["generated"]
    assert generated["model_std"]["acc"] == pytest.approx(generated["summary"]["acc"]["std"])
    assert "n" not in r and "sampler" not in r and r["settings"]["sampling"]["n"] == 4  # sampling recorded once
    assert r["sources"]["ft"]["model_std"]["acc"] is None  # one model per seed: no spread over models
    for name in ("finetune", "reinit"):  # the final checkpoint, and the run's mean as a labelled extra
        assert set(r["sources"][name]["run_mean"]) == {"acc", "asr", "ra", "der"}
    assert set(r["timings_s"]["per_method"]) == set(r["sources"]) and r["timings_s"]["per_method"]["ft"] > 0
    assert r["sources"]["clean-model"]["clean_resources"]["model_images"] == 1024  # the tiny collection's training split
    assert set(r["sources"]["fp"]["details"][0]) >= {"pruned_channels", "channels"}
    assert r["stitch"]["clean_images"] == 256 and r["sources"]["stitch+generated"]["clean_data"].startswith("256 images")
    text = table(r)
    assert all(name in text for name in r["sources"]) and "256 images" in text and "final checkpoint" in text
    assert "revived: ASR after 20 SGD steps" in text


def test_der_of_each_method_is_the_formula(transfer_report):
    v = transfer_report["victim"]
    for name, m in transfer_report["sources"].items():
        assert m["der"] == pytest.approx(der(v["acc"], v["asr"], m["acc"], m["asr"])), name
        for d, acc, asr in zip(m["der"], m["acc"], m["asr"]):
            assert d == pytest.approx((max(0.0, v["asr"] - asr) / 100 - max(0.0, v["acc"] - acc) / 100 + 1) / 2)


def test_the_table_rows_carry_the_ledger_spread_revival_and_time(transfer_report):
    rows = table_rows(transfer_report["victim"], transfer_report["sources"])
    assert all(len(row) == len(TABLE_HEADERS) for row in rows)
    by_name = {row[0]: row for row in rows}
    ft, gen = transfer_report["sources"]["ft"], transfer_report["sources"]["generated"]
    assert by_name["ft"][1:5] == [256, None, 0, 1] and by_name["ft"][12] == round(ft["seconds"][0], 1)
    assert by_name["generated"][1:4] == [0, 1024, 8]  # no budget images; the clean model's 1,024 and its 8 checkpoints
    assert by_name["generated"][10] == round(gen["model_std"]["der"], 3)
    assert by_name["ft"][11] == round(ft["revived"]["asr"][0], 2)


def test_bad_budget_and_methods_are_named(tiny_bundle, small_train, small_test):
    with pytest.raises(ValueError, match=r"clean budget 0.05 is 51 images, under one batch"):
        transfer(tiny_bundle, "scratch", small_train, small_test, n=1, seeds=[0], methods=("generated", "ft"), budget=0.05)
    with pytest.raises(ValueError, match=r"data.budget must be a share of the training split between 0 and 1, got 1.5"):
        transfer(tiny_bundle, "scratch", small_train, small_test, n=1, seeds=[0], methods=("fp",), budget=1.5)
    with pytest.raises(ValueError, match="the ft, fp methods train on clean data"):
        transfer(tiny_bundle, "scratch", None, small_test, n=1, seeds=[0], methods=("ft", "fp"))
    with pytest.raises(ValueError, match=r"unknown methods \['nope', 'FT'\]"):
        transfer(tiny_bundle, "scratch", None, small_test, n=1, seeds=[0], methods=("nope", "FT"))


def test_several_seeds_report_a_spread_and_the_originals_once(tiny_bundle, small_test):
    r = transfer(tiny_bundle, "finetuned", None, small_test, n=3, seeds=[0, 1], methods=("generated", "originals", "average", "clp"))
    assert r["victim"]["name"] == "finetuned-blended" and r["seeds"] == [0, 1]
    gen, orig = r["sources"]["generated"], r["sources"]["originals"]
    assert len(gen["acc"]) == 6 and len(gen["per_seed"]["acc"]) == 2
    assert len(orig["acc"]) == 8 and len(orig["per_seed"]["acc"]) == 1  # the same K sets whatever the seed
    assert len(r["sources"]["average"]["acc"]) == len(r["sources"]["clp"]["acc"]) == 1  # seed-free: measured once
    # the spread over models within each seed, beside the spread of the seeds' means
    stds = [torch.tensor(gen["der"][i:i + 3], dtype=torch.float64).std().item() for i in (0, 3)]
    assert gen["per_seed_model_std"]["der"] == pytest.approx(stds)
    assert gen["model_std"]["der"] == pytest.approx(sum(stds) / 2)
    means = torch.tensor(gen["per_seed"]["der"], dtype=torch.float64)
    assert gen["spread"]["der"]["mean"] == pytest.approx(means.mean().item())
    assert gen["spread"]["der"]["std"] == pytest.approx(means.std().item())
    assert gen["per_seed"]["acc"][0] == pytest.approx(sum(gen["acc"][:3]) / 3)
    assert "±" in table(r)
    with pytest.raises(ValueError, match="unknown methods"):
        transfer(tiny_bundle, "scratch", None, small_test, n=1, seeds=[0], methods=("nope",))


def test_the_default_methods_are_the_first_look_and_all_is_every_method():
    assert check_methods(()) == FIRST_LOOK and check_methods(("all",)) == METHODS
    assert "anp" not in FIRST_LOOK and {"fst", "fp", "probe", "stitch+generated"} <= set(FIRST_LOOK)


def test_a_failed_defence_is_marked_and_the_run_goes_on(tiny_bundle, small_train, small_test, capsys):
    r = transfer(tiny_bundle, "scratch", small_train, small_test, n=1, seeds=[0], methods=("generated", "anp"),
                 budget=0.25, anp_iterations=2, revived=0, anp_threshold=1.0)  # every mask is below 1 after a step
    err = capsys.readouterr().err
    assert "transfer: anp seed 0 done" in err and "min left" in err
    if r["sources"]["anp"].get("failed"):  # the threshold pruned every neuron: one line, the run went on
        assert "would prune all 224 neurons" in r["sources"]["anp"]["failed"][0] and r["sources"]["anp"]["acc"] == []
        assert "note: anp: threshold 1.0 would prune all 224 neurons" in err
    assert len(r["sources"]["generated"]["acc"]) == 1
