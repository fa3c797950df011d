"""Likelihood metrics: exact NLL with its standard error, bits/dim, the IWAE bound and the ELBO gap.

All inputs are per-example log-densities in nats (numpy arrays or torch tensors); computation is in float64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.special import logsumexp

from metrics._arrays import as_float64


@dataclass(frozen=True)
class NLL:
    """Mean negative log-likelihood in nats, its standard error ``sd / sqrt(n)`` (ddof=1) and the sample count."""

    mean: float
    stderr: float
    n: int



def nll_nats(log_prob) -> NLL:
    """Mean NLL over examples: ``-mean(log p(x_i))`` with standard error ``std(log p, ddof=1) / sqrt(n)``.

    ``log_prob`` holds one log-density (nats) per test example, any shape; it is flattened. The standard error
    measures evaluation noise over test points only, not seed variance. ``stderr`` is NaN when n = 1.
    """
    values = as_float64(log_prob).ravel()
    if values.size == 0:
        raise ValueError("nll_nats needs at least one log-probability; got an empty array")
    n = values.size
    stderr = float(values.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
    return NLL(mean=float(-values.mean()), stderr=stderr, n=n)


def bits_per_dim(nll_nats: float, dim: int, scale: float = 256) -> float:
    """Convert an NLL in nats of data on the [0, 1] scale (x / scale) to bits/dim on the 0–255 scale.

    ``bpd = nll / (dim · ln 2) + log2(scale)``: dividing by ln 2 converts nats to bits, and the change of
    variables x → x / scale adds ``dim · ln(scale)`` nats. With ``scale=256`` and uniform dequantization
    ``(x + u) / 256`` this is the convention of RealNVP (Dinh et al. 2017) and FFJORD (Grathwohl et al. 2019).
    The caller's log-probability must already include the dequantization and any logit-transform Jacobian.
    Use ``scale=1`` when the NLL is already on the 0–255 scale. Sanity oracle: the uniform density on [0, 1]^D
    (NLL 0) gives exactly log2(256) = 8 bits/dim.
    """
    return float(nll_nats) / (dim * math.log(2)) + math.log2(scale)


def iwae_log_likelihood(log_weights) -> np.ndarray:
    """Importance-weighted log-likelihood estimate per example (Burda, Grosse & Salakhutdinov 2016, IWAE).

    ``log p̂_k(x) = logsumexp_j(log w_j) − log k`` over the LAST axis (the k importance samples), where
    ``log w_j = log p(x, z_j) − log q(z_j | x)`` with ``z_j ~ q(z | x)``. Stable for any magnitude of the log
    weights. Its expectation is a lower bound on log p(x) that is non-decreasing in k and tends to log p(x);
    k = 1 gives the ELBO. Returns a float64 array of shape ``log_weights.shape[:-1]``.
    """
    values = as_float64(log_weights)
    if values.ndim == 0 or values.shape[-1] == 0:
        raise ValueError(f"iwae_log_likelihood needs a non-empty last (k) axis; got shape {values.shape}")
    return logsumexp(values, axis=-1) - math.log(values.shape[-1])


def elbo_gap(log_likelihood, elbo) -> float:
    """ELBO gap ``log p(x) − ELBO = KL(q(z|x) ‖ p(z|x))`` (≥ 0 in expectation), averaged over examples.

    Pass scalars or per-example arrays of the same shape (e.g. an IWAE-k estimate with large k and the ELBO).
    """
    return float(np.mean(as_float64(log_likelihood) - as_float64(elbo)))
