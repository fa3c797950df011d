"""VAE: ELBO/IWAE bounds against the linear-Gaussian (probabilistic PCA) oracle, their ordering in k, chunking,
the logit-space image likelihood with its Jacobian, and the decoder/dataset checks."""
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import models
from bench import datasets
from conftest import needs_mnist
from core.errors import UserError
from models.vae import VAE


def _fake(name, shape, kind):
    """A stand-in dataset: the VAE reads only the name, the shape of the training tensor and the kind."""
    return SimpleNamespace(name=name, kind=kind, train=torch.zeros(1, *shape, dtype=torch.uint8 if kind == "image"
                                                                   else torch.float32), info={"levels": 256})


def _peaked_moons_vae(seed=0):
    """A moons VAE whose posterior is far from its encoder: large decoder weights and a small decoder variance,
    so the ELBO gap, and its shrinking with k, are large."""
    torch.manual_seed(seed)
    vae = models.create("vae", datasets.load("moons"), hidden_layers=1, width=32)
    with torch.no_grad():
        for p in vae.decoder.parameters():
            p.mul_(3.0)
        vae.dec_logvar.fill_(-3.0)
    return vae.double()


def _moons_points(n=200):
    return datasets.load("moons").test[:n].double()


def test_shapes_and_finiteness_on_moons():
    torch.manual_seed(0)
    vae = models.create("vae", datasets.load("moons"))
    x = datasets.load("moons").test[:50]
    with torch.no_grad():
        e, w, s = vae.elbo(x), vae.iwae(x, 7), vae.sample(30)
    assert e.shape == (50,) and w.shape == (50,) and s.shape == (30, 2)
    assert torch.isfinite(e).all() and torch.isfinite(w).all() and torch.isfinite(s).all()
    assert vae.capabilities == {"elbo", "iwae", "sample"}


@needs_mnist
def test_shapes_and_range_on_mnist():
    torch.manual_seed(0)
    ds = datasets.load("mnist")
    vae = models.create("vae", ds, width=8)
    x = ds.test[:4]
    with torch.no_grad():
        e, w, s = vae.elbo(x), vae.iwae(x, 5), vae.sample(6)
    assert e.shape == (4,) and w.shape == (4,) and torch.isfinite(e).all() and torch.isfinite(w).all()
    assert s.shape == (6, 1, 28, 28) and s.dtype == torch.float32 and s.min() >= 0 and s.max() <= 1
    bvae = models.create("vae", datasets.load("binarized_mnist"), width=8)
    assert bvae.hparams["decoder"] == "bernoulli"
    with torch.no_grad():
        b = bvae.iwae(datasets.load("binarized_mnist").test[:3], 4)
    assert torch.isfinite(b).all() and (b < 0).all()  # a probability of binary pixels: log p < 0


def _paired(a, b):
    """Mean and standard error of the per-example difference a − b."""
    d = (a - b).flatten()
    return d.mean().item(), (d.std() / math.sqrt(len(d))).item()


def test_elbo_below_iwae_k_below_iwae_larger_k_in_expectation():
    vae = _peaked_moons_vae()
    x = _moons_points(200)
    torch.manual_seed(1)
    with torch.no_grad():
        reps = [(vae.elbo(x), vae.iwae(x, 1), vae.iwae(x, 5), vae.iwae(x, 50)) for _ in range(10)]
    elbo, iw1, iw5, iw50 = (torch.stack(r) for r in zip(*reps, strict=True))
    # strict and significant improvements: the gap of this model is large
    for lo, hi in ((elbo, iw5), (iw5, iw50)):
        mean, se = _paired(hi, lo)
        assert mean > 4 * se and mean > 0.05, (mean, se)
    # k = 1 is the ELBO (analytic-KL estimator vs one importance weight: same expectation)
    mean, se = _paired(iw1, elbo)
    assert abs(mean) < 4 * se + 1e-3, (mean, se)


