"""The training loop: CPU determinism, exact resume, divergence records and retries, corrupt checkpoints."""
import itertools
import os
import signal

import pytest
import torch

import models
from bench import datasets
from bench import train as train_module
from bench.io import read_json, save_torch
from bench.seeding import determinism, seed_everything
from bench.train import CHECKPOINT, PROVENANCE, RESUME, EpochSampler, RunSpec, load_checkpoint, retry_seed, train
from conftest import DispatchLog
from core.errors import UserError

SYNC = "aten._local_scalar_dense.default"  # the host reading a tensor's value: on a GPU, waiting for the device

SMALL = {"steps": 40, "batch_size": 64, "width": 16}
LOOP = {"log_every": 10, "val_every": 20, "checkpoint_every": 10, "val_size": 500}
RETRY_LOOP = {**LOOP, "retry_diverged": True}


def _spec(seed=0, loop=LOOP, **hp):
    return RunSpec.build("realnvp", "moons", seed, {**SMALL, **hp}, loop=loop)


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
    a, c = _weights(tmp_path / "a"), _weights(tmp_path / "c")
    assert any(not torch.equal(a[k], c[k]) for k in a)
    recorded = read_json(tmp_path / "a" / PROVENANCE)["determinism"]
    assert recorded["bit_identical"] is True and recorded["device_type"] == "cpu"
    assert recorded["deterministic_algorithms"] and not recorded["warn_only"]


def test_compiled_training_matches_eager_and_is_reproducible(tmp_path):
    """training.compile: the compiled OT-Flow objective trains the same model (losses equal to float rounding over
    several updates), bit-identically from run to run on CPU, and the run records the setting."""
    def losses(name, **loop):
        hp, loop = {"steps": 12, "width": 8, "nt": 1}, {**LOOP, "log_every": 3, **loop}
        spec = RunSpec.build("otflow", "moons", 0, hp, loop=loop)
        train(spec, tmp_path / name, progress=False)
        return [row["loss"] for row in load_checkpoint(tmp_path / name / CHECKPOINT)["log"]]

    eager, compiled = losses("eager"), losses("compiled", compile=True)
    assert losses("again", compile=True) == compiled
    assert compiled != eager and compiled == pytest.approx(eager, rel=1e-5)  # fused kernels round differently
    assert read_json(tmp_path / "compiled" / PROVENANCE)["spec"]["loop"]["compile"] is True


def test_gpu_determinism_settings_and_honest_claim(monkeypatch):
    """seed_everything on CUDA asks cuDNN for deterministic, non-benchmarked kernels; the provenance block then
    says bit-identity is not guaranteed, and why (the flags are set without touching a GPU)."""
    cuda = torch.device("cuda")
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")  # a user's own setting is kept and recorded
    with torch.backends.cudnn.flags(enabled=True, benchmark=True, deterministic=False):
        try:
            seed_everything(0, cuda)
            recorded = determinism(cuda)
        finally:
            seed_everything(0, torch.device("cpu"))  # back to strict deterministic mode for the other tests
    assert recorded["cudnn_deterministic"] is True and recorded["cudnn_benchmark"] is False
    assert recorded["deterministic_algorithms"] and recorded["warn_only"]
    assert recorded["cublas_workspace_config"] == ":16:8" and recorded["device_type"] == "cuda"
    assert recorded["bit_identical"] == "not guaranteed" and "no deterministic implementation" in recorded["reason"]


def test_resume_after_interrupt_matches_uninterrupted_run(tmp_path, monkeypatch):
    train(_spec(), tmp_path / "full", progress=False)

    from models.realnvp import RealNVP

    original = RealNVP.train_step

    def interrupted(self, x, optimizers, step):
        if step == 25:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, x, optimizers, step)

    def signalled_again(path, obj):  # a second SIGTERM while the first one's progress is being saved
        os.kill(os.getpid(), signal.SIGTERM)
        save_torch(path, obj)

    monkeypatch.setattr(RealNVP, "train_step", interrupted)
    monkeypatch.setattr(train_module, "save_torch", signalled_again)
    with pytest.raises(SystemExit, match="re-run to resume"):
        train(_spec(), tmp_path / "cut", progress=False)
    assert (tmp_path / "cut" / RESUME).exists() and not (tmp_path / "cut" / CHECKPOINT).exists()
    assert load_checkpoint(tmp_path / "cut" / RESUME)["step"] == 26  # step 25, under way, completes first
    monkeypatch.undo()  # the resumed run trains and saves as usual
    train(_spec(), tmp_path / "cut", progress=False)
    _assert_same(_weights(tmp_path / "full"), _weights(tmp_path / "cut"))
    assert not (tmp_path / "cut" / RESUME).exists()
    assert (tmp_path / "full" / "train_log.csv").read_text() != ""


