"""Train the suite's MNIST feature extractor once (a pipeline step): the classifier whose penultimate features
define FID on MNIST and whose predictions define class coverage. Its test accuracy and weights hash are recorded."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from bench import datasets
from bench.io import checked_read, save_torch, write_json
from bench.seeding import seed_everything
from core.errors import UserError
from metrics.fid import MnistClassifier, weights_hash

MIN_TEST_ACCURACY = 0.99


@torch.no_grad()
def accuracy(model: MnistClassifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    preds = torch.cat([model(x).argmax(1) for x in images.split(2000)])
    return (preds == labels).float().mean().item()


def train_classifier(out: Path, data_root: str | None = None, epochs: int = 5, seed: int = 0,
                     batch_size: int = 64, lr: float = 1e-3) -> dict[str, Any]:
    """Train on the 55k training images for a fixed number of epochs (no selection on test data); record
    validation and test accuracy and the weights' SHA-256."""
    ds = datasets.load("mnist", data_root)
    seed_everything(seed, torch.device("cpu"))
    model = MnistClassifier()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.6)  # decay the rate every epoch
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(ds.train), generator=gen).split(batch_size):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(ds.train[idx]), ds.labels["train"][idx]).backward()
            opt.step()
        schedule.step()
    model.eval()
    out = Path(out)
    save_torch(out, model.state_dict())
    info = {"val_accuracy": accuracy(model, ds.val, ds.labels["val"]),
            "test_accuracy": accuracy(model, ds.test, ds.labels["test"]),
            "sha256": weights_hash(out), "epochs": epochs, "seed": seed, "train_wall_time_s": time.perf_counter() - t0,
            "data_fingerprint": ds.fingerprint}
    write_json(out.with_suffix(".json"), info)
    if info["test_accuracy"] < MIN_TEST_ACCURACY:
        print(f"dgmbench: warning: MNIST classifier test accuracy {info['test_accuracy']:.4f} < {MIN_TEST_ACCURACY}")
    return info


class Classifier(NamedTuple):
    """A loaded classifier: its file (torch-fidelity reads the weights from it), the network and its record."""

    path: Path
    net: MnistClassifier
    info: dict[str, Any]


def load_classifier(path: Path) -> Classifier:
    """The classifier `train_classifier` wrote to `path` and its record (test accuracy, weights hash) beside it; a
    missing, unreadable or foreign file is a UserError naming it."""
    path = Path(path)
    redo = f"train it with `dgmbench train-classifier --out {path}` (the pipeline's mnist_classifier rule)"
    info = checked_read(path.with_suffix(".json"), "classifier record", redo, f"delete it and {redo}")
    state = checked_read(path, "MNIST classifier", redo, f"delete it and {redo}",
                         lambda p: torch.load(p, map_location="cpu", weights_only=True))
    model = MnistClassifier()
    try:
        model.load_state_dict(state)
    except Exception as exc:  # not a state dict, or another network's
        raise UserError(f"{path} does not hold the suite's MNIST classifier ({type(exc).__name__}); "
                        f"delete it and {redo}") from None
    if not isinstance(info, dict) or "test_accuracy" not in info:
        raise UserError(f"{path.with_suffix('.json')} is not a classifier record; delete it and {redo}")
    return Classifier(path, model.eval(), info)
