"""The comparison report, built only from the tidy metrics CSV, the runs' training logs and the per-run figures
(restyling retrains and re-evaluates nothing).

Writes under `out_dir`:
- tables/summary.{md,csv}, tables/summary_{dataset}.tex: per dataset, methods × metrics, mean ± half-width of the
  95 % t-interval over seeds, the data-vs-data floor first; the CSV holds every metric (mean, half_width, low,
  high, median, sd, n, per-seed values, failed runs, status and reason).
- tables/pairwise.{md,csv}: every pair of methods per dataset and metric: Welch (or Mann–Whitney) p-value,
  Holm-adjusted within each dataset × metric, Hedges' g and the probability of superiority.
- tables/ranks.{md,csv}: per-seed ranks (mean and range over seeds) and the rank of the mean.
- tables/cost.md, tables/approaches.md (the course's claims per family next to this run's measured evidence).
- figures/*.png: training curves, metric distributions over seeds, cost vs quality, sample panels.
- report.md (images linked) and report.html (one self-contained page: CSS inline, PNGs as data URIs).
"""
from __future__ import annotations

import base64
import html
import json
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from bench import plots, stats
from bench.aggregate import COLUMNS
from bench.io import checked_read, write_text
from core.errors import UserError

FLOOR, FLOOR_LABEL = "data", "data (floor)"
TRAINING = "training"  # the one record of a failed run
FAMILIES = ("flow", "cnf", "vae", "gan")
FAMILY_ORDER = {"reference": 0, **{f: i + 1 for i, f in enumerate(FAMILIES)}}
LEVEL, ALPHA = 0.95, 0.05
NOTHING = "Nothing to show: no dataset has two methods with values to compare or rank."
ARROW = {"lower": "↓", "higher": "↑", "zero": "→0"}
BIJECTIVE = {"flow": True, "cnf": True, "vae": False, "gan": False}  # structural: z = g⁻¹(x) has the data's shape


@dataclass(frozen=True)
class Column:
    """A table column: the tidy metric, its label and unit, a display scale, the metric that replaces it on a
    dataset where that one has values (test NLL in bits/dim instead of nats on images), and the metric it
    re-expresses, whose n/a or failed record stands for it when it has none (no bits/dim record for a GAN)."""
    metric: str
    label: str
    unit: str = ""
    scale: float = 1.0
    replaced_by: str = ""
    same_as: str = ""

    def header(self) -> str:
        unit = f" ({self.unit})" if self.unit else ""
        arrow = ARROW.get(stats.direction(self.metric) or "", "")
        return f"{self.label}{unit} {arrow}".rstrip()


TEST_NLL = Column("test_nll", "test NLL", "nats", replaced_by="test_bpd")
TEST_BPD = Column("test_bpd", "test NLL", "bits/dim", same_as="test_nll")
SUMMARY_COLUMNS = (
    TEST_NLL, TEST_BPD,
    Column("elbo_gap", "ELBO gap", "nats"), Column("w1", "W1"), Column("w2", "W2"), Column("sliced_w2", "sliced W2"),
    Column("fid", "FID"), Column("fid_inception", "FID (Inception)"), Column("modes_covered", "modes covered"),
    Column("high_quality", "high quality", "%", 100), Column("classes_covered", "classes covered"),
    Column("precision", "precision"), Column("recall", "recall"),
    Column("train_time_s", "training time", "s"), Column("samples_per_s", "samples/s"),
)
COST_COLUMNS = (Column("train_time_s", "training time", "s"), Column("train_peak_mem_mb", "training peak memory", "MB"),
                Column("eval_time_s", "sampling + evaluation time", "s"), Column("samples_per_s", "samples/s"))
