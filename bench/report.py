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

import json
from pathlib import Path

import pandas as pd

from bench import catalog, plots, tables
from bench.claims import approaches_table, quality_metric
from bench.document import Block, Cell, Collapsed, Figure, Heading, Paragraph, Table, render_html, render_markdown
from bench.io import write_text
from bench.tables import FLOOR, Results

NOTHING = "Nothing to show: no dataset has two methods with values to compare or rank."


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
    cols = res.columns(dataset, catalog.SUMMARY)
    good = tables.ok_values(res.df[res.df.dataset == dataset])
    floors = {c.name: r["mean"] for c in cols if (r := res.ok(dataset, FLOOR, c.name)) is not None}
    panels = [p for m in methods if (p := _run_figure(out_dir, dataset, m, seeds[m]))]
    drawn = [
        (plots.training_curves({m: log for m, log in logs.items() if log}, dataset, fig_dir / f"curves_{dataset}.png"),
         f"{dataset}: training curves (every logged loss; one line per seed, dashed: validation loss)."),
        (plots.metric_distributions(good[good.method != FLOOR], methods, [(c.name, c.header, c.scale)
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
        metric = quality_metric(res, dataset)
        points = [plots.Point(m, t["mean"], t.half_width, q["mean"], q.half_width)
                  for m in res.methods_on(dataset, floor=False)
                  if (t := res.ok(dataset, m, "train_time_s")) is not None
                  and (q := res.ok(dataset, m, metric)) is not None]
        floor = res.ok(dataset, FLOOR, metric)
        if points:
            out[dataset] = (catalog.title(metric), points, None if floor is None else floor["mean"])
    return out


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
        config, config_hash = res.config(dataset, method)
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
                  "and per-seed values in `tables/summary.csv`. Methods are compared pairwise with "
                  f"{tables.TEST_NAMES[test]}, Holm–Bonferroni-adjusted across the pairs of each dataset and "
                  "metric, with Hedges' g and the probability of superiority; ranks are per seed. Failed runs are "
                  "counted, footnoted and left out of the statistics; the data-vs-data floor is never compared or "
                  "ranked."),
        Collapsed("Runs and configurations", (runs_table(res),)),
    ]


def _section(title: str, group: list[Table], collapsed: bool = False) -> list[Block]:
    blocks: list[Block] = [Heading(title)]
    if not group:
        return blocks + [Paragraph(NOTHING)]
    return blocks + ([Collapsed(t.title, (t,)) for t in group] if collapsed else list(group))


def _tables_markdown(group: list[Table], title: str, out_dir: Path) -> str:
    body = "\n".join(t.markdown(out_dir) for t in group) or f"{NOTHING}\n"
    return f"# {title}\n\n{body}"


def report(csv_in: Path, out_dir: Path, runs_dir: Path = Path("results/runs"), test: str = "welch") -> list[Path]:
    """Every table, figure and the report from the tidy metrics CSV; returns the files written."""
    out_dir, runs_dir = Path(out_dir), Path(runs_dir)
    tables_dir = out_dir / "tables"
    res = Results(tables.load_metrics(csv_in))
    pairs, ranks = tables.pairwise_frame(res.df, test), tables.rank_frame(res.df)
    summary, cost = tables.summary_tables(res), tables.cost_tables(res)
    pairwise, ranked = tables.pairwise_tables(res, pairs), tables.rank_tables(res, ranks)
    approaches = approaches_table(res)
    written = {tables_dir / "summary.csv": res.stats.to_csv(index=False),
               tables_dir / "pairwise.csv": pairs.to_csv(index=False),
               tables_dir / "ranks.csv": ranks.to_csv(index=False)}
    written |= {tables_dir / f"{t.name}.tex": t.latex() for t in summary}
    for group, name, title in ((summary, "summary", "Summary"), (pairwise, "pairwise", "Pairwise comparisons"),
                               (ranked, "ranks", "Ranks"), (cost, "cost", "Cost"),
                               ([approaches], "approaches", "Comparison of approaches")):
        written[tables_dir / f"{name}.md"] = _tables_markdown(group, title, out_dir)
    figs = figures(res, runs_dir, out_dir)
    blocks = [*intro(res, test), Heading("Comparison of approaches"), approaches,
              *_section("Summary per dataset", summary), *_section("Pairwise comparisons", pairwise, collapsed=True),
              *_section("Ranks", ranked), *_section("Cost", cost), Heading("Figures"), *figs]
    written[out_dir / "report.md"] = render_markdown(blocks, out_dir)
    written[out_dir / "report.html"] = render_html(blocks, out_dir, "dgmbench report")
    for path, text in written.items():
        write_text(path, text)
    return sorted([*written, *(f.path for f in figs)])
