"""Leave-one-trunk-out: a bundle trained without one trunk's checkpoints, spliced into that trunk.

The question multi-trunk collections answer: does a generator learned on some trunks make
layers that fit a trunk it never saw, as well as that trunk's own checkpoints do? The held-out
trunk as it is (its own values of the layers: one model) is the bar. A trunk that shares no
features with the others (`collect --trunk-mode scratch`) is reached through a stitch (stitch.py):
its features mapped onto the first training trunk's, whose tail the generated layers then run in.
"""
from __future__ import annotations

from pathlib import Path

import torch

from pdiff.core.params import own_vector
from pdiff.core.settings import SamplingSpec, settings_dict
from pdiff.data.plan import RunData
from pdiff.generator.bundle import Bundle
from pdiff.generator.sampling import draw
from pdiff.collection.folder import Collection
from pdiff.measure.assembly import ledger
from pdiff.measure.engine import TargetEngine, measure
from pdiff.measure.sources import entry
from pdiff.measure.stitch import stitched_engine
from pdiff.measure.targets import Target
from pdiff.studies import formats
from pdiff.models.loading import check_architecture

FORMAT, FORMAT_VERSION = formats.LOTO, formats.VERSION
SOURCES = ("trunk_as_is", "generated", "own_checkpoints", "other_trunks_checkpoints")


def leave_one_trunk_out(bundle: Bundle, collection: str | Path | Collection, data: RunData, sampling: SamplingSpec,
                        stitch: bool = False, device="cpu") -> dict:
    """Accuracy on the held-out trunk of: the trunk as it is, generated sets, that trunk's own checkpoints,
    the other trunks' ones; with `stitch`, also the generated sets and the first training trunk's own layers after
    a stitch from the held-out trunk onto that trunk, fitted on a clean budget drawn with the sampling seed."""
    held = bundle.info.held_out_trunk
    if held is None:
        raise ValueError("this bundle was trained on every trunk; train one with `train --hold-out-trunk I`")
    coll = collection if isinstance(collection, Collection) else Collection.load(collection)
    if held >= len(coll.trunks):
        raise ValueError(f"the collection has no trunk {held}; is it the collection the bundle was trained on?")

    trunk = Target(f"trunk {held}", check_architecture(bundle.task, coll.trunks[held]).state_dict(), None)
    engine = TargetEngine(bundle.task, bundle.layout, trunk, data.test, device=device)
    samples = draw(bundle, sampling, device, target_state=trunk.state)
    sets = dict(zip(SOURCES, (own_vector(trunk.state, bundle.layout), samples.vectors[samples.finite],
                              coll.rows_of_trunk(held), bundle.originals)))
    m = measure(engine, sets, reference=None)
    trained_on = sorted(set(bundle.info.trunk_of))
    report = {"format": FORMAT, "format_version": FORMAT_VERSION, "settings": settings_dict(sampling, data.spec),
              "task": bundle.task.name, "held_out_trunk": held, "trunk_acc": coll.trunk_accs[held],
              "trained_on_trunks": trained_on,
              "trunk_mode": coll.info.get("trunk_mode"),
              "sources": {name: entry(name, {"acc": m["metrics"][name]["acc"]}, ledger(bundle, name, 0))
                          for name in SOURCES}}
    if stitch:
        budget = data.budget(torch.Generator().manual_seed(sampling.seed))
        report.update(_through_stitch(bundle, coll, engine, trained_on[0], sets["generated"], budget,
                                      report["sources"]))
    return report


LOTO_STITCHED = ("stitch+generated", "stitch+clean-layers")  # (the victim's own tail means nothing here)


def _through_stitch(bundle: Bundle, coll: Collection, engine: TargetEngine, onto: int, generated: torch.Tensor,
                    budget, sources: dict) -> dict:
    """The generated sets and trunk `onto`'s own layers, after a stitch from the engine's trunk onto trunk `onto`,
    into `sources`; returns the stitch's own record."""
    stitched, info = stitched_engine(engine, coll.trunks[onto], budget)
    sets = dict(zip(LOTO_STITCHED, (generated, own_vector(coll.trunks[onto], bundle.layout))))
    m = measure(stitched, sets, reference=None)
    sources.update({name: entry(name, {"acc": m["metrics"][name]["acc"]}, ledger(bundle, name, len(budget.labels)))
                    for name in sets})
    return {"stitch": {**info, "onto_trunk": onto}}


def loto_lines(report: dict) -> str:
    lines = [f"held-out trunk {report['held_out_trunk']} (its own accuracy {report['trunk_acc']:.2f}"
             + (f", trunk mode {report['trunk_mode']}" if report.get("trunk_mode") else "")
             + f"); bundle trained on trunks {report['trained_on_trunks']}"]
    if "stitch" in report:
        s = report["stitch"]
        lines.append(f"stitch onto trunk {s['onto_trunk']}: {s['images']} clean images, R^2 {s['r2']:.3f}")
    for name, block in report["sources"].items():
        s = block["summary"]["acc"]
        lines.append(f"{name:<25} n={len(block['acc']):<4} best {s['best']:.2f}  mean {s['mean']:.2f}  "
                     f"median {s['median']:.2f}  min {s['min']:.2f}")
    return "\n".join(lines)
