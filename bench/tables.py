"""The report's numbers: the tidy metrics table, the statistics over seeds (per method, per pair of methods, ranks)
and the tables built from them (summary, cost, pairwise, ranks), as document tables.

Every table reads its columns, labels, units, display scales and better sides from bench/catalog.py.
"""
from __future__ import annotations

import json
import math
from collections.abc import Iterable
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from bench import catalog, stats
from bench.aggregate import COLUMNS
from bench.catalog import Metric
from bench.document import Cell, Notes, Table
from bench.io import checked_read
from core.errors import UserError
from core.names import FAMILIES

FLOOR, FLOOR_LABEL = "data", "data (floor)"
TRAINING = "training"  # the one record of a failed run
FAMILY_ORDER = {"reference": 0, **{f: i + 1 for i, f in enumerate(FAMILIES)}}
LEVEL, ALPHA = 0.95, 0.05
TEST_NAMES = {"welch": "Welch's t-test", "mannwhitney": "the Mann–Whitney U test"}


# --- numbers ------------------------------------------------------------------------------------------------
def fmt_number(x: float) -> str:
    if not math.isfinite(x):
        return "nan"
    return f"{x:.4g}" if x == 0 or 1e-3 <= abs(x) < 1e5 else f"{x:.2e}"


def fmt_mean_hw(mean: float, half_width: float) -> str:
    """'mean ± half-width', both rounded to the half-width's second significant digit."""
    if not math.isfinite(half_width):
        return fmt_number(mean)
    if half_width <= 1e-9 * abs(mean):  # equal values (up to rounding in the mean)
        return f"{fmt_number(mean)} ± 0"
    decimals = max(0, 1 - math.floor(math.log10(half_width)))
    return f"{mean:.{decimals}f} ± {half_width:.{decimals}f}"


# --- loading and statistics ---------------------------------------------------------------------------------
TEXT_COLUMNS = ("reason", "unit", "config", "config_hash", "packages", "git_commit", "device")


def load_metrics(path: Path) -> pd.DataFrame:
    """The tidy CSV with empty text fields as "" (not NaN); only empty fields are missing values (pandas would
    otherwise read the status "n/a" as NaN)."""
    remedy = f"build it with `dgmbench aggregate ... --out {path}` (the pipeline's aggregate rule)"
    df = checked_read(Path(path), "metrics table", remedy, f"delete it and {remedy}", lambda p: pd.read_csv(
        p, dtype=dict.fromkeys(TEXT_COLUMNS, str), keep_default_na=False, na_values=[""]))
    if missing := [c for c in COLUMNS if c not in df and c != "retry_seed"]:
        raise UserError(f"{path} is not a metrics table of `dgmbench aggregate` (no column {missing[0]!r}); "
                        f"delete it and {remedy}")
    df[list(TEXT_COLUMNS)] = df[list(TEXT_COLUMNS)].fillna("")
    if "retry_seed" not in df:  # a table aggregated before retries were recorded
        df["retry_seed"] = np.nan
    return df


def method_order(df: pd.DataFrame) -> list[str]:
    """The floor first, then flows, CNFs, VAEs, GANs, each family in name order."""
    family = df.drop_duplicates("method").set_index("method")["family"]
    return sorted(family.index, key=lambda m: (FAMILY_ORDER.get(family[m], len(FAMILY_ORDER)), m))


