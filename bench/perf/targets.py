"""The suite's performance targets, checked against one harness run's rows (perf.md's "Targets" table).

A target names the rows it judges (section and field values), the field measured and its bound. Each matching row
gives one line: a training ratio per thread count, a metric or pipeline time per run. A target no row of the run
matches (e.g. W at N = 10,000 under --quick, the pipeline without --pipeline) is listed as not measured.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from metrics.wasserstein import exact_solver


@dataclass(frozen=True)
class Target:
    text: str
    section: str
    match: dict[str, Any]
    field: str  # the measured value in a matching row
    bound: float
    at_least: bool  # True: the value must be >= bound (a ratio); False: < bound (seconds)

    def met(self, row: dict[str, Any]) -> bool:
        value = row[self.field]
        within = value >= self.bound if self.at_least else value < self.bound
        return within and row.get("converged") != "no"  # an exact W that did not converge meets no time target


def _ratio(method: str, label: str, dataset: str, bound: float) -> Target:
    return Target(f"{label} on {dataset}: ≥ {bound:g}× the course code's steps/s", "training",
                  {"name": method, "dataset": dataset}, "ratio", bound, True)


TARGETS = [
    _ratio("realnvp", "RealNVP", "moons", 2),
    _ratio("otflow", "OT-Flow", "moons", 2),
    _ratio("vae", "VAE", "mnist", 1.5),
    _ratio("dcgan", "DCGAN", "mnist", 1.5),
    Target("exact W2 of 10,000 points in 2-D: converged, < 30 s", "metrics",
           {"name": f"exact W2 ({exact_solver(10_000, 10_000)})", "n": 10_000}, "seconds", 30, False),
    Target("FID of 10,000 MNIST samples, classifier features: < 10 s", "metrics",
           {"name": "FID, MNIST classifier features via torch-fidelity", "n": 10_000}, "seconds", 10, False),
    Target("no-op re-run of the default pipeline: < 10 s", "pipeline", {"name": "default pipeline, no-op re-run"},
           "seconds", 10, False),
]


def _measured(target: Target, row: dict[str, Any]) -> str:
    """The value as perf.md shows it: a ratio with the range of its per-window ratios, a time in seconds."""
    if target.field == "seconds":
        return f"{row['seconds']} s"
    windows = [float(w) for w in str(row.get("ratio_windows", "")).split()]
    return f"{row['ratio']} (windows {min(windows):.2f}–{max(windows):.2f})" if windows else str(row["ratio"])


def check(rows: list[dict[str, Any]]) -> list[dict[str, str]]:
    """One line per (target, matching row): target, where (threads for a ratio), measured, met ("yes"/"no"); a
    target without a matching row gets one line with measured "not measured in this run" and met "–"."""
    lines = []
    for target in TARGETS:
        matching = [r for r in rows if r["section"] == target.section and r.get(target.field) not in (None, "")
                    and all(r.get(k) == v for k, v in target.match.items())]
        for r in matching:
            where = f"{r['threads']} thread{'s' * (r['threads'] != 1)}" if target.section == "training" else "–"
            lines.append({"target": target.text, "where": where, "measured": _measured(target, r),
                          "met": "yes" if target.met(r) else "no"})
        if not matching:
            lines.append({"target": target.text, "where": "–", "measured": "not measured in this run", "met": "–"})
    return lines
