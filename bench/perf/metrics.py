"""Time each metric of ``metrics/`` at its default sample size on this machine (rows for ``python -m bench.perf``).

``quick`` skips the slowest rows, exact W at n = 10,000. Data are synthetic and seeded: 2-D N(0, I) vs
N(0.5·1, I); "784-D" MNIST-like pixels U(0,1)·Bernoulli(0.2); 128-d Gaussian features. Exact W rows name their
solver (``metrics.wasserstein.SOLVERS``; the evaluation's choice is ``exact_solver``'s): all run POT's
single-threaded network simplex; the dense one needs about 6·n²·8 bytes.
"converged" is "no" when it raised ``OTNotConvergedError``.
FID of 10,000 MNIST images: 10,000 training images against the 10,000 test images through torch-fidelity with the
suite's classifier features, the evaluation's path (the pipeline's trained classifier when results/ has one,
otherwise an untrained one of the same architecture: the timing is the same, the value is then meaningless).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

from bench import datasets
from bench.io import save_torch
from bench.provenance import REPO
from core.errors import UserError
from metrics.fid import MnistClassifier, fid, frechet_distance, register_mnist_extractor, torch_fidelity_metrics
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


def _mnist_fid(data_root: Path | None, scratch: Path) -> Callable[[], float] | None:
    """The FID row's call, or None without MNIST; an untrained classifier's weights go to `scratch`."""
    try:
        ds = datasets.load("mnist", data_root)
    except UserError:  # no MNIST here: the row is left out
        return None
    weights = REPO / "results" / "evaluators" / "mnist_classifier.pt"
    if not weights.exists():
        weights = scratch / "untrained_classifier.pt"
        torch.manual_seed(0)
        save_torch(weights, MnistClassifier().state_dict())
    name = register_mnist_extractor(weights)
    return lambda: torch_fidelity_metrics(ds.train[:10_000], ds.test, extractor_name=name, weights_path=weights,
                                          prc=False)["fid"]


def timings(quick: bool, data_root: Path | None = None) -> Iterator[tuple[str, int, int, float, str, str]]:
    """(metric, N, d, seconds, converged, value) for each metric row."""
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

    def exact(p: int, solver: str, x: np.ndarray, y: np.ndarray) -> tuple[str, int, int, Callable[[], object]]:
        return f"exact W{p} ({solver})", len(x), x.shape[1], lambda: exact_wasserstein(x, y, p=p, solver=solver)

    rows = [exact(2, "multiscale", x5k, y5k), exact(2, "emd2", x5k, y5k), exact(2, "emd2_lazy", x5k, y5k),
            exact(1, "emd2", x5k, y5k), exact(2, "emd2", p2k, q2k), exact(1, "emd2", p2k, q2k)]
    if not quick:
        rows += [exact(2, "multiscale", x10k, y10k), exact(2, "emd2", x10k, y10k), exact(1, "emd2", x10k, y10k)]
    rows += [
        ("sliced W2 (200 projections)", 10_000, 2, lambda: sliced_wasserstein(x10k, y10k)),
        ("sliced W2 (200 projections)", 2000, 784, lambda: sliced_wasserstein(p2k, q2k)),
        ("frechet_distance (from stats)", 10_000, 128, lambda: frechet_distance(*stats[0], *stats[1])),
        ("fid (features)", 10_000, 128, lambda: fid(f_a, f_b)),
        ("knn_precision_recall (k=3)", 5000, 2, lambda: knn_precision_recall(x5k, y5k)),
        ("knn_precision_recall (k=3)", 2000, 128, lambda: knn_precision_recall(f_a[:2000], f_b[:2000])),
        ("mixture_mode_coverage (25 modes)", 100_000, 2, lambda: mixture_mode_coverage(grid_samples, grid, 0.05)),
    ]
    with tempfile.TemporaryDirectory(prefix="dgmbench-perf-") as scratch:
        mnist_fid = _mnist_fid(data_root, Path(scratch))
        if mnist_fid is not None:
            rows.append(("FID, MNIST classifier features via torch-fidelity", 10_000, 784, mnist_fid))
        for name, n, d, fn in rows:
            seconds, converged, value = _time(fn)
            yield name, n, d, seconds, converged if name.startswith("exact") else "–", value
