"""Shared test set-up: point MNIST at the checkout's shared data when the user has not set a data root."""
import os
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

# CI has 2 cores and the models under test are tiny: one thread avoids oversubscription stalls.
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parent.parent
SHARED_MNIST = REPO.parent / "shared" / "data" / "mnist"

if "DGMBENCH_DATA_ROOT" not in os.environ and (SHARED_MNIST / "MNIST" / "raw").is_dir():
    os.environ["DGMBENCH_DATA_ROOT"] = str(SHARED_MNIST)


def mnist_available() -> bool:
    from bench.datasets import default_data_root

    return (default_data_root() / "MNIST" / "raw").is_dir()


needs_mnist = pytest.mark.skipif(not mnist_available(), reason="MNIST not found; set DGMBENCH_DATA_ROOT")


class DispatchLog(TorchDispatchMode):
    """While active, records the name of every operation sent through torch's dispatcher (forward, backward,
    optimizer) in `ops`. A host read of a tensor's value (`.item()`, `bool()`, `float()`, where the host waits for
    the device) is `aten._local_scalar_dense.default`."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))
