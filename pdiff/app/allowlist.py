"""Which bundles the app may load: the same names as the CLI (generator.locate), with local folders limited.

The app's bundle box is typed by strangers, so local folders count only under the shipped checkpoints/
and the roots named in PDIFF_BUNDLE_ROOTS (separated like PATH), and every refused path gets the same
message whether it exists or not. The CLI and the API load any folder they are given.
"""
from __future__ import annotations

import os
from pathlib import Path

from pdiff.generator.locate import CHECKPOINTS

ROOTS_ENV = "PDIFF_BUNDLE_ROOTS"


def allowed_roots() -> list[Path]:
    """checkpoints/ and the folders in PDIFF_BUNDLE_ROOTS, symlinks resolved."""
    extra = [Path(p) for p in os.environ.get(ROOTS_ENV, "").split(os.pathsep) if p.strip()]
    return [root.resolve() for root in ([CHECKPOINTS] if CHECKPOINTS else []) + extra]
