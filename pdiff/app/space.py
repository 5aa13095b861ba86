"""The files a Hugging Face Space of the app holds, and no others: the README (its front matter is the Space's
configuration), app.py, requirements.txt, the package, the Fashion-MNIST test split, the example runs the page opens
on with the results the app keeps for them (assets/cache), and the shipped default bundle (its victims inside it).

    python -m pdiff.app.space DEST     # copies exactly that set into DEST (an empty or new folder), ready to push
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

from pdiff.core.paths import REPO

SPACE_FILES = ("README.md", "app.py", "requirements.txt", "pdiff", "assets/fashion-mnist", "assets/examples",
               "assets/cache", "checkpoints/fmnist-convnet/bundle")


def copy_space(dest: str | Path, source: Path = REPO) -> list[Path]:
    """Copy SPACE_FILES from a checkout into `dest`, which must be empty or new; returns what was copied."""
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()):
        raise ValueError(f"{dest} is not empty: a Space's folder holds exactly its files")
    missing = [name for name in SPACE_FILES if not (source / name).exists()]
    if missing:
        raise ValueError(f"{source} lacks {', '.join(missing)}: not a checkout with the shipped default")
    copied = []
    for name in SPACE_FILES:
        src, out = source / name, dest / name
        out.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, out, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(src, out)
        copied.append(out)
    return copied


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m pdiff.app.space DEST")
    try:
        print("\n".join(str(p) for p in copy_space(sys.argv[1])))
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
