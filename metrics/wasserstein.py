"""Wasserstein distances between two empirical distributions (uniform weights), via POT.

Exact W_p solves the optimal-transport linear program with POT's network simplex (Bonneel et al. 2011) and
checks that the solver reached optimality: with POT's default iteration cap it silently returns a wrong cost
(+37 % at n = 10k in 2-D), so the cap defaults to 1e7 and non-convergence raises ``OTNotConvergedError``.
Finite-sample W is biased upward and depends on n (Fournier & Guillin 2015): always report n and a
data-vs-data baseline at the same n.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import numpy as np

from metrics._arrays import as_float64


class OTNotConvergedError(RuntimeError):
    """The exact OT solver stopped before optimality; its cost would be wrong, so no number is returned."""


def _flat(x) -> np.ndarray:
    x = as_float64(x)
    return x.reshape(len(x), -1)


_METRIC = {1: "euclidean", 2: "sqeuclidean"}
_RESULT = {0: "infeasible problem", 2: "unbounded problem", 3: "iteration cap reached before optimality"}
MAX_OT_BYTES = 8 * 2**30
SOLVERS = ("emd2", "multiscale", "emd2_lazy")
# The multiscale solver (`_multiscale`): problems of at most _DENSE_PAIRS pairs are solved densely; each coarser
# level keeps _KEEP of the points; each point starts with its _CANDIDATES cheapest pairs in reduced cost, and each
# repair round adds a violating row's _REPAIR most negative ones (tuned on shifted 2-D Gaussians:
# docs/performance.md).
_DENSE_PAIRS, _KEEP, _CANDIDATES, _REPAIR = 2000**2, 0.4, 30, 30
_BLOCK = 2**21  # entries per scanned block of the cost matrix (float64)


def cost_matrix(xs: np.ndarray, ys: np.ndarray, p: int) -> np.ndarray:
    """The n×m cost matrix ‖x_i − y_j‖^p (p ∈ {1, 2}) of float64 arrays: ``ot.dist``'s arithmetic
    (‖x‖² + ‖y‖² − 2·xᵀy, clipped at 0, square root for p = 1), bit for bit, computed in place: ``ot.dist``
    allocates three to four n×m temporaries, which dominate its time and memory at the evaluation's n."""
    cost = xs @ ys.T
    cost *= -2
    cost += np.einsum("ij,ij->i", xs, xs)[:, None]
    cost += np.einsum("ij,ij->i", ys, ys)[None, :]
    np.maximum(cost, 0, out=cost)
    if p == 1:
        np.sqrt(cost, out=cost)
    return cost


def _memory(solver: str, n: int, m: int) -> float:
    """Bytes "emd2" or "multiscale" needs for n against m points, from the peak resident memory W2 added in 2-D.
    Dense: 6·n·m·8 (cost matrix, plan, POT's copies). Multiscale: its dense base problem, two scanned blocks and
    100 pairs per point at 100 bytes each (POT's graph and ours). Both bounds are fitted to measured peaks
    (docs/performance.md)."""
    if solver == "emd2":
        return 6 * n * m * 8
    return 6 * min(n * m, _DENSE_PAIRS) * 8 + 2 * _BLOCK * 8 + 100 * (n + m) * 100


def exact_solver(n: int, m: int, p: int = 2, max_bytes: float = MAX_OT_BYTES) -> str:
    """The fastest solver for W_p between n and m points whose memory (`_memory`) is at most ``max_bytes``.

    W2 above _DENSE_PAIRS pairs: "multiscale". W1: POT's dense "emd2" wherever it fits, since the Euclidean cost
    leaves many near-ties in reduced cost and so many repair rounds for the multiscale solver. POT's "emd2_lazy"
    (O(n + m) memory) where neither fits. The timings behind this choice are in docs/performance.md."""
    fast = ("emd2", "multiscale") if p == 1 or n * m <= _DENSE_PAIRS else ("multiscale", "emd2")
    return next((s for s in fast if _memory(s, n, m) <= max_bytes), "emd2_lazy")


def _checked(log: dict, n: int, m: int, d: int, num_iter_max: int) -> dict:
    code = int(log["result_code"])
    if code != 1:
        raise OTNotConvergedError(
            f"exact OT (n={n}, m={m}, d={d}) failed: {_RESULT.get(code, f'result_code {code}')} with "
            f"num_iter_max={num_iter_max}; raise num_iter_max (POT numItermax) or use fewer samples"
        )
    return log


def _dense(xs: np.ndarray, ys: np.ndarray, p: int, num_iter_max: int) -> tuple[float, np.ndarray, np.ndarray]:
    """(W_p^p, u, v) from POT's dense network simplex on the whole cost matrix."""
    import ot

    n, m = len(xs), len(ys)
    cost, log = ot.emd2(ot.unif(n), ot.unif(m), cost_matrix(xs, ys, p), numItermax=num_iter_max, log=True)
    _checked(log, n, m, xs.shape[1], num_iter_max)
    return float(cost), log["u"], log["v"]


