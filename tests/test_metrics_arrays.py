"""Tests for metrics._arrays.as_float64 through the metrics that use it: numpy arrays of any dtype and
grad-tracking tensors are all computed in float64."""
import numpy as np
import pytest
import torch

from metrics.fid import fid
from metrics.likelihood import iwae_log_likelihood, nll_nats
from metrics.wasserstein import exact_wasserstein


def test_float32_and_integer_arrays_are_computed_in_float64():
    rng = np.random.default_rng(0)
    # Features far from the origin, where float32 means move the FID in its fifth digit (0.0196237 against
    # 0.0196241 here): the values must be exactly those of the float64 copies.
    a = (rng.normal(size=(2000, 8)) + 1000).astype(np.float32)
    b = (rng.normal(size=(2000, 8)) + 1000.01).astype(np.float32)
    assert fid(a, b) == fid(a.astype(np.float64), b.astype(np.float64))
    points = rng.integers(0, 30, size=(200, 2))
    assert exact_wasserstein(points, points + np.array([3, 4]), p=1) == pytest.approx(5.0, abs=1e-9)


def test_grad_tracking_tensors_give_the_values_of_their_data():
    x = torch.randn(50, 3, generator=torch.Generator().manual_seed(0), requires_grad=True)
    d = x.detach()
    assert fid(x, x + 1) == fid(d, d + 1)
    assert nll_nats(x[:, 0]) == nll_nats(d[:, 0])
    assert np.array_equal(iwae_log_likelihood(x), iwae_log_likelihood(d))
