"""The performance harness: its reference implementations compute what the suite's do (so a ratio compares like
with like) and every reference step runs; its paper runs, targets, windows and ratios. And the properties the suite's
speed rests on, checked where they can break: OT-Flow's operation count per step, the page faults that keeping
freed memory spares, the imports a sampling job skips."""
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import models
from bench import datasets
from bench.perf import reference
from conftest import DispatchLog, needs_mnist
from models.otflow import Potential


def test_reference_otflow_gradient_and_trace_match_the_suite():
    torch.manual_seed(0)
    ours, ref = Potential(2, 8).double(), reference._Phi(2, 8).double()
    with torch.no_grad():
        for p in ours.parameters():
            p.add_(0.3 * torch.randn_like(p))  # move w, b away from their special initial values
        ref.K0.load_state_dict(ours.K0.state_dict())
        ref.K1.load_state_dict(ours.K1.state_dict())
        ref.w.weight.copy_(ours.w[None])
        ref.c.weight.copy_(ours.b[None])
        ref.c.bias.copy_(ours.c)
        ref.A.copy_(ours.A)
    s = torch.randn(32, 3, dtype=torch.float64)
    grad, trace = ours.grad_and_trace(s)
    ref_grad, ref_trace = ref.grad_trace(s)
    torch.testing.assert_close(ref_grad, grad)
    torch.testing.assert_close(ref_trace, trace)


def test_reference_realnvp_is_a_normalized_flow():
    torch.manual_seed(0)
    flow = reference._RealNVP(2, 8, torch.device("cpu")).double()
    flow.prior = torch.distributions.MultivariateNormal(torch.zeros(2).double(), torch.eye(2).double())
    g = torch.linspace(-6, 6, 241, dtype=torch.float64)
    with torch.no_grad():
        mass = flow.log_prob(torch.cartesian_prod(g, g)).exp().sum().item() * (12 / 240) ** 2
    assert abs(mass - 1) < 1e-2, mass


def test_point_reference_steps_run():
    for method in ("realnvp", "otflow"):
        hp = models.resolve_hparams(method, "moons", {"batch_size": 16})
        reference.REFERENCES[method, "moons"](torch.device("cpu"), hp)()


@needs_mnist
def test_mnist_reference_steps_run():
    from bench.datasets import default_data_root

    for method in ("vae", "dcgan"):
        hp = models.resolve_hparams(method, "mnist", {"width": 4, "batch_size": 8})
        reference.REFERENCES[method, "mnist"](torch.device("cpu"), hp, default_data_root())()


def test_paper_run_rows_time_one_complete_run_per_method():
    """--paper-runs: each method that runs on the dataset trains once, and the report gets the table."""
    from bench.perf.__main__ import markdown, paper_run_rows

    rows = paper_run_rows(["moons"], models.available(), torch.device("cpu"), None, {"steps": 3, "batch_size": 32})
    on_moons = [m for m in models.available() if "moons" not in models.get(m).unsupported]
    assert sorted(r["name"] for r in rows) == on_moons
    for r in rows:
        assert (r["n"], r["batch"], r["value"]) == (3, 32, "ok") and r["suite_steps_per_s"] > 0, r
    assert "| moons | wgan | 3 | 32 |" in markdown(rows, "python -m bench.perf --paper-runs", "a test")


@needs_mnist
def test_paper_runs_of_a_vae_initialized_gan_train_the_vae_first():
    from bench.perf.__main__ import paper_run_rows

    rows = paper_run_rows(["mnist"], ["dcgan-vaeinit"], torch.device("cpu"), None, {"steps": 2, "batch_size": 8})
    assert [(r["name"], r["value"]) for r in rows] == [("vae", "ok"), ("dcgan-vaeinit", "ok")]


def test_targets_judge_each_matching_row_and_list_the_unmeasured():
    from bench.perf.__main__ import markdown
    from bench.perf.targets import check

    def training(threads, ratio):
        return {"section": "training", "name": "vae", "dataset": "mnist", "threads": threads, "ratio": ratio,
                "ratio_windows": f"{ratio - 0.1:.2f} {ratio:.2f} {ratio + 0.2:.2f}"}

    def w2(seconds, converged):
        return {"section": "metrics", "name": "exact W2 (multiscale)", "n": 10_000, "seconds": seconds,
                "converged": converged}

    rows = [training(1, 1.49), training(2, 1.5), w2(29.9, "yes"), w2(12.0, "no"),
            {**w2(45.0, "yes"), "n": 5000},  # another N: not the target's row
            {"section": "pipeline", "name": "default pipeline, no-op re-run", "seconds": 10.0}]
    lines = {(t["target"].split(":")[0], t["where"], t["measured"], t["met"]) for t in check(rows)}
    assert {("VAE on mnist", "1 thread", "1.49 (windows 1.39–1.69)", "no"),
            ("VAE on mnist", "2 threads", "1.5 (windows 1.40–1.70)", "yes"),
            ("exact W2 of 10,000 points in 2-D", "–", "29.9 s", "yes"),
            ("exact W2 of 10,000 points in 2-D", "–", "12.0 s", "no"),  # fast, but not converged
            ("no-op re-run of the default pipeline", "–", "10.0 s", "no"),
            ("RealNVP on moons", "–", "not measured in this run", "–")} <= lines
    assert len(lines) == 5 + 4  # a line per matching row, and one for each of the 4 targets without a row
    assert "| VAE on mnist: ≥ 1.5× the course code's steps/s | 1 thread | 1.49 (windows 1.39–1.69) | no |" in \
        markdown(rows, "python -m bench.perf", "a test")
    assert "## Targets" not in markdown(rows, "python -m bench.perf --device cuda", "a test", cpu_targets=False)


