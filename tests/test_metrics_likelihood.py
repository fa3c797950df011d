"""Tests for metrics.likelihood against closed forms (probabilistic PCA) and brute-force float64 references."""

import math

import numpy as np
import pytest
import torch

from metrics.likelihood import NLL, bits_per_dim, elbo_gap, iwae_log_likelihood, nll_nats


def test_nll_nats_matches_numpy_on_known_input():
    log_prob = np.array([-1.0, -2.0, -3.0, -6.0])
    res = nll_nats(log_prob)
    # mean NLL 3; sample sd (ddof=1) sqrt(((-2)^2 + (-1)^2 + 0 + 3^2) / 3) = sqrt(14/3); stderr = sd / sqrt(4)
    assert res == NLL(mean=3.0, stderr=pytest.approx(math.sqrt(14 / 3) / 2, rel=1e-12), n=4)
    assert nll_nats(torch.tensor(log_prob, dtype=torch.float32)) == res


def test_nll_nats_random_input_and_errors():
    lp = np.random.default_rng(0).normal(-5.0, 2.0, size=(40, 25))
    res = nll_nats(lp)
    assert res.n == 1000
    assert res.mean == pytest.approx(-lp.mean(), rel=1e-12)
    assert res.stderr == pytest.approx(lp.std(ddof=1) / math.sqrt(1000), rel=1e-12)
    assert math.isnan(nll_nats([-1.0]).stderr)
    with pytest.raises(ValueError):
        nll_nats([])


def test_bits_per_dim_uniform_is_8():
    # Uniform density on [0,1]^D (dequantized data x/256): log p = 0, so NLL = 0 and bits/dim = log2(256) = 8.
    assert bits_per_dim(0.0, dim=784) == 8.0
    # The same density on the 0-255 scale (scale=1): NLL = D ln 256 nats -> 8 bits/dim.
    assert bits_per_dim(784 * math.log(256), dim=784, scale=1) == pytest.approx(8.0, rel=1e-12)
    # One extra bit per dimension: NLL = D ln 2 nats on the [0,1] scale -> 9 bits/dim.
    assert bits_per_dim(2 * math.log(2), dim=2) == pytest.approx(9.0, rel=1e-12)


def test_bits_per_dim_of_a_dequantized_uniform_model():
    # A model with density 1 on [0,1]^D evaluated on dequantized 8-bit data: log p = 0 for every point.
    rng = np.random.default_rng(1)
    x = (rng.integers(0, 256, size=(100, 4)) + rng.random((100, 4))) / 256
    log_prob = np.where(((x >= 0) & (x < 1)).all(axis=1), 0.0, -np.inf)
    assert bits_per_dim(nll_nats(log_prob).mean, dim=4) == 8.0


def test_iwae_matches_bruteforce_on_moderate_values():
    lw = np.random.default_rng(2).normal(-3.0, 3.0, size=(3, 4, 7))
    out = iwae_log_likelihood(lw)
    assert out.shape == (3, 4)  # reduced over the LAST (k) axis
    np.testing.assert_allclose(out, np.log(np.mean(np.exp(lw), axis=-1)), rtol=1e-12)
    np.testing.assert_allclose(iwae_log_likelihood(torch.tensor(lw)), out, rtol=1e-12)


def test_iwae_stable_for_huge_magnitudes():
    shift = -1.0e4
    noise = np.random.default_rng(3).normal(0.0, 2.0, size=(5, 100))
    with np.errstate(divide="ignore"):
        assert np.isneginf(np.log(np.mean(np.exp(shift + noise), axis=-1))).all()  # the naive formula underflows
    expected = shift + np.log(np.mean(np.exp(noise), axis=-1))
    out = iwae_log_likelihood(torch.tensor(shift + noise, dtype=torch.float32))
    np.testing.assert_allclose(out, expected, rtol=1e-6)  # float32 inputs: ~1e-3 absolute resolution at 1e4
    np.testing.assert_allclose(iwae_log_likelihood(shift + noise), expected, rtol=1e-13)
    assert iwae_log_likelihood(np.full((2, 10), -3.0e5)) == pytest.approx(-3.0e5, rel=1e-15)


def test_iwae_k1_is_the_log_weight_and_errors():
    lw = np.random.default_rng(4).normal(size=(6, 1))
    np.testing.assert_allclose(iwae_log_likelihood(lw), lw[:, 0], rtol=1e-15)
    with pytest.raises(ValueError):
        iwae_log_likelihood(np.zeros((3, 0)))


# ---- probabilistic PCA: x = W z + mu + eps, z ~ N(0, I_k), eps ~ N(0, s^2 I) (anchors-metrics §2c.6) ----

D, K, SIGMA, N_X = 10, 3, 0.5, 20


