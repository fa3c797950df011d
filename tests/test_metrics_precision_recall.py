"""Tests for metrics.precision_recall against a brute-force O(n²) implementation and support-geometry oracles."""

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist

from metrics.precision_recall import PrecisionRecall, knn_precision_recall


def _bruteforce(real, generated, k):
    """Kynkäänniemi et al. 2019 written directly: sort full distance matrices, skip the self-distance."""
    radius_real = np.sort(cdist(real, real), axis=1)[:, k]
    radius_gen = np.sort(cdist(generated, generated), axis=1)[:, k]
    d = cdist(generated, real)  # generated x real
    precision = np.mean([(d[i] <= radius_real).any() for i in range(len(generated))])
    recall = np.mean([(d[:, j] <= radius_gen).any() for j in range(len(real))])
    return precision, recall


@pytest.mark.parametrize("k", [1, 3, 5])
def test_matches_bruteforce(k):
    rng = np.random.default_rng(k)
    real = rng.normal(size=(150, 3))
    generated = 0.8 * rng.normal(size=(120, 3)) + 1.0
    res = knn_precision_recall(real, generated, k=k, chunk_size=37)
    precision, recall = _bruteforce(real, generated, k)
    assert 0 < precision < 1 and 0 < recall < 1 and precision != recall  # non-trivial; a swap would be caught
    assert (res.precision, res.recall, res.k) == (pytest.approx(precision, abs=1e-12),
                                                  pytest.approx(recall, abs=1e-12), k)


def test_matches_bruteforce_in_high_dimension_with_torch_inputs():
    g = torch.Generator().manual_seed(0)
    real, generated = torch.rand(200, 784, generator=g), 0.9 * torch.rand(180, 784, generator=g) + 0.05
    res = knn_precision_recall(real, generated)
    precision, recall = _bruteforce(real.double().numpy(), generated.double().numpy(), 3)
    assert (res.precision, res.recall) == (pytest.approx(precision, abs=1e-12), pytest.approx(recall, abs=1e-12))


def test_identical_and_same_distribution_samples():
    rng = np.random.default_rng(10)
    x = rng.normal(size=(3000, 2))
    assert knn_precision_recall(x, x) == PrecisionRecall(1.0, 1.0, 3)  # each point lies in its own ball
    res = knn_precision_recall(x, rng.normal(size=(3000, 2)))
    assert res.precision > 0.95 and res.recall > 0.95


def test_balls_are_closed_for_duplicated_points():
    # Four copies of each point: k=3 radii are 0, and a ball of radius 0 still contains its centre (‖·‖ ≤ r,
    # as in the paper and torch-fidelity). Matters for discrete data and collapsed generators.
    x = np.repeat(np.random.default_rng(13).normal(size=(50, 2)), 4, axis=0)
    assert knn_precision_recall(x, x[::-1].copy()) == PrecisionRecall(1.0, 1.0, 3)


def test_far_away_samples_score_zero():
    x = np.random.default_rng(11).normal(size=(2000, 2))
    assert knn_precision_recall(x, x + 100.0) == PrecisionRecall(0.0, 0.0, 3)


def test_half_support_gives_full_precision_and_half_recall():
    # Real: uniform on [0,1]^2. Generated: uniform on the left half. Generated balls (k=3 radius ~0.015 at this
    # density) reach past x = 0.5 by about one radius, so recall ≈ 0.5 + O(0.015); precision loses only points
    # whose real-ball coverage has gaps, ~1 %.
    rng = np.random.default_rng(12)
    real = rng.random((8000, 2))
    generated = rng.random((4000, 2)) * np.array([0.5, 1.0])
    res = knn_precision_recall(real, generated)
    assert res.precision > 0.97
    assert res.recall == pytest.approx(0.5, abs=0.03)


def test_rejects_bad_shapes():
    with pytest.raises(ValueError):
        knn_precision_recall(np.zeros((10, 2)), np.zeros((10, 3)))
    with pytest.raises(ValueError):
        knn_precision_recall(np.zeros((3, 2)), np.zeros((10, 2)), k=3)


def test_low_dimensional_points_far_from_the_origin_match_bruteforce():
    """In low dimension the distances are computed directly in float64, never as ‖a‖² + ‖b‖² − 2a·b, which loses
    every digit of a 1e-3 spread at 1e4 from the origin."""
    rng = np.random.default_rng(5)
    real = 1e4 + 1e-3 * rng.normal(size=(300, 2))
    generated = 1e4 + 1e-3 * (0.8 * rng.normal(size=(250, 2)) + 1.0)
    res = knn_precision_recall(torch.tensor(real), torch.tensor(generated), k=3)
    assert (res.precision, res.recall) == pytest.approx(_bruteforce(real, generated, 3), abs=1e-12)