LABELS = {c.metric: c.label + (f" ({c.unit})" if c.unit else "") for c in (*COST_COLUMNS, *SUMMARY_COLUMNS)}
SCALES = {c.metric: c.scale for c in SUMMARY_COLUMNS}

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
               "unit": next((u for u in g.unit if u), ""), "direction": stats.direction(metric) or "",
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
    directed = np.array([stats.direction(m) is not None for m in good.metric], dtype=bool)
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
            rows.append({"dataset": dataset, "metric": metric, "direction": stats.direction(metric), "method_a": a,
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


# --- document model: tables, paragraphs, figures; rendered to Markdown, LaTeX (tables) and HTML ---------------
LATEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
         "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$", "↓": r"$\downarrow$",
         "↑": r"$\uparrow$", "→": r"$\to$", "×": r"$\times$", "–": "--", "≤": r"$\leq$", "…": r"\dots{}",
         "\n": "; "}


def latex_escape(text: str) -> str:
    """Escape LaTeX's special characters; `code` spans become \\texttt."""
    parts = ["".join(LATEX.get(ch, ch) for ch in part) for part in text.split("`")]
    return "".join(rf"\texttt{{{p}}}" if i % 2 else p for i, p in enumerate(parts))


def _inline_html(text: str) -> str:
    """Escape, then `code` spans and line breaks."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text)).replace("\n", "<br>")


@dataclass(frozen=True)
class Cell:
    text: str
    notes: tuple[int, ...] = ()  # footnote numbers

    def markdown(self) -> str:
        return self.text.replace("|", r"\|").replace("\n", "<br>") + "".join(f" [{k}]" for k in self.notes)

    def latex(self) -> str:
        return latex_escape(self.text) + "".join(rf"\textsuperscript{{{k}}}" for k in self.notes)

    def html(self) -> str:
        return _inline_html(self.text) + "".join(f"<sup>{k}</sup>" for k in self.notes)


@dataclass
class Notes:
    """Footnotes of one table, numbered from 1 in order of first use; the same text gets the same number."""
    texts: list[str] = field(default_factory=list)

    def ref(self, text: str) -> tuple[int, ...]:
        if text not in self.texts:
            self.texts.append(text)
        return (self.texts.index(text) + 1,)


@dataclass
class Table:
    name: str
    title: str
    caption: str
    header: list[str]
    rows: list[list[Cell]]
    notes: list[str] = field(default_factory=list)

    def markdown(self, out_dir: Path) -> str:
        lines = [f"### {self.title}", "", self.caption, "",
                 "| " + " | ".join(Cell(h).markdown() for h in self.header) + " |", "|" + "---|" * len(self.header)]
        lines += ["| " + " | ".join(c.markdown() for c in row) + " |" for row in self.rows]
        return "\n".join(lines + [""] + [f"- [{i}] {n}" for i, n in enumerate(self.notes, 1)]).rstrip() + "\n"

    def latex(self) -> str:
        """booktabs table; footnotes as superscript numbers under it."""
        lines = [r"\begin{table}[ht]", r"\centering", rf"\caption{{{latex_escape(self.title + '. ' + self.caption)}}}",
                 rf"\label{{tab:{self.name.replace('_', '-')}}}",
                 r"\begin{tabular}{l" + "r" * (len(self.header) - 1) + "}", r"\toprule",
                 " & ".join(latex_escape(h) for h in self.header) + r" \\", r"\midrule"]
        lines += [" & ".join(c.latex() for c in row) + r" \\" for row in self.rows]
        lines += [r"\bottomrule", r"\end{tabular}"]
        if self.notes:
            lines += [r"\par\smallskip\footnotesize"] + [rf"\textsuperscript{{{i}}} {latex_escape(n)}\\"
                                                       for i, n in enumerate(self.notes, 1)]
        return "\n".join(lines + [r"\end{table}"]) + "\n"

    def html(self, out_dir: Path) -> str:
        head = "".join(f"<th>{_inline_html(h)}</th>" for h in self.header)
        body = "".join("<tr>" + "".join(f"<td>{c.html()}</td>" for c in row) + "</tr>" for row in self.rows)
        notes = "".join(f"<li>{_inline_html(n)}</li>" for n in self.notes)
        return (f'<table id="{self.name}"><caption><b>{html.escape(self.title)}.</b> {_inline_html(self.caption)}'
                f"</caption><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
                + (f'<ol class="notes">{notes}</ol>' if notes else ""))


@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2

    def markdown(self, out_dir: Path) -> str:
        return f"{'#' * self.level} {self.text}\n"

    def html(self, out_dir: Path) -> str:
        return f"<h{self.level}>{html.escape(self.text)}</h{self.level}>"


@dataclass(frozen=True)
class Paragraph:
    text: str

    def markdown(self, out_dir: Path) -> str:
        return self.text + "\n"

    def html(self, out_dir: Path) -> str:
        return f"<p>{_inline_html(self.text)}</p>"


@dataclass(frozen=True)
class Figure:
    path: Path
    caption: str

    def markdown(self, out_dir: Path) -> str:
        return f"![{self.caption}]({self.path.relative_to(out_dir).as_posix()})\n\n*{self.caption}*\n"

    def html(self, out_dir: Path) -> str:
        data = base64.b64encode(self.path.read_bytes()).decode()
        return (f'<figure><img alt="{html.escape(self.caption)}" src="data:image/png;base64,{data}">'
                f"<figcaption>{_inline_html(self.caption)}</figcaption></figure>")


@dataclass(frozen=True)
class Collapsed:
    """Blocks folded under `title` in HTML (<details>); shown as they are in Markdown."""
    title: str
    blocks: tuple

    def markdown(self, out_dir: Path) -> str:
        return "\n".join(b.markdown(out_dir) for b in self.blocks)

    def html(self, out_dir: Path) -> str:
        return (f"<details><summary>{html.escape(self.title)}</summary>"
                + "".join(b.html(out_dir) for b in self.blocks) + "</details>")


Block = Heading | Paragraph | Table | Figure | Collapsed
CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:.85em}caption{text-align:left;padding:.3em 0;caption-side:top}
th,td{border-top:1px solid #bbb;border-bottom:1px solid #bbb;padding:.25em .6em;text-align:right;vertical-align:top}
th:first-child,td:first-child{text-align:left}thead th{border-bottom:2px solid #444}
ol.notes{font-size:.8em;color:#444}figure{margin:1em 0}img{max-width:100%}figcaption{font-size:.85em;color:#444}
details{margin:.5em 0}summary{cursor:pointer;font-weight:600}code{background:#f3f3f3;padding:0 .2em}"""


def render_markdown(blocks: Iterable[Block], out_dir: Path) -> str:
    return "\n".join(b.markdown(out_dir) for b in blocks)


def render_html(blocks: Iterable[Block], out_dir: Path, title: str) -> str:
    """One self-contained page: inline CSS, images as data URIs, no external resource."""
    body = "\n".join(b.html(out_dir) for b in blocks)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{CSS}</style></head><body>\n{body}\n</body></html>\n")


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

    def columns(self, dataset: str, columns: Iterable[Column]) -> list[Column]:
        """The columns with at least one value on `dataset` and not replaced by another column with values."""
        return [c for c in columns if self.has_values(dataset, c.metric)
                and not (c.replaced_by and self.has_values(dataset, c.replaced_by))]

    def stat_for(self, dataset: str, method: str, col: Column) -> pd.Series | None:
        """The statistics of a column's metric, else the n/a or failed record of the metric it re-expresses."""
        row = self.stat(dataset, method, col.metric)
        other = self.stat(dataset, method, col.same_as) if row is None and col.same_as else None
        return other if other is not None and other.status != "ok" else row

    def value_text(self, row: pd.Series, scale: float = 1.0) -> str:
        return fmt_mean_hw(row["mean"] * scale, row.half_width * scale)


def _metric_cell(res: Results, dataset: str, method: str, col: Column, notes: Notes) -> Cell:
    row, run = res.stat_for(dataset, method, col), res.runs.loc[(dataset, method)]
    if row is None:
        all_failed = run.n_failed == run.n_runs
        return Cell("failed", notes.ref(f"{method}: {run.failure_reason}")) if all_failed else Cell("–")
    if row.status != "ok":
        return Cell(row.status, notes.ref(row.reason or f"{method}: {row.status}"))
    short = f" (n={row.n})" if row.n < run.n_runs - run.n_failed else ""
    return Cell(res.value_text(row, col.scale) + short, notes.ref(row.reason) if row.reason else ())


def method_table(res: Results, dataset: str, columns: Iterable[Column], name: str, title: str, caption: str,
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
    return Table(name, title, caption, ["method", "seeds", "failed"] + [c.header() for c in cols], rows, notes.texts)


def summary_caption(res: Results, dataset: str) -> str:
    names = ", ".join(f"`{c.metric}`" for c in res.columns(dataset, SUMMARY_COLUMNS))
    return (f"Mean ± half-width of the {res.level:.0%} Student-t interval over seeds; `seeds` = runs, `failed` = "
            "failed or diverged runs (not in the statistics); a cell over fewer seeds says n=…. ↓ lower is "
            "better, ↑ higher is better, →0 closer to 0 is better. `data (floor)`: the data-vs-data floor (train "
            "vs test samples at the same n; the data entropy as the NLL floor where the density is known). "
            f"Tidy metric names: {names}.")


def summary_tables(res: Results) -> list[Table]:
    return [method_table(res, d, SUMMARY_COLUMNS, f"summary_{d}", f"Summary: {d}", summary_caption(res, d))
            for d in res.datasets]


def cost_tables(res: Results) -> list[Table]:
    caption = ("Snakemake benchmark wall time and peak resident memory of the train rule, wall time of the sample "
               f"and evaluate rules together, and the sampling rate; mean ± half-width of the {res.level:.0%} "
               "t-interval over seeds. Training time falls back to the training loop's own clock when no benchmark "
               "file exists.")
    return [method_table(res, d, COST_COLUMNS, f"cost_{d}", f"Cost: {d}", caption, floor=False)
            for d in res.datasets]


def _shown_metrics(res: Results, dataset: str) -> list[str]:
    return [c.metric for c in res.columns(dataset, SUMMARY_COLUMNS)]


def pairwise_tables(res: Results, pairs: pd.DataFrame) -> list[Table]:
    tables = []
    for dataset in res.datasets:
        shown = _shown_metrics(res, dataset)
        sub = pairs[(pairs.dataset == dataset) & pairs.metric.isin(shown)].copy()
        if sub.empty:
            continue
        sub["order"] = sub.metric.map(shown.index)
        rows = [[Cell(LABELS[r.metric]), Cell(f"{r.method_a} vs {r.method_b}"), Cell(str(r.n_a)), Cell(str(r.n_b)),
                 Cell(fmt_number(r.mean_a * SCALES[r.metric])), Cell(fmt_number(r.mean_b * SCALES[r.metric])),
                 Cell(f"{r.hedges_g:.2f}"), Cell(f"{r.p_a_better:.2f}"), Cell(fmt_number(r.p)),
                 Cell(fmt_number(r.p_holm)), Cell(r.better or "–")]
                for r in sub.sort_values("order", kind="stable").itertuples()]
        test = {"welch": "Welch's t-test", "mannwhitney": "the Mann–Whitney U test"}[sub.test.iloc[0]]
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
                            ["method"] + [LABELS[m] + " " + ARROW[stats.direction(m)] for m in metrics], rows))
    return tables