def test_large_k_is_finite_and_chunking_does_not_change_the_result():
    vae = _peaked_moons_vae()
    with torch.no_grad():
        vae.dec_logvar.fill_(-25.0)  # log-weights around −1e10: exp() of them underflows, logsumexp must not
    x = _moons_points(3)
    with torch.no_grad():
        torch.manual_seed(5)
        whole = vae.iwae(x, 5000)
        torch.manual_seed(5)
        chunked = vae.iwae(x, 5000, max_rows=64)  # 21 samples per chunk
    assert torch.isfinite(whole).all() and whole.abs().min() > 1e6
    torch.testing.assert_close(chunked, whole, rtol=1e-12, atol=1e-6)


def test_loss_is_the_negative_mean_elbo():
    vae = _peaked_moons_vae()
    x = _moons_points(64)
    torch.manual_seed(3)
    loss = vae.loss(x)
    torch.manual_seed(3)
    torch.testing.assert_close(loss, -vae.elbo(x).mean())
    torch.manual_seed(3)
    assert vae.validation_loss(x) == pytest.approx(loss.item())


# --- linear-Gaussian oracle (anchors-metrics §2c.6) -------------------------------------------------------
D, Q, SIGMA = 10, 3, 0.5


def _ppca_vae(W, mu, post_mean_map, post_logvar):
    """The VAE's own elbo/iwae code with a linear decoder x = Wz + μ + σε and a linear Gaussian encoder."""
    vae = VAE(_fake("ppca", (D,), "points"), {**VAE.defaults("moons"), "latent_dim": Q}).double()
    dec = nn.Linear(Q, D).double()
    enc = nn.Linear(D, 2 * Q).double()
    with torch.no_grad():
        dec.weight.copy_(W)
        dec.bias.copy_(mu)
        A = post_mean_map  # posterior mean = A (x − μ)
        enc.weight.copy_(torch.cat([A, torch.zeros(Q, D, dtype=torch.float64)]))
        enc.bias.copy_(torch.cat([-A @ mu, post_logvar]))
        vae.dec_logvar.fill_(2 * math.log(SIGMA))
    vae.encoder, vae.decoder = enc, dec
    return vae


def _ppca(orthogonal):
    g = torch.Generator().manual_seed(7)
    W = torch.randn(D, Q, generator=g, dtype=torch.float64)
    if orthogonal:  # orthogonal columns: M = WᵀW + σ²I is diagonal, so the exact posterior is mean-field
        W = torch.linalg.qr(W)[0] * torch.tensor([2.0, 1.0, 0.5], dtype=torch.float64)
    mu = torch.randn(D, generator=g, dtype=torch.float64)
    M = W.T @ W + SIGMA**2 * torch.eye(Q, dtype=torch.float64)
    post_cov = SIGMA**2 * torch.linalg.inv(M)
    marginal = torch.distributions.MultivariateNormal(mu, W @ W.T + SIGMA**2 * torch.eye(D, dtype=torch.float64))
    x = marginal.sample((20,))  # uses the global RNG; fine, the points are arbitrary
    return W, mu, torch.linalg.solve(M, W.T), post_cov, marginal, x


def test_exact_posterior_makes_iwae_exact_and_elbo_unbiased():
    torch.manual_seed(0)
    W, mu, A, post_cov, marginal, x = _ppca(orthogonal=True)
    assert torch.allclose(post_cov, torch.diag(post_cov.diagonal()))
    vae = _ppca_vae(W, mu, A, post_cov.diagonal().log())
    log_p = marginal.log_prob(x)
    with torch.no_grad():
        for k in (1, 10, 100):  # every importance weight equals log p(x): zero variance
            torch.testing.assert_close(vae.iwae(x, k), log_p, rtol=0, atol=1e-9)
        elbo = torch.stack([vae.elbo(x) for _ in range(400)])
    mean, se = _paired(elbo, log_p.expand_as(elbo))
    assert abs(mean) < 4 * se, (mean, se)


