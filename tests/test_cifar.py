import os
import pickle

import numpy as np
import pytest
import torch
from helpers import write_cifar

from pdiff.data.cifar import CifarError, read_batch
from pdiff.data.datasets import Split, load_split


@pytest.mark.parametrize("name, train_n", [("cifar10", 5 * 24), ("cifar100", 5 * 24)])
def test_reads_the_python_batch_layout(tmp_path, name, train_n):
    folder = write_cifar(tmp_path, name, per_batch=24, n_test=30, seed=1)
    train = Split.load(name, "train", tmp_path)
    test = Split.load(name, "test", folder)  # the batch folder itself works too
    assert train.images.shape == (train_n, 3, 32, 32) and train.images.dtype == torch.uint8
    assert test.images.shape == (30, 3, 32, 32) and test.labels.dtype == torch.int64
    # pixel for pixel what the file holds: rows of 1024 red, then green, then blue values
    first = "data_batch_1" if name == "cifar10" else "train"
    with open(folder / first, "rb") as f:
        raw = pickle.load(f)
    assert np.array_equal(train.images[0].numpy().reshape(-1), raw[b"data"][0])
    assert np.array_equal(train.images[0, 1].numpy(), raw[b"data"][0][1024:2048].reshape(32, 32))
    key = b"labels" if name == "cifar10" else b"fine_labels"
    assert train.labels[:len(raw[key])].tolist() == raw[key]


def test_a_truncated_or_missing_batch_is_named(tmp_path):
    folder = write_cifar(tmp_path, per_batch=8, n_test=8)
    data = (folder / "data_batch_3").read_bytes()
    (folder / "data_batch_3").write_bytes(data[: len(data) // 2])
    with pytest.raises(CifarError, match="data_batch_3 is not a readable CIFAR batch"):
        load_split("cifar10", "train", tmp_path)
    (folder / "data_batch_3").unlink()
    with pytest.raises(CifarError, match="CIFAR batch file missing: .*data_batch_3"):
        load_split("cifar10", "train", tmp_path)
    assert len(load_split("cifar10", "test", tmp_path)[0]) == 8  # the other split still reads


def test_malformed_batches_are_refused_with_the_field(tmp_path):
    path = tmp_path / "batch"
    for content, message in [({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, "N x 3072"),
                             ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, "2 images but 1 values"),
                             ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, r"labels must lie in 0\.\.9"),
                             ([1, 2], "holds a list")]:
        with open(path, "wb") as f:
            pickle.dump(content, f)
        with pytest.raises(CifarError, match=message):
            read_batch(path, "labels", 10)


class _Payload:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.mknod, (self.path,))


def test_no_pickled_code_runs(tmp_path):
    marker = tmp_path / "created-by-payload"
    path = tmp_path / "batch"
    with open(path, "wb") as f:
        pickle.dump({b"data": _Payload(str(marker)), b"labels": []}, f)
    with pytest.raises(CifarError, match="names posix.mknod"):
        read_batch(path, "labels", 10)
    assert not marker.exists()


def test_no_folder_says_where_it_looked(tmp_path):
    with pytest.raises(Exception, match="cifar10 test split not found; looked in: .*cifar-10-batches-py"):
        load_split("cifar10", "test", tmp_path)
