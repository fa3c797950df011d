"""The performance harness: training throughput against the course reference, metric timings, the pipeline.

    python -m bench.perf [--seconds 6] [--threads 1,2] [--device cpu|cuda|auto] [--quick] [--pipeline]
                         [--paper-runs] [--out reports]

Writes `perf.md` and `perf.csv` into --out (default reports/) and prints the tables as it goes.
- Training: steps/s and samples/s of every method at its default size on moons and MNIST (the suite's own
  step: in-memory minibatch + `train_step`, as `bench.train` runs it), and of the course recipe
  (bench/perf/reference.py) where one exists, with the ratio. Contenders take turns in five windows, in reversed
  order every other window (steps/s: the median over windows; ratio: the median of per-window ratios), for each
  torch thread count in --threads (1 is what a pipeline job gets; 2 is torch's default here).
- Metrics: each metric at its default N on seeded synthetic data (bench/perf/metrics.py) and FID of 10,000
  MNIST images with the suite's classifier features.
- Pipeline (--pipeline, ~20 min on 2 CPU cores): the default config end to end in a fresh folder (temporary,
  or --pipeline-dir, kept), then the no-op re-run.
- Paper-budget runs (--paper-runs, meant for a GPU: hours on a CPU): one complete `bench.train` run (seed 0) of
  every method at its code defaults, the paper budget, on each dataset, with its wall time.
"""
from __future__ import annotations

import argparse
import csv
import io
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from unittest import mock

import torch

import models
from bench import datasets, provenance
from bench.allocator import keep_freed_memory
from bench.io import write_text
from bench.perf import metrics as perf_metrics
from bench.perf import targets
from bench.perf.training import compare, paired_ratio, reference_step, suite_step, window_ratios
from bench.seeding import resolve_device
from bench.train import RunSpec, train
from core.errors import UserError

REPO = provenance.REPO
TRAINING = ["suite_steps_per_s", "suite_samples_per_s", "reference_steps_per_s", "ratio", "ratio_windows",
            "compiled_steps_per_s", "compiled_ratio", "compile_s"]
FIELDS = ["section", "name", "dataset", "threads", "n", "batch", *TRAINING, "seconds", "converged", "value", "device"]


def training_rows(loaded: dict[str, datasets.Dataset], methods: list[str], threads: list[int], seconds: float,
                  device: torch.device, data_root: Path | None) -> list[dict[str, Any]]:
    rows = []
    for name, ds in loaded.items():
        for method in methods:
            cls = models.get(method)
            if name in cls.unsupported or cls.requires:  # VAE-initialized GANs train exactly like their base GAN
                continue
            for n_threads in threads:
                torch.set_num_threads(n_threads)
                suite, batch = suite_step(method, ds, device)
                steps = {"suite": suite}
                ref = reference_step(method, ds, device, data_root)
                if ref is not None:
                    steps["reference"] = ref
                row = {"section": "training", "name": method, "dataset": name, "threads": n_threads, "batch": batch,
                       "device": str(device)}
                if cls.compiled:  # training.compile: the first step compiles
                    steps["compiled"] = suite_step(method, ds, device, compile=True)[0]
                    t0 = time.perf_counter()
                    steps["compiled"]()
                    row["compile_s"] = round(time.perf_counter() - t0, 1)
                windows = compare(steps, seconds * len(steps), device)
                rates = {k: statistics.median(r) for k, r in windows.items()}
                row.update(suite_steps_per_s=round(rates["suite"], 2),
                           suite_samples_per_s=round(rates["suite"] * batch))
                if ref:
                    per_window = window_ratios(windows, "suite", "reference")
                    row.update(reference_steps_per_s=round(rates["reference"], 2),
                               ratio=round(statistics.median(per_window), 2),
                               ratio_windows=" ".join(f"{r:.2f}" for r in per_window))
                if cls.compiled:
                    row["compiled_steps_per_s"] = round(rates["compiled"], 2)
                    if ref:
                        row["compiled_ratio"] = round(paired_ratio(windows, "compiled", "reference"), 2)
                rows.append(row)
                print(f"training {name}/{method} threads={n_threads}: "
                      + ", ".join(f"{k} {row[k]}" for k in TRAINING if k in row), flush=True)
    return rows


def metric_rows(quick: bool, data_root: Path | None) -> list[dict[str, Any]]:
    rows = []
    for name, n, d, seconds, converged, value in perf_metrics.timings(quick, data_root):
        rows.append({"section": "metrics", "name": name, "n": n, "dataset": f"{d}-d", "seconds": round(seconds, 2),
                     "converged": converged, "value": value, "threads": torch.get_num_threads(), "device": "cpu"})
        print(f"metric {name} n={n} d={d}: {seconds:.2f} s {converged} {value}", flush=True)
    return rows


