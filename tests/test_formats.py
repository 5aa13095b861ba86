"""Reports carry their format and version; older ones (before version 1) read through the one upgrade per format."""
import json
from pathlib import Path

import pytest

from pdiff.studies import formats

# three reports written before the formats had versions (the 60,000-image models' results/generator/default-seed0,
# results/transfer-v3/shallow-scratch-badnets and results/loto/scratch-seed0.json as of commit 5bacad2)
OLD = Path(__file__).resolve().parent / "data" / "reports-before-v1"


@pytest.mark.parametrize("path, kind", [(OLD / "evaluate.json", formats.EVALUATE),
                                        (OLD / "transfer.json", formats.TRANSFER),
                                        (OLD / "loto.json", formats.LOTO)])
def test_reports_written_before_version_1_read_as_version_1(path, kind):
    old = json.loads(path.read_text())
    assert "format" not in old  # written before the report formats had versions
    new = formats.check(formats.read(path))
    assert (new["format"], new["format_version"]) == (kind, formats.VERSION)
    assert new["settings"]["sampling"]["n"] == old["n"]
    assert {k: v for k, v in new.items() if k in old} == old  # nothing it had is changed
    if kind == formats.EVALUATE:
        assert new["defences"] == {}  # written before the defences were part of the report: none were run
        assert new["condition"] is None  # and before conditions: nothing was asked


def test_a_version_1_evaluate_report_gains_its_condition_and_nothing_else(victim_report):
    v1 = {k: v for k, v in victim_report.items() if k != "condition"}
    v1["format_version"] = 1
    new = formats.check(formats.upgrade(v1))
    assert new["condition"] is None and new["format_version"] == formats.VERSION
    unchanged = {k: v for k, v in v1.items() if k != "format_version"}
    assert {k: v for k, v in new.items() if k != "format_version"} == {**unchanged, "condition": None}


def test_todays_report_has_its_shape(victim_report):
    assert formats.check(victim_report) is victim_report and formats.upgrade(victim_report) is victim_report
    broken = {k: v for k, v in victim_report.items() if k not in ("tsne", "novelty")}
    with pytest.raises(ValueError, match="a pdiff-report report lacks novelty, tsne"):
        formats.check(broken)


def test_a_report_from_a_newer_pdiff_or_of_no_known_kind_is_refused():
    with pytest.raises(ValueError, match="format_version 9; this pdiff reads versions up to 2: upgrade pdiff"):
        formats.upgrade({"format": formats.TRANSFER, "format_version": 9})
    with pytest.raises(ValueError, match="not a pdiff report"):
        formats.upgrade({"hello": 1})
    with pytest.raises(ValueError, match="unknown report format 'pdiff-nope'"):
        formats.check({"format": "pdiff-nope"})