def _blocks(xs: np.ndarray, ys: np.ndarray, p: int) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, cost block) over row blocks of about _BLOCK entries: O(_BLOCK) memory, never n·m. Every scan of
    a problem uses these same blocks, so each c_ij has the same bits wherever it is read."""
    step = max(1, _BLOCK // len(ys))
    for r0 in range(0, len(xs), step):
        yield r0, cost_matrix(xs[r0 : r0 + step], ys, p)


def _cheapest(
    xs: np.ndarray, ys: np.ndarray, p: int, shift: np.ndarray, k: int, below: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One scan: each row's k pairs of smallest c_ij − shift_j as (rows, cols, costs) (where ``below`` is given,
    only those with c_ij − shift_j < below_i), and each row's min_j (c_ij − shift_j)."""
    rows, cols, costs, mins = [], [], [], []
    for r0, block in _blocks(xs, ys, p):
        shifted = block - shift
        mins.append(shifted.min(axis=1))
        live = np.arange(len(block)) if below is None else np.flatnonzero(mins[-1] < below[r0 : r0 + len(block)])
        if k and len(live):
            shifted, block = shifted[live], block[live]
            pick = np.argpartition(shifted, k - 1, axis=1)[:, :k] if k < len(ys) else np.indices(block.shape)[1]
            keep = np.ones(pick.shape, bool)
            if below is not None:
                keep = np.take_along_axis(shifted, pick, 1) < below[r0 + live, None]
            rows.append(np.broadcast_to(r0 + live[:, None], pick.shape)[keep])
            cols.append(pick[keep])
            costs.append(np.take_along_axis(block, pick, 1)[keep])
    flat = (np.concatenate(t) if t else np.zeros(0, dtype) for t, dtype in ((rows, int), (cols, int), (costs, float)))
    return *flat, np.concatenate(mins)


