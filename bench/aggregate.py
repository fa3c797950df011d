"""Collect every run's metrics.json into one tidy table (one row per dataset, method, seed, metric), with the
provenance each row came from, plus the run's cost rows read from Snakemake's benchmark files beside it."""
from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from bench.io import checked_read, write_text
from core.errors import UserError

COLUMNS = ["dataset", "method", "family", "seed", "metric", "value", "stderr", "n", "unit", "status", "reason",
           "run_status", "retry_seed", "git_commit", "git_dirty", "config_hash", "config", "data_fingerprint",
           "packages", "device", "train_wall_time_s", "slurm_job_train", "slurm_job_evaluate"]
REFERENCE_FAMILY = "reference"  # the data-vs-data floors (method "data"): no training, no cost rows
BENCHMARK_FILE = "benchmark_{step}.tsv"  # Snakemake `benchmark:` output of the train/sample/evaluate rules


def read_benchmark(path: Path) -> dict[str, float]:
    """First row of a Snakemake benchmark file (tab-separated: s, h:m:s, max_rss [MB], …, cpu_time) as floats;
    fields that are missing or "-" are left out, and a missing file gives {}."""
    if not Path(path).is_file():
        return {}
    table = pd.read_csv(path, sep="\t", na_values=["-"])
    if table.empty:
        return {}
    row = pd.to_numeric(table.iloc[0].drop("h:m:s", errors="ignore"), errors="coerce")
    return {k: float(v) for k, v in row.items() if math.isfinite(v)}


def cost_records(run_dir: Path, train_wall_time_s: float | None) -> list[dict[str, Any]]:
    """Cost rows of one run: train_time_s (benchmark_train `s`, else the training loop's own wall time from
    provenance), train_peak_mem_mb (benchmark_train max_rss), eval_time_s (benchmark_sample `s` +
    benchmark_evaluate `s`, only when both exist). A value that cannot be read is skipped."""
    train, sample, evaluate = (read_benchmark(run_dir / BENCHMARK_FILE.format(step=s))
                               for s in ("train", "sample", "evaluate"))
    values = {
        "train_time_s": (train.get("s", train_wall_time_s), "s"),
        "train_peak_mem_mb": (train.get("max_rss"), "MB"),
        "eval_time_s": (sample["s"] + evaluate["s"] if "s" in sample and "s" in evaluate else None, "s"),
    }
    return [{"metric": metric, "value": float(value), "stderr": None, "n": None, "unit": unit, "status": "ok",
             "reason": ""}
            for metric, (value, unit) in values.items() if value is not None and math.isfinite(value)]


def read_result(path: Path) -> dict[str, Any]:
    """A metrics.json as `dgmbench evaluate` (a run) or `dgmbench reference` (a data floor) wrote it; a missing,
    unreadable or foreign file is a UserError naming it."""
    redo = f"write it with `dgmbench evaluate --run {path.parent}` (a run) or `dgmbench reference` (a data floor)"
    m = checked_read(path, "metrics file", redo, f"delete it and {redo}")
    if not isinstance(m, dict) or not {"run", "family", "status", "records", "train", "evaluation"} <= m.keys():
        raise UserError(f"{path} was not written by `dgmbench evaluate` or `dgmbench reference`; delete it and {redo}")
    return m


def collect(paths: Iterable[Path]) -> pd.DataFrame:
    rows = []
    for path in paths:
        m = read_result(Path(path))
        train, machine = m["train"], m["train"]["machine"]
        common = {
            **m["run"], "family": m["family"], "run_status": m["status"],
            "retry_seed": train.get("status", {}).get("retry", {}).get("seed"),  # set when a diverged run was retried
            "git_commit": machine["git"]["commit"], "git_dirty": machine["git"]["dirty"],
            "config_hash": train["config_hash"], "config": json.dumps(train["spec"], sort_keys=True),
            "data_fingerprint": train["data"]["fingerprint"],
            "packages": json.dumps(machine["packages"], sort_keys=True),
            "device": machine["device"], "train_wall_time_s": train["train_wall_time_s"],
            "slurm_job_train": machine["slurm_job_id"],
            "slurm_job_evaluate": m["evaluation"]["machine"]["slurm_job_id"],
        }
        records = [{k: rec[k] for k in ("metric", "value", "stderr", "n", "unit", "status", "reason")}
                   for rec in m["records"]]
        if m["family"] != REFERENCE_FAMILY:
            records += cost_records(Path(path).parent, train["train_wall_time_s"])
        rows += [{**common, **rec} for rec in records]
    df = pd.DataFrame(rows, columns=COLUMNS)
    return df.sort_values(["dataset", "method", "seed", "metric"], kind="stable").reset_index(drop=True)


def aggregate(metric_files: Iterable[Path], csv_out: Path) -> pd.DataFrame:
    df = collect(sorted(Path(p) for p in metric_files))
    write_text(csv_out, df.to_csv(index=False))
    return df
