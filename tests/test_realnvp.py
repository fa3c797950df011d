"""RealNVP: log-determinant against the autograd Jacobian, invertibility, normalization."""
import math
from types import SimpleNamespace

import torch

import models
from bench import datasets


def _flow(seed: int = 0):
    torch.manual_seed(seed)
    flow = models.create("realnvp", datasets.load("moons")).double()
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


def _image_flow(side: int = 28, width: int = 16, factor: float = 2.0, dtype: torch.dtype = torch.float32):
    """RealNVP on side×side images (checkerboard halves), its weights scaled so every coupling scales and shifts."""
    torch.manual_seed(0)
    images = SimpleNamespace(train=torch.zeros(1, 1, side, side, dtype=torch.uint8))
    flow = models.get("realnvp")(images, {"n_layers": 4, "width": width, "logit_alpha": 0.05}).to(dtype)
    with torch.no_grad():
        for p in flow.parameters():
            p.mul_(factor)
    return flow


def test_checkerboard_log_det_matches_autograd_jacobian():
    # The image path: checkerboard halves of a 4×4 grid (16-d), the permutation included in the Jacobian.
    flow = _image_flow(side=4, width=8, factor=3.0, dtype=torch.float64)
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
    flow = models.create("realnvp", datasets.load("moons"))
    x = flow.sample(100)
    assert x.shape == (100, 2) and torch.isfinite(x).all()


def test_image_log_prob_is_the_dequantized_logit_density_through_the_flow():
    """log p(y) = log N(z; 0, I) + log|det ∂z/∂t| + log|det ∂t/∂y|, t = logit(α + (1−2α)y), y = (x+u)/256, with
    the dequantization and logit Jacobian computed here independently (torch.logit + autograd) from the same u."""
    alpha = 0.05
    flow = _image_flow()
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (3, 1, 28, 28), generator=g, dtype=torch.uint8)
    x[:, :, :8] = 0  # background pixels, as in MNIST
    torch.manual_seed(7)
    with torch.no_grad():
        got = flow.log_prob(x)
    torch.manual_seed(7)
    u = torch.rand(x.shape)
    y = ((x.double() + u.double()) / 256).requires_grad_(True)
    t = torch.logit(alpha + (1 - 2 * alpha) * y)
    (dt_dy,) = torch.autograd.grad(t.sum(), y)  # elementwise map: diagonal Jacobian
    logit_log_det = dt_dy.log().flatten(1).sum(1)
    with torch.no_grad():
        z, flow_log_det = flow.inverse(t.detach().float().flatten(1))
        log_n = -0.5 * z.double().pow(2).sum(1) - 0.5 * 784 * math.log(2 * math.pi)
    expected = log_n + flow_log_det.double() + logit_log_det
    assert (logit_log_det > 1000).all() and (flow_log_det.abs() > 1).all()  # both terms matter
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-2)


def test_image_samples_are_the_flow_output_mapped_back_by_the_inverse_logit():
    """sample(n) = clamp((sigmoid(g(z)) − α)/(1 − 2α), 0, 1) for z ~ N(0, I) (the inverse of s = α + (1−2α)y)."""
    alpha = 0.05
    flow = _image_flow()
    torch.manual_seed(3)
    s = flow.sample(4)
    torch.manual_seed(3)
    with torch.no_grad():
        out = flow(torch.randn(4, 784))
    expected = ((torch.sigmoid(out) - alpha) / (1 - 2 * alpha)).clamp(0, 1).view(4, 1, 28, 28)
    assert s.shape == (4, 1, 28, 28)
    assert (s == 0).any() and (s == 1).any()  # the α margins are mapped back to the ends of [0, 1]
    torch.testing.assert_close(s, expected, rtol=0, atol=1e-6)
