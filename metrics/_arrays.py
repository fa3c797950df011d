"""Input conversion shared by the metric modules: numpy arrays or torch tensors in, float64 out."""
from __future__ import annotations

import numpy as np
import torch


def as_float64(x) -> np.ndarray:
    """A float64 numpy copy of an array or (possibly CUDA, possibly grad-tracking) tensor."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)