def _gather(xs: np.ndarray, ys: np.ndarray, p: int, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """c_ij of pairs sorted by row, read from the same blocks as every scan."""
    costs = []
    for r0, block in _blocks(xs, ys, p):
        lo, hi = np.searchsorted(rows, [r0, r0 + len(block)])
        costs.append(block[rows[lo:hi] - r0, cols[lo:hi]])
    return np.concatenate(costs)


def _north_west_corner(n: int, m: int) -> tuple[np.ndarray, np.ndarray]:
    """The support of the north-west-corner plan between uniform weights (n + m − 1 pairs at most): a feasible
    plan, so that the sparse problem always has one. On the mass line [0, n·m), row i holds [i·m, (i+1)·m) and
    column j holds [j·n, (j+1)·n); each piece between consecutive boundaries is one pair."""
    starts = np.union1d(np.arange(n, dtype=np.int64) * m, np.arange(m, dtype=np.int64) * n)
    return starts // m, starts // n


def _multiscale(xs: np.ndarray, ys: np.ndarray, p: int, num_iter_max: int, rng: np.random.Generator):
    """(W_p^p, u, v): the exact optimal cost and dual potentials, by certified column generation on a sparse set
    of pairs (after Schmitzer 2016, "A sparse multiscale algorithm for dense optimal transport").

    1. Solve the same problem on a random _KEEP of each side (recursively; densely at _DENSE_PAIRS or fewer), and
       c-transform its potentials v' to all points: u_i = min_j' (c_ij' − v'_j'), then v_j = min_i (c_ij − u_i),
       which are dual feasible (c_ij − u_i − v_j ≥ 0).
    2. Candidates: each row's and each column's _CANDIDATES smallest reduced costs c_ij − u_i − v_j, and the
       north-west-corner support so that the sparse problem is feasible.
    3. Solve the sparse problem with POT's network simplex (``ot.emd`` on a scipy sparse cost), scan all pairs'
       reduced costs under its potentials, add each violating row's _REPAIR most negative ones, and repeat.
    When no reduced cost is below −tol (tol = 1e-9 × the largest cost in the sparse set), the potentials are dual
    feasible within tol, so the dense optimum is at least the sparse one − tol (per unit mass) and, the sparse plan
    being feasible, at most the sparse one. Memory is O(_BLOCK + pairs), never n·m.
    """
    import ot
    from scipy.sparse import coo_array

    n, m, d = len(xs), len(ys), xs.shape[1]
    if n * m <= _DENSE_PAIRS:
        return _dense(xs, ys, p, num_iter_max)

    keep_x = np.sort(rng.choice(n, max(1, round(_KEEP * n)), replace=False))
    keep_y = np.sort(rng.choice(m, max(1, round(_KEEP * m)), replace=False))
    _, _, v_coarse = _multiscale(xs[keep_x], ys[keep_y], p, num_iter_max, rng)
    u = _cheapest(xs, ys[keep_y], p, v_coarse, 0)[3]
    # A column's order in c_ij − u_i is its order in reduced cost: a scan of the transpose gives v and them.
    col_cols, col_rows, _, v = _cheapest(ys, xs, p, u, _CANDIDATES)
    row_rows, row_cols, _, _ = _cheapest(xs, ys, p, v, _CANDIDATES)
    nw_rows, nw_cols = _north_west_corner(n, m)
    keys = np.unique(np.concatenate([col_rows * m + col_cols, row_rows * m + row_cols, nw_rows * m + nw_cols]))
    rows, cols = np.divmod(keys, m)
    costs = _gather(xs, ys, p, rows, cols)  # the transpose's arithmetic differs in the last bits

    a, b = ot.unif(n), ot.unif(m)
    while True:
        _, log = ot.emd(a, b, coo_array((costs, (rows, cols)), shape=(n, m)), numItermax=num_iter_max, log=True)
        u, v = _checked(log, n, m, d, num_iter_max)["u"], log["v"]
        tol = 1e-9 * costs.max()
        new_rows, new_cols, new_costs, _ = _cheapest(xs, ys, p, v, _REPAIR, below=u - tol)
        if not len(new_rows):
            return float(log["cost"]), u, v
        new_keys = new_rows * m + new_cols
        fresh = ~np.isin(new_keys, keys, assume_unique=True)
        if not fresh.any():  # the solver's potentials violate its own pairs' constraints: rounding beyond tol
            raise OTNotConvergedError(
                f"exact OT (n={n}, m={m}, d={d}) failed: the sparse solution's potentials are infeasible on its own "
                f"pairs beyond tol={tol:.3g}; use the dense solver (exact_wasserstein(..., solver='emd2'))"
            )
        keys, rows, cols, costs = (
            np.concatenate([t, new[fresh]])
            for t, new in ((keys, new_keys), (rows, new_rows), (cols, new_cols), (costs, new_costs))
        )


def exact_wasserstein(
    x,
    y,
    p: int = 2,
    *,
    num_iter_max: int = 10_000_000,
    solver: str | None = None,
) -> float:
    """Exact W_p (p ∈ {1, 2}) between the empirical distributions of x (n×d) and y (m×d) with uniform weights.

    ``W_p = (min_{γ ∈ Π(1/n, 1/m)} Σ_ij γ_ij ‖x_i − y_j‖^p)^{1/p}``: W1 uses the Euclidean cost, W2 the square
    root of the optimal squared-Euclidean cost (Villani 2009; network simplex of Bonneel et al. 2011 via POT).
    For n = m the optimal plan is a permutation, so W2² is the mean squared distance of the optimal assignment.
    Inputs with more than 2 axes are flattened per sample.

    ``solver`` (default: `exact_solver`'s choice under ``MAX_OT_BYTES``) is one of ``SOLVERS``: "emd2", POT's
    dense solver (n·m memory); "multiscale", the same optimum from sparse problems, certified on all pairs
    (`_multiscale`; O(n + m) memory above its dense base problem); "emd2_lazy", POT's solver computing
    costs on the fly (O(n + m) memory, slower than dense).
    ``num_iter_max`` is POT's ``numItermax``. Raises ``OTNotConvergedError`` unless POT reports
    ``result_code == 1`` (optimal). Single-threaded.
    """
    if p not in _METRIC:
        raise ValueError(f"exact_wasserstein supports p=1 or p=2, got p={p}")
    xs, ys = _flat(x), _flat(y)
    if xs.shape[1] != ys.shape[1]:
        raise ValueError(f"x and y must have the same dimension, got {xs.shape[1]} and {ys.shape[1]}")
    n, m = len(xs), len(ys)
    solver = exact_solver(n, m, p) if solver is None else solver
    if solver not in SOLVERS:
        raise ValueError(f"unknown exact OT solver {solver!r}; use one of {', '.join(SOLVERS)}")
    import ot  # here, not at the top: POT's import (scikit-learn's with it) is slow, and the pipeline's sampling
    # jobs load this module without needing it

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="numItermax reached")  # we raise our own error
        if solver == "multiscale":
            cost = _multiscale(xs, ys, p, num_iter_max, np.random.default_rng(0))[0]
        elif solver == "emd2":
            cost = _dense(xs, ys, p, num_iter_max)[0]
        else:
            cost, log = ot.lp.emd2_lazy(
                xs, ys, ot.unif(n), ot.unif(m), metric=_METRIC[p], numItermax=num_iter_max, log=True,
                return_matrix=False,
            )
            _checked(log, n, m, xs.shape[1], num_iter_max)
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
