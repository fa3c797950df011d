"""Report figures from the tidy metrics and the runs' training logs and per-run figures (matplotlib, Agg).
Every function writes one PNG and returns its path, or None when it has nothing to draw."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.image as mpimg  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

LOG_INDEX = ("step", "wall_s")  # train_log.csv columns that are not losses
VAL = "val_loss"  # drawn dashed over the first loss panel
DPI = 100


def _save(fig: plt.Figure, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=DPI, metadata={"Software": None})
    plt.close(fig)
    return out


def _grid(n: int, ncols: int, size: tuple[float, float]) -> tuple[plt.Figure, np.ndarray]:
    ncols = min(n, ncols)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size[0] * ncols, size[1] * nrows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_axis_off()
    return fig, axes


def _robust_ylim(ax: plt.Axes, values: np.ndarray) -> None:
    """Clip the y range to the 1st–99th percentile (widened 10 %) so a first-step spike does not flatten a curve."""
    v = values[np.isfinite(values)]
    if len(v) > 10:
        lo, hi = np.percentile(v, [1, 99])
        pad = 0.1 * (hi - lo) or 1.0
        ax.set_ylim(lo - pad, hi + pad)


def training_curves(logs: dict[str, dict[int, Path]], dataset: str, out: Path) -> Path | None:
    """One row per method, one panel per logged loss column (validation loss dashed over the first), one line
    per seed. `logs`: method -> seed -> train_log.csv (columns step, wall_s, losses…, val_loss sometimes)."""
    tables = {m: {s: pd.read_csv(p) for s, p in seeds.items()} for m, seeds in logs.items()}
    columns = {m: list(dict.fromkeys(c for t in ts.values() for c in t.columns if c not in (*LOG_INDEX, VAL)))
               for m, ts in tables.items()}
    columns = {m: cs for m, cs in columns.items() if cs}
    if not columns:
        return None
    ncols = max(len(cs) for cs in columns.values())
    fig, axes = plt.subplots(len(columns), ncols, figsize=(3.6 * ncols, 2.6 * len(columns)), squeeze=False)
    for row, (method, cols) in zip(axes, columns.items(), strict=True):
        for ax in row[len(cols):]:
            ax.set_axis_off()
        for j, (ax, col) in enumerate(zip(row, cols, strict=False)):
            seen = []
            for k, (seed, t) in enumerate(sorted(tables[method].items())):
                if col in t:
                    ax.plot(t.step, t[col], lw=0.8, color=f"C{k % 10}", label=f"seed {seed}")
                    seen.append(t[col].to_numpy(float))
                if j == 0 and VAL in t and t[VAL].notna().any():
                    v = t[["step", VAL]].dropna()
                    ax.plot(v.step, v[VAL], "--", lw=1.2, color=f"C{k % 10}")
            _robust_ylim(ax, np.concatenate(seen) if seen else np.array([]))
            ax.set_title(f"{method}: {col}", fontsize=9)
            ax.set_xlabel("step", fontsize=8)
            ax.tick_params(labelsize=7)
        row[0].legend(fontsize=6)
    fig.suptitle(f"{dataset}: training curves", fontsize=10)
    return _save(fig, out)


def metric_distributions(values: pd.DataFrame, methods: list[str], metrics: list[tuple[str, str, float]],
                         floors: dict[str, float], out: Path) -> Path | None:
    """One panel per metric: a box plot and the per-seed values (dots) of every method, and the floor as a
    dashed line. `values`: tidy rows (method, metric, value); `metrics`: (metric, axis label, display scale)."""
    panels = [(m, label, scale) for m, label, scale in metrics if (values.metric == m).any()]
    if not panels:
        return None
    fig, axes = _grid(len(panels), 4, (3.4, 3.0))
    for ax, (metric, label, scale) in zip(axes.flat, panels, strict=False):
        sub = values[values.metric == metric]
        shown = [m for m in methods if (sub.method == m).any()]
        data = [sub[sub.method == m].value.to_numpy(float) * scale for m in shown]
        ax.boxplot(data, positions=range(len(shown)), widths=0.5, showfliers=False)
        for i, d in enumerate(data):  # deterministic spread of the dots
            ax.plot(i + np.linspace(-0.12, 0.12, len(d)) if len(d) > 1 else [i], d, "o", ms=3, color="C3", alpha=0.8)
        if metric in floors:
            ax.axhline(floors[metric] * scale, ls="--", color="0.5", lw=1, label="floor")
            ax.legend(fontsize=6)
        ax.set_xticks(range(len(shown)), shown, rotation=45, ha="right", fontsize=7)
        ax.set_title(label, fontsize=9)
        ax.tick_params(axis="y", labelsize=7)
    return _save(fig, out)


@dataclass(frozen=True)
class Point:
    """One method on the cost-quality plane: mean and t-interval half-width of training time and quality."""
    method: str
    time: float
    time_hw: float
    quality: float
    quality_hw: float


def cost_quality(datasets: dict[str, tuple[str, list[Point], float | None]], out: Path) -> Path | None:
    """One panel per dataset: training time (log scale over more than a decade) against the quality metric,
    error bars = half-widths, the floor dashed. `datasets`: dataset -> (quality label, points, floor or None)."""
    if not datasets:
        return None
    fig, axes = _grid(len(datasets), 3, (4.2, 3.4))
    for ax, (dataset, (label, points, floor)) in zip(axes.flat, datasets.items(), strict=False):
        for k, p in enumerate(points):
            ax.errorbar(p.time, p.quality, xerr=np.nan_to_num(p.time_hw), yerr=np.nan_to_num(p.quality_hw), fmt="o",
                        ms=5, capsize=2, color=f"C{k % 10}", label=p.method)
        if floor is not None:
            ax.axhline(floor, ls="--", color="0.5", lw=1, label="floor")
        times = [p.time for p in points]
        if max(times) > 10 * min(times) > 0:  # log scale only over more than a decade
            ax.set_xscale("log")
        ax.set_xlabel("training time (s)", fontsize=8)
        ax.set_ylabel(label, fontsize=8)
        ax.set_title(dataset, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6)
    return _save(fig, out)


def sample_panel(images: list[tuple[str, Path]], title: str, out: Path) -> Path | None:
    """Tile existing per-run figures (title, PNG path): one column when they are wide (2-D runs have up to three
    panels side by side), else three."""
    if not images:
        return None
    pictures = [(name, mpimg.imread(path)) for name, path in images]
    aspect = max(p.shape[1] / p.shape[0] for _, p in pictures)
    ncols = 1 if aspect > 1.8 else 3
    width = 10.0 / min(ncols, len(pictures))
    fig, axes = _grid(len(pictures), ncols, (width, width / aspect + 0.3))
    for ax, (name, picture) in zip(axes.flat, pictures, strict=False):
        ax.imshow(picture)
        ax.set_title(name, fontsize=9)
        ax.set_axis_off()
    fig.suptitle(title, fontsize=10)
    return _save(fig, out)
