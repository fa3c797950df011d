"""Apply the metrics that fit a run's capabilities and write one record per metric into `metrics.json`.

A metric that does not apply to a method (NLL of a GAN) is recorded with status "n/a" and the reason; a
diverged run gets status "failed" records, so aggregation and the report still show it.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from bench import datasets, provenance
from bench.io import write_json
from bench.seeding import resolve_device
from bench.train import PROVENANCE, load_model
from bench.io import read_json
from metrics.likelihood import nll_nats

METRICS_FILE = "metrics.json"
EVAL_DEFAULTS = {"batch_size": 4096, "device": "cpu"}


@dataclass
class Record:
    metric: str
    value: float | None = None
    stderr: float | None = None
    n: int | None = None
    unit: str = ""
    status: str = "ok"  # ok | n/a | failed
    reason: str = ""
    settings: dict[str, Any] = field(default_factory=dict)
    wall_time_s: float = 0.0


@dataclass
class Context:
    model: Any
    dataset: datasets.Dataset
    settings: dict[str, Any]


@torch.no_grad()
def _batched(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
    return torch.cat([fn(part.to(device)).double().cpu() for part in x.split(batch_size)])


def test_nll(ctx: Context) -> list[Record]:
    """Exact test NLL in nats over the whole fixed test set, with its standard error."""
    if "log_prob" not in ctx.model.capabilities:
        return [Record("test_nll", unit="nats", status="n/a",
                       reason=f"{ctx.model.family} has no tractable likelihood")]
    lp = _batched(ctx.model.log_prob, ctx.dataset.test, ctx.settings["batch_size"], ctx.model.device)
    res = nll_nats(lp)
    return [Record("test_nll", res.mean, res.stderr, res.n, "nats", settings={"split": "test"})]


def data_entropy(ctx: Context) -> list[Record]:
    """The data density's own entropy −E log p_data(x) on the test set: the floor of any model's test NLL."""
    if ctx.dataset.log_prob is None:
        return [Record("data_entropy", unit="nats", status="n/a", reason="the data density is not known in closed form")]
    res = nll_nats(ctx.dataset.log_prob(ctx.dataset.test))
    return [Record("data_entropy", res.mean, res.stderr, res.n, "nats", settings={"split": "test"})]


EVALUATORS: list[Callable[[Context], list[Record]]] = [test_nll, data_entropy]


def evaluate(run_dir: Path, settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """Evaluate a trained run and write `run_dir/metrics.json`; returns its content."""
    run_dir = Path(run_dir)
    settings = {**EVAL_DEFAULTS, **(settings or {})}
    model, ckpt = load_model(run_dir, settings["device"])
    spec, status = ckpt["spec"], ckpt["status"]
    device = resolve_device(settings["device"])
    records: list[Record] = []
    if status["status"] != "ok":
        records.append(Record("training", status="failed", reason=status["reason"]))
    else:
        ctx = Context(model, datasets.load(spec["dataset"], spec["data_root"]), settings)
        torch.manual_seed(spec["seed"])
        for evaluator in EVALUATORS:
            t0 = time.perf_counter()
            new = evaluator(ctx)
            for rec in new:
                rec.wall_time_s = round(time.perf_counter() - t0, 4) / len(new)
            records.extend(new)
    result = {
        "run": {k: spec[k] for k in ("dataset", "method", "seed")},
        "family": model.family,
        "status": status["status"],
        "records": [asdict(r) for r in records],
        "train": read_json(run_dir / PROVENANCE),
        "evaluation": {"settings": settings, "machine": provenance.collect(device)},
    }
    write_json(run_dir / METRICS_FILE, result)
    return result
