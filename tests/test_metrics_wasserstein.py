"""Tests for metrics.wasserstein: translation and assignment oracles, convergence checking, the multiscale and lazy
solvers against the dense one."""

import numpy as np
import ot
import pytest
import scipy.sparse
import torch
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist

import metrics.wasserstein as wasserstein
from metrics.wasserstein import (
    SOLVERS,
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


@pytest.fixture
def small_dense_base(monkeypatch):
    """The multiscale solver recurses to its dense base at 100 × 100 pairs, so that a few hundred points take it
    through two coarser levels and the repair loop within a test's time."""
    monkeypatch.setattr(wasserstein, "_DENSE_PAIRS", 100**2)


@pytest.mark.parametrize("solver", SOLVERS)
def test_non_convergence_raises(solver, small_dense_base):
    x, y = _cloud(500, seed=7), _cloud(500, seed=8) + 0.5
    with pytest.raises(OTNotConvergedError, match="num_iter_max=10;"):
        exact_wasserstein(x, y, num_iter_max=10, solver=solver)
    assert issubclass(OTNotConvergedError, RuntimeError)


def _pixels(n, seed):  # MNIST-like: 784-d, mostly zeros
    rng = np.random.default_rng(seed)
    return rng.random((n, 784)) * (rng.random((n, 784)) < 0.2)


@pytest.mark.parametrize(
    ("x", "y"),
    [
        (_cloud(300, seed=9), _cloud(250, seed=10) * 1.5),  # n ≠ m
        (_cloud(400, seed=11), _cloud(400, seed=12) + np.array([2.0, 0.0])),  # the harness's shifted Gaussians
        (np.repeat(_cloud(60, seed=13), 5, axis=0), _cloud(290, seed=14).round(1)),  # duplicates, ties in cost
        (_pixels(300, 15), _pixels(260, 16)),
    ],
    ids=["unequal", "shifted", "duplicates", "784-d"],
)
@pytest.mark.parametrize("solver", ["multiscale", "emd2_lazy"])
def test_every_solver_gives_the_dense_optimum(x, y, solver, small_dense_base):
    for p in (1, 2):
        dense = exact_wasserstein(x, y, p=p, solver="emd2")
        assert exact_wasserstein(x, y, p=p, solver=solver) == pytest.approx(dense, rel=1e-9)


def test_multiscale_keeps_zero_cost_pairs(small_dense_base):
    # A permutation of the same integer points (duplicates among them) is at distance 0, and their costs are exact
    # zeros: the sparse cost matrix must keep them rather than drop them as implicit zeros.
    x = np.random.default_rng(17).integers(0, 30, size=(500, 2)).astype(float)
    y = x[np.random.default_rng(0).permutation(500)]
    for p in (1, 2):
        assert exact_wasserstein(x, y, p=p, solver="multiscale") == 0.0


@pytest.mark.parametrize("p", [1, 2])
def test_rounding_never_makes_a_cost_negative(p):
    # ‖x‖² + ‖y‖² − 2xᵀy of coincident real-valued points rounds to about ±1e-13: clipped at 0, as ot.dist does,
    # or W1's square root would be NaN (and POT's optimum silently wrong) for a distribution and its permutation.
    x = 5 * _cloud(300, d=3)
    assert cost_matrix(x, x, p).min() == 0.0
    y = x[np.random.default_rng(1).permutation(300)]
    for solver in SOLVERS:
        assert exact_wasserstein(x, y, p=p, solver=solver) < 1e-6


def test_multiscale_repairs_a_candidate_set_that_misses_the_optimum(small_dense_base, monkeypatch):
    """One candidate per point: the first sparse optimum is dearer than the dense one, and only the repair rounds,
    adding pairs of negative reduced cost, bring it down to the dense optimum."""
    monkeypatch.setattr(wasserstein, "_CANDIDATES", 1)
    solved = []
    emd = ot.emd

    def recording_emd(a, b, cost, **kwargs):
        plan, log = emd(a, b, cost, **kwargs)
        solved.append((len(a), len(b), log["cost"]))
        return plan, log

    monkeypatch.setattr(ot, "emd", recording_emd)
    x, y = _cloud(400, seed=18), _cloud(350, seed=19) + 1.0
    dense = exact_wasserstein(x, y, solver="emd2") ** 2
    assert exact_wasserstein(x, y, solver="multiscale") ** 2 == pytest.approx(dense, rel=1e-12)
    top = [cost for n, m, cost in solved if (n, m) == (400, 350)]
    assert len(top) >= 2 and top[0] > dense * (1 + 1e-6) and top[-1] == pytest.approx(dense, rel=1e-12)


def test_north_west_corner_support_is_feasible():
    assert [p.tolist() for p in wasserstein._north_west_corner(3, 2)] == [[0, 1, 1, 2], [0, 0, 1, 1]]
    for n, m in [(7, 7), (5, 12), (12, 5), (1, 9)]:
        rows, cols = wasserstein._north_west_corner(n, m)
        assert len(rows) <= n + m - 1
        support = scipy.sparse.coo_array((np.ones(len(rows)), (rows, cols)), shape=(n, m))
        _, log = ot.emd(np.full(n, 1 / n), np.full(m, 1 / m), support, log=True)
        assert log["result_code"] == 1


def test_unknown_solver_is_named():
    with pytest.raises(ValueError, match="unknown exact OT solver 'simplex'; use one of emd2, multiscale, emd2_lazy"):
        exact_wasserstein(_cloud(10), _cloud(10), solver="simplex")


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


def test_the_solver_is_the_fastest_whose_memory_estimate_fits():
    need = 6 * 100 * 100 * 8  # cost matrix, plan and POT's copies, in float64
    assert exact_solver(100, 100, max_bytes=need) == "emd2"
    assert exact_solver(100, 100, max_bytes=need - 1) == "emd2_lazy"
    assert exact_solver(2000, 2000) == "emd2" and exact_solver(2001, 2000) == "multiscale"
    assert exact_solver(2001, 2000, p=1) == "emd2" and exact_solver(2001, 2000, p=1, max_bytes=need) == "emd2_lazy"
    for p in (1, 2):
        assert exact_solver(100_000, 100_000, p) == "multiscale"
        assert exact_solver(100_000, 100_000, p, max_bytes=2**30) == "emd2_lazy"


def test_sliced_wasserstein_draws_its_projections_from_the_seed():
    x, y = _cloud(200, d=5, seed=3), 1.5 * _cloud(200, d=5, seed=4)
    a, b = (sliced_wasserstein(x, y, n_projections=20, seed=s) for s in (1, 2))
    assert a != b and sliced_wasserstein(x, y, n_projections=20, seed=1) == a
