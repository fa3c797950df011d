"""Seeds and RNG state: one place, so training, resume and evaluation agree."""
from __future__ import annotations

import os
import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int, device: torch.device) -> None:
    """Seed Python, NumPy and torch, and ask torch for deterministic kernels (bit-identical reruns on CPU)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS reductions
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    # warn_only on GPU: a kernel without a deterministic CUDA implementation warns instead of failing the run
    torch.use_deterministic_algorithms(True, warn_only=device.type == "cuda")


CUDA_NOT_GUARANTEED = (
    "some CUDA kernels have no deterministic implementation in torch (e.g. the backward passes of adaptive pooling "
    "and of interpolate, histc, bincount); warn_only=True lets them run with a warning in the job log, so reruns "
    "can differ in the last bits; results also change with the GPU model and the CUDA, cuBLAS and cuDNN versions")


def determinism(device: torch.device) -> dict[str, Any]:
    """The determinism settings a run trained under and what they guarantee (recorded in its provenance)."""
    settings = {
        "device_type": device.type,
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
    }
    if device.type == "cpu":
        return {**settings, "bit_identical": True, "reason": "on CPU the same config and seed give identical "
                "checkpoints (tested; same machine, torch build and thread count)"}
    return {**settings, "bit_identical": "not guaranteed", "reason": CUDA_NOT_GUARANTEED}


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextmanager
def separate_rng(seed: int) -> Iterator[None]:
    """torch's random streams (CPU and every CUDA device) seeded with `seed` in the block and restored after it, also
    when it raises: what the block draws leaves the caller's streams where they were."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