def _get(frame: pd.DataFrame, key: tuple) -> pd.Series | None:
    return frame.loc[key] if key in frame.index else None


# --- the comparison of approaches ---------------------------------------------------------------------------
def _data_dim(dataset: str) -> int:
    """n, the dimension of a data point: the suite's toy sets are 2-D, its image sets 1 × 28 × 28."""
    from bench.datasets import IMAGE_DATASETS

    return 28 * 28 if dataset in IMAGE_DATASETS else 2


def _config(res: Results, dataset: str, method: str) -> tuple[dict, str]:
    row = res.df[(res.df.dataset == dataset) & (res.df.method == method)].iloc[0]
    return (json.loads(row.config) if row.config else {}), str(row.config_hash)


def _metric_line(res: Results, dataset: str, family: str, metric: str, describe: Callable[[pd.Series], str],
                 with_floor: bool = True) -> str | None:
    """'{dataset} {label}: m1 …, m2 … (floor …)' over the family's methods with values, or None."""
    parts = [f"{m} {describe(row)}" for m in res.methods_on(dataset, family)
             if (row := res.ok(dataset, m, metric)) is not None]
    if not parts:
        return None
    floor = res.ok(dataset, FLOOR, metric) if with_floor else None
    floor_text = f" (floor {fmt_number(floor['mean'] * SCALES.get(metric, 1))})" if floor is not None else ""
    return f"{dataset} {LABELS.get(metric, metric)}: " + ", ".join(parts) + floor_text


