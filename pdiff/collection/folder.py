"""The collection format: K checkpoints of train_layer, the trunks they fit, the victims kept beside them.

A collection folder holds `manifest.json`, `checkpoints.safetensors` ({name: (K, *shape)}), the
base model (trunk 0), any derived trunks and any victims (`victim*.safetensors` with a report each).
`Collection.save` is its one writer and `Collection.load` its one reader; collect, train and
leave-one-trunk-out all go through them.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file

from pdiff.data.triggers import Trigger
from pdiff.core.config import Task
from pdiff.core.files import write_json, write_safetensors
from pdiff.core.params import Layout, flatten, layout_from_json, layout_to_json

BASE_FILE = "base.safetensors"
CHECKPOINTS_FILE = "checkpoints.safetensors"
MANIFEST_FILE = "manifest.json"
PLAIN_VICTIM = "scratch-badnets"  # the first victim pdiff shipped; it keeps the plain file names


def victim_name(kind: str, trigger: Trigger) -> str:
    """A victim's name: how it was made and with which trigger ('finetuned-blended'); a target class other
    than 0 and a poisoning rate other than 10 % are named too ('scratch-badnets-t3-5pct')."""
    name = f"{kind}-{trigger.name}"
    if trigger.target != 0:
        name += f"-t{trigger.target}"
    return name if trigger.rate == 0.1 else f"{name}-{100 * trigger.rate:g}pct"


def name_of_victim_file(weights: str) -> str | None:
    """The victim name behind a weights file name (victim_files inverted); None for another file."""
    if weights == victim_files(PLAIN_VICTIM)[0]:
        return PLAIN_VICTIM
    if weights.startswith("victim-") and weights.endswith(".safetensors"):
        return weights[len("victim-"):-len(".safetensors")]
    return None


def victim_files(name: str) -> tuple[str, str]:
    """(weights, report) file names of a named victim, in a collection and in a bundle."""
    if name == PLAIN_VICTIM:
        return "victim.safetensors", "victim.json"
    return f"victim-{name}.safetensors", f"victim-{name}.json"


def trunk_file(trunk: int) -> str:
    """Trunk 0 is the base itself; the others are stored beside it."""
    return BASE_FILE if trunk == 0 else f"trunk-{trunk}.safetensors"


def model_metadata(task: Task, kind: str) -> dict[str, str]:
    """The safetensors header of a whole model file written by pdiff."""
    return {"format": "pdiff-model", "task": task.name, "arch": task.arch, "kind": kind}


@dataclass
class Victim:
    state: dict[str, torch.Tensor]
    report: dict  # kind, trigger, acc / asr / ra, seed, timings (written by victims.run_victim)


@dataclass
class Collection:
    """K checkpoints of train_layer: {name: (K, *shape)} in storage dtype, each one's test accuracy,
    and the trunk (model state) each came from."""
    task: Task
    layout: Layout
    params: dict[str, torch.Tensor]
    accs: list[float]
    trunks: list[dict[str, torch.Tensor]]          # trunks[0] is the base
    trunk_of: list[int]
    trunk_accs: list[float] = field(default_factory=list)
    seed: int = 0
    info: dict = field(default_factory=dict)       # diversity, timings, device, sizes: what the manifest records
    victims: dict[str, Victim] = field(default_factory=dict)
    held_out_trunk: int | None = None      # the one trunk held out (leave-one-trunk-out)
    held_out_trunks: tuple[int, ...] = ()  # every trunk held out

    @property
    def base(self) -> dict[str, torch.Tensor]:
        return self.trunks[0]

    @property
    def k(self) -> int:
        return len(self.accs)

    def vectors(self) -> torch.Tensor:
        """(K, P) float32, layout order."""
        return flatten(self.params, self.layout).float()

    def manifest(self) -> dict:
        return {
            "format": "pdiff-collection", "format_version": 1, "task": self.task.to_dict(),
            "layout": layout_to_json(self.layout), "k": self.k, "seed": self.seed,
            "base_acc": self.trunk_accs[0] if self.trunk_accs else None, "accs": self.accs,
            "trunks": [{"id": i, "file": trunk_file(i), "acc": a} for i, a in enumerate(self.trunk_accs)],
            "trunk_of": self.trunk_of, **self.info,
        }

    def save(self, folder: str | Path) -> dict:
        """Write trunks, checkpoints and manifest (victims are written by `save_victim`); returns the manifest."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / MANIFEST_FILE).unlink(missing_ok=True)  # no old manifest may describe new files, even after a crash
        for trunk, state in enumerate(self.trunks):
            write_safetensors(folder / trunk_file(trunk), state,
                              model_metadata(self.task, "clean" if trunk == 0 else "trunk"))
        write_safetensors(folder / CHECKPOINTS_FILE, self.params, {"format": "pdiff-checkpoints", "task": self.task.name})
        manifest = self.manifest()
        write_json(folder / MANIFEST_FILE, manifest)
        return manifest

    @classmethod
    def load(cls, folder: str | Path, hold_out_trunk: int | list[int] | None = None, trunks: bool = True) -> "Collection":
        """The collection in `folder`; `hold_out_trunk` (one trunk or several) drops every checkpoint of those
        trunks (leave-one-trunk-out); `trunks=False` reads only the base of the trunk files."""
        folder = Path(folder)
        for name in (MANIFEST_FILE, CHECKPOINTS_FILE, BASE_FILE):
            if not (folder / name).is_file():
                raise FileNotFoundError(f"{folder} is not a collection: {name} is missing (run `python -m pdiff collect`)")
        m = json.loads((folder / MANIFEST_FILE).read_text())
        trunk_list = m.get("trunks") or [{"id": 0, "file": BASE_FILE, "acc": m["base_acc"]}]
        states = [load_file(folder / t["file"]) for t in (trunk_list if trunks else trunk_list[:1])]
        known = {"format", "format_version", "task", "layout", "k", "seed", "base_acc", "accs", "trunks", "trunk_of"}
        coll = cls(Task.from_dict(m["task"]), layout_from_json(m["layout"]), load_file(folder / CHECKPOINTS_FILE),
                   list(m["accs"]), states, m.get("trunk_of") or [0] * m["k"], [t["acc"] for t in trunk_list],
                   m["seed"], {k: v for k, v in m.items() if k not in known}, load_victims(folder))
        for trunk in [] if hold_out_trunk is None else [hold_out_trunk] if isinstance(hold_out_trunk, int) else hold_out_trunk:
            coll = coll.without_trunk(trunk)
        return coll

    def without_trunk(self, trunk: int) -> "Collection":
        """The same collection less every checkpoint of `trunk` (accuracies and trunk ids cut alike)."""
        known = sorted(set(self.trunk_of))
        if trunk not in known or len(known) < 2:
            raise ValueError(f"cannot hold out trunk {trunk}: the collection's trunks are {known}")
        keep = torch.tensor([t != trunk for t in self.trunk_of])
        return Collection(self.task, self.layout, {n: v[keep] for n, v in self.params.items()},
                          [a for a, k in zip(self.accs, keep) if k], self.trunks,
                          [t for t, k in zip(self.trunk_of, keep) if k], self.trunk_accs, self.seed, self.info,
                          self.victims, held_out_trunk=trunk if not self.held_out_trunks else None,
                          held_out_trunks=(*self.held_out_trunks, trunk))

    def rows_of_trunk(self, trunk: int) -> torch.Tensor:
        """(K_trunk, P) vectors of one trunk's checkpoints."""
        return self.vectors()[torch.tensor(self.trunk_of) == trunk]


