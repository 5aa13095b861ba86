"""Which bundles the app may load: a shipped name, a folder under an allowed root, or a Hub repo id.

The app's bundle box is typed by strangers, so local folders are limited to the shipped checkpoints/
and the roots named in PDIFF_BUNDLE_ROOTS (separated like PATH), and every refused path gets the same
message whether it exists or not. The CLI does not use this: it loads any folder it is given.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from pdiff.bundle import BUNDLE_JSON, BundleError
from pdiff.paths import shipped

CHECKPOINTS = shipped("checkpoints")  # None in an installed copy: it has no shipped bundles
ROOTS_ENV = "PDIFF_BUNDLE_ROOTS"
# owner/name as the Hub spells it; a value of this shape is never looked up on the local disk
REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def shipped_bundles() -> dict[str, Path]:
    """Shipped bundle name -> folder: every checkpoints/<name>/bundle with a bundle.json."""
    if CHECKPOINTS is None:
        return {}
    return {p.parent.name: p for p in sorted(CHECKPOINTS.glob("*/bundle")) if (p / BUNDLE_JSON).is_file()}


def allowed_roots() -> list[Path]:
    """checkpoints/ and the folders in PDIFF_BUNDLE_ROOTS, symlinks resolved."""
    extra = [Path(p) for p in os.environ.get(ROOTS_ENV, "").split(os.pathsep) if p.strip()]
    return [root.resolve() for root in ([CHECKPOINTS] if CHECKPOINTS else []) + extra]


def app_source(text: str, shipped: dict[str, Path], roots: list[Path]) -> Path | str:
    """The local bundle folder (a Path) or the Hub repo id (a str) that the app may load for `text`.

    A shipped name, an owner/name repo id, or a path (absolute, or relative to the working folder) that
    after resolving `..` and symlinks lies under one of `roots` and holds a bundle.json. Anything else
    raises BundleError with one message that does not tell whether the path exists.
    """
    text = (text or "").strip()
    if not text:
        raise BundleError("choose a bundle")
    if text in shipped:
        return shipped[text]
    if REPO_ID.fullmatch(text) and ".." not in text:
        return text
    refused = BundleError(f"no shipped bundle or allowed bundle folder named {text[:200]!r}")
    try:
        path = Path(text).resolve()
        if any(path.is_relative_to(root) for root in roots) and (path / BUNDLE_JSON).is_file():
            return path
    except (OSError, ValueError, RuntimeError):  # unreadable, a NUL byte, a symlink loop
        pass
    raise refused
