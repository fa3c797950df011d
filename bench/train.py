"""The one training loop: every method, every dataset.

Deterministic on CPU (seeded RNGs, deterministic kernels, data order derived from seed and step), resumable
(`resume.pt` holds model, optimizers, RNG states, step and log, written atomically every `checkpoint_every`
steps and on SIGTERM/SIGINT, once the step under way is complete), and failure-aware: a non-finite loss or
parameter ends the run with a "diverged" status record, an exception inside a training step with a "failed" one
(traceback printed to the job log), so the rest of the grid, the aggregation and the report still complete and
show it. A step's losses stay on the device until the next log or checkpoint step, which fetches them all in one
transfer and names the first non-finite one, so the host never waits for the device in between. With the opt-in
loop setting `retry_diverged`, a diverged run is trained once more from scratch with the seed `retry_seed(seed)`.
"""
from __future__ import annotations

import csv
import io
import math
import signal
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

import models
from bench import datasets, provenance
from bench.io import as_json, as_text, as_torch, checked_read, read_torch, save_torch, write_files
from bench.seeding import determinism, resolve_device, rng_state, seed_everything, separate_rng, set_rng_state
from core.errors import UserError
from models.base import Losses

CHECKPOINT, RESUME, LOG, PROVENANCE = "checkpoint.pt", "resume.pt", "train_log.csv", "provenance.json"
LOOP_DEFAULTS = {"log_every": 100, "val_every": 1000, "checkpoint_every": 1000, "val_size": 5000}
RETRY = "retry_diverged"  # opt-in, default false; not in LOOP_DEFAULTS so runs without it keep their config hash
COMPILE = "compile"  # opt-in, default false, likewise: train with the method's `compile_training()`
RETRY_SEED_OFFSET = 3_000_003


def retry_seed(seed: int) -> int:
    """Seed of the one retry of a diverged run: seed + 3,000,003, a function of the original seed alone (the retry
    is reproducible) and far above the small seeds of a grid."""
    return seed + RETRY_SEED_OFFSET


def check_loop(loop: dict[str, Any]) -> None:
    """Training-loop settings from the CLI's --loop (the pipeline's are schema-checked too)."""
    for key, value in loop.items():
        flag, count = key in (RETRY, COMPILE), key in LOOP_DEFAULTS
        if flag and isinstance(value, bool) or count and type(value) is int and value >= 1:
            continue
        raise UserError(f"training-loop setting {key}={value!r} is invalid; valid: {', '.join(LOOP_DEFAULTS)} "
                        f"(positive integers), {RETRY} and {COMPILE} (true or false)")


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
    loop: dict[str, Any] = field(default_factory=lambda: dict(LOOP_DEFAULTS))  # LOOP_DEFAULTS keys, RETRY and COMPILE

    @classmethod
    def build(cls, method: str, dataset: str, seed: int, overrides: dict[str, Any] | None = None,
              **kwargs: Any) -> RunSpec:
        """Validate names and hyper-parameters (a UserError before any compute) and resolve defaults."""
        datasets.check_name(dataset)
        hp = models.resolve_hparams(method, dataset, overrides)
        loop = {**LOOP_DEFAULTS, **(kwargs.pop("loop", None) or {})}
        check_loop(loop)
        if loop.get(COMPILE):
            models.check_compilable(method)
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
    so a resumed run sees exactly the batches an uninterrupted one would. The permutation is drawn on the CPU (the
    same batches on every device) and moved to `device` once per epoch, so a step indexes the training set where it
    lives, with no copy from the host."""

    def __init__(self, n: int, batch_size: int, seed: int, device: torch.device | str = "cpu") -> None:
        if batch_size > n:
            raise UserError(f"batch_size {batch_size} is larger than the training set ({n} examples)")
        self.n, self.batch_size, self.seed, self.device = n, batch_size, seed, torch.device(device)
        self.steps_per_epoch = n // batch_size
        self._epoch, self._perm = -1, torch.empty(0, dtype=torch.long)

    def indices(self, step: int) -> torch.Tensor:
        epoch, pos = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._epoch, self._perm = epoch, torch.randperm(self.n, generator=gen).to(self.device)
        return self._perm[pos * self.batch_size:(pos + 1) * self.batch_size]

    def batch(self, ds: datasets.Dataset, train_x: torch.Tensor, step: int) -> torch.Tensor:
        """Minibatch `step` of `train_x` (the in-memory training set), after the dataset's train transform."""
        # index_select copies whole rows at a time, where advanced indexing gathers element by element
        batch = train_x.index_select(0, self.indices(step))
        return batch if ds.train_transform is None else ds.train_transform(batch)


