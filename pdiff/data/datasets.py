"""Datasets as raw uint8 tensors plus one normalisation per dataset; a user's own tensors as a `Split` too.

Images stay uint8 (N, C, H, W) until `normalize`, so a backdoor trigger is stamped on raw
pixels and every model (base, victim, generated, uploaded) sees the same normalisation.
"""
from __future__ import annotations

import gzip
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from pdiff.data import cifar
from pdiff.core.paths import shipped
from pdiff.core.registry import Registry

ASSETS = shipped("assets")  # None in an installed copy
DEBIAN_FMNIST = Path("/usr/share/datasets/fashion-mnist")
CACHE = Path(os.environ.get("PDIFF_DATA", Path.home() / ".cache" / "pdiff" / "data"))


class DataError(RuntimeError):
    """A dataset split could not be found or read."""


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    channels: int
    size: int
    classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    torchvision_class: str = ""   # torchvision.datasets class that downloads and reads it, if any


# name -> spec; register_dataset adds to it (and to LOADERS)
DATASETS: Registry[DatasetSpec] = Registry("dataset", "pdiff.register_dataset adds one", {
    "fashion-mnist": DatasetSpec("fashion-mnist", 1, 28, 10, (0.2860,), (0.3530,), "FashionMNIST"),
    "mnist": DatasetSpec("mnist", 1, 28, 10, (0.1307,), (0.3081,), "MNIST"),
    "cifar10": DatasetSpec("cifar10", 3, 32, 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), "CIFAR10"),
    "cifar100": DatasetSpec("cifar100", 3, 32, 100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), "CIFAR100"),
})
# name -> loader(split, data_dir, download) -> (uint8 N x C x H x W, int64 N), for registered datasets
LOADERS: dict[str, Callable] = {}


def register_dataset(spec: DatasetSpec, loader: Callable | None = None) -> None:
    """Make a dataset known: its spec (channels, size, classes, normalisation) and, unless torchvision reads it
    (spec.torchvision_class), a loader(split, data_dir, download) returning uint8 images and int64 labels."""
    if not isinstance(spec, DatasetSpec):
        raise ValueError(f"register_dataset takes a DatasetSpec, got {type(spec).__name__}")
    if len(spec.mean) != spec.channels or len(spec.std) != spec.channels:
        raise ValueError(f"dataset {spec.name!r}: mean and std need one value per channel ({spec.channels})")
    if loader is None and not spec.torchvision_class:
        raise ValueError(f"dataset {spec.name!r}: give a loader or a torchvision_class")
    DATASETS.register(spec.name, spec)
    if loader is not None:
        LOADERS[spec.name] = loader


get_dataset = DATASETS.get_or_fail


_IDX_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
              "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (gzipped or not) into a numpy array."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{path} is not an unsigned-byte IDX file")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise DataError(f"{path} is truncated: expected {int(np.prod(dims))} values, found {body.size}")
    return body.reshape(dims)


def _idx_dirs(data_dir: Path | None) -> list[Path]:
    """Where Fashion-MNIST IDX files are looked for, in order."""
    dirs = [Path(data_dir)] if data_dir else []
    dirs += [ASSETS / "fashion-mnist"] if ASSETS else []
    dirs += [DEBIAN_FMNIST, CACHE / "FashionMNIST" / "raw"]
    return dirs


def _load_fmnist_idx(split: str, data_dir: Path | None) -> tuple[torch.Tensor, torch.Tensor] | None:
    img_name, lbl_name = _IDX_FILES[split]
    for d in _idx_dirs(data_dir):
        for suffix in ("", ".gz"):  # accept both gzipped and unpacked files
            img = d / (img_name.removesuffix(".gz") + suffix)
            lbl = d / (lbl_name.removesuffix(".gz") + suffix)
            if img.is_file() and lbl.is_file():
                images = torch.from_numpy(read_idx(img).copy()).unsqueeze(1)
                labels = torch.from_numpy(read_idx(lbl).astype(np.int64))
                if len(images) != len(labels):
                    raise DataError(f"{img} has {len(images)} images but {lbl} has {len(labels)} labels")
                return images, labels
    return None


def _load_torchvision(spec: DatasetSpec, split: str, root: Path, download: bool):
    import torchvision.datasets as tvd

    cls = getattr(tvd, spec.torchvision_class)
    try:
        ds = cls(str(root), train=(split == "train"), download=download)
    except RuntimeError:  # torchvision's "Dataset not found"
        return None
    except OSError as e:  # no network
        raise DataError(f"could not download {spec.name} {split} split into {root}: {e}") from e
    data = ds.data if isinstance(ds.data, torch.Tensor) else torch.from_numpy(np.asarray(ds.data))
    if data.ndim == 3:
        data = data.unsqueeze(1)  # MNIST-like: N, H, W
    else:
        data = data.permute(0, 3, 1, 2)  # CIFAR: N, H, W, C
    return data.contiguous().to(torch.uint8), torch.as_tensor(ds.targets, dtype=torch.int64)


def _load_cifar(dataset: str, split: str, data_dir: Path | None, download: bool):
    """CIFAR-10/100 from the python-batch folder in data_dir (or the cache), read safely (pdiff.cifar)."""
    roots = [data_dir] if data_dir else [CACHE]
    folder = cifar.find_folder(dataset, roots)
    if folder is None and download:
        cifar.download(dataset, roots[0])
        folder = cifar.find_folder(dataset, roots)
    return None if folder is None else cifar.read_split(dataset, split, folder)


