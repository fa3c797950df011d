"""The one training loop: every method, every dataset.

Deterministic on CPU (seeded RNGs, deterministic kernels, data order derived from seed and step), resumable
(`resume.pt` holds model, optimizers, RNG states, step and log, written atomically every `checkpoint_every`
steps and on SIGTERM/SIGINT), and failure-aware: a non-finite loss or parameter ends the run with a "diverged"
status record, an exception inside a training step with a "failed" one (traceback printed to the job log), so
the rest of the grid, the aggregation and the report still complete and show it.
"""
from __future__ import annotations

import csv
import io
import math
import signal
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

import models
from bench import datasets, provenance
from bench.errors import UserError
from bench.io import save_torch, write_json, write_text
from bench.seeding import resolve_device, rng_state, seed_everything, set_rng_state

CHECKPOINT, RESUME, LOG, PROVENANCE = "checkpoint.pt", "resume.pt", "train_log.csv", "provenance.json"
LOOP_DEFAULTS = {"log_every": 100, "val_every": 1000, "checkpoint_every": 1000, "val_size": 5000}


@dataclass
class RunSpec:
    """Everything that determines a training run; stored with its results."""

    method: str
    dataset: str
    seed: int
    hparams: dict[str, Any]  # resolved: the method's defaults updated by the config
    device: str = "cpu"
    data_root: str | None = None
    init_runs: dict[str, str] = field(default_factory=dict)  # required method -> its trained run folder
    loop: dict[str, int] = field(default_factory=lambda: dict(LOOP_DEFAULTS))

    @classmethod
    def build(cls, method: str, dataset: str, seed: int, overrides: dict[str, Any] | None = None,
              **kwargs: Any) -> "RunSpec":
        """Validate names and hyper-parameters (a UserError before any compute) and resolve defaults."""
        datasets.check_name(dataset)
        hp = models.resolve_hparams(method, dataset, overrides)
        for key in ("steps", "batch_size"):
            if not isinstance(hp[key], int) or hp[key] < 1:
                raise UserError(f"hyper-parameter {key} of {method} must be a positive integer, got {hp[key]!r}")
        loop = {**LOOP_DEFAULTS, **(kwargs.pop("loop", None) or {})}
        init_runs = kwargs.pop("init_runs", None) or {}
        required = set(models.get(method).requires)
        if set(init_runs) != required:
            raise UserError(f"method {method!r} starts from trained runs of {sorted(required) or 'nothing'}; "
                            f"got --init for {sorted(init_runs) or 'nothing'} (pass --init NAME=RUN_DIR)")
        for name, run in init_runs.items():
            if not (Path(run) / CHECKPOINT).exists():
                raise UserError(f"{method} starts from the trained {name} run in {run}, which has no {CHECKPOINT}; "
                                f"train it first (dgmbench train --method {name} ...)")
        return cls(method, dataset, seed, hp, init_runs=init_runs, loop=loop, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class EpochSampler:
    """Minibatch indices as a pure function of (seed, step): epoch e uses a permutation seeded by (seed, e),
    so a resumed run sees exactly the batches an uninterrupted one would."""

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        if batch_size > n:
            raise UserError(f"batch_size {batch_size} is larger than the training set ({n} examples)")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.steps_per_epoch = n // batch_size
        self._epoch, self._perm = -1, torch.empty(0, dtype=torch.long)

    def indices(self, step: int) -> torch.Tensor:
        epoch, pos = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._epoch, self._perm = epoch, torch.randperm(self.n, generator=gen)
        return self._perm[pos * self.batch_size:(pos + 1) * self.batch_size]


class _Interrupted(Exception):
    pass


def _raise_interrupted(signum: int, frame: Any) -> None:
    raise _Interrupted(signal.Signals(signum).name)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint written by this loop; a truncated or foreign file is a UserError naming it."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises several types for truncated/corrupt zip archives
        raise UserError(f"checkpoint {path} is corrupt or truncated ({type(exc).__name__}); delete it and retrain") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != 1:
        raise UserError(f"checkpoint {path} was not written by dgmbench's training loop; delete it and retrain")
    return ckpt


@torch.no_grad()
def validation_loss(model: Any, x: torch.Tensor, chunk: int = 1024) -> float | None:
    """Example-weighted mean of the method's validation objective over chunks of `x`."""
    total, n = 0.0, 0
    for part in x.split(chunk):
        value = model.validation_loss(part)
        if value is None:
            return None
        total, n = total + value * len(part), n + len(part)
    return total / n


def _write_log(path: Path, rows: list[dict[str, Any]]) -> None:
    fields = list(dict.fromkeys(["step", "wall_s", *(k for row in rows for k in row)]))  # a header even when empty
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buf.getvalue())


