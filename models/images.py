"""Image preprocessing shared by every likelihood model on 8-bit images, so their NLLs are comparable.

Convention: for image data a method's `log_prob(x)` takes uint8 pixels x ∈ {0..255}^D and returns the log-density
of the uniformly dequantized image y = (x + u)/256 ∈ (0,1)^D, u ~ U[0,1)^D, on the [0,1] scale, in nats. With one
u per example this is an unbiased estimate of E_u log p(y), a lower bound on the discrete log-likelihood (Theis
et al. 2016). Bits/dim on the 0–255 scale are then `metrics.likelihood.bits_per_dim(nll, D, scale=256)`.
Samples of image models are float32 in [0,1], shape N×1×28×28.
"""
from __future__ import annotations

import math

import torch

from models.base import HParam

# α of `to_logit`: s = α + (1−2α)·y must stay inside (0, 1) for y in [0, 1]
LOGIT_ALPHA = HParam(float, gt=0, lt=0.5)
# `unsupported` entry shared by the models of continuous data (flows, CNFs)
CONTINUOUS_ONLY = {"binarized_mnist": "a flow models continuous data; binary pixels have no density"}


def dequantize(x: torch.Tensor) -> torch.Tensor:
    """y = (x + u)/256 with u ~ U[0,1) from torch's global RNG (seeded by the loop and the evaluator)."""
    return (x.float() + torch.rand(x.shape, device=x.device)) / 256.0


def to_logit(y: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """z = logit(s), s = α + (1−2α)·y, and log|det ∂z/∂y| = Σ_i [log(1−2α) − log s_i − log(1−s_i)] per example
    (RealNVP, Dinh et al. 2017; FFJORD uses α = 1e-6)."""
    s = alpha + (1 - 2 * alpha) * y
    # log(1 − s), not log1p(−s): 1 − s is exact for s ≥ ½ and within 2⁻²⁴ relative below, so both are accurate to
    # ~1e-7 absolute on s ∈ [α, 1 − α], and torch's CPU log1p is much slower than its log.
    log_s, log_1ms = torch.log(s), torch.log(1 - s)
    return log_s - log_1ms, (math.log(1 - 2 * alpha) - log_s - log_1ms).flatten(1).sum(1)


def from_logit(z: torch.Tensor, alpha: float) -> torch.Tensor:
    """Inverse of `to_logit`, clamped to [0,1]."""
    return ((torch.sigmoid(z) - alpha) / (1 - 2 * alpha)).clamp(0, 1)