def _registered(dataset: str, split: str, data_dir: Path | None, download: bool):
    """A registered loader's split, checked against its spec."""
    spec = DATASETS[dataset]
    images, labels = LOADERS[dataset](split, data_dir, download)
    if not (isinstance(images, torch.Tensor) and images.dtype == torch.uint8
            and tuple(images.shape[1:]) == (spec.channels, spec.size, spec.size)):
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"dataset {dataset!r}: the loader's {split} images must be uint8 N x {spec.channels} x "
                         f"{spec.size} x {spec.size}, got {getattr(images, 'dtype', '')} {shape}")
    labels = torch.as_tensor(labels, dtype=torch.int64)
    if len(labels) != len(images):
        raise ValueError(f"dataset {dataset!r}: {len(images)} {split} images but {len(labels)} labels")
    return images, labels


def load_split(dataset: str, split: str, data_dir: str | Path | None = None,
               download: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (uint8 images N x C x H x W, int64 labels) for `split` in {"train", "test"}."""
    spec = get_dataset(dataset)
    if split not in _IDX_FILES:
        raise DataError(f"unknown split {split!r}; use 'train' or 'test'")
    data_dir = Path(data_dir) if data_dir else None
    if dataset in LOADERS:
        return _registered(dataset, split, data_dir, download)
    if dataset == "fashion-mnist":
        found = _load_fmnist_idx(split, data_dir)
        looked = [str(d) for d in _idx_dirs(data_dir)]
    elif dataset in cifar.LAYOUTS:
        found = _load_cifar(dataset, split, data_dir, download)
        looked = [f"{data_dir or CACHE} (and its {cifar.LAYOUTS[dataset][0]}/)"]
    else:
        found, looked = None, [str(data_dir or CACHE)]
    if found is None and dataset not in cifar.LAYOUTS:
        found = _load_torchvision(spec, split, data_dir or CACHE, download)
    if found is not None:
        return found
    hints = {"fashion-mnist": "install Debian's package `dataset-fashion-mnist` (apt-get install dataset-fashion-mnist), "
                              "pass --data-dir DIR with the IDX .gz files, or add --download",
             "cifar10": "pass --data-dir DIR holding cifar-10-batches-py/ (the python version), or add --download",
             "cifar100": "pass --data-dir DIR holding cifar-100-python/, or add --download"}
    hint = hints.get(dataset, "pass --data-dir DIR holding the torchvision files, or add --download")
    raise DataError(f"{spec.name} {split} split not found; looked in: {', '.join(looked)}. To get it: {hint}")


def normalize(images: torch.Tensor, dataset: str | None = None, mean: tuple[float, ...] | None = None,
              std: tuple[float, ...] | None = None) -> torch.Tensor:
    """Images -> float32 model input: uint8 scaled to [0, 1] (float images are taken as they are), then
    standardised per channel with `mean`/`std` when given, else with the dataset's, else left as they are."""
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    if mean is None and std is None and dataset in DATASETS:  # a user's tensors may name no known dataset
        mean, std = DATASETS[dataset].mean, DATASETS[dataset].std
    if mean is None and std is None:
        return x
    if mean is None or std is None:
        raise ValueError(f"a normalisation needs both mean and std; got mean={mean!r}, std={std!r}")
    shape = (1, -1) + (1,) * (x.ndim - 2)  # per channel: dim 1 of (N, C, ...)
    m = torch.as_tensor(mean, dtype=torch.float32, device=x.device).view(shape)
    s = torch.as_tensor(std, dtype=torch.float32, device=x.device).view(shape)
    return (x - m) / s


@dataclass
class Split:
    """Images and labels of one split, and the normalisation that turns them into model input.

    Images are raw uint8 pixels (N, C, H, W) -- a named dataset's splits, the form a trigger is stamped on --
    or float tensors of any shape (N, ...) that a user's model takes. `mean`/`std` (per channel) override the
    dataset's normalisation; a split of a dataset pdiff does not know and without them is used as it is."""
    images: torch.Tensor
    labels: torch.Tensor
    dataset: str = "custom"
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def __post_init__(self):
        if len(self.images) != len(self.labels):
            raise ValueError(f"a split needs one label per image: {len(self.images)} images, {len(self.labels)} labels")
        if self.images.dtype != torch.uint8 and not self.images.is_floating_point():
            raise ValueError(f"images must be uint8 or floating point, got {self.images.dtype}")
        self.labels = torch.as_tensor(self.labels, dtype=torch.int64)

    @classmethod
    def load(cls, dataset: str, split: str, data_dir: str | Path | None = None, download: bool = False) -> "Split":
        return cls(*load_split(dataset, split, data_dir, download), dataset)

    def prepare(self, images: torch.Tensor, device: str | torch.device = "cpu") -> torch.Tensor:
        """Images of this split's kind (a batch, an augmented or triggered copy) -> model input on `device`."""
        return normalize(images.to(device), self.dataset, self.mean, self.std)

    def normalized(self, device: str | torch.device = "cpu") -> torch.Tensor:
        return self.prepare(self.images, device)

    def subset(self, n: int | None) -> "Split":
        return self if n is None else replace(self, images=self.images[:n], labels=self.labels[:n])

    def last(self, n: int) -> "Split":
        """The last n images: the validation split held out from a training split."""
        if not 0 < n <= len(self.labels):
            raise ValueError(f"a validation split of {n} images does not fit a split of {len(self.labels)}")
        return replace(self, images=self.images[-n:], labels=self.labels[-n:])


def random_flip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random horizontal flips: the training augmentation of every model (none at test time)."""
    flip = torch.rand(len(images), generator=generator) < 0.5
    images = images.clone()
    images[flip] = images[flip].flip(-1)
    return images