def _quality_metric(res: Results, dataset: str) -> str:
    """The sample-quality metric of a dataset: FID where measured (images), else W2."""
    return "fid" if res.has_values(dataset, "fid") else "w2"


def _likelihood_evidence(res: Results, family: str) -> list[str]:
    lines, missing = [], {}
    for dataset in res.datasets:
        col = TEST_BPD if res.has_values(dataset, TEST_BPD.metric) else TEST_NLL
        for m in res.methods_on(dataset, family):
            row = res.stat_for(dataset, m, col)
            if row is None:
                continue
            if row.status != "ok":
                missing.setdefault(f"{row.status}: {row.reason}", []).append(f"{dataset}/{m}")
                continue
            bound = res.ok(dataset, m, "elbo") is not None
            lines.append(f"{dataset}/{m}: {'IWAE bound on the' if bound else 'exact'} {LABELS[col.metric]} "
                         f"{res.value_text(row)}")
    return lines + [f"{', '.join(where)}: {why}" for why, where in missing.items()]


def _latent_evidence(res: Results, family: str) -> list[str]:
    lines = []
    for dataset in res.datasets:
        parts = []
        for m in res.methods_on(dataset, family):
            config, config_hash = _config(res, dataset, m)
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
        metric = _quality_metric(res, dataset)
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


