"""The repository's shipped folders (assets/, checkpoints/): beside the package in a source checkout, absent
from an installed copy, which takes its data and bundles by path or Hub id instead."""
from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def shipped(name: str) -> Path | None:
    """REPO/name in a checkout (the repository's pyproject.toml beside the package); None when installed,
    where the package's parent folder is site-packages and its `assets` would be someone else's."""
    folder = REPO / name
    return folder if (REPO / "pyproject.toml").is_file() and folder.is_dir() else None
