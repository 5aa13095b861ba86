"""Leave-one-trunk-out: a bundle trained without one trunk's checkpoints, spliced into that trunk.

The question multi-trunk collections answer: does a generator learned on some trunks make
layers that fit a trunk it never saw, as well as that trunk's own checkpoints do?
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from pdiff.bundle import Bundle
from pdiff.collect import CHECKPOINTS_FILE, MANIFEST_FILE, Split
from pdiff.evaluate import summary
from pdiff.params import flatten
from pdiff.report import Target, TargetEngine
from pdiff.sample import sample
from pdiff.splice import finite_rows
from pdiff.targets import load_target


def leave_one_trunk_out(bundle: Bundle, collection: str | Path, n: int, seed: int, test: Split,
                        sampler: str = "ddim", steps: int | None = 50, device="cpu") -> dict:
    """Accuracy on the held-out trunk of: generated sets, that trunk's own checkpoints, the other trunks' ones."""
    held = bundle.meta.get("held_out_trunk")
    if held is None:
        raise ValueError("this bundle was trained on every trunk; train one with `train --hold-out-trunk I`")
    collection = Path(collection)
    manifest = json.loads((collection / MANIFEST_FILE).read_text())
    trunk = next((t for t in manifest.get("trunks", []) if t["id"] == held), None)
    if trunk is None:
        raise ValueError(f"{collection} has no trunk {held}; is it the collection the bundle was trained on?")
    trunk_of = torch.tensor(manifest["trunk_of"])
    own = flatten(load_file(collection / CHECKPOINTS_FILE), bundle.layout).float()[trunk_of == held]

    model = load_target(bundle.task, collection / trunk["file"])
    engine = TargetEngine(bundle, Target(f"trunk {held}", model.state_dict(), None), bundle.names, test, device)
    vectors = sample(bundle, n, sampler, steps, torch.Generator().manual_seed(seed), device)
    accs = {"generated": engine.run(vectors[finite_rows(vectors)])["acc"],
            "own_checkpoints": engine.run(own)["acc"],
            "other_trunks_checkpoints": engine.run(bundle.originals)["acc"]}
    return {"task": bundle.task.name, "held_out_trunk": held, "trunk_acc": trunk["acc"], "n": n, "seed": seed,
            "sampler": sampler, "trained_on_trunks": sorted(set(bundle.meta.get("trunk_of", []))),
            **{name: {"acc": a, "summary": summary(a)} for name, a in accs.items()}}


def loto_lines(report: dict) -> str:
    lines = [f"held-out trunk {report['held_out_trunk']} (its own accuracy {report['trunk_acc']:.2f}); "
             f"bundle trained on trunks {report['trained_on_trunks']}"]
    for name in ("generated", "own_checkpoints", "other_trunks_checkpoints"):
        s = report[name]["summary"]
        lines.append(f"{name:<25} n={len(report[name]['acc']):<4} best {s['best']:.2f}  mean {s['mean']:.2f}  "
                     f"median {s['median']:.2f}  min {s['min']:.2f}")
    return "\n".join(lines)
