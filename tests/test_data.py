"""Data sets: shapes, scaling, fixed and disjoint splits, seeded generation, bad input."""

import pytest
import torch

from diffusionlens.data import DATASETS, DISCRETE_DATASETS, Data, load_dataset, oracle_for
from diffusionlens.oracle import standard_cases


def test_digits_split_and_scaling():
    tr, te = load_dataset("digits", "train"), load_dataset("digits", "test")
    assert len(tr) + len(te) == 1797 and len(te) == 300
    assert tr.x.shape[1:] == (1, 8, 8) and tr.is_image and tr.num_classes == 10
    assert tr.x.dtype == torch.float32 and tr.y.dtype == torch.int64
    assert float(tr.x.min()) == -1.0 and float(tr.x.max()) == 1.0
    assert torch.bincount(te.y).tolist() == [30] * 10
    # disjoint: no test image appears in train (digits has a few exact duplicates; compare as multiset)
    both = torch.cat([tr.x, te.x]).reshape(1797, -1)
    from sklearn.datasets import load_digits

    ref = torch.from_numpy(load_digits().data).float() / 8 - 1
    assert sorted(map(tuple, both.tolist())) == sorted(map(tuple, ref.tolist()))
    # the split is fixed: independent of seed
    assert torch.equal(load_dataset("digits", "test", seed=5).x, te.x)


@pytest.mark.slow
def test_mnist_split():
    tr, te = load_dataset("mnist", "train"), load_dataset("mnist", "test")
    assert len(tr) == 4000 and len(te) == 1000 and tr.x.shape[1:] == (1, 28, 28)
    assert torch.bincount(te.y).tolist() == [100] * 10
    assert -1.0 <= float(tr.x.min()) and float(tr.x.max()) <= 1.0


@pytest.mark.parametrize("name", [d for d in DATASETS if d not in ("digits", "mnist", "photos") + DISCRETE_DATASETS])
def test_generated_sets_are_seeded_and_independent(name):
    a = load_dataset(name, "train", seed=3, n=500)
    b = load_dataset(name, "train", seed=3, n=500)
    c = load_dataset(name, "test", seed=3, n=500)
    assert torch.equal(a.x, b.x) and not torch.equal(a.x, c.x)
    assert not torch.equal(a.x, load_dataset(name, "train", seed=4, n=500).x)
    assert a.y is None and not a.is_image and a.x.dtype == torch.float32
    std = a.x.std(0)
    assert bool((std > 0.1).all()) and bool((std < 5).all())


def test_oracle_data_follows_the_mixture():
    gm = oracle_for("oracle-mix16")
    assert gm is not None and gm.dim == 16 and oracle_for("moons") is None
    d = load_dataset("oracle-mix16", n=20000)
    # sample mean within 5 standard errors of the exact mixture mean, per coordinate
    se = torch.sqrt(torch.diagonal(gm.cov()) / 20000)
    assert bool(((d.x.double().mean(0) - gm.mean()).abs() < 5 * se).all())
    assert oracle_for("oracle-ring").dim == standard_cases()["ring2d"].dim


def test_toy_shapes_match_their_definitions():
    cb = load_dataset("checkerboard", n=4000).x / 2
    # points lie on black squares: floor(x1) + floor(x2) even
    assert bool(((torch.floor(cb[:, 0]) + torch.floor(cb[:, 1])) % 2 == 0).all())
    assert float(cb.abs().max()) <= 2.0
    moons = load_dataset("moons", n=4000).x
    assert abs(float(moons.mean(0)[0])) < 0.1


def test_bad_input():
    with pytest.raises(ValueError, match="unknown dataset 'cifar'.*digits"):
        load_dataset("cifar")
    with pytest.raises(ValueError, match="unknown split 'val'"):
        load_dataset("digits", "val")
    with pytest.raises(ValueError, match="n must be a positive integer"):
        load_dataset("moons", n=0)
    with pytest.raises(ValueError, match="empty"):
        Data(x=torch.zeros(0, 2), y=None, num_classes=None, name="e", data_shape=(2,), is_image=False)
    with pytest.raises(ValueError, match="non-finite"):
        Data(x=torch.tensor([[float("nan"), 0.0]]), y=None, num_classes=None, name="e", data_shape=(2,), is_image=False)
    with pytest.raises(ValueError, match="unknown dataset"):
        oracle_for("nope")