def run_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per (dataset, method): family, runs, failed runs, seeds, why runs failed ('seed s: reason; …'), and the runs
    that diverged and were trained again with a new seed (`training.retry_diverged`; counted whatever the outcome)."""
    runs = df.drop_duplicates(["dataset", "method", "seed"]).sort_values("seed")
    reasons: dict[tuple[str, str], list[str]] = {}
    for r in df[(df.metric == TRAINING) & (df.status != "ok")].sort_values("seed").itertuples():
        reasons.setdefault((r.dataset, r.method), []).append(f"seed {int(r.seed)}: {r.reason}")
    retries: dict[tuple[str, str], list[str]] = {}
    for r in runs[runs.retry_seed.notna()].itertuples():
        retries.setdefault((r.dataset, r.method), []).append(f"seed {int(r.seed)} as seed {int(r.retry_seed)}")
    out = runs.groupby(["dataset", "method"]).agg(
        family=("family", "first"), n_runs=("seed", "size"), n_failed=("run_status", lambda s: int((s != "ok").sum())),
        n_retried=("retry_seed", lambda s: int(s.notna().sum())), seeds=("seed", lambda s: sorted(s.astype(int))))
    out["failure_reason"] = ["; ".join(reasons.get(key, [])) for key in out.index]
    out["retry_note"] = ["diverged, retried: " + ", ".join(retries[key]) if key in retries else "" for key in out.index]
    return out


def ok_values(df: pd.DataFrame) -> pd.DataFrame:
    """Rows with a usable value: metric and run both ok."""
    return df[(df.status == "ok") & (df.run_status == "ok") & df.value.notna()]


STAT_COLUMNS = ["dataset", "method", "family", "metric", "unit", "direction", "status", "mean", "half_width", "low",
                "high", "median", "sd", "n", "n_runs", "n_failed", "n_retried", "seeds", "values", "reason"]


def seed_statistics(df: pd.DataFrame, level: float = LEVEL) -> pd.DataFrame:
    """One row per (dataset, method, metric) over the seeds whose run and metric are ok (see `stats.summarize`);
    status 'ok' with values, else 'n/a' or 'failed' with the reason."""
    runs, good = run_table(df), ok_values(df)
    rows = []
    for (dataset, method, metric), g in df.groupby(["dataset", "method", "metric"], sort=False):
        ok = good.loc[good.index.intersection(g.index)].sort_values("seed")
        bad = g[g.status != "ok"]
        run = runs.loc[(dataset, method)]
        row = {"dataset": dataset, "method": method, "family": run.family, "metric": metric,
               "unit": next((u for u in g.unit if u), ""), "direction": catalog.direction(metric) or "",
               "n_runs": run.n_runs, "n_failed": run.n_failed, "n_retried": run.n_retried,
               "seeds": ";".join(str(int(s)) for s in ok.seed),
               "reason": "; ".join(dict.fromkeys(r for r in bad.reason if r))}
        if len(ok):
            s = stats.summarize(ok.value, level)
            row.update(status="ok", mean=s.mean, half_width=s.half_width, low=s.low, high=s.high, median=s.median,
                       sd=s.sd, n=s.n, values=";".join(f"{v:.10g}" for v in s.values))
        else:
            row.update(status="n/a" if (bad.status == "n/a").any() else "failed", n=0, values="")
        rows.append(row)
    return pd.DataFrame(rows, columns=STAT_COLUMNS).sort_values(["dataset", "method", "metric"], kind="stable")


PAIR_COLUMNS = ["dataset", "metric", "direction", "method_a", "method_b", "n_a", "n_b", "mean_a", "mean_b",
                "hedges_g", "p_a_better", "test", "p", "p_holm", "better"]


def _compared(df: pd.DataFrame) -> pd.DataFrame:
    """Ok values of the methods (never the floor) on metrics that have a better side."""
    good = ok_values(df)
    directed = np.array([catalog.direction(m) is not None for m in good.metric], dtype=bool)
    return good[(good.method != FLOOR).to_numpy(bool) & directed]


def pairwise_frame(df: pd.DataFrame, test: str = "welch",
                   family: tuple[str, ...] = ("dataset", "metric")) -> pd.DataFrame:
    """Every pair of methods on each dataset and metric over their seeds: the test's p-value, Holm-adjusted
    within each `family` group (default: the pairs of one metric on one dataset), Hedges' g of A − B on the
    metric's scale, P(A better than B) (probability of superiority on the loss), and the better method when
    the adjusted p-value is at most 0.05."""
    good, rows = _compared(df), []
    order = method_order(df)
    for (dataset, metric), g in good.groupby(["dataset", "metric"]):
        by = {m: g[g.method == m].sort_values("seed").value.to_numpy() for m in order if (g.method == m).any()}
        for a, b in combinations(by, 2):
            x, y = by[a], by[b]
            rows.append({"dataset": dataset, "metric": metric, "direction": catalog.direction(metric), "method_a": a,
                         "method_b": b, "n_a": len(x), "n_b": len(y), "mean_a": x.mean(), "mean_b": y.mean(),
                         "hedges_g": stats.hedges_g(x, y), "test": test, "p": stats.TESTS[test](x, y),
                         "p_a_better": stats.prob_superiority(stats.loss_values(metric, x),
                                                              stats.loss_values(metric, y))})
    out = pd.DataFrame(rows, columns=PAIR_COLUMNS)
    out["p_holm"] = out.groupby(list(family))["p"].transform(stats.holm) if len(out) else []
    winner = np.where(out.p_a_better > 0.5, out.method_a, out.method_b)
    out["better"] = np.where(out.p_holm <= ALPHA, winner, "")
    return out


RANK_COLUMNS = ["dataset", "metric", "method", "rank_of_mean", "mean_rank", "min_rank", "max_rank", "n_seeds",
                "per_seed_ranks"]


def rank_frame(df: pd.DataFrame) -> pd.DataFrame:
    """Per dataset and metric, the methods with values (never the floor) ranked on every seed of the grid (a
    failed or missing run ranks last on that seed; see `stats.seed_ranks`): mean rank, its range over seeds, the
    per-seed ranks, and the rank of the mean loss."""
    good, rows = _compared(df), []
    order = method_order(df)
    for (dataset, metric), g in good.groupby(["dataset", "metric"]):
        methods = [m for m in order if (g.method == m).any()]
        seeds = sorted(df[(df.dataset == dataset) & df.method.isin(methods)].seed.unique())
        wide = g.pivot(index="method", columns="seed", values="value").reindex(index=methods, columns=seeds)
        losses = stats.loss_values(metric, wide.to_numpy())
        of_mean = rankdata(np.nanmean(losses, axis=1), method="average")
        for method, r, rm in zip(methods, stats.rank_summaries(losses), of_mean, strict=True):
            rows.append({"dataset": dataset, "metric": metric, "method": method, "rank_of_mean": float(rm),
                         "mean_rank": r.mean, "min_rank": r.low, "max_rank": r.high, "n_seeds": len(seeds),
                         "per_seed_ranks": ";".join(f"{v:g}" for v in r.per_seed)})
    return pd.DataFrame(rows, columns=RANK_COLUMNS)


# --- tables -------------------------------------------------------------------------------------------------
class Results:
    """The tidy rows with their per-seed statistics and run counts, indexed for lookups."""

    def __init__(self, df: pd.DataFrame, level: float = LEVEL) -> None:
        self.df, self.level = df, level
        self.stats = seed_statistics(df, level)
        self.runs = run_table(df)
        self._by_key = self.stats.set_index(["dataset", "method", "metric"])
        self.datasets = sorted(df.dataset.unique())
        self.methods = method_order(df)

    def methods_on(self, dataset: str, family: str | None = None, floor: bool = True) -> list[str]:
        return [m for m in self.methods if (dataset, m) in self.runs.index
                and (floor or m != FLOOR) and (family is None or self.runs.loc[(dataset, m)].family == family)]

    def stat(self, dataset: str, method: str, metric: str) -> pd.Series | None:
        key = (dataset, method, metric)
        return self._by_key.loc[key] if key in self._by_key.index else None

    def ok(self, dataset: str, method: str, metric: str) -> pd.Series | None:
        row = self.stat(dataset, method, metric)
        return row if row is not None and row.status == "ok" else None

    def has_values(self, dataset: str, metric: str) -> bool:
        return any(self.ok(dataset, m, metric) is not None for m in self.methods_on(dataset))

    def columns(self, dataset: str, columns: Iterable[Metric]) -> list[Metric]:
        """The columns with at least one value on `dataset` and not replaced by another column with values."""
        return [c for c in columns if self.has_values(dataset, c.name)
                and not (c.replaced_by and self.has_values(dataset, c.replaced_by))]

    def stat_for(self, dataset: str, method: str, col: Metric) -> pd.Series | None:
        """The statistics of a column's metric, else the n/a or failed record of the metric it re-expresses."""
        row = self.stat(dataset, method, col.name)
        other = self.stat(dataset, method, col.same_as) if row is None and col.same_as else None
        return other if other is not None and other.status != "ok" else row

    def config(self, dataset: str, method: str) -> tuple[dict, str]:
        """The resolved config of a (dataset, method) (its first seed's) and its hash."""
        row = self.df[(self.df.dataset == dataset) & (self.df.method == method)].iloc[0]
        return (json.loads(row.config) if row.config else {}), str(row.config_hash)

    def value_text(self, row: pd.Series, scale: float = 1.0) -> str:
        return fmt_mean_hw(row["mean"] * scale, row.half_width * scale)