# --- figures ------------------------------------------------------------------------------------------------
def _run_figure(out_dir: Path, dataset: str, method: str, seeds: list[int]) -> tuple[str, Path] | None:
    """The per-run figure of the lowest seed that has one (seed 0 when it exists)."""
    for seed in seeds:
        path = out_dir / "figures" / "runs" / dataset / method / f"seed{seed}.png"
        if path.is_file():
            return f"{method} (seed {seed})", path
    return None


def _dataset_figures(res: Results, dataset: str, runs_dir: Path, out_dir: Path) -> list[Figure]:
    """Training curves, metric distributions and the sample panel of one dataset (those with something to draw)."""
    fig_dir, methods = out_dir / "figures", res.methods_on(dataset, floor=False)
    seeds = {m: res.runs.loc[(dataset, m)].seeds for m in methods}
    logs = {m: {s: p for s in seeds[m] if (p := runs_dir / dataset / m / f"seed{s}" / "train_log.csv").is_file()}
            for m in methods}
    cols = res.columns(dataset, SUMMARY_COLUMNS)
    good = ok_values(res.df[res.df.dataset == dataset])
    floors = {c.metric: r["mean"] for c in cols if (r := res.ok(dataset, FLOOR, c.metric)) is not None}
    panels = [p for m in methods if (p := _run_figure(out_dir, dataset, m, seeds[m]))]
    drawn = [
        (plots.training_curves({m: log for m, log in logs.items() if log}, dataset, fig_dir / f"curves_{dataset}.png"),
         f"{dataset}: training curves (every logged loss; one line per seed, dashed: validation loss)."),
        (plots.metric_distributions(good[good.method != FLOOR], methods, [(c.metric, c.header(), c.scale)
                                    for c in cols], floors, fig_dir / f"distributions_{dataset}.png"),
         f"{dataset}: every metric over seeds (box: quartiles; dots: seeds; dashed: data-vs-data floor)."),
        (plots.sample_panel(panels, f"{dataset}: samples", fig_dir / f"samples_{dataset}.png"),
         f"{dataset}: samples of each method (its lowest seed; per-run figures under figures/runs/{dataset}/)."),
    ]
    return [Figure(path, caption) for path, caption in drawn if path]


