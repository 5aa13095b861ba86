"""Reports carry their format and version; older ones (before version 1) read through the one upgrade per format."""
import json
from pathlib import Path

import pytest

from pdiff.measure.sources import of_family, ordered, source
from pdiff.studies import formats

# three reports written before the formats had versions (the 60,000-image models' results/generator/default-seed0,
# results/transfer-v3/shallow-scratch-badnets and results/loto/scratch-seed0.json as of commit 5bacad2)
OLD = Path(__file__).resolve().parent / "data" / "reports-before-v1"


SECTIONS = ("generated", "originals", "baselines", "controls", "defences")  # an evaluate report's, before version 3
ROOT = Path(__file__).resolve().parent.parent
# version 2: the shipped example on the victim as of commit be48f2a, an acc=best run on the clean model
V2 = {"victim": Path(__file__).resolve().parent / "data" / "reports-v2" / "evaluate-victim.json",
      "clean": ROOT / "results" / "conditions" / "acc-best-seed0.json"}


def _old_blocks(old: dict) -> dict:
    """Every source block an evaluate report of version 2 or before held, by name; a transfer report's methods."""
    if "methods" in old:
        return old["methods"]
    if "held_out_trunk" in old:  # a loto report: each block its accuracies and their summary
        return {k: {"acc": v["acc"]} for k, v in old.items() if isinstance(v, dict) and "summary" in v}
    return {"generated": old["generated"], "originals": old["originals"], **old.get("baselines", {}),
            **old.get("controls", {}), **old.get("defences", {})}


def _same_sources(new: dict, old: dict) -> None:
    """Every block the old report had is its source's entry in `sources`, filed by the registry, nothing it had
    changed; an evaluate report's old accuracy summaries are the entries' own."""
    blocks = _old_blocks(old)
    in_place = "methods" in old or "held_out_trunk" in old  # a transfer or loto report keeps its order
    assert list(new["sources"]) == (list(blocks) if in_place else ordered(blocks))
    for name, block in blocks.items():
        e = new["sources"][name]
        assert (e["family"], e["kind"]) == (source(name).family, source(name).kind)
        assert {k: v for k, v in e.items() if k in block} == block
        if "held_out_trunk" in old:
            assert e["summary"]["acc"] == pytest.approx(old[name]["summary"])
        if "summary" in old and name in old["summary"]:
            assert e["summary"]["acc"] == pytest.approx(old["summary"][name])
            if "summary_der" in old:
                assert e["summary"]["der"] == pytest.approx(old["summary_der"][name])


@pytest.mark.parametrize("path, kind", [(OLD / "evaluate.json", formats.EVALUATE),
                                        (OLD / "transfer.json", formats.TRANSFER),
                                        (OLD / "loto.json", formats.LOTO)])
def test_reports_written_before_version_1_read_as_the_current_version(path, kind):
    old = json.loads(path.read_text())
    assert "format" not in old  # written before the report formats had versions
    new = formats.check(formats.read(path))
    assert (new["format"], new["format_version"]) == (kind, formats.VERSION)
    assert new["settings"]["sampling"] == {"n": old["n"], "sampler": old["sampler"], "steps": old.get("steps"),
                                           "seed": old.get("seed", (old.get("seeds") or [None])[0])}
    gone = {*formats.SAMPLING_KEYS, *SECTIONS, "methods", "summary", "summary_asr", "summary_der",
            "trunk_as_is", "own_checkpoints", "other_trunks_checkpoints", "generated", "stitch+generated",
            "stitch+clean-layers"}  # a loto report's blocks
    assert {k: v for k, v in new.items() if k in old} == {k: v for k, v in old.items() if k not in gone}
    _same_sources(new, old)
    if kind == formats.EVALUATE:
        # written before the defences and conditions were part of the report: none were run, nothing was asked
        assert not of_family(new["sources"], "defence") and new["condition"] is None
        assert new["chain_steps"] == old["steps"]


@pytest.mark.parametrize("target", ["clean", "victim"])
def test_a_version_2_evaluate_report_reads_as_one_sources_block(target):
    old = json.loads(V2[target].read_text())
    assert old["format_version"] == 2
    new = formats.check(formats.upgrade(old))
    assert new["format_version"] == formats.VERSION and new["chain_steps"] == old["steps"]
    sampling = {**old["settings"]["sampling"], "guidance": old["condition"]["guidance"]}  # the scale sampling used
    assert new["settings"] == {**old["settings"], "sampling": sampling} and sampling["n"] == old["n"]
    assert not {*formats.SAMPLING_KEYS, *SECTIONS, "summary", "summary_asr", "summary_der"} & set(new)
    _same_sources(new, old)
    if target == "victim":  # a backdoored target's controls and defences, filed by family
        assert {"clean-layers", "clean-model"} <= set(of_family(new["sources"], "control"))
        assert all("clean_resources" in e for e in new["sources"].values())


def test_a_version_2_transfer_report_reads_as_one_sources_block():
    path = ROOT / "results" / "transfer" / "scratch-badnets.json"
    old = json.loads(path.read_text())
    new = formats.check(formats.read(path))
    assert "methods" not in new and "n" not in new and new["seeds"] == old["seeds"]
    _same_sources(new, old)
    for metric, summary in old["methods"]["generated"]["summary"].items():  # recomputed from the same lists
        assert new["sources"]["generated"]["summary"][metric] == pytest.approx(summary)


def test_todays_report_has_its_shape(victim_report):
    assert formats.check(victim_report) is victim_report and formats.upgrade(victim_report) is victim_report
    broken = {k: v for k, v in victim_report.items() if k not in ("tsne", "novelty")}
    with pytest.raises(ValueError, match="a pdiff-report report lacks novelty, tsne"):
        formats.check(broken)


def test_a_report_from_a_newer_pdiff_or_of_no_known_kind_is_refused():
    with pytest.raises(ValueError, match="format_version 9; this pdiff reads versions up to 3: upgrade pdiff"):
        formats.upgrade({"format": formats.TRANSFER, "format_version": 9})
    with pytest.raises(ValueError, match="not a pdiff report"):
        formats.upgrade({"hello": 1})
    with pytest.raises(ValueError, match="unknown report format 'pdiff-nope'"):
        formats.check({"format": "pdiff-nope"})
