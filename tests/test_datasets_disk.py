"""The torchvision loaders (full MNIST, CIFAR-10) read small files the tests write in their formats."""
import pickle
import struct

import numpy as np
import pytest

from common.data import CIFAR10_MEAN, CIFAR10_STD, DatasetUnavailable, load_dataset


def _idx(path, arr):
    with open(path, "wb") as fh:
        if arr.ndim == 3:
            fh.write(struct.pack(">IIII", 0x803, *arr.shape))
        else:
            fh.write(struct.pack(">II", 0x801, arr.shape[0]))
        fh.write(arr.astype(np.uint8).tobytes())


def test_full_mnist_loads_from_dataset_root(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    x_tr, y_tr = rng.integers(0, 256, (30, 28, 28)), rng.integers(0, 10, 30)
    _idx(raw / "train-images-idx3-ubyte", x_tr)
    _idx(raw / "train-labels-idx1-ubyte", y_tr)
    _idx(raw / "t10k-images-idx3-ubyte", x_tr[:10])
    _idx(raw / "t10k-labels-idx1-ubyte", y_tr[:10])
    ds = load_dataset("mnist", root=str(tmp_path))
    assert ds.x_train.shape == (30, 1, 28, 28) and ds.x_test.shape == (10, 1, 28, 28)
    assert ds.y_train.tolist() == y_tr.tolist()
    assert float(ds.x_train[0, 0, 0, 0]) == pytest.approx((x_tr[0, 0, 0] / 255 - 0.1307) / 0.3081, rel=1e-5)


def test_cifar10_loads_from_dataset_root_with_paper_normalisation(tmp_path):
    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    rng = np.random.default_rng(1)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (4, 3072), dtype=np.uint8)
        with open(base / name, "wb") as fh:
            pickle.dump({"data": data, "labels": list(rng.integers(0, 10, 4))}, fh)
    with open(base / "batches.meta", "wb") as fh:
        pickle.dump({"label_names": [str(i) for i in range(10)]}, fh)
    ds = load_dataset("cifar10", root=str(tmp_path))
    assert ds.x_train.shape == (20, 3, 32, 32) and ds.x_test.shape == (4, 3, 32, 32)
    with open(base / "data_batch_1", "rb") as fh:
        first = pickle.load(fh)["data"][0].reshape(3, 32, 32)
    expect = (first[1, 2, 3] / 255.0 - CIFAR10_MEAN[1]) / CIFAR10_STD[1]
    assert float(ds.x_train[0, 1, 2, 3]) == pytest.approx(expect, rel=1e-5)


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_absent_offline_dataset_names_root_and_download(tmp_path, name):
    with pytest.raises(DatasetUnavailable) as e:
        load_dataset(name, root=str(tmp_path / "nowhere"))
    msg = str(e.value)
    assert "dataset.root=" in msg and "dataset.download=true" in msg and "\n" not in msg
    assert not (tmp_path / "nowhere").exists() or not any((tmp_path / "nowhere").iterdir())  # nothing fetched