def figures(res: Results, runs_dir: Path, out_dir: Path) -> list[Figure]:
    out = [f for dataset in res.datasets for f in _dataset_figures(res, dataset, runs_dir, out_dir)]
    path = plots.cost_quality(_cost_quality_points(res), out_dir / "figures" / "cost_quality.png")
    if path:
        out.append(Figure(path, "Cost against sample quality: training time vs W2 (2-D) or FID (images), mean ± "
                                "t-interval half-width over seeds; dashed: data-vs-data floor."))
    return out


def _cost_quality_points(res: Results) -> dict[str, tuple[str, list[plots.Point], float | None]]:
    """Per dataset: the quality metric's label, one point per method (training time, quality), the floor."""
    out = {}
    for dataset in res.datasets:
        metric = _quality_metric(res, dataset)
        points = [plots.Point(m, t["mean"], t.half_width, q["mean"], q.half_width)
                  for m in res.methods_on(dataset, floor=False)
                  if (t := res.ok(dataset, m, "train_time_s")) is not None
                  and (q := res.ok(dataset, m, metric)) is not None]
        floor = res.ok(dataset, FLOOR, metric)
        if points:
            out[dataset] = (LABELS[metric], points, None if floor is None else floor["mean"])
    return out


# --- the report ---------------------------------------------------------------------------------------------
def _packages(df: pd.DataFrame) -> str:
    versions: dict[str, set[str]] = {}
    for text in df.packages.unique():
        for name, version in (json.loads(text) if text else {}).items():
            versions.setdefault(name, set()).add(version)
    return ", ".join(f"{n} {' / '.join(sorted(v))}" for n, v in sorted(versions.items())) or "not recorded"


def _code_version(df: pd.DataFrame) -> str:
    parts = []
    for commit, g in df.groupby("git_commit"):
        dirty = g.git_dirty.astype(str).eq("True").any()
        parts.append(f"`{commit[:12]}`" + (" (with uncommitted changes)" if dirty else ""))
    return ", ".join(parts) + (" — runs come from several code versions" if len(parts) > 1 else "")


def runs_table(res: Results) -> Table:
    rows = []
    for (dataset, method), run in res.runs.iterrows():
        if method == FLOOR:
            continue
        config, config_hash = _config(res, dataset, method)
        hashes = sorted(res.df[(res.df.dataset == dataset) & (res.df.method == method)].config_hash.unique())
        rows.append([Cell(dataset), Cell(method), Cell(run.family), Cell(", ".join(map(str, run.seeds))),
                     Cell(str(run.n_failed)), Cell(str(run.n_retried)), Cell(", ".join(hashes)),
                     Cell(json.dumps(config.get("hparams", {}), sort_keys=True))])
    return Table("runs", "Runs and configurations", "Every (dataset, method) of this run with its seeds, failed runs, "
                 "runs retried with a new seed after diverging, config hash(es) and resolved hyper-parameters (the "
                 "same for every seed when one hash is listed).",
                 ["dataset", "method", "family", "seeds", "failed", "retried", "config", "hyper-parameters"], rows)


