"""Datasets: fixed splits, exact densities, MNIST loading and checksum errors."""
import math
import shutil

import numpy as np
import pytest
import torch
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

from bench import datasets
from conftest import needs_mnist
from core.errors import UserError


@pytest.mark.parametrize("name", ["moons", "ring8", "grid25"])
def test_toy_splits_are_fixed_and_disjoint(name):
    a = datasets.load(name)
    datasets._cached_toy.cache_clear()
    b = datasets.load(name)
    assert a is not b
    for split in ("train", "val", "test"):
        assert torch.equal(a.split(split), b.split(split))
    assert a.fingerprint == b.fingerprint
    assert len(a.train) == 50_000 and len(a.val) == 5_000 and len(a.test) == 10_000
    assert not torch.equal(a.train[:100], a.test[:100])


def test_moons_is_sklearn_make_moons_with_noise_005():
    from sklearn.datasets import make_moons

    expected = make_moons(n_samples=10_000, noise=0.05, random_state=1234 + 2)[0].astype(np.float32)
    assert np.array_equal(datasets.load("moons").test.numpy(), expected)


def test_mixture_log_prob_matches_scipy():
    ds = datasets.load("grid25")
    centers, std = ds.info["centers"].numpy(), ds.info["std"]
    x = ds.test[:50]
    expected = np.log(np.mean([multivariate_normal(c, std**2 * np.eye(2)).pdf(x.numpy()) for c in centers], axis=0))
    np.testing.assert_allclose(ds.log_prob(x).numpy(), expected, rtol=1e-6)


@pytest.mark.parametrize("name, expected", [("ring8", -4.293), ("grid25", 0.065)])
def test_mixture_entropy_matches_closed_form(name, expected):
    # Well-separated components: H = log K + H(N(0, σ²I)) = log K + 1 + log(2π) + 2 log σ.
    ds = datasets.load(name)
    k, std = len(ds.info["centers"]), ds.info["std"]
    closed = math.log(k) + 1 + math.log(2 * math.pi) + 2 * math.log(std)
    assert closed == pytest.approx(expected, abs=2e-3)
    lp = ds.log_prob(ds.test)
    assert -lp.mean().item() == pytest.approx(closed, abs=4 * lp.std().item() / math.sqrt(len(lp)))


def test_moons_density_integrates_to_one():
    lp = datasets.load("moons").log_prob
    # Grid spacing 0.02 = 0.4 σ: the Riemann sum of a Gaussian is then exact to far below 1e-6 (Poisson summation).
    g = torch.linspace(-1.5, 2.5, 201, dtype=torch.float64)
    h = torch.linspace(-1.0, 1.5, 126, dtype=torch.float64)
    mass = lp(torch.cartesian_prod(g, h)).exp().sum().item() * 0.02 * 0.02
    assert mass == pytest.approx(1.0, rel=1e-3)


@needs_mnist
def test_mnist_loads_with_fixed_validation_split():
    ds = datasets.load("mnist")
    assert ds.train.shape == (55_000, 1, 28, 28) and ds.val.shape == (5_000, 1, 28, 28)
    assert ds.test.shape == (10_000, 1, 28, 28) and ds.train.dtype == torch.uint8
    assert ds.labels["test"].bincount().tolist()[:3] == [980, 1135, 1032]
    assert len(ds.fingerprint) == 16


@needs_mnist
def test_corrupt_or_missing_mnist_is_a_clear_error(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    with pytest.raises(UserError, match="not found in .*set DGMBENCH_DATA_ROOT"):
        datasets.load("mnist", tmp_path)
    src = datasets.default_data_root() / "MNIST" / "raw"
    for f in src.glob("*.gz"):
        shutil.copy(f, raw / f.name)
    (raw / "t10k-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8b" + b"0" * 100)
    with pytest.raises(UserError, match="t10k-labels-idx1-ubyte.gz is corrupt .*expected ec29112d"):
        datasets.load("mnist", tmp_path)


def test_moons_log_prob_matches_a_mixture_on_sklearns_noise_free_arcs():
    """The moons density against an independent construction: the trapezoid rule over t of the Gaussian blur
    (σ = 0.05) of sklearn's own noise-free make_moons arcs (2×8001 points, spacing π/8000 ≪ σ), at test points."""
    from sklearn.datasets import make_moons

    n = 8001
    arcs = make_moons(n_samples=2 * n, noise=0.0, shuffle=False)[0]
    sigma = 0.05
    x = datasets.load("moons").test[:400].numpy().astype(np.float64)
    sq = ((x[:, None, :] - arcs[None, :, :]) ** 2).sum(-1)
    w = np.ones(n)
    w[[0, -1]] = 0.5  # trapezoid weights along each arc, total n − 1
    log_w = np.log(np.concatenate([w, w]) / (2 * (n - 1)))  # two arcs, weight ½ each
    expected = logsumexp(-0.5 * sq / sigma**2 + log_w, axis=1) - 2 * math.log(sigma) - math.log(2 * math.pi)
    got = datasets.load("moons").log_prob(torch.from_numpy(x)).numpy()
    assert expected.std() > 0.5  # points at varied distances from the arcs
    np.testing.assert_allclose(got, expected, rtol=0, atol=5e-4)


def test_ring8_is_eight_equally_spaced_modes_on_the_unit_circle_and_the_data_follows_them():
    ds = datasets.load("ring8")
    angles = 2 * math.pi * np.arange(8) / 8
    expected = np.stack([np.cos(angles), np.sin(angles)], 1)
    np.testing.assert_allclose(ds.info["centers"].numpy(), expected, rtol=0, atol=1e-6)
    x = ds.test.numpy().astype(np.float64)
    dist = np.sqrt(((x[:, None, :] - expected[None]) ** 2).sum(-1))
    assert (dist.min(1) < 5 * 0.01).all()  # every point within 5σ of one of the closed-form modes
    counts = np.bincount(dist.argmin(1), minlength=8)
    assert (np.abs(counts / len(x) - 1 / 8) < 0.02).all()  # equal weights
