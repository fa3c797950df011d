"""Variational autoencoder (Kingma & Welling, ICLR 2014) with ELBO and IWAE bounds (Burda et al., ICLR 2016).

Model: z ~ N(0, I_q), x | z ~ p_θ(x | z); encoder q_φ(z | x) = N(μ_φ(x), diag σ²_φ(x)).
Networks: on points, MLP encoder/decoder; on MNIST the course's conv encoder/decoder (models/nets.py), the
decoder being the same class as the GAN generator.

Decoders, each a proper likelihood of the data the other methods model:
- "gaussian" on points: x | z ~ N(m_θ(z), diag exp(ℓ)) with a learned log-variance ℓ per coordinate.
- "gaussian" on gray `mnist` (the default): the density of the dequantized image y = (x + u)/256 on the [0,1]
  scale (models/images.py). y is mapped to logit space t = logit(α + (1−2α)y) and t | z ~ N(m_θ(z), diag exp(ℓ))
  with a learned log-variance per pixel; log p(y | z) = log N(t; m_θ(z), ·) + log|det ∂t/∂y|, so the ELBO and
  IWAE are bounds on log p(y) in nats, comparable with the flows' NLL. One dequantization u per example,
  shared by all k importance samples of the IWAE.
- "bernoulli" on `binarized_mnist` (its default): x_i | z ~ Bernoulli(sigmoid(m_θ(z)_i)), the course's BCE, a
  likelihood of binary pixels only (on gray pixels BCE is not a density, so it is refused).

Bounds, per example, in nats:
- `elbo(x)` = E_q[log p(x | z)] − KL(q(z|x) ‖ p(z)), with the KL in closed form and the reconstruction term
  estimated with ONE z sample (reparameterized): an unbiased estimate of the ELBO, the same expectation as
  `iwae(x, 1)` with lower variance. The training loss is exactly −mean ELBO (no KL weight).
- `iwae(x, k)` = log (1/k) Σ_j exp(log p(x, z_j) − log q(z_j | x)), z_j ~ q(z | x), via logsumexp; the decoder
  runs in chunks of at most `max_rows` (example, sample) pairs. All k×n×q latent noise is drawn up front, so the
  result does not depend on the chunking for a given RNG state (order of draws: dequantization u, then ε).
`sample(n)`: points are draws from the full model (decoder mean + Gaussian noise); images are the decoder mean
mapped back to [0,1] (`sample_mode: mean`, the usual practice; `full` adds the per-pixel noise).
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from core.errors import UserError
from models import register
from models.base import HParam, Method
from models.images import LOGIT_ALPHA, dequantize, from_logit, to_logit
from models.nets import ConvDecoder, ConvEncoder, mlp_net

LOG_2PI = math.log(2 * math.pi)
STEPS_50_EPOCHS = 50 * 55_000 // 64  # 42,968 steps of batch 64 over MNIST's 55k training images


@register("vae")
class VAE(Method):
    family = "vae"
    capabilities = frozenset({"elbo", "iwae", "sample"})
    hparam_spec = {"latent_dim": HParam(int, ge=1), "width": HParam(int, ge=1), "hidden_layers": HParam(int, ge=0),
                   "decoder": HParam(str, choices=("gaussian", "bernoulli")), "logit_alpha": LOGIT_ALPHA,
                   "sample_mode": HParam(str, choices=("mean", "full"))}
    IWAE_MAX_ROWS = {"points": 65_536, "image": 2_048}  # decoder rows per chunk (images: ~40 KB of activations each)

    @classmethod
    def defaults(cls, dataset: str) -> dict[str, Any]:
        if dataset in ("mnist", "binarized_mnist"):
            # binary pixels: a Bernoulli decoder; gray ones: a Gaussian decoder in logit space (models/images.py)
            pixels = ({"decoder": "bernoulli"} if dataset == "binarized_mnist"
                      else {"decoder": "gaussian", "logit_alpha": 0.05})
            return {"latent_dim": 2, "width": 32, **pixels, "sample_mode": "mean", "steps": STEPS_50_EPOCHS,
                    "batch_size": 64, "lr": 1e-3, "weight_decay": 1e-5}
        return {"latent_dim": 2, "width": 128, "hidden_layers": 2, "decoder": "gaussian", "sample_mode": "full",
                "steps": 20_000, "batch_size": 256, "lr": 1e-3, "weight_decay": 1e-5}

    @staticmethod
    def pixel_alpha(hparams: dict[str, Any]) -> float | None:
        """α of the map `from_logit(out, α)` from an image decoder's outputs to its mean pixels (`sample` in mean
        mode): the logit transform's for the Gaussian decoder, 0 (the sigmoid) for the Bernoulli one; None on
        points."""
        return hparams.get("logit_alpha") if hparams["decoder"] == "gaussian" else 0.0

    def __init__(self, dataset: Any, hparams: dict[str, Any]) -> None:
        super().__init__(dataset, hparams)
        self.image = len(self.data_shape) > 1
        self.kind = "image" if self.image else "points"
        self.decoder_kind = hparams["decoder"]
        binary = dataset.name == "binarized_mnist"
        if self.decoder_kind == "bernoulli" and not binary:
            raise UserError(
                f"vae decoder 'bernoulli' is a likelihood of binary data only, not of {dataset.name!r} "
                f"(BCE on {'gray pixels' if self.image else 'real-valued points'} is not a density); use decoder: "
                f"gaussian{', or the binarized_mnist dataset' if self.image else ''}")
        if self.decoder_kind == "gaussian" and binary:
            raise UserError("vae decoder 'gaussian' models dequantized gray pixels, and binarized_mnist's pixels are "
                            "binary (no density); use decoder: bernoulli on binarized_mnist")
        q, w = hparams["latent_dim"], hparams["width"]
        self.dim = math.prod(self.data_shape)
        if self.image:
            self.encoder = ConvEncoder(w, 2 * q)
            self.decoder = ConvDecoder(q, w)
        else:
            self.encoder = mlp_net(self.dim, 2 * q, w, hparams["hidden_layers"])
            self.decoder = mlp_net(q, self.dim, w, hparams["hidden_layers"])
        # learned per-coordinate (per-pixel) log-variance of the Gaussian decoder; unused by the Bernoulli one
        self.dec_logvar = nn.Parameter(torch.zeros(self.dim)) if self.decoder_kind == "gaussian" else None

    # --- pieces --------------------------------------------------------------------------------------------
    def prepare(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (data) → (encoder input, decoder target N×D, log|det| per example of the data → target map)."""
        if self.decoder_kind == "bernoulli":
            xf = x.float()
            return xf, xf.flatten(1), xf.new_zeros(len(x))
        if self.image:  # one dequantization per example; the target lives in logit space
            y = dequantize(x)
            t, log_det = to_logit(y, self.hparams["logit_alpha"])
            return y, t.flatten(1), log_det
        return x, x, x.new_zeros(len(x))

    def encode(self, inp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.encoder(inp).chunk(2, dim=-1)
        return mu, logvar

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Decoder outputs (Gaussian means or Bernoulli logits), flattened to (..., D)."""
        lead = z.shape[:-1]
        return self.decoder(z.reshape(-1, z.shape[-1])).reshape(*lead, self.dim)

    def log_lik(self, target: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """log p(target | z) summed over coordinates (without the data → target Jacobian); broadcasts."""
        if self.decoder_kind == "bernoulli":
            return -F.binary_cross_entropy_with_logits(out, target.expand_as(out), reduction="none").sum(-1)
        lv = self.dec_logvar
        return (-0.5 * ((target - out) ** 2 * torch.exp(-lv) + lv + LOG_2PI)).sum(-1)

    # --- bounds --------------------------------------------------------------------------------------------
    def elbo(self, x: torch.Tensor) -> torch.Tensor:
        """Per-example ELBO: one-sample reconstruction term + log-det − analytic KL(q(z|x) ‖ N(0, I))."""
        inp, target, log_det = self.prepare(x)
        mu, logvar = self.encode(inp)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(-1)
        return self.log_lik(target, self.decode(z)) + log_det - kl

    def iwae(self, x: torch.Tensor, k: int, max_rows: int | None = None) -> torch.Tensor:
        """Per-example IWAE_k bound log (1/k) Σ_j w_j, in chunks of at most `max_rows` decoder rows."""
        if k < 1:
            raise ValueError(f"iwae needs k >= 1, got {k}")
        inp, target, log_det = self.prepare(x)
        mu, logvar = self.encode(inp)
        std = torch.exp(0.5 * logvar)
        eps = torch.randn((k, *mu.shape), dtype=mu.dtype, device=mu.device)  # all noise first: chunking-invariant
        rows = max_rows or self.IWAE_MAX_ROWS[self.kind]
        per_chunk = max(1, rows // len(x))
        const = 0.5 * self.latent_dim * LOG_2PI
        parts = []
        for e in eps.split(per_chunk):
            z = mu + std * e  # (kc, n, q)
            log_q = (-0.5 * e.pow(2) - 0.5 * logvar).sum(-1) - const
            log_pz = -0.5 * z.pow(2).sum(-1) - const
            parts.append(self.log_lik(target, self.decode(z)) + log_pz - log_q)
        log_w = torch.cat(parts) + log_det  # (k, n)
        return torch.logsumexp(log_w, dim=0) - math.log(k)

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        return -self.elbo(x).mean()

    @torch.no_grad()
    def validation_loss(self, x: torch.Tensor) -> float:
        return self.loss(x).item()

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        out = self.decode(torch.randn(n, self.latent_dim, device=self.device))
        full = self.hparams["sample_mode"] == "full"
        if self.decoder_kind == "bernoulli":
            x = torch.bernoulli(torch.sigmoid(out)) if full else torch.sigmoid(out)
        else:
            x = out + torch.exp(0.5 * self.dec_logvar) * torch.randn_like(out) if full else out
            if self.image:
                x = from_logit(x, self.hparams["logit_alpha"])
        return x.view(n, *self.data_shape).float()