def _metric_cell(res: Results, dataset: str, method: str, col: Metric, notes: Notes) -> Cell:
    row, run = res.stat_for(dataset, method, col), res.runs.loc[(dataset, method)]
    if row is None:
        all_failed = run.n_failed == run.n_runs
        return Cell("failed", notes.ref(f"{method}: {run.failure_reason}")) if all_failed else Cell("–")
    if row.status != "ok":
        return Cell(row.status, notes.ref(row.reason or f"{method}: {row.status}"))
    short = f" (n={row.n})" if row.n < run.n_runs - run.n_failed else ""
    return Cell(res.value_text(row, col.scale) + short, notes.ref(row.reason) if row.reason else ())


def method_table(res: Results, dataset: str, columns: Iterable[Metric], name: str, title: str, caption: str,
                 floor: bool = True) -> Table:
    """Methods as rows (the floor first), `columns` with values on `dataset`; runs and failed runs per method."""
    cols, notes = res.columns(dataset, columns), Notes()
    rows = []
    for m in res.methods_on(dataset, floor=floor):
        run = res.runs.loc[(dataset, m)]
        failed = Cell(str(run.n_failed), (notes.ref(f"{m}: {run.failure_reason}") if run.n_failed else ())
                      + (notes.ref(f"{m}: {run.retry_note}") if run.n_retried else ()))
        rows.append([Cell(FLOOR_LABEL if m == FLOOR else m), Cell(str(run.n_runs)), failed]
                    + [_metric_cell(res, dataset, m, c, notes) for c in cols])
    return Table(name, title, caption, ["method", "seeds", "failed"] + [c.header for c in cols], rows, notes.texts)