def test_mean_field_encoder_elbo_matches_closed_form_and_iwae_tends_to_log_p():
    torch.manual_seed(0)
    W, mu, A, post_cov, marginal, x = _ppca(orthogonal=False)
    diag = post_cov.diagonal()
    vae = _ppca_vae(W, mu, A, diag.log())
    log_p = marginal.log_prob(x)
    # ELBO = log p(x) − KL(N(m, diag) ‖ N(m, Σ_post)), the same for every x
    kl = 0.5 * (torch.trace(torch.linalg.solve(post_cov, torch.diag(diag))) - Q
                + torch.logdet(post_cov) - diag.log().sum())
    assert kl > 0.05  # the mean-field gap is real
    with torch.no_grad():
        elbo = torch.stack([vae.elbo(x) for _ in range(400)])
        iw = {k: vae.iwae(x, k) for k in (5, 5000)}
    mean, se = _paired(elbo, (log_p - kl).expand_as(elbo))
    assert abs(mean) < 4 * se, (mean, se)
    assert (log_p - iw[5000]).mean().abs() < 0.1 * kl  # IWAE_5000 closes > 90 % of the gap
    assert (iw[5000] - iw[5]).mean() > 0 and (iw[5] - (log_p - kl)).mean() > 0


# --- images: logit-space Gaussian with the Jacobian; decoder/dataset checks -------------------------------
def _iwae1_and_elbo(vae, x, seed):
    """IWAE_1 and the ELBO of x, each from the same draws (the generator reset to `seed` before each)."""
    with torch.no_grad():
        torch.manual_seed(seed)
        iwae = vae.iwae(x, 1)
        torch.manual_seed(seed)
        return iwae, vae.elbo(x)


def test_image_likelihood_includes_the_logit_jacobian():
    alpha = 0.05
    vae = VAE(_fake("mnist", (1, 28, 28), "image"), {**VAE.defaults("mnist"), "width": 4, "logit_alpha": alpha})
    with torch.no_grad():
        vae.dec_logvar.uniform_(-2.0, 0.0)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (1, 1, 28, 28), generator=g, dtype=torch.uint8)
    x[0, 0, :10] = 0  # background pixels, as in MNIST
    got_iwae, got_elbo = _iwae1_and_elbo(vae, x, seed=11)
    # independent computation with the same draws: u (dequantization), then ε
    torch.manual_seed(11)
    u = torch.rand(x.shape)
    eps = torch.randn(1, 1, vae.latent_dim)[0]
    y = ((x.float() + u) / 256).requires_grad_(True)
    t = torch.logit(alpha + (1 - 2 * alpha) * y)
    (dt_dy,) = torch.autograd.grad(t.sum(), y)  # elementwise map: the Jacobian is diagonal
    log_det = dt_dy.log().sum()
    t = t.detach()
    with torch.no_grad():
        mean, logvar = vae.encoder(y.detach()).chunk(2, -1)
        std = (0.5 * logvar).exp()
        z = mean + std * eps
        dec = torch.distributions.Normal(vae.decoder(z).flatten(), (0.5 * vae.dec_logvar).exp())
        log_lik = dec.log_prob(t.flatten()).sum()
        log_w = (log_lik + torch.distributions.Normal(0.0, 1.0).log_prob(z).sum()
                 - torch.distributions.Normal(mean, std).log_prob(z).sum() + log_det)
        kl = torch.distributions.kl_divergence(torch.distributions.Normal(mean, std),
                                               torch.distributions.Normal(0.0, 1.0)).sum()
    assert log_det > 1000  # ~2.9 nats per pixel at α = 0.05: leaving it out would be caught
    torch.testing.assert_close(got_iwae[0], log_w, rtol=1e-5, atol=1e-2)
    torch.testing.assert_close(got_elbo[0], log_lik + log_det - kl, rtol=1e-5, atol=1e-2)


def test_full_samples_of_images_are_in_unit_range():
    vae = VAE(_fake("mnist", (1, 28, 28), "image"), {**VAE.defaults("mnist"), "width": 4, "sample_mode": "full"})
    s = vae.sample(5)
    assert s.shape == (5, 1, 28, 28) and s.min() >= 0 and s.max() <= 1