def test_a_signal_inside_a_step_stops_the_run_after_that_step(tmp_path, monkeypatch):
    """SIGTERM between a GAN's critic and generator updates: the loop stops once the step is whole, so resume.pt
    holds the state after it (not a half-updated model labelled with the step before) and the resumed run ends
    with the weights of an uninterrupted one."""
    from models.gan import DCGAN

    def spec():
        return RunSpec.build("dcgan", "moons", 0, {"steps": 30, "batch_size": 64, "width": 16}, loop=LOOP)

    train(spec(), tmp_path / "full", progress=False)
    original, critic_updates = DCGAN.after_critic_step, itertools.count()

    def then_sigterm(self):
        original(self)
        if next(critic_updates) == 14:  # one critic update per step: step 14's
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(DCGAN, "after_critic_step", then_sigterm)
    with pytest.raises(SystemExit, match=r"\(step 15\)"):
        train(spec(), tmp_path / "cut", progress=False)
    assert load_checkpoint(tmp_path / "cut" / RESUME)["step"] == 15
    monkeypatch.setattr(DCGAN, "after_critic_step", original)
    train(spec(), tmp_path / "cut", progress=False)
    _assert_same(_weights(tmp_path / "full"), _weights(tmp_path / "cut"))


def test_validation_draws_leave_training_alone_and_a_signal_during_validation_resumes_exactly(tmp_path, monkeypatch):
    """The VAE's validation draws z. Those draws come from a stream of their own, so the trained weights do not
    depend on how often the run validates, and a SIGTERM that cuts a validation short resumes to the weights of an
    uninterrupted run."""
    from models.vae import VAE

    def spec(val_every):
        return RunSpec.build("vae", "moons", 0, {"steps": 40, "batch_size": 64, "width": 16},
                             loop={**LOOP, "val_every": val_every})

    train(spec(20), tmp_path / "full", progress=False)
    train(spec(40), tmp_path / "rare", progress=False)  # validates at step 40 only
    _assert_same(_weights(tmp_path / "full"), _weights(tmp_path / "rare"))
    original = VAE.validation_loss

    def sigterm_first(self, x):  # the run stops before this validation has drawn anything
        os.kill(os.getpid(), signal.SIGTERM)
        return original(self, x)

    monkeypatch.setattr(VAE, "validation_loss", sigterm_first)
    with pytest.raises(SystemExit, match=r"\(step 20\)"):
        train(spec(20), tmp_path / "cut", progress=False)
    monkeypatch.setattr(VAE, "validation_loss", original)
    train(spec(20), tmp_path / "cut", progress=False)
    _assert_same(_weights(tmp_path / "full"), _weights(tmp_path / "cut"))


def test_non_finite_loss_is_a_divergence_record(tmp_path):
    status = train(_spec(lr=1e6, steps=200), tmp_path, progress=False)
    assert status["status"] == "diverged" and "non-finite" in status["reason"]
    assert load_checkpoint(tmp_path / CHECKPOINT)["status"]["status"] == "diverged"


class _Killed(BaseException):
    """Stands for SIGKILL: nothing in the loop catches it, so no state is saved on the way out."""


def _inject(monkeypatch, faults):
    """RealNVP.train_step with one-shot faults {(attempt, step): "nan" | "kill" | "term" | "crash"}: a non-finite
    loss, or before the step a kill, a SIGTERM or an exception; an attempt is counted at every call with step 0 (a
    resumed attempt does not start one)."""
    from models.realnvp import RealNVP

    original, attempt = RealNVP.train_step, [-1]

    def step(self, x, optimizers, i):
        attempt[0] += i == 0
        fault = faults.pop((attempt[0], i), None)
        if fault == "kill":
            raise _Killed
        if fault == "term":
            os.kill(os.getpid(), signal.SIGTERM)
        if fault == "crash":
            raise RuntimeError("kernel exploded")
        losses = original(self, x, optimizers, i)
        return {k: float("nan") for k in losses} if fault == "nan" else losses

    monkeypatch.setattr(RealNVP, "train_step", step)


def test_a_diverged_run_is_not_retried_by_default(tmp_path, monkeypatch):
    _inject(monkeypatch, {(0, 5): "nan"})
    status = train(_spec(), tmp_path, progress=False)
    assert status["status"] == "diverged" and "retry" not in status


