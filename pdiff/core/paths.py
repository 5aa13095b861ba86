"""The repository's shipped folders (assets/, checkpoints/): beside the package in a source checkout (and on
the Space), absent from an installed copy, which takes its data and bundles by path or Hub id instead."""
from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]  # pdiff/core/paths.py -> the checkout
_INSTALLED = REPO.name in ("site-packages", "dist-packages")  # pip put the package there


def shipped(name: str) -> Path | None:
    """REPO/name in a checkout; None in an installed copy, where the package's parent folder is site-packages
    and an `assets` or `checkpoints` folder there would be some other package's."""
    folder = REPO / name
    return folder if not _INSTALLED and folder.is_dir() else None
