"""RealNVP: log-determinant against the autograd Jacobian, invertibility, normalization."""
import math
from types import SimpleNamespace

import torch

import models


def _flow(seed: int = 0):
    torch.manual_seed(seed)
    flow = models.create("realnvp", "moons").double()
    with torch.no_grad():  # larger weights than init so every coupling scales and shifts substantially
        for p in flow.parameters():
            p.mul_(3.0)
    return flow


def test_log_det_matches_autograd_jacobian():
    flow = _flow()
    x = torch.randn(16, 2, dtype=torch.float64)
    _, log_det = flow.inverse(x)
    for xi, ld in zip(x, log_det, strict=True):
        jac = torch.autograd.functional.jacobian(lambda v: flow.inverse(v[None])[0][0], xi)
        sign, expected = torch.linalg.slogdet(jac)
        assert sign != 0
        torch.testing.assert_close(ld, expected, rtol=1e-10, atol=1e-10)


def test_checkerboard_log_det_matches_autograd_jacobian():
    # The image path: checkerboard halves of a 4×4 grid (16-d), the permutation included in the Jacobian.
    torch.manual_seed(0)
    images = SimpleNamespace(train=torch.zeros(1, 1, 4, 4, dtype=torch.uint8))
    flow = models.get("realnvp")(images, {"n_layers": 4, "width": 8, "logit_alpha": 0.05}).double()
    with torch.no_grad():
        for p in flow.parameters():
            p.mul_(3.0)
    x = torch.randn(4, 16, dtype=torch.float64)
    _, log_det = flow.inverse(x)
    for xi, ld in zip(x, log_det, strict=True):
        jac = torch.autograd.functional.jacobian(lambda v: flow.inverse(v[None])[0][0], xi)
        torch.testing.assert_close(ld, torch.linalg.slogdet(jac)[1], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(flow(flow.inverse(x)[0]), x, rtol=1e-9, atol=1e-9)


def test_inverse_of_forward_is_identity():
    flow = _flow()
    z = torch.randn(256, 2, dtype=torch.float64)
    torch.testing.assert_close(flow.inverse(flow(z))[0], z, rtol=1e-9, atol=1e-9)
    x = torch.randn(256, 2, dtype=torch.float64)
    torch.testing.assert_close(flow(flow.inverse(x)[0]), x, rtol=1e-9, atol=1e-9)


def test_density_integrates_to_one():
    flow = _flow(1)
    with torch.no_grad():
        for p in flow.parameters():
            p.div_(3.0)  # keep the density's mass inside the integration box
    lim, n = 8.0, 321
    g = torch.linspace(-lim, lim, n, dtype=torch.float64)
    xy = torch.cartesian_prod(g, g)
    with torch.no_grad():
        mass = flow.log_prob(xy).exp().sum().item() * (2 * lim / (n - 1)) ** 2
    assert math.isclose(mass, 1.0, rel_tol=1e-2), mass


def test_sample_shape_and_finiteness():
    torch.manual_seed(0)
    flow = models.create("realnvp", "moons")
    x = flow.sample(100)
    assert x.shape == (100, 2) and torch.isfinite(x).all()