def summary_caption(res: Results, dataset: str) -> str:
    names = ", ".join(f"`{c.name}`" for c in res.columns(dataset, catalog.SUMMARY))
    return (f"Mean ± half-width of the {res.level:.0%} Student-t interval over seeds; `seeds` = runs, `failed` = "
            "failed or diverged runs (not in the statistics); a cell over fewer seeds says n=…. ↓ lower is "
            "better, ↑ higher is better, →0 closer to 0 is better. `data (floor)`: the data-vs-data floor (train "
            "vs test samples at the same n; the data entropy as the NLL floor where the density is known). "
            f"Tidy metric names: {names}.")


def summary_tables(res: Results) -> list[Table]:
    return [method_table(res, d, catalog.SUMMARY, f"summary_{d}", f"Summary: {d}", summary_caption(res, d))
            for d in res.datasets]


def cost_tables(res: Results) -> list[Table]:
    caption = ("Snakemake benchmark wall time and peak resident memory of the train rule, wall time of the sample "
               f"and evaluate rules together, and the sampling rate; mean ± half-width of the {res.level:.0%} "
               "t-interval over seeds. Training time falls back to the training loop's own clock when no benchmark "
               "file exists.")
    return [method_table(res, d, catalog.COST, f"cost_{d}", f"Cost: {d}", caption, floor=False)
            for d in res.datasets]


def _shown_metrics(res: Results, dataset: str) -> list[str]:
    return [c.name for c in res.columns(dataset, catalog.SUMMARY)]


def pairwise_tables(res: Results, pairs: pd.DataFrame) -> list[Table]:
    tables = []
    for dataset in res.datasets:
        shown = _shown_metrics(res, dataset)
        sub = pairs[(pairs.dataset == dataset) & pairs.metric.isin(shown)].copy()
        if sub.empty:
            continue
        sub["order"] = sub.metric.map(shown.index)
        rows = [[Cell(catalog.title(r.metric)), Cell(f"{r.method_a} vs {r.method_b}"), Cell(str(r.n_a)),
                 Cell(str(r.n_b)), Cell(fmt_number(r.mean_a * catalog.scale(r.metric))),
                 Cell(fmt_number(r.mean_b * catalog.scale(r.metric))), Cell(f"{r.hedges_g:.2f}"),
                 Cell(f"{r.p_a_better:.2f}"), Cell(fmt_number(r.p)), Cell(fmt_number(r.p_holm)), Cell(r.better or "–")]
                for r in sub.sort_values("order", kind="stable").itertuples()]
        test = TEST_NAMES[sub.test.iloc[0]]
        caption = (f"Every pair of methods over their seeds: two-sided p-value of {test}, Holm-adjusted over the "
                   "pairs of each metric; Hedges' g of A − B (on the metric's scale, small-sample corrected); "
                   "P(A better) = probability that a seed of A beats a seed of B (ties count ½); `better` names the "
                   f"better method when the adjusted p ≤ {ALPHA}. nan: fewer than two seeds or no variance.")
        tables.append(Table(f"pairwise_{dataset}", f"Pairwise comparisons: {dataset}", caption,
                            ["metric", "A vs B", "n A", "n B", "mean A", "mean B", "Hedges' g", "P(A better)", "p",
                             "p (Holm)", "better"], rows))
    return tables


def rank_tables(res: Results, ranks: pd.DataFrame) -> list[Table]:
    tables = []
    for dataset in res.datasets:
        sub = ranks[ranks.dataset == dataset].set_index(["method", "metric"])
        metrics = [m for m in _shown_metrics(res, dataset) if m in set(sub.index.get_level_values("metric"))]
        if not metrics:
            continue
        rows = []
        for method in res.methods_on(dataset, floor=False):
            cells = [Cell(f"{r.mean_rank:.2g} [{r.min_rank:g}–{r.max_rank:g}]") if (r := _get(sub, (method, m)))
                     is not None else Cell("–") for m in metrics]
            rows.append([Cell(method)] + cells)
        caption = ("Rank of each method on every seed (1 = best, ties share their average rank; a failed run ranks "
                   "last on its seed): mean rank over seeds [lowest–highest]. The data floor is not ranked.")
        tables.append(Table(f"ranks_{dataset}", f"Ranks: {dataset}", caption,
                            ["method"] + [catalog.BY_NAME[m].header for m in metrics], rows))
    return tables


def _get(frame: pd.DataFrame, key: tuple) -> pd.Series | None:
    return frame.loc[key] if key in frame.index else None

