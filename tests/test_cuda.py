"""The suite on a CUDA GPU: skipped where there is none (CI), run on a GPU machine with `pytest tests/test_cuda.py`.

A GPU step must never make the host wait for the device (the host queues the next step while the device works),
and a run trained, sampled and evaluated on the GPU must report the likelihood a CPU evaluation of the same
weights reports.
"""
import pytest
import torch

import models
from bench import datasets
from bench.evaluate import evaluate
from bench.perf.training import suite_step
from bench.sampling import sample_run
from bench.train import CHECKPOINT, RunSpec, load_checkpoint, train
from conftest import mnist_available

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

CUDA = torch.device("cuda")
DATASETS = ["moons", "mnist"] if mnist_available() else ["moons"]


# FFJORD is left out: its adaptive solver (dopri5) accepts or rejects each step on the host, so it must wait.
@pytest.mark.parametrize(("dataset", "method"), [(d, m) for d in DATASETS for m in models.available()
                                                 if m != "ffjord" and d not in models.get(m).unsupported])
def test_a_training_step_on_the_gpu_never_waits_for_the_device(dataset, method):
    """Steps at the method's default size, drawn as the training loop draws them (the harness's `suite_step`),
    under CUDA's sync debug mode "error": a `.item()`, a copy to or from pageable host memory, a boolean-mask index
    or any other operation that blocks the host raises. The warm-up steps hold the epoch's one permutation copy and
    the optimizers' state."""
    step, _ = suite_step(method, datasets.load(dataset), CUDA)
    for _ in range(2):
        step()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            losses = step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(v.device.type == "cuda" for v in losses.values())
    assert all(torch.isfinite(v) for v in losses.values())


@pytest.mark.parametrize("method", ["realnvp", "otflow", "ffjord"])
def test_a_run_on_the_gpu_reports_the_nll_a_cpu_evaluation_of_its_weights_reports(method, tmp_path):
    """Train, sample and evaluate a short moons run on the GPU, as a GPU pipeline job does, then evaluate the same
    checkpoint on the CPU: the exact test NLL agrees to float32 rounding (the same weights, the same data, no
    random draws), and each evaluation records the device it ran on."""
    spec = RunSpec.build(method, "moons", 0, {"steps": 30}, device="cuda")
    assert train(spec, tmp_path, progress=False)["status"] == "ok"
    settings = {"device": "cuda", "metrics": ["test_nll", "w2"], "n_samples": {"points": 500}}
    sample_run(tmp_path, 500, device="cuda")
    on_gpu = evaluate(tmp_path, settings)
    on_cpu = evaluate(tmp_path, {**settings, "device": "cpu"})

    def nll(result):
        return next(r["value"] for r in result["records"] if r["metric"] == "test_nll")

    assert nll(on_gpu) == pytest.approx(nll(on_cpu), rel=1e-4)
    assert {r["metric"]: r["status"] for r in on_gpu["records"]} == {"test_nll": "ok", "w2": "ok"}
    assert on_gpu["evaluation"]["machine"]["device"] == "cuda"
    assert on_cpu["evaluation"]["machine"]["device"] == "cpu"
    assert on_gpu["train"]["machine"]["device"] == "cuda"


# compiled: `loss`, `loss_terms` (a dict), and a GAN's two update losses (one a tuple), WGAN's five critic updates
@pytest.mark.parametrize("method", ["realnvp", "otflow", "dcgan", "wgan"])
def test_compiled_training_on_the_gpu_runs_cuda_graphs_that_train_as_eager_mode_does(method, tmp_path):
    """`training.compile` on a GPU (CUDA graphs) trains the model eager mode trains: moons runs whose random draws
    (the GANs' noise) happen outside the compiled code log losses equal to float rounding. The loop holds three
    steps' losses before it reads them, so a loss left in graph memory, which the next replay overwrites, would fail
    the run."""
    def losses(name, **loop):
        spec = RunSpec.build(method, "moons", 0, {"steps": 12}, device="cuda",
                             loop={"log_every": 3, "val_every": 6, **loop})
        assert train(spec, tmp_path / name, progress=False)["status"] == "ok"
        return [v for row in load_checkpoint(tmp_path / name / CHECKPOINT)["log"] for k, v in row.items()
                if k.endswith("loss") and v is not None]

    eager, compiled = losses("eager"), losses("compiled", compile=True)
    assert len(compiled) >= 4 and compiled == pytest.approx(eager, rel=1e-4, abs=1e-7)


def test_metrics_take_cuda_tensors():
    """The metric functions copy a CUDA tensor to the host themselves (bench.evaluate moves its tensors first, so
    only a direct call reaches this) and give the values of the same data on the CPU."""
    from metrics.fid import fid
    from metrics.likelihood import nll_nats

    a, b = torch.randn(100, 4, generator=torch.Generator().manual_seed(0)), torch.randn(100, 4) + 1
    assert fid(a.to(CUDA), b.to(CUDA)) == fid(a, b)
    log_prob = torch.tensor([-1.0, -2.0, -3.0, -6.0])
    assert nll_nats(log_prob.to(CUDA)) == nll_nats(log_prob)
