"""Wasserstein distances between two empirical distributions (uniform weights), via POT.

Exact W_p solves the optimal-transport linear program with POT's network simplex (Bonneel et al. 2011) and
checks that the solver reached optimality: with POT's default iteration cap it silently returns a wrong cost
(+37 % at n = 10k in 2-D), so the cap defaults to 1e7 and non-convergence raises ``OTNotConvergedError``.
Finite-sample W is biased upward and depends on n (Fournier & Guillin 2015): always report n and a
data-vs-data baseline at the same n.
"""

from __future__ import annotations

import warnings

import numpy as np

from metrics._arrays import as_float64


class OTNotConvergedError(RuntimeError):
    """The exact OT solver stopped before optimality; its cost would be wrong, so no number is returned."""


def _flat(x) -> np.ndarray:
    x = as_float64(x)
    return x.reshape(len(x), -1)


_METRIC = {1: "euclidean", 2: "sqeuclidean"}
_RESULT = {0: "infeasible problem", 2: "unbounded problem", 3: "iteration cap reached before optimality"}
MAX_DENSE_BYTES = 8 * 2**30


def cost_matrix(xs: np.ndarray, ys: np.ndarray, p: int) -> np.ndarray:
    """The n×m cost matrix ‖x_i − y_j‖^p (p ∈ {1, 2}) of float64 arrays: ``ot.dist``'s arithmetic
    (‖x‖² + ‖y‖² − 2·xᵀy, clipped at 0, square root for p = 1), bit for bit, computed in place. ``ot.dist``
    allocates three to four n×m temporaries; at n = m = 10,000 in 2-D it took 3.0–5.3 s against 0.5 s in place
    (Intel Xeon, 2 cores)."""
    cost = xs @ ys.T
    cost *= -2
    cost += np.einsum("ij,ij->i", xs, xs)[:, None]
    cost += np.einsum("ij,ij->i", ys, ys)[None, :]
    np.maximum(cost, 0, out=cost)
    if p == 1:
        np.sqrt(cost, out=cost)
    return cost


def exact_solver(n: int, m: int, max_dense_bytes: float = MAX_DENSE_BYTES) -> str:
    """The POT solver `exact_wasserstein` runs for n against m points: "emd2" (dense) when its memory, about
    4·n·m·8 bytes (cost matrix, plan, copies; 1.3 GB measured at n = m = 6,000 in 2-D, against 1.15 GB estimated),
    is at most ``max_dense_bytes``, else "emd2_lazy"."""
    return "emd2" if 4 * n * m * 8 <= max_dense_bytes else "emd2_lazy"


def exact_wasserstein(
    x,
    y,
    p: int = 2,
    *,
    num_iter_max: int = 10_000_000,
    max_dense_bytes: float = MAX_DENSE_BYTES,
) -> float:
    """Exact W_p (p ∈ {1, 2}) between the empirical distributions of x (n×d) and y (m×d) with uniform weights.

    ``W_p = (min_{γ ∈ Π(1/n, 1/m)} Σ_ij γ_ij ‖x_i − y_j‖^p)^{1/p}``: W1 uses the Euclidean cost, W2 the square
    root of the optimal squared-Euclidean cost (Villani 2009; network simplex of Bonneel et al. 2011 via
    ``ot.emd2``). For n = m the optimal plan is a permutation, so W2² is the mean squared distance of the
    optimal assignment. Inputs with more than 2 axes are flattened per sample.

    The dense solver's memory grows as n·m; above ``max_dense_bytes`` (``exact_solver``) it switches to
    ``ot.lp.emd2_lazy``, which computes costs on the fly in O(n + m) memory at about 1.4 times the time (n = 5,000
    in 2-D).
    ``num_iter_max`` is POT's ``numItermax``. Raises ``OTNotConvergedError`` unless POT reports
    ``result_code == 1`` (optimal). Single-threaded; ``python -m bench.perf`` times it.
    """
    if p not in _METRIC:
        raise ValueError(f"exact_wasserstein supports p=1 or p=2, got p={p}")
    xs, ys = _flat(x), _flat(y)
    if xs.shape[1] != ys.shape[1]:
        raise ValueError(f"x and y must have the same dimension, got {xs.shape[1]} and {ys.shape[1]}")
    import ot  # here, not at the top: POT's import (scikit-learn's with it) takes about a second, which the
    # pipeline's sampling jobs, importing this module through bench.evaluate, do not need

    n, m = len(xs), len(ys)
    a, b = np.full(n, 1.0 / n), np.full(m, 1.0 / m)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="numItermax reached")  # we raise our own error below
        if exact_solver(n, m, max_dense_bytes) == "emd2":
            cost, log = ot.emd2(a, b, cost_matrix(xs, ys, p), numItermax=num_iter_max, log=True)
        else:
            cost, log = ot.lp.emd2_lazy(
                xs, ys, a, b, metric=_METRIC[p], numItermax=num_iter_max, log=True, return_matrix=False
            )
    code = int(log["result_code"])
    if code != 1:
        raise OTNotConvergedError(
            f"exact OT (n={n}, m={m}, d={xs.shape[1]}) failed: {_RESULT.get(code, f'result_code {code}')} with "
            f"num_iter_max={num_iter_max}; raise num_iter_max (POT numItermax) or use fewer samples"
        )
    cost = max(float(cost), 0.0)
    return cost if p == 1 else cost**0.5


def sliced_wasserstein(x, y, n_projections: int = 200, seed: int = 0, p: int = 2) -> float:
    """Monte-Carlo sliced Wasserstein distance (Rabin et al. 2011; Bonneel et al. 2015).

    ``SW_p = (E_θ W_p^p(θᵀ# μ_x, θᵀ# μ_y))^{1/p}`` with θ uniform on the unit sphere, estimated with
    ``n_projections`` seeded random directions and exact 1-D transport (sorting) via
    ``ot.sliced_wasserstein_distance``. A fast cross-check of exact W_p; not equal to it (SW_p ≤ W_p).
    """
    import ot  # see exact_wasserstein

    xs, ys = _flat(x), _flat(y)
    return float(ot.sliced_wasserstein_distance(xs, ys, n_projections=n_projections, p=p, seed=seed))