def test_retry_diverged_trains_once_more_with_the_derived_seed(tmp_path, monkeypatch):
    _inject(monkeypatch, {(0, 5): "nan"})
    status = train(_spec(loop=RETRY_LOOP), tmp_path / "run", progress=False)
    assert status["status"] == "ok"
    assert status["retry"]["seed"] == retry_seed(0) == 3_000_003 and status["retry"]["original_seed"] == 0
    original = status["retry"]["original_status"]
    assert original["status"] == "diverged" and original["step"] == 5 and "non-finite loss" in original["reason"]
    provenance = read_json(tmp_path / "run" / PROVENANCE)
    assert provenance["status"] == status and provenance["spec"]["seed"] == 0  # the run keeps its grid seed
    assert load_checkpoint(tmp_path / "run" / CHECKPOINT)["status"] == status
    train(_spec(seed=retry_seed(0)), tmp_path / "plain", progress=False)  # the retry is a fresh run with that seed
    _assert_same(_weights(tmp_path / "run"), _weights(tmp_path / "plain"))


def test_a_retry_that_diverges_too_leaves_the_run_diverged(tmp_path, monkeypatch):
    seeds = []

    def recording(seed, device):
        seeds.append(seed)
        seed_everything(seed, device)

    monkeypatch.setattr(train_module, "seed_everything", recording)
    status = train(_spec(lr=1e6, steps=200, loop=RETRY_LOOP), tmp_path, progress=False)
    assert status["status"] == "diverged" and status["retry"]["original_status"]["status"] == "diverged"
    assert seeds == [0, retry_seed(0)]  # exactly one retry


def test_a_killed_retry_resumes_as_the_retry(tmp_path, monkeypatch):
    """Killed before its first periodic checkpoint, the retry still resumes as the retry (its resume.pt is written
    when it starts), not as a rerun of the diverged attempt."""
    _inject(monkeypatch, {(0, 5): "nan", (1, 5): "kill"})
    with pytest.raises(_Killed):
        train(_spec(loop=RETRY_LOOP), tmp_path / "run", progress=False)
    saved = load_checkpoint(tmp_path / "run" / RESUME)
    assert saved["step"] == 0 and saved["status"]["retry"]["seed"] == retry_seed(0)
    status = train(_spec(loop=RETRY_LOOP), tmp_path / "run", progress=False)
    assert status["status"] == "ok" and status["retry"]["original_status"]["step"] == 5
    train(_spec(seed=retry_seed(0)), tmp_path / "plain", progress=False)
    _assert_same(_weights(tmp_path / "run"), _weights(tmp_path / "plain"))


def test_a_resumed_retry_that_diverges_is_not_retried_again(tmp_path, monkeypatch):
    _inject(monkeypatch, {(0, 5): "nan", (1, 5): "kill", (2, 8): "nan"})  # attempt 2: the retry, resumed
    with pytest.raises(_Killed):
        train(_spec(loop=RETRY_LOOP), tmp_path, progress=False)
    status = train(_spec(loop=RETRY_LOOP), tmp_path, progress=False)
    assert status["status"] == "diverged" and status["step"] == 8 and status["retry"]["original_status"]["step"] == 5


# FFJORD's adaptive ODE solver decides its step sizes on the host; the VAE-initialized GANs (MNIST only) take
# their GAN's step
@pytest.mark.parametrize("method", [m for m in models.available()
                                    if m != "ffjord" and "moons" not in models.get(m).unsupported])
def test_a_training_step_leaves_its_losses_on_the_device(method):
    """A step returns its losses as tensors and never reads a value back: on a GPU the host queues the next step
    while the device works on this one."""
    ds = datasets.load("moons")
    known = models.resolve_hparams(method, "moons")
    small = {k: v for k, v in {"width": 8, "hidden_layers": 1, "nt": 1, "batch_size": 40}.items() if k in known}
    model = models.get(method)(ds, models.resolve_hparams(method, "moons", small))
    optimizers, x = model.configure_optimizers(), ds.train[:40]
    model.train_step(x, optimizers, 0)
    with DispatchLog() as log:
        losses = model.train_step(x, optimizers, 1)
    assert SYNC not in log.ops
    assert losses and all(isinstance(v, torch.Tensor) and v.dim() == 0 for v in losses.values())