def pipeline_rows(data_root: Path | None, work: Path | None) -> list[dict[str, Any]]:
    """The default config end to end in a fresh folder (`work`, kept; else a temporary one), then the no-op
    re-run, as `make bench` runs it."""
    snakemake = Path(sys.executable).parent / "snakemake"
    keep = work is not None
    if keep and work.exists() and any(work.iterdir()):
        raise UserError(f"--pipeline-dir {work} is not empty; the end-to-end timing needs a fresh folder")
    work = work or Path(tempfile.mkdtemp(prefix="dgmbench-perf-"))
    cmd = [str(snakemake), "--profile", str(REPO / "profiles" / "local"), "-s", str(REPO / "Snakefile"),
           "-d", str(work), "--quiet"]
    env = None if data_root is None else {**os.environ, datasets.DATA_ROOT_ENV: str(data_root)}
    rows = []
    try:
        for name in ("default pipeline, from nothing", "default pipeline, no-op re-run"):
            t0 = time.perf_counter()
            done = subprocess.run(cmd, env=env, capture_output=True, text=True)
            seconds = time.perf_counter() - t0
            if done.returncode != 0:
                raise UserError(f"the pipeline failed (exit {done.returncode}) in {work}: {done.stderr.strip()[-500:]}")
            rows.append({"section": "pipeline", "name": name, "seconds": round(seconds, 1), "device": "cpu",
                         "threads": 1})
            print(f"{name}: {seconds:.1f} s", flush=True)
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    return rows