class _Interrupted(Exception):
    pass


class _Signals:
    """From construction to `restore()`, SIGTERM and SIGINT raise `_Interrupted`: at once, or inside `atomic()` when
    the block ends, so that a training step (a GAN's several optimizer updates, its RNG draws) is never cut in half
    and `resume.pt` holds exactly the state after the last whole step. Steps take well under SLURM's grace period.
    After `hold()` a signal is only recorded, so a second one cannot interrupt the saving of the first one's state."""

    def __init__(self) -> None:
        self.deferring, self.received = False, None
        self.old = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}

    def hold(self) -> None:
        self.deferring = True

    def restore(self) -> None:
        for s, h in self.old.items():
            signal.signal(s, h)

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = signal.Signals(signum).name
        if not self.deferring:
            raise _Interrupted(self.received)

    @contextmanager
    def atomic(self) -> Iterator[None]:
        self.deferring = True
        try:
            yield
        finally:
            self.deferring = False
        if self.received:
            raise _Interrupted(self.received)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint written by this loop; a missing, truncated or foreign file is a UserError naming it."""
    train_first = ("the run has not been trained there; train it first "
                   f"(`dgmbench train ... --out {path.parent}`, or the pipeline's train rule)")
    ckpt = checked_read(path, "checkpoint", train_first, "delete it and retrain", read_torch)
    if not isinstance(ckpt, dict) or ckpt.get("format") != 1:
        raise UserError(f"checkpoint {path} was not written by dgmbench's training loop; delete it and retrain")
    return ckpt


@torch.no_grad()
def validation_loss(model: Any, x: torch.Tensor, seed: int, chunk: int = 1024) -> float | None:
    """Example-weighted mean of the method's validation objective over chunks of `x`. Its random draws (a VAE's z,
    dequantization noise) come from a stream of their own, seeded alike at every validation: training's stream is
    the same whatever `val_every` is, a run interrupted during validation resumes exactly, and validation losses
    of different steps share their noise."""
    total, n = 0.0, 0
    with separate_rng(seed):
        for part in x.split(chunk):
            value = model.validation_loss(part)
            if value is None:
                return None
            total, n = total + value * len(part), n + len(part)
    return total / n


def _fetch(pending: list[Losses]) -> list[dict[str, float]]:
    """The steps' losses as numbers, the tensors among them copied from the device in one transfer."""
    tensors = [v for losses in pending for v in losses.values() if isinstance(v, torch.Tensor)]
    fetched = iter(torch.stack(tensors).tolist() if tensors else [])
    return [{k: next(fetched) if isinstance(v, torch.Tensor) else float(v) for k, v in losses.items()}
            for losses in pending]


def _log_csv(rows: list[dict[str, Any]]) -> str:
    fields = list(dict.fromkeys(["step", "wall_s", *(k for row in rows for k in row)]))  # a header even when empty
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _load_resume(path: Path, cfg_hash: str) -> dict[str, Any] | None:
    if not path.exists():
        return None
    ckpt = load_checkpoint(path)
    if ckpt["config_hash"] != cfg_hash:
        print(f"dgmbench: ignoring {path}: it belongs to a different configuration")
        return None
    return ckpt


