"""Draw a run's evaluation samples once (seeded, timed), so every sample-based metric and figure uses the same set."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from bench.io import checked_read, read_torch, save_torch
from bench.train import load_model
from core.errors import UserError

SAMPLES = "samples.pt"
SAMPLE_SEED_OFFSET = 1_000_003  # evaluation noise never reuses the training seed's stream


@torch.no_grad()
def sample_run(run_dir: Path, n: int, batch_size: int = 1000, device: str = "cpu") -> dict[str, Any]:
    """Write `run_dir/samples.pt`: n samples in data space (float32), the seed, wall time and samples/s."""
    model, ckpt = load_model(run_dir, device)
    seed = ckpt["spec"]["seed"] + SAMPLE_SEED_OFFSET
    out: dict[str, Any] = {"status": ckpt["status"]["status"], "n": n, "seed": seed}
    if out["status"] == "ok":
        torch.manual_seed(seed)
        t0 = time.perf_counter()
        parts = [model.sample(min(batch_size, n - i)).float().cpu() for i in range(0, n, batch_size)]
        wall = time.perf_counter() - t0
        out.update(samples=torch.cat(parts), wall_time_s=wall, samples_per_s=n / wall)
    save_torch(Path(run_dir) / SAMPLES, out)
    return out


def load_samples(run_dir: Path) -> dict[str, Any]:
    """A run's samples as `sample_run` wrote them; a missing, unreadable or foreign file is a UserError naming it."""
    path, redo = Path(run_dir) / SAMPLES, f"`dgmbench sample --run {run_dir}` (the pipeline's sample rule)"
    saved = checked_read(path, "samples file", f"draw them first with {redo}", f"delete it and re-run {redo}",
                         read_torch)
    if not isinstance(saved, dict) or not {"status", "n", "seed"} <= saved.keys():
        raise UserError(f"{path} was not written by `dgmbench sample`; delete it and re-run {redo}")
    return saved
