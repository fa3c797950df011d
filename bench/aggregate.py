"""Collect every run's metrics.json into one tidy table (one row per dataset, method, seed, metric), with the
provenance each row came from, and render the summary table from it."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import pandas as pd

from bench.io import read_json, write_text
from bench.stats import t_interval

COLUMNS = ["dataset", "method", "family", "seed", "metric", "value", "stderr", "n", "unit", "status", "reason",
           "run_status", "git_commit", "git_dirty", "config_hash", "config", "data_fingerprint", "packages",
           "device", "train_wall_time_s", "slurm_job_train", "slurm_job_evaluate"]


def collect(paths: Iterable[Path]) -> pd.DataFrame:
    rows = []
    for path in paths:
        m = read_json(path)
        train, machine = m["train"], m["train"]["machine"]
        common = {
            **m["run"], "family": m["family"], "run_status": m["status"],
            "git_commit": machine["git"]["commit"], "git_dirty": machine["git"]["dirty"],
            "config_hash": train["config_hash"], "config": json.dumps(train["spec"], sort_keys=True),
            "data_fingerprint": train["data"]["fingerprint"], "packages": json.dumps(machine["packages"], sort_keys=True),
            "device": machine["device"], "train_wall_time_s": train["train_wall_time_s"],
            "slurm_job_train": machine["slurm_job_id"], "slurm_job_evaluate": m["evaluation"]["machine"]["slurm_job_id"],
        }
        for rec in m["records"]:
            rows.append({**common, **{k: rec[k] for k in ("metric", "value", "stderr", "n", "unit", "status", "reason")}})
    df = pd.DataFrame(rows, columns=COLUMNS)
    return df.sort_values(["dataset", "method", "seed", "metric"], kind="stable").reset_index(drop=True)


def _fmt(x: float) -> str:
    return f"{x:.4g}" if abs(x) >= 1e-3 or x == 0 else f"{x:.2e}"


def summary_markdown(df: pd.DataFrame) -> str:
    """Per dataset: methods as rows, metrics as columns; mean ± 95 % t-interval half-width over seeds, then the
    per-seed values. Not-applicable cells say n/a with a footnote giving the reason."""
    lines = ["# Summary", "",
             "Mean ± half-width of the 95 % Student-t interval over seeds, per-seed values in brackets "
             "(seed order). NLL in nats per example (lower is better); `data_entropy` is the data density's own "
             "entropy on the test set, the floor of any model's NLL.", ""]
    notes: dict[str, int] = {}
    for dataset, dgroup in df.groupby("dataset", sort=True):
        metrics = [m for m in dict.fromkeys(dgroup["metric"]) if m != "training"]
        lines += [f"## {dataset}", "", "| method | seeds | failed | " + " | ".join(metrics) + " |",
                  "|---|---|---|" + "---|" * len(metrics)]
        for method, g in dgroup.groupby("method", sort=True):
            seeds = g.drop_duplicates("seed")
            failed = int((seeds["run_status"] != "ok").sum())
            cells = []
            for metric in metrics:
                rows = g[g["metric"] == metric].sort_values("seed")
                ok = rows[rows["status"] == "ok"]
                if len(ok):
                    ci = t_interval(ok["value"])
                    spread = f" ± {_fmt(ci.half_width)}" if ci.n > 1 else ""
                    cells.append(f"{_fmt(ci.mean)}{spread} [{', '.join(_fmt(v) for v in ok['value'])}]")
                elif len(rows):
                    reason = rows["reason"].iloc[0]
                    mark = notes.setdefault(reason, len(notes) + 1)
                    cells.append(f"n/a[^{mark}]")
                else:
                    cells.append("")
            lines.append(f"| {method} | {len(seeds)} | {failed} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += [f"[^{i}]: {reason}" for reason, i in notes.items()]
    return "\n".join(lines).rstrip() + "\n"


def aggregate(metric_files: Iterable[Path], csv_out: Path) -> pd.DataFrame:
    df = collect(sorted(Path(p) for p in metric_files))
    write_text(csv_out, df.to_csv(index=False))
    return df


def report(csv_in: Path, out_dir: Path) -> None:
    df = pd.read_csv(csv_in, keep_default_na=True)
    write_text(Path(out_dir) / "summary.md", summary_markdown(df))
