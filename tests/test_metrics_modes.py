"""Tests for metrics.modes: the 1 − exp(−4.5) high-quality ceiling, exact KL values, thresholds, class coverage."""

import math

import numpy as np
import pytest
import torch

from metrics.modes import ClassCoverage, class_coverage, kl_to_uniform, mixture_mode_coverage

RING = np.stack([np.cos(2 * np.pi * np.arange(8) / 8), np.sin(2 * np.pi * np.arange(8) / 8)], 1)  # radius 1, σ=0.01
GRID = np.stack(np.meshgrid(np.arange(-4, 5, 2.0), np.arange(-4, 5, 2.0), indexing="ij"), -1).reshape(-1, 2)  # σ=0.05


def _mixture_samples(centers, std, n, seed):
    rng = np.random.default_rng(seed)
    return centers[rng.integers(len(centers), size=n)] + std * rng.normal(size=(n, 2))


@pytest.mark.parametrize("centers, std", [(RING, 0.01), (GRID, 0.05)], ids=["ring8", "grid25"])
def test_exact_mixture_samples_hit_the_ceiling(centers, std):
    # In 2-D, ‖x − c‖²/σ² ~ χ²₂, so P(‖x − c‖ ≤ 3σ) = 1 − exp(−9/2) = 0.98889;
    # the binomial SE at N=100k is 3.3e-4.
    n = 100_000
    res = mixture_mode_coverage(_mixture_samples(centers, std, n, seed=0), centers, std)
    p = 1 - math.exp(-4.5)
    assert res.high_quality_fraction == pytest.approx(p, abs=4 * math.sqrt(p * (1 - p) / n))
    assert res.modes_covered == res.num_modes == len(centers)
    assert sum(res.counts) == round(res.high_quality_fraction * n)
    assert 0 <= res.kl_to_uniform < 1e-3  # multinomial fluctuation only: E KL ≈ (K − 1)/(2 N_hq) ≤ 1.3e-4


def test_three_of_eight_modes_with_equal_counts():
    samples = np.repeat(RING[:3], 100, axis=0) + 0.005 * np.array([1.0, 0.0])  # half a σ off each centre
    res = mixture_mode_coverage(samples, RING, 0.01)
    assert res.modes_covered == 3
    assert res.high_quality_fraction == 1.0
    assert res.counts == (100, 100, 100, 0, 0, 0, 0, 0)
    assert res.kl_to_uniform == pytest.approx(math.log(8 / 3), rel=1e-12)


def test_threshold_low_quality_samples_and_chunking():
    std = 0.05
    direction = np.array([0.6, 0.8])
    inside = GRID[:4] + 2.9 * std * direction  # within 3σ of modes 0..3
    outside = GRID[4:10] + 3.1 * std * direction  # beyond 3σ of modes 4..9 (and far from all others)
    samples = np.concatenate([inside, outside, [[-3.0, -3.0]]])  # plus one point between modes
    res = mixture_mode_coverage(torch.tensor(samples), torch.tensor(GRID), std)
    assert res.modes_covered == 4
    assert res.high_quality_fraction == pytest.approx(4 / 11)
    assert res.kl_to_uniform == pytest.approx(math.log(25 / 4), rel=1e-12)
    assert mixture_mode_coverage(samples, GRID, std, threshold=3.2).modes_covered == 10
    big = _mixture_samples(GRID, std, 5000, seed=1)
    assert mixture_mode_coverage(big, GRID, std, chunk_size=7) == mixture_mode_coverage(big, GRID, std)


def test_no_high_quality_sample_gives_infinite_kl():
    res = mixture_mode_coverage(np.zeros((50, 2)), RING, 0.01)  # the ring's centre is 100σ from every mode
    assert (res.modes_covered, res.high_quality_fraction, res.kl_to_uniform) == (0, 0.0, math.inf)
    with pytest.raises(ValueError):
        mixture_mode_coverage(np.zeros((0, 2)), RING, 0.01)


def test_kl_to_uniform_closed_forms():
    assert kl_to_uniform([5, 5, 5, 5]) == 0.0
    assert kl_to_uniform([1, 3, 0, 0]) == pytest.approx(0.25 * math.log(1.0) + 0.75 * math.log(3.0), rel=1e-12)
    assert kl_to_uniform([7, 0, 0, 0, 0]) == pytest.approx(math.log(5), rel=1e-12)
    assert kl_to_uniform([0, 0]) == math.inf


def test_class_coverage():
    res = class_coverage(torch.tensor([0] * 5 + [1] * 5), num_classes=10)
    assert res == ClassCoverage(2, 10, kl_to_uniform=pytest.approx(math.log(5), rel=1e-12), counts=(5, 5) + (0,) * 8)
    assert class_coverage(np.arange(1000).repeat(3), 1000).kl_to_uniform == 0.0
    labels = np.random.default_rng(2).integers(0, 1000, size=26_000)  # "perfect" Stacked-MNIST generator
    res = class_coverage(labels, 1000)
    expected = sum(c / 26_000 * math.log(c / 26.0) for c in np.bincount(labels) if c)
    assert res.kl_to_uniform == pytest.approx(expected, rel=1e-10)
    assert 0.015 < res.kl_to_uniform < 0.025  # ≈ (K − 1)/(2N) = 0.0192 (anchors-metrics §2c.7)
    assert class_coverage([], 3).kl_to_uniform == math.inf
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        class_coverage([3, 10], 10)


def test_a_sample_exactly_at_the_threshold_is_high_quality():
    std = 0.25  # 3σ = 0.75: centre ± 0.75 is exact in binary floating point
    offsets = np.array([[0.75, 0.0], [-0.75, 0.0], [0.0, 0.75], [0.0, -0.75]])
    res = mixture_mode_coverage(GRID[:4] + offsets, GRID, std)
    assert (res.modes_covered, res.high_quality_fraction) == (4, 1.0)


def test_distances_stay_exact_far_from_the_origin():
    """Distances to the centres are computed directly, not as ‖x‖² + ‖c‖² − 2x·c, which cannot resolve 3σ = 3e-3
    at 1e6 from the origin."""
    std, direction = 1e-3, np.array([0.6, 0.8])
    centers = GRID + 1e6
    samples = np.concatenate([centers + 2.9 * std * direction, centers + 3.1 * std * direction])
    res = mixture_mode_coverage(samples, centers, std)
    assert (res.modes_covered, res.high_quality_fraction) == (25, 0.5)
