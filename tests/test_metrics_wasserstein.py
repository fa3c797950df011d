"""Tests for metrics.wasserstein: translation and assignment oracles, convergence checking, lazy fallback."""

import numpy as np
import ot
import pytest
import torch
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist

from metrics.wasserstein import (
    OTNotConvergedError,
    cost_matrix,
    exact_solver,
    exact_wasserstein,
    sliced_wasserstein,
)


def _cloud(n, d=2, seed=0):
    return np.random.default_rng(seed).normal(size=(n, d))


@pytest.mark.parametrize("p", [1, 2])
def test_translation_by_3_4_gives_5(p):
    x = _cloud(300)
    assert exact_wasserstein(x, x + np.array([3.0, 4.0]), p=p) == pytest.approx(5.0, abs=1e-9)
    xt = torch.tensor(x)
    assert exact_wasserstein(xt, xt + torch.tensor([3.0, 4.0]), p=p) == pytest.approx(5.0, abs=1e-9)


def test_matches_optimal_assignment_from_scipy():
    x, y = _cloud(150, d=3, seed=1), _cloud(150, d=3, seed=2) + 0.3
    sq = cdist(x, y, "sqeuclidean")
    rows, cols = linear_sum_assignment(sq)
    assert exact_wasserstein(x, y, p=2) == pytest.approx(np.sqrt(sq[rows, cols].mean()), rel=1e-10)
    eu = cdist(x, y)
    rows, cols = linear_sum_assignment(eu)
    assert exact_wasserstein(x, y, p=1) == pytest.approx(eu[rows, cols].mean(), rel=1e-10)


@pytest.mark.parametrize(("p", "metric"), [(1, "euclidean"), (2, "sqeuclidean")])
def test_cost_matrix_is_ot_dist_bit_for_bit(p, metric):
    # The in-place cost matrix must not move any exact W: it is POT's own arithmetic, and the distances are right.
    x, y = _cloud(300, d=3, seed=7) * 5, _cloud(200, d=3, seed=8)
    cost = cost_matrix(x, y, p)
    np.testing.assert_array_equal(cost, ot.dist(x, y, metric=metric))
    np.testing.assert_allclose(cost, cdist(x, y, metric), rtol=1e-10, atol=1e-12)


def test_uniform_weights_with_unequal_sizes():
    # Repeating every point of y twice leaves its empirical distribution unchanged.
    x, y = _cloud(80, seed=3), _cloud(60, seed=4) + 1.0
    for p in (1, 2):
        doubled = exact_wasserstein(x, np.concatenate([y, y]), p=p)
        assert doubled == pytest.approx(exact_wasserstein(x, y, p=p), rel=1e-9)


def test_images_are_flattened_per_sample():
    x = _cloud(40, d=12, seed=5)
    y = _cloud(40, d=12, seed=6)
    flat = exact_wasserstein(x, y)
    assert exact_wasserstein(x.reshape(40, 1, 3, 4), y.reshape(40, 1, 3, 4)) == pytest.approx(flat, rel=1e-12)


@pytest.mark.parametrize("max_dense_bytes", [float("inf"), 0])  # dense ot.emd2, then forced ot.lp.emd2_lazy
def test_non_convergence_raises(max_dense_bytes):
    x, y = _cloud(500, seed=7), _cloud(500, seed=8) + 0.5
    with pytest.raises(OTNotConvergedError, match="num_iter_max=10;"):
        exact_wasserstein(x, y, num_iter_max=10, max_dense_bytes=max_dense_bytes)
    assert issubclass(OTNotConvergedError, RuntimeError)


def test_lazy_fallback_matches_dense():
    x, y = _cloud(300, seed=9), _cloud(250, seed=10) * 1.5
    for p in (1, 2):
        dense = exact_wasserstein(x, y, p=p, max_dense_bytes=float("inf"))
        assert exact_wasserstein(x, y, p=p, max_dense_bytes=0) == pytest.approx(dense, rel=1e-9)


def test_rejects_bad_arguments():
    x = _cloud(10)
    with pytest.raises(ValueError, match="p=1 or p=2"):
        exact_wasserstein(x, x, p=3)
    with pytest.raises(ValueError, match="same dimension"):
        exact_wasserstein(x, _cloud(10, d=3))


@pytest.mark.parametrize("p", [1, 2])
def test_sliced_equals_exact_in_one_dimension(p):
    # In 1-D every projection is ±identity, so SW_p = W_p exactly.
    x, y = _cloud(200, d=1, seed=11), _cloud(200, d=1, seed=12) * 2 + 1
    assert sliced_wasserstein(x, y, n_projections=5, p=p) == pytest.approx(exact_wasserstein(x, y, p=p), rel=1e-9)


def test_sliced_translation_and_seeding():
    # Translate by t: every projected W2 is |θ·t|, so SW2^2 = E_θ (θ·t)^2 = |t|^2 / d = 12.5 in 2-D.
    # With 4000 directions the Monte-Carlo sd of SW2^2 is 25·sqrt(1/8)/sqrt(4000) = 0.14 (1.1 %).
    x = _cloud(500, seed=13)
    sw = sliced_wasserstein(x, x + np.array([3.0, 4.0]), n_projections=4000, seed=0)
    assert sw**2 == pytest.approx(12.5, rel=0.05)
    assert sliced_wasserstein(x, x + 1, seed=3) == sliced_wasserstein(x, x + 1, seed=3)
    assert sliced_wasserstein(x, x, seed=3) == 0.0


def test_the_default_iteration_cap_solves_3000_points_exactly():
    """With POT's own cap (1e5) the network simplex stops early from about 2,000 points in 2-D and returns a wrong
    cost; the default cap must carry a pipeline-sized problem to optimality, the optimal assignment's cost."""
    x, y = _cloud(3000, seed=1), _cloud(3000, seed=2) + 0.5
    cost = cdist(x, y, "sqeuclidean")
    rows, cols = linear_sum_assignment(cost)
    assert exact_wasserstein(x, y, p=2) == pytest.approx(cost[rows, cols].mean() ** 0.5, rel=1e-9)


def test_the_dense_solver_is_chosen_exactly_up_to_its_memory_estimate():
    need = 4 * 100 * 100 * 8  # cost matrix, plan and copies, in float64
    assert exact_solver(100, 100, max_dense_bytes=need) == "emd2"
    assert exact_solver(100, 100, max_dense_bytes=need - 1) == "emd2_lazy"


def test_sliced_wasserstein_draws_its_projections_from_the_seed():
    x, y = _cloud(200, d=5, seed=3), 1.5 * _cloud(200, d=5, seed=4)
    a, b = (sliced_wasserstein(x, y, n_projections=20, seed=s) for s in (1, 2))
    assert a != b and sliced_wasserstein(x, y, n_projections=20, seed=1) == a