def save_victim(folder: str | Path, victim: Victim, task: Task, name: str | None = None) -> None:
    """Write one victim's weights and report into a collection folder (report last: it names the weights), under
    `name` (default: its kind and trigger)."""
    name = name or victim_name(victim.report["kind"], Trigger.from_dict(victim.report["trigger"]))
    weights, report = victim_files(name)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / report).unlink(missing_ok=True)
    write_safetensors(folder / weights, victim.state, model_metadata(task, f"victim-{victim.report['kind']}"))
    write_json(folder / report, {**victim.report, "file": weights})


def load_victims(folder: Path) -> dict[str, Victim]:
    """Every victim whose report and weights are both in `folder`, by name."""
    out = {}
    for report_path in sorted(folder.glob("victim*.json")):
        try:
            report = json.loads(report_path.read_text())
        except ValueError:
            continue
        if report.get("format") != "pdiff-victim" or not isinstance(report.get("trigger"), dict):
            continue
        # the name its weights file was given (older names hold only the kinds), else today's name for it
        name = name_of_victim_file(str(report.get("file", ""))) or victim_name(
            report.get("kind", "scratch"), Trigger.from_dict(report["trigger"]))
        weights = folder / victim_files(name)[0]
        if weights.is_file():
            out[name] = Victim(load_file(weights), report)
    return out
