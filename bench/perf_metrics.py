"""Time each metric of ``metrics/`` at its default sample size on this machine and print a Markdown table.

Usage: ``python -m bench.perf_metrics [--quick]`` (``--quick`` skips the two slowest rows, exact W at n = 10,000).
Data are synthetic and seeded: 2-D N(0, I) vs N(0.5·1, I); "784-D" MNIST-like pixels U(0,1)·Bernoulli(0.2);
128-d Gaussian features. Exact W runs POT's single-threaded network simplex and needs about 4·n²·8 bytes
(≈ 3.2 GB at n = 10,000); "converged" is "no" when it raised ``OTNotConvergedError``.
"""

from __future__ import annotations

import argparse
import time
from typing import Callable

import numpy as np
import torch

from metrics.fid import fid, frechet_distance
from metrics.modes import mixture_mode_coverage
from metrics.precision_recall import knn_precision_recall
from metrics.wasserstein import OTNotConvergedError, exact_wasserstein, sliced_wasserstein


def _time(fn: Callable[[], object]) -> tuple[float, str, str]:
    """Wall-clock seconds, convergence flag and value of one call."""
    t0 = time.perf_counter()
    try:
        value, converged = fn(), "yes"
    except OTNotConvergedError:
        value, converged = None, "no"
    seconds = time.perf_counter() - t0
    if isinstance(value, float):
        value = f"{value:.4g}"
    elif value is not None:
        value = ", ".join(f"{k}={v:.4g}" for k, v in vars(value).items() if isinstance(v, (int, float)))
    return seconds, converged, value or ""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="skip exact W at n=10,000")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)

    def points(n: int) -> tuple[np.ndarray, np.ndarray]:
        return rng.normal(size=(n, 2)), rng.normal(size=(n, 2)) + 0.5

    def pixels(n: int) -> np.ndarray:
        return rng.random((n, 784)) * (rng.random((n, 784)) < 0.2)

    x5k, y5k = points(5000)
    x10k, y10k = points(10_000)
    p2k, q2k = pixels(2000), pixels(2000)
    f_a, f_b = rng.normal(size=(10_000, 128)), rng.normal(size=(10_000, 128)) * 1.1 + 0.1
    stats = [(f.mean(0), np.cov(f, rowvar=False)) for f in (f_a, f_b)]
    grid = np.stack(np.meshgrid(np.arange(-4, 5, 2.0), np.arange(-4, 5, 2.0), indexing="ij"), -1).reshape(-1, 2)
    grid_samples = grid[rng.integers(25, size=100_000)] + 0.05 * rng.normal(size=(100_000, 2))

    rows: list[tuple[str, int, int, Callable[[], object]]] = [
        ("exact W2 (dense)", 5000, 2, lambda: exact_wasserstein(x5k, y5k, p=2)),
        ("exact W1 (dense)", 5000, 2, lambda: exact_wasserstein(x5k, y5k, p=1)),
        ("exact W2 (lazy, emd2_lazy)", 5000, 2, lambda: exact_wasserstein(x5k, y5k, p=2, max_dense_bytes=0)),
        ("exact W2 (dense)", 2000, 784, lambda: exact_wasserstein(p2k, q2k, p=2)),
        ("exact W1 (dense)", 2000, 784, lambda: exact_wasserstein(p2k, q2k, p=1)),
    ]
    if not args.quick:
        rows += [
            ("exact W2 (dense)", 10_000, 2, lambda: exact_wasserstein(x10k, y10k, p=2)),
            ("exact W1 (dense)", 10_000, 2, lambda: exact_wasserstein(x10k, y10k, p=1)),
        ]
    rows += [
        ("sliced W2 (200 projections)", 10_000, 2, lambda: sliced_wasserstein(x10k, y10k)),
        ("sliced W2 (200 projections)", 2000, 784, lambda: sliced_wasserstein(p2k, q2k)),
        ("frechet_distance (from stats)", 10_000, 128, lambda: frechet_distance(*stats[0], *stats[1])),
        ("fid (features)", 10_000, 128, lambda: fid(f_a, f_b)),
        ("knn_precision_recall (k=3)", 5000, 2, lambda: knn_precision_recall(x5k, y5k)),
        ("knn_precision_recall (k=3)", 2000, 128, lambda: knn_precision_recall(f_a[:2000], f_b[:2000])),
        ("mixture_mode_coverage (25 modes)", 100_000, 2, lambda: mixture_mode_coverage(grid_samples, grid, 0.05)),
    ]

    print(f"torch threads: {torch.get_num_threads()}; POT exact OT is single-threaded\n")
    print("| metric | N | d | seconds | converged | value |")
    print("|---|---|---|---|---|---|")
    for name, n, d, fn in rows:
        seconds, converged, value = _time(fn)
        converged = converged if name.startswith("exact") else "–"
        print(f"| {name} | {n} | {d} | {seconds:.2f} | {converged} | {value} |", flush=True)


if __name__ == "__main__":
    main()
