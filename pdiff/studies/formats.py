"""The shapes of the reports pdiff writes, and the one upgrade per format that reads older ones.

Every report carries `format` and `format_version` and the settings it ran with. Reports written before version 1
had neither; `upgrade` names their format from their keys and fills what can be derived, so the results tables read
old and new reports alike (`read`). Version 2 added the evaluate report's `condition`. Version 3 files every source
of an evaluate or transfer report in one `sources` block keyed by name, each entry with its family and kind
(measure.sources), its metric lists and their summary, and its clean-resources ledger (readers filter by family:
sources.of_family); and records sampling once, in `settings.sampling` (the top-level n, seed, sampler and steps
are gone; an evaluate report's `chain_steps` is the denoiser calls the reverse chain made), its condition and
guidance as sampling used them (generator.conditions.resolve; None where no condition guided the sets).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TypedDict, get_type_hints

from pdiff.measure.sources import entry, ordered

EVALUATE, TRANSFER, LOTO, TRUNKS = "pdiff-report", "pdiff-transfer", "pdiff-loto", "pdiff-trunks"
VERSION = 3
SAMPLING_KEYS = ("n", "seed", "sampler", "steps")  # in settings.sampling since version 1; top-level before 3


class EvaluateReport(TypedDict):
    """studies.report.run_report: generated sets beside the originals and baselines on one target."""
    format: str
    format_version: int
    settings: dict          # sampling, data, evaluation (core.settings)
    task: str
    bundle: str | None
    target: dict            # name, acc, trigger_source; asr, ra, trigger for a backdoored target
    backdoor: str           # "applicable", or why not
    chain_steps: int        # denoiser calls of the reverse chain (DDIM's steps, or the bundle's T)
    layers: list
    # source -> family, kind, acc (asr, ra, der) per model, summary, clean_resources; generated: nonfinite and
    # finite_index; a defence: seconds, clean_images (and details, or failed)
    sources: dict
    unavailable: dict
    similarity: dict
    novelty: dict
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
    seeds: list
    layers: list
    clean_budget: dict
    defence_settings: dict
    # method -> family, kind, metric lists, summary, per_seed, spread, model_std, clean data and clean_resources
    sources: dict
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
    trained_on_trunks: list
    trunk_mode: str | None
    sources: dict           # trunk_as_is, generated, own_checkpoints, other_trunks_checkpoints (and stitch+...)


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
    """A report of any version as the current one (the dict given is not changed), one step per version: 0 -> 1 the
    format named and the settings rebuilt from the fields that recorded them; 1 -> 2 an evaluate report's
    `condition` (none before); 2 -> 3 one `sources` block, sampling recorded once."""
    kind = kind_of(report)
    version = report.get("format_version", 0)
    if version > VERSION:
        raise ValueError(f"a {kind} report of format_version {version}; this pdiff reads versions up to {VERSION}: "
                         "upgrade pdiff")
    for step in _STEPS[version:]:
        report = step(report, kind)
    return report if version == VERSION else {**report, "format_version": VERSION}


def _to_1(report: dict, kind: str) -> dict:
    seeds = report.get("seeds") or [report.get("seed", 0)]
    sampling = {"n": report.get("n"), "sampler": report.get("sampler"), "steps": report.get("steps"), "seed": seeds[0]}
    # keys that came later, as the reports without them meant them: no defences run, no trunk mode recorded
    later = {EVALUATE: {"defences": {}, "controls": {}}, LOTO: {"trunk_mode": None}}.get(kind, {})
    return {**later, **report, "format": kind, "settings": {"sampling": sampling}}


def _to_2(report: dict, kind: str) -> dict:
    return {"condition": None, **report} if kind == EVALUATE else report


def _to_3(report: dict, kind: str) -> dict:
    out = {k: v for k, v in report.items() if k not in SAMPLING_KEYS}
    if kind == EVALUATE:
        return _evaluate_sources(out, report)
    if kind == LOTO:  # its sources were top-level blocks: acc and its summary
        blocks = [k for k, v in report.items() if isinstance(v, dict) and {"acc", "summary"} <= set(v)]
        out = {k: v for k, v in out.items() if k not in blocks}
        out["sources"] = {name: entry(name, {"acc": report[name]["acc"]}, None) for name in blocks}
    if kind == TRANSFER:
        out.pop("methods")
        # its summary was computed from the same lists; a method that failed at every seed had none
        out["sources"] = {name: entry(name, {k: v for k, v in m.items() if k != "summary"}, m.get("clean_resources"))
                          for name, m in report["methods"].items()}
    return out


def _evaluate_sources(out: dict, old: dict) -> dict:
    """An evaluate report's generated, originals, baselines, controls and defences as one `sources` block (each
    source's summaries from its own lists, as version 3 computes them), its chain length kept as `chain_steps`."""
    for key in ("generated", "originals", "baselines", "controls", "defences", "summary", "summary_asr", "summary_der"):
        out.pop(key, None)
    found = {"generated": old["generated"], "originals": old["originals"], **old.get("baselines", {}),
             **old.get("controls", {}), **old.get("defences", {})}
    out["sources"] = {name: entry(name, {k: v for k, v in found[name].items() if k != "clean_resources"},
                                  found[name].get("clean_resources")) for name in ordered(found)}
    out["chain_steps"] = old.get("steps")
    condition, sampling = old.get("condition"), old["settings"].get("sampling", {})
    if condition and condition["asked"] != "none" and sampling.get("guidance") is None:
        # before version 3 only the condition block held the scale sampling used; settings.sampling holds it now
        out["settings"] = {**old["settings"], "sampling": {**sampling, "guidance": condition["guidance"]}}
    return out


_STEPS = (_to_1, _to_2, _to_3)


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
