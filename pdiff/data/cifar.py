"""CIFAR-10 / CIFAR-100 from their standard python-batch folders, read without running pickled code.

The official archives hold pickled dicts (b"data": N x 3072 uint8, rows of 1024 red, 1024 green, 1024 blue
values; b"labels" or b"fine_labels"). torchvision reads them with a plain `pickle.load`, which runs any
code a tampered file names; here only numpy's array reconstruction is allowed.
"""
from __future__ import annotations

import codecs
import pickle
from pathlib import Path

import numpy as np
import torch

# folder name, files per split, label key, classes
LAYOUTS = {
    "cifar10": ("cifar-10-batches-py", {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]},
                "labels", 10),
    "cifar100": ("cifar-100-python", {"train": ["train"], "test": ["test"]}, "fine_labels", 100),
}
_ARRAY = np.zeros(1, np.uint8)
# (module, name) -> the object; numpy moved these functions (numpy.core -> numpy._core), so they are taken
# from an array's own pickling recipe rather than imported by path
_ALLOWED = {
    ("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype, ("_codecs", "encode"): codecs.encode,
    **{(m, "_reconstruct"): _ARRAY.__reduce__()[0] for m in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(m, "_frombuffer"): _ARRAY.__reduce_ex__(5)[0] for m in ("numpy.core.numeric", "numpy._core.numeric")},
}


class CifarError(ValueError):
    """A CIFAR batch file that is missing, unsafe, truncated or not in the python-batch format."""


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"it names {module}.{name}, which a CIFAR batch never holds")
        return _ALLOWED[(module, name)]


def read_batch(path: Path, label_key: str, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """One batch file -> (uint8 N x 3 x 32 x 32, int64 N); anything else is a CifarError naming the file."""
    try:
        with open(path, "rb") as f:
            obj = _RestrictedUnpickler(f, encoding="bytes").load()
    except FileNotFoundError:
        raise CifarError(f"CIFAR batch file missing: {path}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as e:
        raise CifarError(f"{path} is not a readable CIFAR batch (truncated or damaged?): "
                         f"{type(e).__name__}: {e}") from None
    if not isinstance(obj, dict):
        raise CifarError(f"{path} holds a {type(obj).__name__}, not a CIFAR batch dict")
    obj = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}
    data, labels = obj.get("data"), obj.get(label_key)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        what = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise CifarError(f"{path}: 'data' must be a uint8 array of N x 3072 pixels, found {what}")
    try:
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError):
        raise CifarError(f"{path}: {label_key!r} is not a list of class numbers") from None
    if len(labels) != len(data):
        raise CifarError(f"{path} has {len(data)} images but {len(labels)} values under {label_key!r}")
    if len(labels) and not (0 <= labels.min() and labels.max() < classes):
        raise CifarError(f"{path}: labels must lie in 0..{classes - 1}, found {labels.min()}..{labels.max()}")
    return data.reshape(-1, 3, 32, 32), labels


def find_folder(dataset: str, roots: list[Path]) -> Path | None:
    """The first root that is, or holds, the dataset's batch folder (one with its first split file)."""
    folder, files, _, _ = LAYOUTS[dataset]
    for root in roots:
        for candidate in (root / folder, root):
            if (candidate / files["test"][0]).is_file() or (candidate / files["train"][0]).is_file():
                return candidate
    return None


def read_split(dataset: str, split: str, folder: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Every batch file of `split` in `folder`, concatenated: (uint8 N x 3 x 32 x 32, int64 N)."""
    _, files, label_key, classes = LAYOUTS[dataset]
    parts = [read_batch(folder / name, label_key, classes) for name in files[split]]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(labels)


def download(dataset: str, root: Path) -> None:
    """Fetch and unpack the official archive into `root` with torchvision's checked downloader (MD5)."""
    import torchvision.datasets as tvd
    from torchvision.datasets.utils import download_and_extract_archive

    cls = tvd.CIFAR10 if dataset == "cifar10" else tvd.CIFAR100
    try:
        download_and_extract_archive(cls.url, str(root), filename=cls.filename, md5=cls.tgz_md5)
    except OSError as e:  # no network
        raise CifarError(f"could not download {dataset} into {root}: {e}") from e
