"""Leave-one-trunk-out: a bundle trained without one trunk's checkpoints, spliced into that trunk.

The question multi-trunk collections answer: does a generator learned on some trunks make
layers that fit a trunk it never saw, as well as that trunk's own checkpoints do?
"""
from __future__ import annotations

from pathlib import Path

import torch

from pdiff.bundle import Bundle
from pdiff.collection import Collection
from pdiff.data import Split
from pdiff.evaluate import TargetEngine, measure
from pdiff.sample import sample_finite
from pdiff.targets import Target, check_architecture

SOURCES = ("generated", "own_checkpoints", "other_trunks_checkpoints")


def leave_one_trunk_out(bundle: Bundle, collection: str | Path | Collection, n: int, seed: int, test: Split,
                        sampler: str = "ddim", steps: int | None = 50, device="cpu") -> dict:
    """Accuracy on the held-out trunk of: generated sets, that trunk's own checkpoints, the other trunks' ones."""
    held = bundle.meta.get("held_out_trunk")
    if held is None:
        raise ValueError("this bundle was trained on every trunk; train one with `train --hold-out-trunk I`")
    coll = collection if isinstance(collection, Collection) else Collection.load(collection)
    if held >= len(coll.trunks):
        raise ValueError(f"the collection has no trunk {held}; is it the collection the bundle was trained on?")

    trunk = Target(f"trunk {held}", check_architecture(bundle.task, coll.trunks[held]).state_dict(), None)
    engine = TargetEngine(bundle.task, bundle.layout, trunk, test, device=device)
    vectors, finite = sample_finite(bundle, n, sampler, steps, torch.Generator().manual_seed(seed), device)
    sets = dict(zip(SOURCES, (vectors[finite], coll.rows_of_trunk(held), bundle.originals)))
    m = measure(engine, sets, reference=None)
    return {"task": bundle.task.name, "held_out_trunk": held, "trunk_acc": coll.trunk_accs[held], "n": n, "seed": seed,
            "sampler": sampler, "trained_on_trunks": sorted(set(bundle.meta.get("trunk_of", []))),
            **{name: {"acc": m["metrics"][name]["acc"], "summary": m["summary"][name]["acc"]} for name in SOURCES}}


def loto_lines(report: dict) -> str:
    lines = [f"held-out trunk {report['held_out_trunk']} (its own accuracy {report['trunk_acc']:.2f}); "
             f"bundle trained on trunks {report['trained_on_trunks']}"]
    for name in SOURCES:
        s = report[name]["summary"]
        lines.append(f"{name:<25} n={len(report[name]['acc']):<4} best {s['best']:.2f}  mean {s['mean']:.2f}  "
                     f"median {s['median']:.2f}  min {s['min']:.2f}")
    return "\n".join(lines)