def test_compare_reverses_the_contenders_order_in_every_other_window(monkeypatch):
    from bench.perf import training

    timed = []
    monkeypatch.setattr(training, "steps_per_second", lambda step, seconds, device: timed.append(step()) or 1.0)
    rates = training.compare({name: (lambda name=name: name) for name in "abc"}, 1.0, torch.device("cpu"), windows=4)
    assert "".join(timed) == "abc" "cba" "abc" "cba"
    assert rates == {name: [1.0] * 4 for name in "abc"}


def test_ratio_is_the_median_of_per_window_ratios():
    from bench.perf.training import paired_ratio, window_ratios

    windows = {"suite": [2.0, 6.0, 4.0], "reference": [1.0, 2.0, 8.0]}
    assert window_ratios(windows, "suite", "reference") == [2.0, 3.0, 0.5]
    assert paired_ratio(windows, "suite", "reference") == 2.0  # the medians' ratio would be 4 / 2


def test_otflow_step_dispatches_a_third_of_the_operations_of_the_course_code():
    """OT-Flow's step is dispatch-bound, so its speed rests on the few operations its restructured math dispatches
    (models/otflow.py), here counted at the default size on moons."""
    from bench.perf.training import reference_step, suite_step

    ds, cpu = datasets.load("moons"), torch.device("cpu")
    ours, course = suite_step("otflow", ds, cpu)[0], reference_step("otflow", ds, cpu, None)
    counts = []
    for step in (ours, course):
        for _ in range(2):  # the first step creates the optimizer's state
            step()
        with DispatchLog() as log:
            step()
        counts.append(len(log.ops))
    assert counts == [1427, 4429]


_FAULTS_PER_STEP = """
import resource, sys, torch
from bench import datasets
from bench.allocator import keep_freed_memory
from bench.perf.training import suite_step

if sys.argv[1] == "keep":
    assert keep_freed_memory()
torch.set_num_threads(1)
step = suite_step("otflow", datasets.load("moons"), torch.device("cpu"))[0]
for _ in range(5):  # the heap grows to its working size
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    step()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc thresholds")
def test_keeping_freed_memory_spares_otflow_the_page_faults_of_each_step():
    """bench.allocator: with glibc's thresholds at their initial values OT-Flow's training step gets its large buffers
    as fresh pages from the kernel every time; with `keep_freed_memory` it reuses them (a step that grows the heap
    still faults now and then). Both processes start with glibc's initial thresholds held fixed (GLIBC_TUNABLES),
    which `keep_freed_memory` then replaces: left to adapt, as they are by default, the count varies too much from
    one process to the next for a test to compare against."""
    env = {**os.environ, "GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=131072:glibc.malloc.trim_threshold=262144"}

    def faults(mode: str) -> float:
        out = subprocess.run([sys.executable, "-c", _FAULTS_PER_STEP, mode], capture_output=True, text=True, check=True,
                             cwd=Path(__file__).parents[1], env=env)
        return float(out.stdout.split()[-1])

    default, kept = faults("default"), faults("keep")
    assert default > 400 and kept < default / 10, (default, kept)


def test_a_sampling_job_does_not_import_pot_or_scikit_learn():
    """`dgmbench sample` imports bench.evaluate (for the evaluation settings); POT's import, and scikit-learn's with
    it, would slow each of the pipeline's sampling jobs, so only the solvers import POT."""
    code = ("import sys, bench.cli, bench.evaluate, bench.sampling, bench.train; "
            "print(sorted(m for m in ('ot', 'sklearn') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "[]"


def test_missing_mnist_stops_the_harness_before_any_timing(tmp_path):
    """The harness times for many minutes before it reaches MNIST's rows: a missing dataset must stop it at once."""
    res = subprocess.run([sys.executable, "-m", "bench.perf", "--datasets", "moons,mnist", "--data-root", str(tmp_path),
                          "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
    assert res.returncode == 1
    assert res.stderr.strip().startswith("bench.perf: MNIST file train-images-idx3-ubyte not found in")
    assert "training moons" not in res.stdout and not (tmp_path / "out").exists()