def train(spec: RunSpec, out_dir: Path, progress: bool | None = None) -> dict[str, Any]:
    """Train one run into `out_dir` (checkpoint.pt, train_log.csv, provenance.json); returns the status record.

    With `retry_diverged` in `spec.loop`, a diverged run is trained once more from scratch in the same folder with
    `retry_seed(spec.seed)`; the status then has a "retry" entry (seed used, original seed, original diverged
    status), and stays "diverged" if the retry diverges too. `spec.seed` remains the run's identity."""
    out_dir = Path(out_dir)
    device = resolve_device(spec.device)
    ds = datasets.load(spec.dataset, spec.data_root)
    cfg_hash = provenance.config_hash(spec.to_dict())
    resume = _load_resume(out_dir / RESUME, cfg_hash)
    retry = resume["status"].get("retry") if resume else None  # set when the interrupted attempt was the retry
    ckpt = _attempt(spec, ds, device, out_dir, cfg_hash, resume, retry, progress)
    if ckpt["status"]["status"] == "diverged" and spec.loop.get(RETRY) and retry is None:
        retry = {"seed": retry_seed(spec.seed), "original_seed": spec.seed, "original_status": ckpt["status"],
                 "original_train_wall_time_s": ckpt["train_wall_time_s"]}
        print(f"dgmbench: {ckpt['status']['reason']}; retrying once from scratch with seed {retry['seed']}")
        ckpt = _attempt(spec, ds, device, out_dir, cfg_hash, None, retry, progress)
    status = ckpt["status"]
    write_files({  # together: a failed write (full disk) leaves none of the three
        out_dir / LOG: as_text(_log_csv(ckpt["log"])),
        out_dir / PROVENANCE: as_json({
            "spec": spec.to_dict(), "config_hash": cfg_hash, "status": status,
            "data": {"name": ds.name, "version": ds.version, "fingerprint": ds.fingerprint},
            "train_wall_time_s": ckpt["train_wall_time_s"] + (retry["original_train_wall_time_s"] if retry else 0.0),
            "steps_done": ckpt["step"], "selection_rule": "final",
            "machine": provenance.collect(device), "determinism": determinism(device),
        }),
        out_dir / CHECKPOINT: as_torch(ckpt),
    })
    (out_dir / RESUME).unlink(missing_ok=True)
    return status


