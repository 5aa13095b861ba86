"""Results that do not depend on the generator's seed, kept on disk between runs and processes.

An engine's memo (measure.engine.TargetEngine.run with fixed=True) holds the results of parameter sets that come
again: the originals and the controls drawn at a fixed seed. A store writes them to one file per engine, keyed by
the bundle's digest and everything the engine's predictions depend on (the target's weights and trigger, the
layers, the images, the BatchNorm images, the device, torch's version); a file whose key does not match is ignored
and, in the user's cache, rewritten. The fitted t-SNE map of those controls (similarity.TsneMap) is kept the same
way, keyed by the bundle and the vectors it was fitted on, and so (in the user's cache only: 5 MB for 10,000
images) are an engine's trunk features. The user's cache is kept under PDIFF_CACHE_MB (1000), the oldest files
going first. Files are read from the shipped cache (assets/cache/, made by
`python -m pdiff.app.examples`) and the user's (PDIFF_CACHE, default ~/.cache/pdiff/results; PDIFF_CACHE=off
turns it off); only the user's is written, atomically.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

from pdiff.core.files import write_safetensors
from pdiff.core.paths import shipped

FORMAT = "pdiff-results"
FORMAT_VERSION = 1
CACHE_ENV = "PDIFF_CACHE"
CACHE_MB = 1000  # the user's cache is kept under this (PDIFF_CACHE_MB): the oldest files go first
LISTS = ("acc", "asr", "ra")


def user_cache() -> Path | None:
    """The folder this process writes results to (None: PDIFF_CACHE=off)."""
    value = os.environ.get(CACHE_ENV, "")
    if value.lower() in ("off", "0", "no"):
        return None
    return Path(value) if value else Path.home() / ".cache" / "pdiff" / "results"


def shipped_cache() -> Path | None:
    assets = shipped("assets")
    return assets / "cache" if assets else None


def split_digest(images: torch.Tensor, labels: torch.Tensor) -> str:
    """SHA-256 of a split's images and labels: which images an engine predicts."""
    h = hashlib.sha256()
    for t in (images, labels):
        t = t.detach().to("cpu").contiguous()
        h.update(f"{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def engine_key(target_key: str, layers: list[str], split: str, bn_split: str | None, device) -> str:
    """One engine's key: what its predictions depend on besides the bundle (whose digest names the folder)."""
    parts = {"format_version": FORMAT_VERSION, "target": target_key, "layers": list(layers), "split": split,
             "bn": bn_split, "device": torch.device(device).type, "torch": torch.__version__}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


class Store:
    """One stored file of one bundle, by `key`: `read` gives the tensors of every readable copy (the shipped one,
    then the user's) whose bundle digest and key match, `write` writes the user's."""

    def __init__(self, bundle_digest: str, key: str, roots: list[Path | None] | None = None, kind: str = "results"):
        self.bundle_digest, self.key, self.kind = bundle_digest, key, kind
        self.roots = [r for r in (roots if roots is not None else [shipped_cache(), user_cache()]) if r is not None]
        self.writable = user_cache() if roots is None else (roots[-1] if roots else None)

    def path(self, root: Path) -> Path:
        return root / self.bundle_digest[:16] / f"{self.kind}-{self.key[:32]}.safetensors"

    def read(self) -> dict[str, torch.Tensor]:
        found = {}
        for root in self.roots:
            found.update(self._read(self.path(root)))
        return found

    def _read(self, path: Path) -> dict[str, torch.Tensor]:
        if not path.is_file():
            return {}
        try:
            with safe_open(str(path), "pt") as f:
                meta = f.metadata() or {}
                if (meta.get("format") != FORMAT or meta.get("bundle_digest") != self.bundle_digest
                        or meta.get("key") != self.key or meta.get("kind") != self.kind):
                    return {}  # another bundle's or engine's: never used (and rewritten by the next write)
                return {name: f.get_tensor(name) for name in f.keys()}
        except (OSError, ValueError, RuntimeError):  # unreadable or half-written by another writer: rebuilt
            return {}

    def write(self, tensors: dict[str, torch.Tensor]) -> Path | None:
        """Write `tensors` to the user's file, atomically; None when it is off or cannot be written."""
        if self.writable is None or not tensors:
            return None
        path = self.path(self.writable)
        try:
            write_safetensors(path, tensors, {"format": FORMAT, "bundle_digest": self.bundle_digest, "key": self.key,
                                              "kind": self.kind})
            _trim(self.writable, int(float(os.environ.get("PDIFF_CACHE_MB", CACHE_MB)) * 2**20), keep=path)
        except OSError:  # a read-only home: they stay in memory only
            return None
        return path


def _trim(root: Path, limit: int, keep: Path) -> None:
    """Remove the least recently written files under `root` until it holds at most `limit` bytes (not `keep`)."""
    files = sorted((f for f in root.rglob("*.safetensors") if f.is_file()), key=lambda f: f.stat().st_mtime)
    total = sum(f.stat().st_size for f in files)
    for f in files:
        if total <= limit:
            break
        if f != keep:
            total -= f.stat().st_size
            f.unlink(missing_ok=True)


class ResultStore(Store):
    """The stored results of one engine of one bundle ({content digest: run result}, as TargetEngine.run gives)."""

    def load(self, images: int) -> dict[str, dict]:
        """{content digest: run result} from every readable file whose bundle digest and key match."""
        out: dict[str, dict] = {}
        for name, t in self.read().items():
            digest, field = name.rsplit(".", 1)
            entry = out.setdefault(digest, {})
            if field == "wrong":
                bits = np.unpackbits(t.numpy(), axis=1, count=images).astype(bool)
                entry["wrong"] = torch.from_numpy(bits)
            else:
                entry[field] = t.tolist()
        return out

    def save(self, results: dict[str, dict]) -> Path | None:
        """Write `results` ({content digest: run result}) to the user's file."""
        tensors = {}
        for digest, r in results.items():
            tensors[f"{digest}.wrong"] = torch.from_numpy(np.packbits(r["wrong"].numpy(), axis=1))
            tensors.update({f"{digest}.{k}": torch.tensor(r[k], dtype=torch.float64) for k in LISTS if k in r})
        return self.write(tensors)