def paper_run_rows(names: list[str], methods: list[str], device: torch.device, data_root: Path | None,
                   overrides: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """One full training run (seed 0, the training loop's default settings) of each method at its code
    defaults (the paper budget) on each dataset, timed end to end; `overrides` are hyper-parameter deltas for
    every run. VAE-initialized GANs start from the VAE run just trained, as in the pipeline (the VAE is
    trained for them, timed too, if `methods` leaves it out)."""
    rows = []
    for name in names:
        needed = {m for m in methods if name not in models.get(m).unsupported}
        needed |= {r for m in needed for r in models.get(m).requires}
        order = sorted(needed, key=lambda m: (bool(models.get(m).requires), m))  # the runs others start from first
        with tempfile.TemporaryDirectory(prefix="dgmbench-perf-runs-") as root:
            for method in order:
                spec = RunSpec.build(method, name, 0, overrides, device=str(device),
                                     data_root=None if data_root is None else str(data_root),
                                     init_runs={m: f"{root}/{m}" for m in models.get(method).requires})
                t0 = time.perf_counter()
                status = train(spec, Path(root) / method, progress=False)
                seconds = time.perf_counter() - t0
                steps = spec.hparams["steps"]
                rows.append({"section": "paper_run", "name": method, "dataset": name, "n": steps,
                             "batch": spec.hparams["batch_size"], "seconds": round(seconds, 1),
                             "suite_steps_per_s": round(steps / seconds, 2), "value": status["status"],
                             "threads": torch.get_num_threads(), "device": str(device)})
                print(f"paper-budget run {name}/{method}: {steps} steps in {seconds:.1f} s ({status['status']})",
                      flush=True)
    return rows


def machine(device: torch.device) -> str:
    cpus, code = len(os.sched_getaffinity(0)), provenance.git_version()
    dirty = " (uncommitted changes)" if code["dirty"] else ""
    return (f"{provenance.device_name(device)} ({device}), {cpus} CPU cores available, torch {torch.__version__}, "
            f"Python {platform.python_version()}, commit {code['commit'][:10]}{dirty}")


# Each section of perf.md: (row section, heading and text above the table, [(column header, row key)]).
SECTIONS = [
    ("training", ("## Training throughput\n\nThe suite's step (in-memory minibatch, stacked/fused kernels where the "
      "method has them, fused Adam) against the course recipe at the same size (bench/perf/reference.py: per-step "
      "`make_moons`, torchvision DataLoader with per-image `ToTensor`, default Adam). Contenders take turns in "
      "five windows, in reversed order every other window: steps/s are medians over the windows, a ratio is the "
      "median of the per-window ratios (listed for the suite; when the machine's speed drifts between windows it "
      "differs from the ratio of the medians).\n\n"
      "`compiled`: the same step with `training.compile` (torch.compile of the method's objective, on a GPU "
      "as CUDA graphs; FFJORD and WGAN-GP have none), timed alike after its first step, which compiles "
      "(`compile s`; inductor's cache starts empty in each harness run)."),
     [("dataset", "dataset"), ("method", "name"), ("threads", "threads"), ("batch", "batch"),
      *zip(["suite steps/s", "suite samples/s", "reference steps/s", "ratio", "ratio per window", "compiled steps/s",
            "compiled ratio", "compile s"], TRAINING, strict=True)]),
    ("metrics", ("## Metrics at their default N\n\nSeeded synthetic data (bench/perf/metrics.py); exact W is POT's "
      "single-threaded network simplex with `numItermax` 1e7 and a convergence check."),
     [("metric", "name"), ("N", "n"), ("d", "dataset"), ("seconds", "seconds"), ("converged", "converged"),
      ("value", "value")]),
    ("paper_run", ("## Paper-budget runs\n\nOne `bench.train` run (seed 0) per method at its code defaults, "
      "validation and checkpoints included."),
     [("dataset", "dataset"), ("method", "name"), ("steps", "n"), ("batch", "batch"), ("seconds", "seconds"),
      ("steps/s", "suite_steps_per_s"), ("status", "value")]),
    ("pipeline", "## Pipeline\n\n`snakemake --profile profiles/local` with config/default.yaml in a fresh folder.",
     [("run", "name"), ("seconds", "seconds")]),
]


def markdown(rows: list[dict[str, Any]], command: str, ran_on: str, cpu_targets: bool = True) -> str:
    """reports/perf.md: the suite's targets checked against `rows` (bench/perf/targets.py; CPU targets, so only
    if `cpu_targets`), then a table per section of `rows` (SECTIONS; "–" where a row has no value), measured by
    `command` on `ran_on` (`machine()`)."""
    out = [f"# Performance\n\nMeasured by `{command}` on {ran_on}.\n"]
    if cpu_targets:
        out += ["## Targets\n\nThe suite's CPU targets, judged on this run's rows below.\n",
                "| target | threads | measured | met |", "|---|---|---|---|"]
        out += [f"| {t['target']} | {t['where']} | {t['measured']} | {t['met']} |" for t in targets.check(rows)]
        out.append("")
    for section, text, columns in SECTIONS:
        table = [r for r in rows if r["section"] == section]
        if table:
            out += [f"{text}\n", "| " + " | ".join(h for h, _ in columns) + " |", "|---" * len(columns) + "|"]
            out += ["| " + " | ".join(str(r.get(k, "–")) for _, k in columns) + " |" for r in table]
            out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.perf", description=__doc__.splitlines()[0])
    p.add_argument("--datasets", default="moons,mnist")
    p.add_argument("--methods", default=",".join(models.available()), help="methods to time, comma-separated")
    p.add_argument("--seconds", type=float, default=6.0, help="timing budget per contender and thread count")
    p.add_argument("--threads", default="1,2", help="torch thread counts to measure, comma-separated")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--quick", action="store_true", help="skip the slowest metric rows (exact W at N = 10,000)")
    p.add_argument("--no-training", action="store_true")
    p.add_argument("--pipeline", action="store_true", help="also run the default pipeline end to end (~20 min)")
    p.add_argument("--paper-runs", action="store_true",
                   help="also train every method once at its paper budget on --device (hours on a CPU)")
    p.add_argument("--pipeline-dir", type=Path, default=None, help="run it in this (new or empty) folder and keep it")
    p.add_argument("--data-root", type=Path, default=None)
    p.add_argument("--out", type=Path, default=REPO / "reports")
    args = p.parse_args(argv)
    keep_freed_memory()  # as every pipeline step does (bench.cli)
    device = resolve_device(args.device)
    ran_on = machine(device)  # before any output is written: the code version (and its dirty flag) that runs
    threads = [int(t) for t in args.threads.split(",")]
    names, methods = args.datasets.split(","), args.methods.split(",")
    for method in methods:
        models.get(method)  # an unknown name fails here, before any timing
    # A missing or corrupt dataset fails here, before any timing (the FID row needs no MNIST: without it, it is
    # left out)
    loaded = {name: datasets.load(name, args.data_root) for name in names}
    rows = []
    if not args.no_training:
        # A fresh inductor cache, so `compile s` is what a first compiled run costs on this machine.
        with tempfile.TemporaryDirectory(prefix="dgmbench-perf-inductor-") as cache, \
                mock.patch.dict(os.environ, {"TORCHINDUCTOR_CACHE_DIR": cache}):
            rows += training_rows(loaded, methods, threads, args.seconds, device, args.data_root)
    torch.set_num_threads(1)
    rows += metric_rows(args.quick, args.data_root)
    if args.paper_runs:
        rows += paper_run_rows(names, methods, device, args.data_root)
    if args.pipeline:
        rows += pipeline_rows(args.data_root, args.pipeline_dir)
    command = "python -m bench.perf " + " ".join(argv if argv is not None else sys.argv[1:])
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=FIELDS, restval="")
    writer.writeheader()
    writer.writerows(rows)
    stem = "perf" if device.type == "cpu" else f"perf-{device.type}"
    write_text(args.out / f"{stem}.csv", buf.getvalue())
    write_text(args.out / f"{stem}.md", markdown(rows, command.strip(), ran_on, device.type == "cpu") + "\n")
    print(f"wrote {args.out / stem}.md and .csv")


if __name__ == "__main__":
    try:
        main()
    except UserError as exc:
        raise SystemExit(f"bench.perf: {exc}") from None
