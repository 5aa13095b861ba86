"""One way to name a bundle, for the CLI, the API and the app alike: a shipped name (`fmnist-convnet`), a
shipped folder or its `bundle/` (`checkpoints/fmnist-convnet`), any folder holding a bundle.json (or a
`bundle/` that does), or a Hugging Face Hub repo id (`owner/name`).
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

from pdiff.core.paths import shipped
from pdiff.generator.bundle import BUNDLE_JSON, Bundle, BundleError
from pdiff.generator.hub import fetch_bundle

CHECKPOINTS = shipped("checkpoints")  # None in an installed copy: it has no shipped bundles
# owner/name as the Hub spells it
REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def shipped_bundles() -> dict[str, Path]:
    """Shipped bundle name -> folder: every checkpoints/<name>/bundle with a bundle.json."""
    if CHECKPOINTS is None:
        return {}
    return {p.parent.name: p for p in sorted(CHECKPOINTS.glob("*/bundle")) if (p / BUNDLE_JSON).is_file()}


def _bundle_in(folder: Path) -> Path | None:
    """The folder itself when it holds a bundle.json, else its bundle/ when that does (a collection folder)."""
    for candidate in (folder, folder / "bundle"):
        if (candidate / BUNDLE_JSON).is_file():
            return candidate
    return None


def find_bundle(name: str | Path, roots: list[Path] | None = None) -> Path | str:
    """The local bundle folder (a Path) or the Hub repo id (a str) that `name` means.

    `roots` (the app's allow-list): local folders count only under one of them, after resolving `..` and
    symlinks, and every refusal is the same message whether the path exists or not."""
    text = str(name or "").strip()
    if not text:
        raise BundleError("choose a bundle")
    shipped_names = shipped_bundles()
    if text in shipped_names:
        return shipped_names[text]
    try:
        path = Path(text).resolve()
        allowed = roots is None or any(path.is_relative_to(root) for root in roots)
        found = _bundle_in(path) if allowed and path.is_dir() else None
    except (OSError, ValueError, RuntimeError):  # unreadable, a NUL byte, a symlink loop
        path, allowed, found = None, False, None
    if found is not None:
        return found
    if REPO_ID.fullmatch(text) and ".." not in text and not (roots is None and path is not None and path.exists()):
        return text
    if roots is not None:
        raise BundleError(f"no shipped bundle or allowed bundle folder named {text[:200]!r}")
    if path is not None and path.exists():
        raise BundleError(f"{text} is not a bundle: no {BUNDLE_JSON} in it or in its bundle/ folder")
    known = ", ".join(shipped_names) or "none in an installed copy"
    raise BundleError(f"no bundle {text!r}: give a shipped name ({known}), a bundle folder or a Hub repo id "
                      "(owner/name)")


def load_bundle(name: str | Path, device: str | torch.device = "cpu", roots: list[Path] | None = None) -> Bundle:
    """The bundle `name` means (see find_bundle), loaded; a Hub id is fetched first (generator.hub)."""
    found = find_bundle(name, roots)
    return Bundle.load(found if isinstance(found, Path) else fetch_bundle(found), device)
