import gzip

import pytest
import torch

from pdiff.data import datasets as data
from pdiff.data.datasets import DataError, load_split, normalize, read_idx


def test_shipped_test_split_loads(fmnist_test):
    assert fmnist_test.images.shape == (10000, 1, 28, 28)
    assert fmnist_test.images.dtype == torch.uint8
    assert sorted(fmnist_test.labels.unique().tolist()) == list(range(10))
    assert torch.bincount(fmnist_test.labels).tolist() == [1000] * 10  # the real split is balanced


def test_idx_reader_roundtrip(tmp_path):
    arr = torch.arange(2 * 3 * 4, dtype=torch.uint8).reshape(2, 3, 4).numpy()
    header = bytes([0, 0, 8, 3]) + b"".join(d.to_bytes(4, "big") for d in arr.shape)
    path = tmp_path / "x-idx3-ubyte.gz"
    with gzip.open(path, "wb") as f:
        f.write(header + arr.tobytes())
    assert (read_idx(path) == arr).all()
    with gzip.open(path, "wb") as f:
        f.write(header + arr.tobytes()[:-1])
    with pytest.raises(DataError, match="truncated"):
        read_idx(path)


def test_user_dir_comes_first(tmp_path, fmnist_test):
    # a user directory with its own (tiny) test split wins over the shipped one
    imgs = fmnist_test.images[:7, 0].numpy()
    header = bytes([0, 0, 8, 3]) + b"".join(d.to_bytes(4, "big") for d in imgs.shape)
    with gzip.open(tmp_path / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(header + imgs.tobytes())
    lbl = fmnist_test.labels[:7].to(torch.uint8).numpy()
    with gzip.open(tmp_path / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(bytes([0, 0, 8, 1]) + (7).to_bytes(4, "big") + lbl.tobytes())
    images, labels = load_split("fashion-mnist", "test", data_dir=tmp_path)
    assert images.shape == (7, 1, 28, 28)
    assert torch.equal(labels, fmnist_test.labels[:7])


def test_missing_split_says_where_and_how(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "ASSETS", tmp_path / "assets")
    monkeypatch.setattr(data, "DEBIAN_FMNIST", tmp_path / "debian")
    monkeypatch.setattr(data, "CACHE", tmp_path / "cache")
    with pytest.raises(DataError) as err:
        load_split("fashion-mnist", "train", data_dir=tmp_path / "mine")
    msg = str(err.value)
    assert "dataset-fashion-mnist" in msg and "--download" in msg and str(tmp_path / "mine") in msg


def test_normalize_uses_dataset_stats(fmnist_test):
    x = normalize(fmnist_test.images[:2000], "fashion-mnist")
    assert abs(x.mean().item()) < 0.05 and abs(x.std().item() - 1) < 0.05
