"""A head generator as shipped: the equivariant generator (generator.equivariant: heads.json and its EMA denoiser's
safetensors) and `donors.json`, the training trunks it reads for a new trunk (the matched prior, the stitch
controls), each a model file named by its path relative to the folder, with its SHA-256. The trunks are not copied:
they are the collection's and the zoo's own files (checkpoints/fmnist-convnet-trunks/heads reads
checkpoints/fmnist-convnet-trunks/*.safetensors and checkpoints/fmnist-convnet-zoo/parts/trunk-T.safetensors).

A kit is named like a bundle: a shipped name (`fmnist-convnet-trunks`: checkpoints/<name>/heads) or a folder.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from pdiff.core.config import Task
from pdiff.core.files import sha256, write_json
from pdiff.core.paths import REPO, shipped
from pdiff.generator.equivariant import CONFIG_FILE, HeadGenerator

DONORS_FILE = "donors.json"
FORMAT, FORMAT_VERSION = "pdiff-head-donors", 1
KIT_FOLDER = "heads"  # checkpoints/<name>/heads
DEFAULT_KIT = "fmnist-convnet-trunks"


@dataclass
class HeadKit:
    """A head generator, the task its trunks belong to, and its training trunks: (name, whole-model state)."""
    model: HeadGenerator
    task: Task
    donors: list[tuple[str, dict[str, torch.Tensor]]]
    folder: Path

    @property
    def label(self) -> str:
        """The folder as a report names it: relative to the checkout when inside it (no absolute paths in files)."""
        folder = self.folder.resolve()
        return folder.relative_to(REPO).as_posix() if folder.is_relative_to(REPO) else str(self.folder)


def shipped_kits() -> dict[str, Path]:
    """Shipped kit name -> folder: every checkpoints/<name>/heads with a heads.json and a donors.json."""
    root = shipped("checkpoints")
    if root is None:
        return {}
    return {p.parent.name: p for p in sorted(root.glob(f"*/{KIT_FOLDER}"))
            if (p / CONFIG_FILE).is_file() and (p / DONORS_FILE).is_file()}


def find_kit(name: str | Path) -> Path:
    """The folder a kit name means: a shipped name, or a folder holding heads.json and donors.json."""
    kits = shipped_kits()
    if str(name) in kits:
        return kits[str(name)]
    folder = Path(name)
    if not ((folder / CONFIG_FILE).is_file() and (folder / DONORS_FILE).is_file()):
        raise ValueError(f"{name} is neither a shipped head generator ({', '.join(kits) or 'none here'}) nor a "
                         f"folder with {CONFIG_FILE} and {DONORS_FILE}")
    return folder


def save_kit(model: HeadGenerator, task: Task, donor_files: dict[str, Path], folder: str | Path) -> None:
    """Write the generator and donors.json (each donor's file relative to `folder`, and its SHA-256) into `folder`.
    `donor_files`: every training trunk of the generator (model.meta['trunks']), by name."""
    folder = Path(folder)
    missing = [n for n in model.meta.get("trunks", []) if n not in donor_files]
    if missing or not donor_files:
        raise ValueError(f"save_kit needs the model file of every training trunk; missing {missing or 'all'}")
    model.save(folder)
    donors = [{"name": n, "file": Path(os.path.relpath(Path(f).resolve(), folder.resolve())).as_posix(),
               "sha256": sha256(Path(f))} for n, f in donor_files.items()]
    write_json(folder / DONORS_FILE, {"format": FORMAT, "format_version": FORMAT_VERSION, "task": task.to_dict(),
                                      "donors": donors})


def load_kit(name: str | Path) -> HeadKit:
    """A kit by name or folder; every donor file is checked against its SHA-256 (one line if absent or changed)."""
    folder = find_kit(name)
    d = json.loads((folder / DONORS_FILE).read_text())
    if d.get("format") != FORMAT:
        raise ValueError(f"{folder / DONORS_FILE} is not a {FORMAT} file (format {d.get('format')!r})")
    donors = []
    for entry in d["donors"]:
        path = folder / entry["file"]
        if not path.is_file():
            raise ValueError(f"the head generator's training trunk {entry['name']} is missing: no file {path}")
        if sha256(path) != entry["sha256"]:
            raise ValueError(f"the head generator's training trunk {entry['name']} ({path}) is not the file it was "
                             "trained with (SHA-256 differs)")
        donors.append((entry["name"], load_file(path)))
    return HeadKit(HeadGenerator.load(folder), Task.from_dict(d["task"]), donors, folder)