@pytest.fixture(scope="module")
def ppca():
    g = torch.Generator().manual_seed(0)
    W = torch.randn(D, K, generator=g, dtype=torch.float64)
    mu = torch.randn(D, generator=g, dtype=torch.float64)
    z = torch.randn(N_X, K, generator=g, dtype=torch.float64)
    x = z @ W.T + mu + SIGMA * torch.randn(N_X, D, generator=g, dtype=torch.float64)
    marginal = torch.distributions.MultivariateNormal(mu, W @ W.T + SIGMA**2 * torch.eye(D, dtype=torch.float64))
    M = W.T @ W + SIGMA**2 * torch.eye(K, dtype=torch.float64)
    post_mean = torch.linalg.solve(M, W.T @ (x - mu).T).T  # N_X x K
    post_cov = SIGMA**2 * torch.linalg.inv(M)
    return dict(W=W, mu=mu, x=x, log_px=marginal.log_prob(x), post_mean=post_mean, post_cov=post_cov, g=g)


def _log_weights(m, q_cov, shape):
    """log p(x, z) - log q(z|x) for z ~ N(posterior mean, q_cov); returns shape (N_X, *shape)."""
    q = torch.distributions.MultivariateNormal(m["post_mean"].reshape(N_X, *[1] * len(shape), K), q_cov)
    z = q.mean + torch.randn(N_X, *shape, K, generator=m["g"], dtype=torch.float64) @ torch.linalg.cholesky(q_cov).T
    prior = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    x = m["x"].reshape(N_X, *[1] * len(shape), D)
    lik = torch.distributions.Normal(z @ m["W"].T + m["mu"], SIGMA).log_prob(x).sum(-1)
    return prior + lik - q.log_prob(z)


def _gaussian_kl(cov0, cov1):
    """KL(N(m, cov0) || N(m, cov1)) for equal means (closed form, anchors-metrics §2c.3)."""
    k = cov0.shape[0]
    return 0.5 * (torch.trace(torch.linalg.solve(cov1, cov0)) - k + torch.logdet(cov1) - torch.logdet(cov0)).item()


def test_iwae_with_exact_posterior_is_exact(ppca):
    lw = _log_weights(ppca, ppca["post_cov"], (50,))
    np.testing.assert_allclose(lw.numpy(), ppca["log_px"].numpy()[:, None].repeat(50, 1), atol=1e-10)
    np.testing.assert_allclose(iwae_log_likelihood(lw), ppca["log_px"].numpy(), atol=1e-10)


def test_elbo_gap_and_iwae_convergence_with_mean_field_q(ppca):
    q_cov = torch.diag(torch.diagonal(ppca["post_cov"]))
    kl = _gaussian_kl(q_cov, ppca["post_cov"])
    assert 0.02 < kl < 2.0  # the mean-field q is measurably wrong, so the gap below is a real check
    log_px = ppca["log_px"].numpy()

    # ELBO = E_q log w = log p(x) - KL(q || p(z|x)); Monte Carlo with 20k draws per x.
    lw = _log_weights(ppca, q_cov, (20_000,))
    elbo = lw.mean(-1).numpy()
    se = lw.std().item() / math.sqrt(lw.numel())
    assert elbo_gap(log_px, elbo) == pytest.approx(kl, abs=4 * se)
    assert elbo_gap(log_px.mean(), elbo.mean()) == pytest.approx(elbo_gap(log_px, elbo), rel=1e-12)

    # IWAE_k gap log p(x) - IWAE_k shrinks like Var(w)/(2k): ~KL at k=1, ~1e-4 at k=1000. With 2^20 log
    # weights per k the Monte-Carlo SE of each mean gap is about sqrt(Var(w)/2^20) < 1e-3, whatever k is.
    gaps, ses = [], []
    for k in (1, 10, 100, 1000):
        lw = _log_weights(ppca, q_cov, (2**20 // (N_X * k), k))
        gap = log_px[:, None] - iwae_log_likelihood(lw)
        gaps.append(gap.mean())
        ses.append(gap.std() / math.sqrt(gap.size))
    assert gaps[0] == pytest.approx(kl, abs=4 * ses[0])
    for i in range(3):
        assert gaps[i + 1] <= gaps[i] + 4 * math.hypot(ses[i], ses[i + 1])  # non-decreasing bound on average
    assert gaps[1] < kl / 3
    # IWAE_1000 reaches log p(x): its expected gap Var(w)/2000 is ~1e-4, far below the 1e-3 allowance, and a
    # lower bound cannot exceed log p(x) beyond noise.
    assert -4 * ses[3] < gaps[3] < 4 * ses[3] + 1e-3


def test_elbo_gap_averages_signed_per_example_gaps():
    # A noisy per-example log p(x) estimate can fall below the ELBO: gaps −1 and 3 average to 1, not to 2.
    assert elbo_gap([0.0, 0.0], [1.0, -3.0]) == 1.0
    assert elbo_gap(-2.0, -2.5) == 0.5
