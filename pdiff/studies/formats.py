"""The shapes of the reports pdiff writes, and the one upgrade per format that reads older ones.

Every report carries `format` and `format_version` and the settings it ran with. Reports written before version 1
had neither; `upgrade` names their format from their keys and fills what can be derived, so the results tables read
old and new reports alike (`read`). Version 2 added the evaluate report's `condition`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TypedDict, get_type_hints

EVALUATE, TRANSFER, LOTO, TRUNKS = "pdiff-report", "pdiff-transfer", "pdiff-loto", "pdiff-trunks"
VERSION = 2


class EvaluateReport(TypedDict):
    """studies.report.run_report: generated sets beside the originals and baselines on one target."""
    format: str
    format_version: int
    settings: dict          # sampling, data, evaluation (core.settings)
    task: str
    bundle: str | None
    target: dict            # name, acc, trigger_source; asr, ra, trigger for a backdoored target
    backdoor: str           # "applicable", or why not
    n: int
    seed: int
    sampler: str
    steps: int
    layers: list
    generated: dict         # acc (asr, ra, der) per model, nonfinite, finite_index
    originals: dict
    baselines: dict         # source -> metric lists
    unavailable: dict
    summary: dict           # source -> best / mean / median / min / std of accuracy
    similarity: dict
    novelty: dict
    controls: dict          # whole clean models as they are (the clean model; a budget donor's donor)
    defences: dict
    tsne: dict
    timings_s: dict
    bn_statistics: str
    device: str
    test_size: int
    validation: dict | None
    condition: dict | None  # a conditional bundle: kind, asked, guidance (acc: the originals' top-q bar)


class TransferReport(TypedDict):
    """studies.transfer.run_transfer: every method on one backdoored victim, over seeds."""
    format: str
    format_version: int
    settings: dict          # sampling, data, transfer
    task: str
    victim: dict
    n: int
    seeds: list
    sampler: str
    layers: list
    clean_budget: dict
    defence_settings: dict
    methods: dict           # method -> metric lists, summary, per_seed, spread, model_std, clean data
    nonfinite: int
    device: str
    timings_s: dict


class LotoReport(TypedDict):
    """studies.loto.leave_one_trunk_out: a bundle trained without one trunk, on that trunk."""
    format: str
    format_version: int
    settings: dict
    task: str
    held_out_trunk: int
    trunk_acc: float
    n: int
    seed: int
    sampler: str
    trained_on_trunks: list
    trunk_mode: str | None


class TrunksReport(TypedDict):
    """studies.trunks.trunk_study: a trunk-conditional bundle on the trunks it held out, beside every control."""
    format: str
    format_version: int
    settings: dict
    task: str
    held_out_trunks: list
    trained_on_trunks: list
    probe_images: int
    guidance: float | None
    n: int
    seed: int
    sampler: str
    trunks: dict            # held-out trunk -> source -> accuracies and their summary
    summary_over_trunks: dict


SHAPES = {EVALUATE: EvaluateReport, TRANSFER: TransferReport, LOTO: LotoReport, TRUNKS: TrunksReport}


def kind_of(report: dict) -> str:
    """A report's format: its own field, or (before version 1) what its keys say."""
    if "format" in report:
        return report["format"]
    if "methods" in report and "victim" in report:
        return TRANSFER
    if "held_out_trunk" in report:
        return LOTO
    if "generated" in report and "originals" in report:
        return EVALUATE
    raise ValueError("not a pdiff report: no format, and none of an evaluate, transfer or loto report's keys")


def upgrade(report: dict) -> dict:
    """A report of any version as the current one (the dict given is not changed). 0 -> 1: the format named, and the
    settings rebuilt from the fields that recorded them. 1 -> 2: an evaluate report's `condition` (none before)."""
    kind = kind_of(report)
    version = report.get("format_version", 0)
    if version > VERSION:
        raise ValueError(f"a {kind} report of format_version {version}; this pdiff reads versions up to {VERSION}: "
                         "upgrade pdiff")
    if version == VERSION:
        return report
    if version == 0:
        seeds = report.get("seeds") or [report.get("seed", 0)]
        sampling = {"n": report.get("n"), "sampler": report.get("sampler"), "steps": report.get("steps"),
                    "seed": seeds[0]}
        # keys that came later, as the reports without them meant them: no defences run, no trunk mode recorded
        later = {EVALUATE: {"defences": {}, "controls": {}}, LOTO: {"trunk_mode": None}}.get(kind, {})
        report = {**later, **report, "format": kind, "settings": {"sampling": sampling}}
    if kind == EVALUATE:
        report = {"condition": None, **report}
    return {**report, "format_version": VERSION}


def check(report: dict) -> dict:
    """The report, if it has every key of its format's shape; else a ValueError naming the missing ones."""
    shape = SHAPES.get(report.get("format"))
    if shape is None:
        raise ValueError(f"unknown report format {report.get('format')!r}; known: {', '.join(SHAPES)}")
    missing = sorted(set(get_type_hints(shape)) - set(report))
    if missing:
        raise ValueError(f"a {report['format']} report lacks {', '.join(missing)}")
    return report


def read(path: str | Path) -> dict:
    """A report file of any version, upgraded to the current one."""
    return upgrade(json.loads(Path(path).read_text()))