def intro(res: Results, test: str) -> list[Block]:
    df = res.df[res.df.method != FLOOR]
    runs = res.runs.drop(index=FLOOR, level="method", errors="ignore")
    seeds = sorted({int(s) for s in df.seed.unique()})
    families = ", ".join(f"{m} ({res.runs.xs(m, level='method').family.iloc[0]})"
                         for m in res.methods if m != FLOOR)
    floor_cfg = res.df[res.df.method == FLOOR].config
    settings = json.loads(floor_cfg.iloc[0]).get("settings") if len(floor_cfg) and floor_cfg.iloc[0] else None
    test_name = {"welch": "Welch's t-test", "mannwhitney": "the Mann–Whitney U test"}[test]
    return [
        Heading("dgmbench report", 1),
        Paragraph(f"Methods {families} on datasets {', '.join(res.datasets)}, seeds {', '.join(map(str, seeds))}: "
                  f"{int(runs.n_runs.sum())} training runs, {int(runs.n_failed.sum())} failed or diverged, "
                  f"{int(runs.n_retried.sum())} retried with a new seed after diverging. Code "
                  f"version: {_code_version(res.df)}. Devices: {', '.join(sorted(set(df.device) - {''})) or 'n/a'}."),
        Paragraph(f"Packages: {_packages(res.df)}."),
        Paragraph("Evaluation settings (from the data-vs-data reference runs): "
                  + (f"`{json.dumps(settings, sort_keys=True)}`." if settings else "not recorded.")),
        Paragraph(f"Statistics: every number is over training seeds, mean ± half-width of the {res.level:.0%} "
                  f"Student-t interval (bootstrap intervals under-cover with a handful of seeds), with the median, sd "
                  f"and per-seed values in `tables/summary.csv`. Methods are compared pairwise with {test_name}, "
                  "Holm–Bonferroni-adjusted across the pairs of each dataset and metric, with Hedges' g and the "
                  "probability of superiority; ranks are per seed. Failed runs are counted, footnoted and left out "
                  "of the statistics; the data-vs-data floor is never compared or ranked."),
        Collapsed("Runs and configurations", (runs_table(res),)),
    ]


def _section(title: str, tables: list[Table], collapsed: bool = False) -> list[Block]:
    blocks: list[Block] = [Heading(title)]
    if not tables:
        return blocks + [Paragraph(NOTHING)]
    return blocks + ([Collapsed(t.title, (t,)) for t in tables] if collapsed else list(tables))


def _write_tables(tables: list[Table], path: Path, title: str, out_dir: Path) -> None:
    body = "\n".join(t.markdown(out_dir) for t in tables) or f"{NOTHING}\n"
    write_text(path, f"# {title}\n\n{body}")


def report(csv_in: Path, out_dir: Path, runs_dir: Path = Path("results/runs"), test: str = "welch") -> list[Path]:
    """Every table, figure and the report from the tidy metrics CSV; returns the files written."""
    out_dir, runs_dir = Path(out_dir), Path(runs_dir)
    tables_dir = out_dir / "tables"
    res = Results(load_metrics(csv_in))
    pairs, ranks = pairwise_frame(res.df, test), rank_frame(res.df)
    summary, cost = summary_tables(res), cost_tables(res)
    pairwise, ranked, approaches = pairwise_tables(res, pairs), rank_tables(res, ranks), approaches_table(res)
    written = {tables_dir / "summary.csv": res.stats.to_csv(index=False),
               tables_dir / "pairwise.csv": pairs.to_csv(index=False),
               tables_dir / "ranks.csv": ranks.to_csv(index=False)}
    written |= {tables_dir / f"{t.name}.tex": t.latex() for t in summary}
    for path, text in written.items():
        write_text(path, text)
    for tables, name, title in ((summary, "summary", "Summary"), (pairwise, "pairwise", "Pairwise comparisons"),
                                (ranked, "ranks", "Ranks"), (cost, "cost", "Cost"),
                                ([approaches], "approaches", "Comparison of approaches")):
        _write_tables(tables, tables_dir / f"{name}.md", title, out_dir)
    figs = figures(res, runs_dir, out_dir)
    blocks = [*intro(res, test), Heading("Comparison of approaches"), approaches,
              *_section("Summary per dataset", summary), *_section("Pairwise comparisons", pairwise, collapsed=True),
              *_section("Ranks", ranked), *_section("Cost", cost), Heading("Figures"), *figs]
    write_text(out_dir / "report.md", render_markdown(blocks, out_dir))
    write_text(out_dir / "report.html", render_html(blocks, out_dir, "dgmbench report"))
    md_names = ("summary", "pairwise", "ranks", "cost", "approaches")
    return sorted([*written, *(tables_dir / f"{n}.md" for n in md_names), *(f.path for f in figs),
                   out_dir / "report.md", out_dir / "report.html"])
