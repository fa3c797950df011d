"""Continuous normalizing flows (OT-Flow, FFJORD): identity at zero output, analytic derivatives against
autograd, log-det against the autograd Jacobian of the solver, normalization, trace estimators, inversion,
sampling, training and the image path."""
import csv
import math
from types import SimpleNamespace

import pytest
import torch

import models
from bench import datasets
from bench.train import LOG, RunSpec, train
from conftest import needs_mnist
from core.errors import UserError
from models import otflow
from models.ffjord import divergence
from models.otflow import OTFlow, Potential, _act


def _log_normal(x):
    return -0.5 * x.pow(2).sum(1) - 0.5 * x.shape[1] * math.log(2 * math.pi)


def _scale_params(module, factor, seed):
    """Random, non-trivial parameters: the init perturbed and scaled, so the flow is far from Gaussian."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen, dtype=p.dtype)).mul_(factor)


def _otflow(seed=0, factor=1.0, **hp):
    torch.manual_seed(seed)
    flow = models.create("otflow", datasets.load("moons"), **hp).double()
    _scale_params(flow, factor, seed)
    return flow


def _ffjord(seed=0, factor=1.0, **hp):
    torch.manual_seed(seed)
    flow = models.create("ffjord", datasets.load("moons"), **hp).double()
    _scale_params(flow, factor, seed)
    return flow


TIGHT_FFJORD = {"hidden": [32, 32], "atol": 1e-8, "rtol": 1e-8, "eval_atol": 1e-8, "eval_rtol": 1e-8}


# --- identity at zero output ---------------------------------------------------------------------------------------
def test_otflow_zero_potential_is_the_identity():
    flow = _otflow(factor=2.0)
    with torch.no_grad():
        for p in (flow.phi.w, flow.phi.A, flow.phi.b):
            p.zero_()
    x = 2 * torch.randn(64, 2, dtype=torch.float64)
    torch.testing.assert_close(flow.log_prob(x), _log_normal(x), rtol=0, atol=1e-13)
    torch.testing.assert_close(flow.generate(x, 8), x, rtol=0, atol=0)


def test_ffjord_zero_last_layer_is_the_identity():
    flow = _ffjord(factor=2.0)
    with torch.no_grad():
        for p in flow.dynamics.net.layers[-1].parameters():
            p.zero_()
    x = 2 * torch.randn(64, 2, dtype=torch.float64)
    torch.testing.assert_close(flow.log_prob(x), _log_normal(x), rtol=0, atol=1e-13)


# --- OT-Flow's analytic gradient and Hessian trace -----------------------------------------------------------------
@pytest.mark.parametrize("d, m, chunk", [(2, 16, otflow.TRACE_CHUNK), (5, 16, otflow.TRACE_CHUNK),
                                         (40, 8, otflow.TRACE_CHUNK),  # d > m: the Gram-matrix form of the trace
                                         (2, 16, 5 * 2 * 16), (40, 8, 5 * 8 * 8)])  # in chunks of 5 rows
def test_otflow_analytic_gradient_and_hessian_trace_match_autograd(d, m, chunk, monkeypatch):
    monkeypatch.setattr(otflow, "TRACE_CHUNK", chunk)
    torch.manual_seed(d)
    phi = Potential(d, m, rank=3).double()  # rank < d+1 for d ≥ 5: the low-rank quadratic term
    _scale_params(phi, 1.5, d)
    s = torch.randn(12, d + 1, dtype=torch.float64, requires_grad=True)
    grad, trace = phi.grad_and_trace(s)
    torch.testing.assert_close(grad, torch.autograd.grad(phi(s).sum(), s)[0], rtol=1e-12, atol=1e-12)
    expected = torch.stack([torch.autograd.functional.hessian(lambda v: phi(v[None])[0], si).diagonal()[:d].sum()
                            for si in s.detach()])
    torch.testing.assert_close(trace, expected, rtol=1e-12, atol=1e-12)
    assert expected.std() > 0.1  # non-trivial curvature, varying with s


def test_otflow_activation_is_log_cosh_with_tanh_derivative():
    """σ(u) = softplus(2u) − u against log(eᵘ + e⁻ᵘ) = logaddexp(u, −u) and σ' = tanh, past softplus's threshold."""
    u = torch.cat([torch.linspace(-60, 60, 2001, dtype=torch.float64),
                   torch.tensor([0.0, 1e-8, -1e-8], dtype=torch.float64)])
    u.requires_grad_(True)
    sigma = _act(u)
    torch.testing.assert_close(sigma, torch.logaddexp(u, -u), rtol=1e-15, atol=1e-15)
    torch.testing.assert_close(torch.autograd.grad(sigma.sum(), u)[0], torch.tanh(u), rtol=0, atol=1e-15)
    u32 = u.detach().float()
    torch.testing.assert_close(_act(u32), torch.logaddexp(u32, -u32), rtol=2e-7, atol=2e-7)


# --- log-det against the autograd Jacobian of the solver -----------------------------------------------------------
def _jacobian_rows(z, x):
    """Per-example Jacobian ∂z/∂x (B×d×d) of a batch map whose examples are independent."""
    return torch.stack([torch.autograd.grad(z[:, k].sum(), x, retain_graph=True)[0] for k in range(z.shape[1])], 1)


def test_otflow_log_det_matches_autograd_jacobian():
    flow = _otflow(factor=0.5)  # the default init (w = 1) is already a strong flow: log|det| up to ~30
    x = torch.randn(16, 2, dtype=torch.float64, requires_grad=True)
    state = flow.integrate(x, nt=64)
    sign, logabsdet = torch.linalg.slogdet(_jacobian_rows(state[:, :2], x))
    assert (sign > 0).all()
    assert logabsdet.abs().max() > 0.3  # the flow really contracts/expands
    torch.testing.assert_close(state[:, 2].detach(), logabsdet, rtol=0, atol=1e-7)


def test_ffjord_log_det_matches_autograd_jacobian():
    flow = _ffjord(factor=1.5, **TIGHT_FFJORD)
    x = torch.randn(16, 2, dtype=torch.float64, requires_grad=True)
    z, ell = flow.integrate(x, 1e-10, 1e-10, "exact")
    sign, logabsdet = torch.linalg.slogdet(_jacobian_rows(z, x))
    assert (sign > 0).all()
    assert logabsdet.abs().max() > 0.3
    torch.testing.assert_close(ell.detach(), logabsdet, rtol=0, atol=1e-6)


# --- normalization ---------------------------------------------------------------------------------------------------
def _grid_mass(log_prob, lim=6.0, n=150, chunk=12_000):
    g = torch.linspace(-lim, lim, n, dtype=torch.float64)
    xy = torch.cartesian_prod(g, g)
    with torch.no_grad():
        lp = torch.cat([log_prob(part) for part in xy.split(chunk)])
    return lp.exp().sum().item() * (2 * lim / (n - 1)) ** 2, (lp - _log_normal(xy)).abs().max().item()


def test_otflow_density_integrates_to_one():
    flow = _otflow(seed=1, factor=0.3)
    mass, departure = _grid_mass(lambda x: flow.log_prob(x, nt=12))
    assert departure > 1.0  # far from the base Gaussian
    assert math.isclose(mass, 1.0, rel_tol=1e-2), mass


def test_ffjord_density_integrates_to_one():
    flow = _ffjord(seed=1, factor=1.5, **TIGHT_FFJORD)
    mass, departure = _grid_mass(flow.log_prob)
    assert departure > 1.0
    assert math.isclose(mass, 1.0, rel_tol=1e-2), mass


# --- trace estimators -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("noise", ["rademacher", "gaussian"])
def test_hutchinson_agrees_with_exact_trace_in_expectation(noise):
    flow = _ffjord(factor=1.5)
    net = flow.dynamics.net
    t = torch.tensor(0.3, dtype=torch.float64)
    x = torch.randn(6, 2, dtype=torch.float64)
    k = 4000
    xr = x.repeat(k, 1).requires_grad_(True)  # k copies of each point, one noise vector per copy
    f = net(t, xr)
    exact = divergence(f, xr, "exact", None, create_graph=False)[:6]
    from models.ffjord import sample_noise

    est = divergence(f, xr, "hutchinson", sample_noise(xr, noise), create_graph=False).view(k, 6)
    mean, se = est.mean(0), est.std(0) / math.sqrt(k)
    assert (se > 1e-3).all()  # the Jacobian is not diagonal: single estimates really vary
    assert ((mean - exact).abs() < 4.5 * se).all(), ((mean - exact) / se)


# --- inversion, sampling, solver info -------------------------------------------------------------------------------
def test_otflow_round_trip_and_samples():
    flow = _otflow(factor=0.5)
    x = torch.randn(200, 2, dtype=torch.float64)
    err8 = flow.inverse_error(x)
    assert err8.shape == (200,) and err8.max() < 1e-2
    flow.hparams["nt_eval"] = 32
    assert flow.inverse_error(x).max() < err8.max() / 20  # RK4: ≈ 4⁴ = 256× smaller for 4× the steps
    s = models.create("otflow", datasets.load("moons")).sample(300)
    assert s.shape == (300, 2) and s.dtype == torch.float32 and torch.isfinite(s).all()
    info = flow.solver_info()
    assert info["solver"] == "rk4" and info["nt"] == 4 and info["nt_eval"] == 32


def test_ffjord_round_trip_samples_and_nfe():
    flow = _ffjord(factor=1.5)
    x = torch.randn(200, 2, dtype=torch.float64)
    assert flow.inverse_error(x).max() < 1e-2  # eval tolerance 1e-6, a strongly non-linear flow
    flow.hparams.update(eval_atol=1e-10, eval_rtol=1e-10)
    assert flow.inverse_error(x).max() < 1e-6
    flow.hparams.update(eval_atol=1e-6, eval_rtol=1e-6)
    torch.manual_seed(0)
    s = models.create("ffjord", datasets.load("moons")).sample(300)
    assert s.shape == (300, 2) and s.dtype == torch.float32 and torch.isfinite(s).all()
    flow.log_prob(x)
    info = flow.solver_info()
    assert info["solver"] == "dopri5" and info["trace"] == "exact" and info["eval_atol"] == 1e-6
    assert info["nfe"] >= 8 and info["nfe_solve"] == "density"


@pytest.mark.parametrize("method", ["otflow", "ffjord"])
def test_binarized_mnist_is_unsupported_with_a_reason(method):
    with pytest.raises(UserError, match="binary pixels have no density"):
        models.resolve_hparams(method, "binarized_mnist")


# --- training through the loop --------------------------------------------------------------------------------------
@pytest.mark.parametrize("method, hp", [
    ("otflow", {"steps": 30, "batch_size": 128, "lr": 5e-2}),
    ("ffjord", {"steps": 30, "batch_size": 128, "lr": 1e-2, "hidden": [32, 32]}),
])
def test_training_decreases_the_loss(tmp_path, method, hp):
    spec = RunSpec.build(method, "moons", 0, hp, loop={"log_every": 5, "val_every": 30, "checkpoint_every": 100,
                                                       "val_size": 256})
    status = train(spec, tmp_path, progress=False)
    assert status["status"] == "ok"
    with open(tmp_path / LOG) as fh:
        rows = list(csv.DictReader(fh))
    losses = [float(r["loss"]) for r in rows]
    assert losses[-1] < losses[0] and all(math.isfinite(v) for v in losses)
    assert math.isfinite(float(rows[-1]["val_loss"]))


# --- MNIST ----------------------------------------------------------------------------------------------------------
@needs_mnist
@pytest.mark.parametrize("method, hp", [("ffjord", {"hidden": [16]}), ("otflow", {"width": 8, "nt_eval": 4})])
def test_cnfs_on_mnist_images(method, hp):
    from bench import datasets

    ds = datasets.load("mnist")
    torch.manual_seed(0)
    flow = models.create(method, ds, **hp)
    x = ds.test[:4]
    with torch.no_grad():
        lp = flow.log_prob(x)
    assert lp.shape == (4,) and torch.isfinite(lp).all()
    if method == "ffjord":
        assert flow.solver_info()["trace"] == "hutchinson"
    loss = flow.loss(x)
    loss.backward()
    grads = {n: p.grad for n, p in flow.named_parameters() if n != "phi.c"}  # Φ's constant moves nothing
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    s = flow.sample(3)
    assert s.shape == (3, 1, 28, 28) and s.dtype == torch.float32 and s.min() >= 0 and s.max() <= 1
    err = flow.inverse_error(x)
    assert err.shape == (4,) and torch.isfinite(err).all()


@needs_mnist
@pytest.mark.parametrize("method", ["ffjord", "otflow"])
def test_mnist_log_prob_is_the_dequantized_logit_density(method):
    # Identity flow: log p(y) = log N(logit(s); 0, I) + log|d logit(s)/dy|, s = α + (1−2α)y, y = (x+u)/256.
    from bench import datasets
    from models.images import dequantize, to_logit

    ds = datasets.load("mnist")
    flow = models.create(method, ds, **({"hidden": [16]} if method == "ffjord" else {"width": 8, "nt_eval": 2}))
    zero = flow.dynamics.net.layers[-1].parameters() if method == "ffjord" else (flow.phi.w, flow.phi.A, flow.phi.b)
    with torch.no_grad():
        for p in zero:
            p.zero_()
    x = ds.test[:3]
    torch.manual_seed(5)
    y, log_det = to_logit(dequantize(x), flow.hparams["logit_alpha"])
    torch.manual_seed(5)
    with torch.no_grad():
        lp = flow.log_prob(x)
    torch.testing.assert_close(lp, _log_normal(y.flatten(1)) + log_det, rtol=1e-5, atol=1e-2)


def _naive_augmented_rk4(phi, x, nt):
    """Stage-by-stage RK4 from t = 0 to 1 on the augmented OT-Flow ODE (paper eqs., module docstring)
        ∂ₜx = −∇ₓΦ,  ∂ₜℓ = −tr ∇ₓ²Φ,  ∂ₜL = ½‖∇ₓΦ‖²,  ∂ₜR = |∂ₜΦ − ½‖∇ₓΦ‖²|,
    with ∇Φ and the Hessian trace from autograd on Φ(s), s = [x, t]."""
    d = x.shape[1]

    def rates(x, t):
        s = torch.cat([x, torch.full((len(x), 1), t, dtype=x.dtype)], 1).requires_grad_(True)
        (grad,) = torch.autograd.grad(phi(s).sum(), s, create_graph=True)
        trace = sum(torch.autograd.grad(grad[:, i].sum(), s, retain_graph=True)[0][:, i] for i in range(d))
        gx, gt = grad[:, :d].detach(), grad[:, d].detach()
        half_sq = 0.5 * gx.pow(2).sum(1)
        return torch.cat([-gx, torch.stack([-trace.detach(), half_sq, (gt - half_sq).abs()], 1)], 1)

    y, h = torch.cat([x, x.new_zeros(len(x), 3)], 1), 1.0 / nt
    for k in range(nt):
        t = k * h
        k1 = rates(y[:, :d], t)
        k2 = rates(y[:, :d] + 0.5 * h * k1[:, :d], t + 0.5 * h)
        k3 = rates(y[:, :d] + 0.5 * h * k2[:, :d], t + 0.5 * h)
        k4 = rates(y[:, :d] + h * k3[:, :d], t + h)
        y = y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return y


def test_otflow_objective_terms_match_a_naive_augmented_rk4():
    """The training objective α_L·E[L] + α_C·E[NLL] + α_R·E[R] and each of its terms, against an independent
    stage-by-stage RK4 of the augmented ODE with autograd derivatives (same nt, so equal to rounding)."""
    flow = _otflow(factor=0.5, alpha=[2.0, 3.0, 7.0])
    x = torch.randn(32, 2, dtype=torch.float64)
    nt = flow.hparams["nt"]
    state = flow.integrate(x, nt)
    y = _naive_augmented_rk4(flow.phi, x, nt)
    torch.testing.assert_close(state.detach(), y, rtol=1e-10, atol=1e-10)
    z, ell, cost, hjb = y[:, :2], y[:, 2], y[:, 3], y[:, 4]
    nll = -(_log_normal(z) + ell).mean()
    terms = flow.loss_terms(x)
    assert cost.mean() > 0.1 and hjb.mean() > 0.1 and abs(cost.mean() - hjb.mean()) > 0.1  # distinguishable terms
    torch.testing.assert_close(terms["transport"].detach(), cost.mean(), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(terms["hjb"].detach(), hjb.mean(), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(terms["nll"].detach(), nll, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(terms["loss"].detach(), 2.0 * cost.mean() + 3.0 * nll + 7.0 * hjb.mean(),
                               rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(flow.loss(x).detach(), terms["loss"].detach(), rtol=1e-12, atol=1e-12)


def test_otflow_training_nll_on_images_includes_the_logit_jacobian():
    """On images the logged training NLL is the negative mean log_prob (dequantized logit density, Jacobian
    included) at the training step count, from the same dequantization draws."""
    torch.manual_seed(0)
    images = SimpleNamespace(train=torch.zeros(1, 1, 28, 28, dtype=torch.uint8))
    flow = OTFlow(images, {**OTFlow.defaults("mnist"), "width": 8})
    x = torch.randint(0, 256, (3, 1, 28, 28), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    torch.manual_seed(5)
    with torch.no_grad():
        nll = flow.loss_terms(x)["nll"]
    torch.manual_seed(5)
    with torch.no_grad():
        log_p = flow.log_prob(x, nt=flow.hparams["nt"])
    torch.testing.assert_close(nll, -log_p.mean(), rtol=1e-6, atol=1e-3)


@pytest.mark.parametrize("noise", ["rademacher", "gaussian"])
def test_hutchinson_noise_is_drawn_independently_per_example(noise):
    """One ε per example (module docstring): copies of one point get independent trace estimates, whose mean
    agrees with the exact-trace log-density; one ε shared by the batch would give every copy the same value."""
    flow = _ffjord(factor=1.5, hidden=[32, 32], eval_trace_estimator="hutchinson", hutchinson_noise=noise)
    x = torch.tensor([[0.3, -0.2]], dtype=torch.float64).repeat(400, 1)
    torch.manual_seed(1)
    with torch.no_grad():
        est = flow.log_prob(x)
        flow.hparams["eval_trace_estimator"] = "exact"
        exact = flow.log_prob(x[:1])[0]
    se = est.std() / math.sqrt(len(est))
    assert est.std() > 1e-2  # the copies' estimates differ
    assert abs(est.mean() - exact) < 4.5 * se