def test_bernoulli_decoder_only_on_binary_data():
    with pytest.raises(UserError, match="binary data only.*'mnist'.*use decoder: gaussian"):
        VAE(_fake("mnist", (1, 28, 28), "image"), {**VAE.defaults("mnist"), "decoder": "bernoulli"})
    with pytest.raises(UserError, match="binary data only"):
        models.create("vae", datasets.load("moons"), decoder="bernoulli")
    with pytest.raises(UserError, match="use decoder: bernoulli"):
        VAE(_fake("binarized_mnist", (1, 28, 28), "image"), {**VAE.defaults("binarized_mnist"), "decoder": "gaussian"})
    vae = VAE(_fake("binarized_mnist", (1, 28, 28), "image"), {**VAE.defaults("binarized_mnist"), "width": 4})
    x = torch.randint(0, 2, (3, 1, 28, 28), dtype=torch.uint8)
    with torch.no_grad():
        e = vae.elbo(x)
    assert torch.isfinite(e).all() and (e < 0).all()


@needs_mnist
def test_bernoulli_on_gray_mnist_is_a_user_error_through_create():
    with pytest.raises(UserError, match="bernoulli"):
        models.create("vae", datasets.load("mnist"), decoder="bernoulli")


def test_one_dequantization_per_example_shared_by_the_k_samples(monkeypatch):
    import models.vae as vae_module

    calls = []
    real = vae_module.dequantize
    monkeypatch.setattr(vae_module, "dequantize", lambda x: calls.append(tuple(x.shape)) or real(x))
    vae = VAE(_fake("mnist", (1, 28, 28), "image"), {**VAE.defaults("mnist"), "width": 4})
    x = torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8)
    with torch.no_grad():
        vae.iwae(x, 40, max_rows=16)
    assert calls == [(3, 1, 28, 28)]


def test_bernoulli_likelihood_is_the_sum_over_pixels_in_elbo_and_iwae():
    """Binary pixels: log p(x | z) = Σ_i [x_i log σ(o_i) + (1 − x_i) log(1 − σ(o_i))], summed over all 784 pixels,
    against torch.distributions with the same draws (no dequantization on this path: ε is the first draw)."""
    torch.manual_seed(0)
    vae = VAE(_fake("binarized_mnist", (1, 28, 28), "image"), {**VAE.defaults("binarized_mnist"), "width": 4})
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 2, (2, 1, 28, 28), generator=g, dtype=torch.uint8)
    got_iwae, got_elbo = _iwae1_and_elbo(vae, x, seed=11)
    torch.manual_seed(11)
    eps = torch.randn(1, 2, vae.latent_dim)[0]
    D = torch.distributions
    with torch.no_grad():
        mean, logvar = vae.encoder(x.float()).chunk(2, -1)
        std = (0.5 * logvar).exp()
        z = mean + std * eps
        log_lik = D.Bernoulli(logits=vae.decoder(z).flatten(1)).log_prob(x.flatten(1).float()).sum(1)
        log_w = log_lik + D.Normal(0.0, 1.0).log_prob(z).sum(1) - D.Normal(mean, std).log_prob(z).sum(1)
        kl = D.kl_divergence(D.Normal(mean, std), D.Normal(0.0, 1.0)).sum(1)
    assert (log_lik < -300).all()  # ~0.69 nats per pixel at init: a per-pixel mean would be ~−0.7
    torch.testing.assert_close(got_iwae, log_w, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(got_elbo, log_lik - kl, rtol=1e-5, atol=1e-3)


def test_full_samples_on_points_have_the_decoder_standard_deviation():
    """sample_mode full on points: x = m(z) + exp(ℓ/2)·ε. With a constant decoder mean, each coordinate's sample std
    is exp(ℓ/2) (here 2 and 0.5), not exp(ℓ)."""
    torch.manual_seed(0)
    vae = models.create("vae", datasets.load("moons"))
    assert vae.hparams["sample_mode"] == "full"
    with torch.no_grad():
        last = vae.decoder[-1]
        last.weight.zero_()
        last.bias.copy_(torch.tensor([1.0, -1.0]))
        vae.dec_logvar.copy_(torch.tensor([2 * math.log(2.0), 2 * math.log(0.5)]))
    s = vae.sample(40_000).double()
    torch.testing.assert_close(s.mean(0), torch.tensor([1.0, -1.0], dtype=torch.float64), rtol=0, atol=0.05)
    torch.testing.assert_close(s.std(0), torch.tensor([2.0, 0.5], dtype=torch.float64), rtol=0.02, atol=0)