def _attempt(spec: RunSpec, ds: datasets.Dataset, device: torch.device, out_dir: Path, cfg_hash: str,
             resume: dict[str, Any] | None, retry: dict[str, Any] | None, progress: bool | None) -> dict[str, Any]:
    """One training attempt (seeded with the retry's seed when `retry` is set), continued from `resume` if given;
    returns its final checkpoint dict, whose status carries `retry`."""
    hp, loop = spec.hparams, spec.loop
    seed = retry["seed"] if retry else spec.seed
    seed_everything(seed, device)
    model = models.get(spec.method)(ds, hp).to(device)
    if loop.get(COMPILE):
        model.compile_training()
    optimizers = model.configure_optimizers()
    train_x, val_x = ds.train.to(device), ds.val[: loop["val_size"]].to(device)
    sampler = EpochSampler(len(train_x), hp["batch_size"], seed, device)

    start, rows, elapsed = 0, [], 0.0
    if resume:
        model.load_state_dict(resume["model"])
        for name, opt in optimizers.items():
            opt.load_state_dict(resume["optimizers"][name])
        set_rng_state(resume["rng"])
        start, rows, elapsed = resume["step"], resume["log"], resume["train_wall_time_s"]
    elif spec.init_runs:
        model.init_from({name: load_model(run, spec.device)[0] for name, run in spec.init_runs.items()})

    def state(step: int, status: dict[str, Any]) -> dict[str, Any]:
        return {"format": 1, "spec": spec.to_dict(), "config_hash": cfg_hash, "step": step,
                "status": {**status, "retry": retry} if retry else status,
                "model": model.state_dict(), "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
                "rng": rng_state(), "log": rows, "train_wall_time_s": elapsed + time.perf_counter() - t0}

    status: dict[str, Any] = {"status": "ok"}
    last: dict[str, float] = {}
    pending: list[Losses] = []  # the losses of the steps since the last check, as the steps returned them
    pending_from = start  # the step of pending[0]

    def check() -> dict[str, Any] | None:
        """Fetch the pending losses (one wait for the device) and return the divergence record of the first
        non-finite one, if any; `last` becomes the latest finite losses."""
        nonlocal last, pending_from
        for i, losses in enumerate(_fetch(pending), pending_from):
            bad = {k: v for k, v in losses.items() if not math.isfinite(v)}
            if bad:
                return {"status": "diverged", "step": i, "reason": f"non-finite loss {bad} at step {i}",
                        "last_finite_losses": last}
            last = losses
        pending_from += len(pending)
        pending.clear()
        return None

    t0 = time.perf_counter()
    resume_path = out_dir / RESUME
    if retry and not resume:  # from now on a re-run resumes the retry, never the diverged attempt
        save_torch(resume_path, state(0, {"status": "running"}))
    bar = tqdm(total=hp["steps"], initial=start, disable=progress is False if progress is not None else None,
               desc=f"{spec.method}/{spec.dataset}/seed{seed}", mininterval=0.5, dynamic_ncols=True)
    signals = _Signals()
    step = done = start  # done: the steps completed whole, which the model, optimizers and RNGs reflect
    try:
        model.train()
        for step in range(start, hp["steps"]):
            with signals.atomic():
                losses = model.train_step(sampler.batch(ds, train_x, step), optimizers, step)
                pending.append({k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in losses.items()})
                done = step + 1
            logging = done % loop["log_every"] == 0 or done == hp["steps"]
            saving = done % loop["checkpoint_every"] == 0 and done < hp["steps"]
            if (logging or saving) and (diverged := check()):
                status = diverged
                break
            if logging:
                if not torch.stack([torch.isfinite(p).all() for p in model.parameters()]).all():
                    status = {"status": "diverged", "step": done, "reason": f"non-finite parameters at step {done}",
                              "last_finite_losses": last}
                    break
                row = {"step": done, "wall_s": round(elapsed + time.perf_counter() - t0, 3), **last}
                rows.append(row)  # before validation, which an interruption may cut short (no val_loss then)
                if done % loop["val_every"] == 0 or done == hp["steps"]:
                    model.eval()
                    row["val_loss"] = validation_loss(model, val_x, seed)
                    model.train()
                bar.set_postfix({k: f"{v:.4g}" for k, v in last.items()}, refresh=False)
            if saving:
                write_files({resume_path: as_torch(state(done, {"status": "running"})),
                             out_dir / LOG: as_text(_log_csv(rows))})
            bar.update(1)
    except _Interrupted as exc:
        signals.hold()  # a second SIGTERM (or an impatient Ctrl-C) must not cut the save short
        diverged = check()  # a divergence among the unchecked steps ends the run as one, with nothing to resume
        if diverged is None:
            save_torch(resume_path, state(done, {"status": "running"}))
            raise SystemExit(f"dgmbench: {exc} received; progress saved to {resume_path} (step {done}), "
                             "re-run to resume") from None
        status = diverged
    except (UserError, MemoryError, torch.OutOfMemoryError, OSError):
        raise  # bad input is the user's to fix; out of memory or a failed write (full disk) fails the job
    except Exception as exc:  # a crashed run is a recorded failure, so the rest of the grid and the report go on
        traceback.print_exc()
        status = check() or {"status": "failed", "step": step, "reason": f"{type(exc).__name__} at step {step}: {exc}",
                             "last_finite_losses": last}  # a crash that follows a divergence is that divergence
    finally:
        bar.close()
        signals.restore()
    return state(hp["steps"] if status["status"] == "ok" else status["step"], status)


def load_model(run_dir: Path, device: str = "cpu") -> tuple[Any, dict[str, Any]]:
    """Rebuild the trained model of a run from its checkpoint; returns (model in eval mode, checkpoint)."""
    path = Path(run_dir) / CHECKPOINT
    ckpt = load_checkpoint(path)
    spec = RunSpec(**ckpt["spec"])
    method = models.get(spec.method)
    missing = sorted(set(method.defaults(spec.dataset)) - set(spec.hparams))
    if missing:
        raise UserError(f"checkpoint {path} predates {spec.method}'s hyper-parameter(s) {', '.join(missing)}; "
                        f"delete it and retrain")
    ds = datasets.load(spec.dataset, spec.data_root)
    model = method(ds, spec.hparams)
    model.load_state_dict(ckpt["model"])
    return model.to(resolve_device(device)).eval(), ckpt