def test_the_loop_reads_losses_back_only_at_log_and_checkpoint_steps(tmp_path, monkeypatch):
    """Between checks (every 10 steps here) a step and the loop around it never wait for the device."""
    from models.realnvp import RealNVP

    original, log = RealNVP.train_step, DispatchLog()

    def marked(self, x, optimizers, step):
        log.ops.append(step)
        return original(self, x, optimizers, step)

    monkeypatch.setattr(RealNVP, "train_step", marked)
    with log:
        train(_spec(steps=30), tmp_path, progress=False)
    starts = [i for i, op in enumerate(log.ops) if isinstance(op, int)] + [len(log.ops)]
    syncs = {log.ops[a]: log.ops[a:b].count(SYNC) for a, b in itertools.pairwise(starts)}  # from a step to the next
    assert list(syncs) == list(range(30))
    assert all(n == 0 for step, n in syncs.items() if (step + 1) % 10), syncs
    assert all(n > 0 for step, n in syncs.items() if (step + 1) % 10 == 0), syncs


def test_a_divergence_before_an_interruption_ends_the_run_as_diverged(tmp_path, monkeypatch):
    """The steps since the last check are checked when SIGTERM arrives: a non-finite loss among them is the run's
    divergence record, at its own step, and nothing is left to resume."""
    _inject(monkeypatch, {(0, 22): "nan", (0, 25): "term"})
    status = train(_spec(), tmp_path, progress=False)
    assert status["status"] == "diverged" and status["step"] == 22 and "non-finite loss" in status["reason"]
    assert not (tmp_path / RESUME).exists()


def test_a_crash_after_a_divergence_is_recorded_as_the_divergence(tmp_path, monkeypatch):
    _inject(monkeypatch, {(0, 3): "nan", (0, 6): "crash"})
    status = train(_spec(), tmp_path, progress=False)
    assert status["status"] == "diverged" and status["step"] == 3


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


def test_a_missing_checkpoint_is_named_as_missing_not_as_corrupt(tmp_path):
    with pytest.raises(UserError, match=f"no checkpoint at {tmp_path / CHECKPOINT}: the run has not been trained"):
        load_checkpoint(tmp_path / CHECKPOINT)


def test_a_checkpoint_without_a_current_hyper_parameter_is_a_clear_error(tmp_path):
    """A run trained before its method gained a hyper-parameter is not rebuilt with a guessed value."""
    train(_spec(steps=10), tmp_path, progress=False)
    path = tmp_path / CHECKPOINT
    ckpt = load_checkpoint(path)
    del ckpt["spec"]["hparams"]["width"]
    save_torch(path, ckpt)
    with pytest.raises(UserError, match=f"checkpoint {path} predates realnvp's hyper-parameter.s. width; delete it"):
        train_module.load_model(tmp_path)


def test_epoch_sampler_covers_each_epoch_once_and_is_a_function_of_step():
    s = EpochSampler(100, 10, seed=3)
    first = torch.cat([s.indices(i) for i in range(10)])
    assert sorted(first.tolist()) == list(range(100))
    again = EpochSampler(100, 10, seed=3)
    assert torch.equal(again.indices(13), s.indices(13))
    assert not torch.equal(s.indices(0), s.indices(10))
    assert EpochSampler(100, 10, seed=3, device="meta").indices(13).device.type == "meta"  # where the data lives


def test_batch_size_larger_than_data_is_rejected():
    with pytest.raises(UserError, match="batch_size"):
        EpochSampler(10, 64, seed=0)
    with pytest.raises(UserError, match="must be an integer >= 1"):
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


@pytest.mark.parametrize("broken, command, not_written", [
    (CHECKPOINT, ["evaluate"], "metrics.json"),
    (CHECKPOINT, ["sample"], "samples.pt"),
    (RESUME, ["train", "--method", "realnvp", "--dataset", "moons", "--seed", "0", "--set", "steps=10"], CHECKPOINT),
])
def test_cli_names_a_truncated_checkpoint_in_one_line(tmp_path, broken, command, not_written):
    """A truncated checkpoint (or resume file) is never loaded: exit 2 with one line naming it, nothing written."""
    import subprocess
    import sys

    train(_spec(steps=10), tmp_path, progress=False)
    path = tmp_path / broken
    path.write_bytes((tmp_path / CHECKPOINT).read_bytes()[:200])
    if broken == RESUME:
        (tmp_path / CHECKPOINT).unlink()
    place = ["--out" if command[0] == "train" else "--run", str(tmp_path)]
    res = subprocess.run([sys.executable, "-m", "bench.cli", *command, *place], capture_output=True, text=True,
                         timeout=10)
    assert res.returncode == 2
    line = res.stderr.strip()
    assert "\n" not in line and line.startswith(f"dgmbench: error: checkpoint {path} is corrupt or truncated")
    assert line.endswith("delete it and retrain")
    assert not (tmp_path / not_written).exists()