def train(spec: RunSpec, out_dir: Path, progress: bool | None = None) -> dict[str, Any]:
    """Train one run into `out_dir` (checkpoint.pt, train_log.csv, provenance.json); returns the status record."""
    out_dir = Path(out_dir)
    device = resolve_device(spec.device)
    ds = datasets.load(spec.dataset, spec.data_root)
    hp, loop = spec.hparams, spec.loop
    cfg_hash = provenance.config_hash(spec.to_dict())
    seed_everything(spec.seed, device)
    model = models.get(spec.method)(ds, hp).to(device)
    optimizers = model.configure_optimizers()
    train_x, val_x = ds.train.to(device), ds.val[: loop["val_size"]].to(device)
    sampler = EpochSampler(len(train_x), hp["batch_size"], spec.seed)

    start, rows, elapsed = 0, [], 0.0
    resume_path = out_dir / RESUME
    if resume_path.exists():
        ckpt = load_checkpoint(resume_path)
        if ckpt["config_hash"] == cfg_hash:
            model.load_state_dict(ckpt["model"])
            for name, opt in optimizers.items():
                opt.load_state_dict(ckpt["optimizers"][name])
            set_rng_state(ckpt["rng"])
            start, rows, elapsed = ckpt["step"], ckpt["log"], ckpt["train_wall_time_s"]
        else:
            print(f"dgmbench: ignoring {resume_path}: it belongs to a different configuration")
    if start == 0 and spec.init_runs:
        model.init_from({name: load_model(run, spec.device)[0] for name, run in spec.init_runs.items()})

    def state(step: int, status: dict[str, Any]) -> dict[str, Any]:
        return {"format": 1, "spec": spec.to_dict(), "config_hash": cfg_hash, "step": step, "status": status,
                "model": model.state_dict(), "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
                "rng": rng_state(), "log": rows, "train_wall_time_s": elapsed + time.perf_counter() - t0}

    status: dict[str, Any] = {"status": "ok"}
    last: dict[str, float] = {}
    t0 = time.perf_counter()
    old_handlers = {s: signal.signal(s, _raise_interrupted) for s in (signal.SIGTERM, signal.SIGINT)}
    bar = tqdm(total=hp["steps"], initial=start, disable=progress is False if progress is not None else None,
               desc=f"{spec.method}/{spec.dataset}/seed{spec.seed}", mininterval=0.5, dynamic_ncols=True)
    step = start
    try:
        model.train()
        for step in range(start, hp["steps"]):
            batch = train_x[sampler.indices(step)]
            if ds.train_transform is not None:
                batch = ds.train_transform(batch)
            losses = model.train_step(batch, optimizers, step)
            bad = {k: v for k, v in losses.items() if not math.isfinite(v)}
            if bad:
                status = {"status": "diverged", "step": step, "reason": f"non-finite loss {bad} at step {step}",
                          "last_finite_losses": last}
                break
            last = losses
            done = step + 1
            if done % loop["log_every"] == 0 or done == hp["steps"]:
                row = {"step": done, "wall_s": round(elapsed + time.perf_counter() - t0, 3), **losses}
                if done % loop["val_every"] == 0 or done == hp["steps"]:
                    model.eval()
                    row["val_loss"] = validation_loss(model, val_x)
                    model.train()
                if not all(torch.isfinite(p).all() for p in model.parameters()):
                    status = {"status": "diverged", "step": done, "reason": f"non-finite parameters at step {done}",
                              "last_finite_losses": last}
                    break
                rows.append(row)
                bar.set_postfix({k: f"{v:.4g}" for k, v in losses.items()}, refresh=False)
            if done % loop["checkpoint_every"] == 0 and done < hp["steps"]:
                save_torch(resume_path, state(done, {"status": "running"}))
                _write_log(out_dir / LOG, rows)
            bar.update(1)
    except _Interrupted as exc:
        save_torch(resume_path, state(step, {"status": "running"}))
        raise SystemExit(f"dgmbench: {exc} received; progress saved to {resume_path} (step {step}), re-run to resume")
    except (UserError, MemoryError, torch.OutOfMemoryError):
        raise  # bad input is the user's to fix; out of memory fails the job so a cluster can retry it
    except Exception as exc:  # a crashed run is a recorded failure, so the rest of the grid and the report go on
        traceback.print_exc()
        status = {"status": "failed", "step": step, "reason": f"{type(exc).__name__} at step {step}: {exc}",
                  "last_finite_losses": last}
    finally:
        bar.close()
        for s, h in old_handlers.items():
            signal.signal(s, h)

    final_step = hp["steps"] if status["status"] == "ok" else status["step"]
    ckpt = state(final_step, status)
    _write_log(out_dir / LOG, rows)
    write_json(out_dir / PROVENANCE, {
        "spec": spec.to_dict(), "config_hash": cfg_hash, "status": status,
        "data": {"name": ds.name, "version": ds.version, "fingerprint": ds.fingerprint},
        "train_wall_time_s": ckpt["train_wall_time_s"], "steps_done": final_step, "selection_rule": "final",
        "machine": provenance.collect(device),
    })
    save_torch(out_dir / CHECKPOINT, ckpt)
    resume_path.unlink(missing_ok=True)
    return status


def load_model(run_dir: Path, device: str = "cpu") -> tuple[Any, dict[str, Any]]:
    """Rebuild the trained model of a run from its checkpoint; returns (model in eval mode, checkpoint)."""
    ckpt = load_checkpoint(Path(run_dir) / CHECKPOINT)
    spec = RunSpec(**ckpt["spec"])
    ds = datasets.load(spec.dataset, spec.data_root)
    model = models.get(spec.method)(ds, spec.hparams)
    model.load_state_dict(ckpt["model"])
    return model.to(resolve_device(device)).eval(), ckpt
