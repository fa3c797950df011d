"""The course's qualitative comparison of the four approaches (flows, CNFs, VAEs, GANs), each claim set next to
the evidence this run measured for it, so that a reader sees where the run agrees with the course and where not.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import pandas as pd

from bench import catalog
from bench.document import Cell, Table
from bench.tables import FAMILIES, FLOOR, Results, fmt_number

BIJECTIVE = {"flow": True, "cnf": True, "vae": False, "gan": False}  # structural: z = g⁻¹(x) has the data's shape

# The course's qualitative summary, per family; the evidence beside each claim is computed from this run.
CLAIMS = {
    "likelihood": ("computes the likelihood exactly",
                   {"flow": "yes", "cnf": "yes", "vae": "no: a bound (ELBO/IWAE)", "gan": "no"}),
    "latent": ("latent dimension q may differ from the data dimension n",
               {"flow": "no: q = n", "cnf": "no: q = n", "vae": "yes", "gan": "yes"}),
    "modes": ("mode collapse", {"flow": "no", "cnf": "no", "vae": "no", "gan": "yes, prone to it"}),
    "quality": ("sample quality", {"flow": "good", "cnf": "good", "vae": "blurry", "gan": "sharp"}),
    "saddle": ("saddle-point (min-max) training difficulty", {"flow": "no", "cnf": "no", "vae": "no", "gan": "yes"}),
}


def _data_dim(dataset: str) -> int:
    """n, the dimension of a data point: the suite's toy sets are 2-D, its image sets 1 × 28 × 28."""
    from bench.datasets import IMAGE_DATASETS

    return 28 * 28 if dataset in IMAGE_DATASETS else 2


def _metric_line(res: Results, dataset: str, family: str, metric: str, describe: Callable[[pd.Series], str],
                 with_floor: bool = True) -> str | None:
    """'{dataset} {label}: m1 …, m2 … (floor …)' over the family's methods with values, or None."""
    parts = [f"{m} {describe(row)}" for m in res.methods_on(dataset, family)
             if (row := res.ok(dataset, m, metric)) is not None]
    if not parts:
        return None
    floor = res.ok(dataset, FLOOR, metric) if with_floor else None
    floor_text = f" (floor {fmt_number(floor['mean'] * catalog.scale(metric))})" if floor is not None else ""
    return f"{dataset} {catalog.title(metric)}: " + ", ".join(parts) + floor_text


def quality_metric(res: Results, dataset: str) -> str:
    """The sample-quality metric of a dataset: FID where measured (images), else W2."""
    return "fid" if res.has_values(dataset, "fid") else "w2"


def _likelihood_evidence(res: Results, family: str) -> list[str]:
    lines, missing = [], {}
    for dataset in res.datasets:
        col = catalog.BY_NAME["test_bpd" if res.has_values(dataset, "test_bpd") else "test_nll"]
        for m in res.methods_on(dataset, family):
            row = res.stat_for(dataset, m, col)
            if row is None:
                continue
            if row.status != "ok":
                missing.setdefault(f"{row.status}: {row.reason}", []).append(f"{dataset}/{m}")
                continue
            bound = res.ok(dataset, m, "elbo") is not None
            lines.append(f"{dataset}/{m}: {'IWAE bound on the' if bound else 'exact'} {col.title} "
                         f"{res.value_text(row)}")
    return lines + [f"{', '.join(where)}: {why}" for why, where in missing.items()]


def _latent_evidence(res: Results, family: str) -> list[str]:
    lines = []
    for dataset in res.datasets:
        parts = []
        for m in res.methods_on(dataset, family):
            config, config_hash = res.config(dataset, m)
            q = config.get("hparams", {}).get("latent_dim", "not in the config")
            parts.append(f"{m} q = {'n (a bijection)' if BIJECTIVE[family] else q} [config {config_hash}]")
        if parts:
            lines.append(f"{dataset} (n = {_data_dim(dataset)}): " + ", ".join(parts))
    return lines


def _mode_evidence(res: Results, family: str) -> list[str]:
    lines = []
    for dataset in res.datasets:
        lines += [_metric_line(res, dataset, family, metric, res.value_text)
                  for metric in ("modes_covered", "classes_covered")]
        lines.append(_metric_line(res, dataset, family, "high_quality", lambda r: res.value_text(r, 100)))
    return [line for line in lines if line]


def _quality_evidence(res: Results, family: str) -> list[str]:
    lines = []
    for dataset in res.datasets:
        metric = quality_metric(res, dataset)
        floor = res.ok(dataset, FLOOR, metric)

        def describe(row: pd.Series, floor: pd.Series | None = floor) -> str:
            ratio = f" = {row['mean'] / floor['mean']:.1f} × floor" if floor is not None and floor["mean"] else ""
            return res.value_text(row) + ratio

        lines.append(_metric_line(res, dataset, family, metric, describe))
    return [line for line in lines if line]


def _saddle_evidence(res: Results, family: str) -> list[str]:
    runs = res.runs[(res.runs.family == family)]
    if runs.empty:
        return []
    lines = [f"failed or diverged runs: {int(runs.n_failed.sum())} of {int(runs.n_runs.sum())}"]
    lines += [f"{d}/{m}: {r.failure_reason}" for (d, m), r in runs.iterrows() if r.n_failed]

    def spread(row: pd.Series) -> str:
        cv = f", CV {row.sd / row['mean']:.0%}" if math.isfinite(row.sd) and row["mean"] else ""
        return f"seed sd {fmt_number(row.sd)}{cv}"

    lines += [line for d in res.datasets if (line := _metric_line(res, d, family, "w2", spread, with_floor=False))]
    return lines


EVIDENCE: dict[str, Callable[[Results, str], list[str]]] = {
    "likelihood": _likelihood_evidence, "latent": _latent_evidence, "modes": _mode_evidence,
    "quality": _quality_evidence, "saddle": _saddle_evidence,
}


def approaches_table(res: Results) -> Table:
    """The course's claims (rows) per family (columns), each cell: the claim, then this run's evidence."""
    present = {f: sorted(res.runs[res.runs.family == f].index.get_level_values("method").unique()) for f in FAMILIES}
    header = ["claim"] + [f"{f} ({', '.join(ms)})" if ms else f for f, ms in present.items()]
    rows = []
    for key, (claim, expected) in CLAIMS.items():
        cells = [Cell(claim)]
        for family in FAMILIES:
            evidence = EVIDENCE[key](res, family)
            cells.append(Cell(f"course: {expected[family]}\nmeasured: "
                              + ("\n".join(evidence) if evidence else "not measured in this run")))
        rows.append(cells)
    caption = ("Each qualitative claim of the course's summary next to the evidence from this run, generated from "
               f"the metrics table: values are mean ± half-width of the {res.level:.0%} t-interval over seeds, "
               "'floor' is the data-vs-data value at the same n. Latent dimensions are read from each run's "
               "resolved config (hash in brackets); flows and CNFs are bijections, so q = n by construction.")
    return Table("approaches", "Comparison of approaches", caption, header, rows)

