"""Training-step throughput: the suite's own step (as `bench.train` runs it) and the course reference, timed alike."""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import models
from bench import datasets
from bench.perf.reference import REFERENCES
from bench.train import EpochSampler
from models.base import Losses

Step = Callable[[], Any]  # what a step returns (the suite's: its losses) is not timed


def suite_step(method: str, ds: datasets.Dataset, device: torch.device, compile: bool = False) -> tuple[Step, int]:
    """One step of the suite's training loop at the method's default size: the minibatch drawn from the in-memory
    training set exactly as `bench.train.train` draws it, then `train_step` (compiled as `training.compile` does
    it if `compile`; the first call then compiles), returning its losses. Returns (step, batch size)."""
    torch.manual_seed(0)
    model = models.get(method)(ds, models.resolve_hparams(method, ds.name)).to(device)
    if compile:
        model.compile_training()
    optimizers, batch_size = model.configure_optimizers(), model.hparams["batch_size"]
    train_x = ds.train.to(device)
    sampler, counter = EpochSampler(len(train_x), batch_size, seed=0, device=device), iter(range(1 << 62))

    def step() -> Losses:
        i = next(counter)
        return model.train_step(sampler.batch(ds, train_x, i), optimizers, i)

    return step, batch_size


def reference_step(method: str, ds: datasets.Dataset, device: torch.device, data_root: Path | None) -> Step | None:
    """The course recipe's step for the same method and size, or None where there is no reference."""
    build = REFERENCES.get((method, ds.name))
    if build is None:
        return None
    torch.manual_seed(0)
    return build(device, models.resolve_hparams(method, ds.name), data_root or datasets.default_data_root())


def steps_per_second(step: Step, seconds: float, device: torch.device) -> float:
    """Steps per second over a window of about `seconds`, after two warm-up steps."""
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(2):
        step()
    sync()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        step()
        n += 1
    sync()
    return n / (time.perf_counter() - t0)


def compare(steps: dict[str, Step], seconds: float, device: torch.device, windows: int = 5) -> dict[str, list[float]]:
    """Steps/s of each step function in each of `windows` interleaved windows (so drift in machine load hits every
    contender alike). The contenders' order is reversed in every other window, so that neither running first nor
    running right after another contender favours one of them."""
    rates: dict[str, list[float]] = {name: [] for name in steps}
    for window in range(windows):
        for name in list(steps)[:: 1 if window % 2 == 0 else -1]:
            rates[name].append(steps_per_second(steps[name], seconds / windows, device))
    return rates


def window_ratios(rates: dict[str, list[float]], name: str, base: str) -> list[float]:
    """`name`'s steps/s over `base`'s in each window of `compare`."""
    return [a / b for a, b in zip(rates[name], rates[base], strict=True)]


def paired_ratio(rates: dict[str, list[float]], name: str, base: str) -> float:
    """Median over the windows of `name`'s steps/s over `base`'s in the same window: contenders timed seconds apart
    see the same machine, so the ratio is steadier than a ratio of medians when the machine's speed drifts."""
    return statistics.median(window_ratios(rates, name, base))
