"""The training loop: CPU determinism, exact resume, divergence records, corrupt checkpoints."""
import os
import signal

import pytest
import torch

from bench.errors import UserError
from bench.train import CHECKPOINT, RESUME, EpochSampler, RunSpec, load_checkpoint, train

SMALL = {"steps": 40, "batch_size": 64, "width": 16}
LOOP = {"log_every": 10, "val_every": 20, "checkpoint_every": 10, "val_size": 500}


def _spec(seed=0, **hp):
    return RunSpec.build("realnvp", "moons", seed, {**SMALL, **hp}, loop=LOOP)


def _weights(run_dir):
    return load_checkpoint(run_dir / CHECKPOINT)["model"]


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_same_seed_gives_identical_weights(tmp_path):
    train(_spec(), tmp_path / "a", progress=False)
    train(_spec(), tmp_path / "b", progress=False)
    _assert_same(_weights(tmp_path / "a"), _weights(tmp_path / "b"))
    train(_spec(seed=1), tmp_path / "c", progress=False)
    assert not torch.equal(_weights(tmp_path / "a")["s.0.0.weight"], _weights(tmp_path / "c")["s.0.0.weight"])


def test_resume_after_interrupt_matches_uninterrupted_run(tmp_path, monkeypatch):
    train(_spec(), tmp_path / "full", progress=False)

    from models.realnvp import RealNVP

    original = RealNVP.train_step

    def interrupted(self, x, optimizers, step):
        if step == 25:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, x, optimizers, step)

    monkeypatch.setattr(RealNVP, "train_step", interrupted)
    with pytest.raises(SystemExit, match="re-run to resume"):
        train(_spec(), tmp_path / "cut", progress=False)
    assert (tmp_path / "cut" / RESUME).exists() and not (tmp_path / "cut" / CHECKPOINT).exists()
    assert load_checkpoint(tmp_path / "cut" / RESUME)["step"] == 25
    monkeypatch.setattr(RealNVP, "train_step", original)
    train(_spec(), tmp_path / "cut", progress=False)
    _assert_same(_weights(tmp_path / "full"), _weights(tmp_path / "cut"))
    assert not (tmp_path / "cut" / RESUME).exists()
    assert (tmp_path / "full" / "train_log.csv").read_text() != ""


def test_non_finite_loss_is_a_divergence_record(tmp_path):
    status = train(_spec(lr=1e6, steps=200), tmp_path, progress=False)
    assert status["status"] == "diverged" and "non-finite" in status["reason"]
    assert load_checkpoint(tmp_path / CHECKPOINT)["status"]["status"] == "diverged"


def test_a_crashing_step_is_a_failure_record(tmp_path, monkeypatch):
    from models.realnvp import RealNVP

    def crash(self, x, optimizers, step):
        raise RuntimeError("kernel exploded")

    monkeypatch.setattr(RealNVP, "train_step", crash)
    status = train(_spec(), tmp_path, progress=False)
    assert status["status"] == "failed" and status["reason"] == "RuntimeError at step 0: kernel exploded"
    assert load_checkpoint(tmp_path / CHECKPOINT)["status"] == status


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    train(_spec(steps=10), tmp_path, progress=False)
    path = tmp_path / CHECKPOINT
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(UserError, match="corrupt or truncated"):
        load_checkpoint(path)


def test_epoch_sampler_covers_each_epoch_once_and_is_a_function_of_step():
    s = EpochSampler(100, 10, seed=3)
    first = torch.cat([s.indices(i) for i in range(10)])
    assert sorted(first.tolist()) == list(range(100))
    again = EpochSampler(100, 10, seed=3)
    assert torch.equal(again.indices(13), s.indices(13))
    assert not torch.equal(s.indices(0), s.indices(10))


def test_batch_size_larger_than_data_is_rejected():
    with pytest.raises(UserError, match="batch_size"):
        EpochSampler(10, 64, seed=0)
    with pytest.raises(UserError, match="positive integer"):
        _spec(batch_size=0)


def test_sigkill_mid_run_then_resume_gives_identical_weights(tmp_path):
    """A training process killed with SIGKILL resumes from its last periodic checkpoint on the next run and
    ends with exactly the weights of an uninterrupted run (RNG states and data order are checkpointed)."""
    import json
    import subprocess
    import sys
    import time

    args = ["--method", "realnvp", "--dataset", "moons", "--seed", "0", "--hparams",
            json.dumps({"steps": 400, "batch_size": 64, "width": 16}), "--loop",
            json.dumps({**LOOP, "checkpoint_every": 50}), "--threads", "1", "--no-progress"]
    cli = [sys.executable, "-m", "bench.cli", "train"]
    subprocess.run([*cli, *args, "--out", str(tmp_path / "full")], check=True, capture_output=True, timeout=300)
    cut = tmp_path / "cut"
    proc = subprocess.Popen([*cli, *args, "--out", str(cut)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (cut / RESUME).exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    assert (cut / RESUME).exists() and not (cut / CHECKPOINT).exists(), "killed before the first checkpoint"
    assert 0 < load_checkpoint(cut / RESUME)["step"] < 400
    subprocess.run([*cli, *args, "--out", str(cut)], check=True, capture_output=True, timeout=300)
    _assert_same(_weights(tmp_path / "full"), _weights(cut))


def test_cli_reports_a_corrupt_checkpoint_in_one_line(tmp_path):
    import subprocess
    import sys

    train(_spec(steps=10), tmp_path, progress=False)
    (tmp_path / CHECKPOINT).write_bytes(b"not a checkpoint")
    res = subprocess.run([sys.executable, "-m", "bench.cli", "evaluate", "--run", str(tmp_path)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2
    line = res.stderr.strip()
    assert "\n" not in line and line.startswith(f"dgmbench: error: checkpoint {tmp_path / CHECKPOINT} is corrupt")
    assert line.endswith("delete it and retrain")
