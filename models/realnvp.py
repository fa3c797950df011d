"""RealNVP: a stack of affine coupling layers with alternating masks (Dinh, Sohl-Dickstein & Bengio, ICLR 2017).

Course architecture: K = 6 couplings, s and t MLPs of width 128 with LeakyReLU, tanh on the scale output.
On MNIST the same flow (checkerboard masks, wider MLPs on the flattened image) models the dequantized,
logit-transformed pixels (models/images.py), so its NLL is a density of the same data as every other model's.
Normalizing direction x → z of one coupling with binary mask m (1 = conditioning coordinates):
    s = s_net(m·x)·(1−m),  t = t_net(m·x)·(1−m),  z = m·x + (1−m)·(x − t)·exp(−s),  log|det ∂z/∂x| = −Σ_i s_i.
Only the transformed coordinates (1−m) carry a scale; summing the scale net's raw outputs over all coordinates,
as the original course code did, adds the masked coordinate's value to the log-determinant and misreports
the likelihood.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from models import register
from models.base import Method, mlp
from models.images import CONTINUOUS_ONLY, dequantize, from_logit, to_logit


@register("realnvp")
class RealNVP(Method):
    family = "flow"
    capabilities = frozenset({"log_prob", "sample"})
    unsupported = CONTINUOUS_ONLY

    @classmethod
    def defaults(cls, dataset: str) -> dict[str, Any]:
        if dataset == "mnist":
            return {"n_layers": 6, "width": 256, "logit_alpha": 0.05, "steps": 20_000, "batch_size": 64, "lr": 1e-4,
                    "weight_decay": 0.0}
        return {"n_layers": 6, "width": 128, "steps": 20_000, "batch_size": 256, "lr": 1e-4, "weight_decay": 0.0}

    def __init__(self, dataset: Any, hparams: dict[str, Any]) -> None:
        super().__init__(dataset, hparams)
        self.image = len(self.data_shape) > 1
        d, w, k = math.prod(self.data_shape), hparams["width"], hparams["n_layers"]
        if self.image:  # checkerboard over the pixel grid
            rows, cols = torch.meshgrid(torch.arange(self.data_shape[-2]), torch.arange(self.data_shape[-1]), indexing="ij")
            first = ((rows + cols) % 2 == 0).flatten()
        else:
            first = torch.arange(d) < d // 2
        self.register_buffer("masks", torch.stack([(first if i % 2 else ~first).float() for i in range(k)]))
        self.s = nn.ModuleList(mlp([d, w, w, d], out=nn.Tanh()) for _ in range(k))
        self.t = nn.ModuleList(mlp([d, w, w, d]) for _ in range(k))

    def inverse(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x → z = g⁻¹(x) and log|det ∂z/∂x| per example."""
        z, log_det = x, x.new_zeros(x.shape[0])
        for m, s_net, t_net in reversed(list(zip(self.masks, self.s, self.t))):
            zm = z * m
            s, t = s_net(zm) * (1 - m), t_net(zm) * (1 - m)
            z = zm + (1 - m) * (z - t) * torch.exp(-s)
            log_det = log_det - s.sum(dim=1)
        return z, log_det

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """z → x = g(z), the generative direction."""
        x = z
        for m, s_net, t_net in zip(self.masks, self.s, self.t):
            xm = x * m
            s, t = s_net(xm) * (1 - m), t_net(xm) * (1 - m)
            x = xm + (1 - m) * (x * torch.exp(s) + t)
        return x

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Points: log p(x). Images: log p(y) of the dequantized image y on [0,1] (models/images.py)."""
        pre_log_det = 0.0
        if self.image:
            x, pre_log_det = to_logit(dequantize(x), self.hparams["logit_alpha"])
            x = x.flatten(1)
        z, log_det = self.inverse(x)
        return -0.5 * z.pow(2).sum(1) - 0.5 * z.shape[1] * math.log(2 * math.pi) + log_det + pre_log_det

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        return -self.log_prob(x).mean()

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        x = self.forward(torch.randn(n, self.masks.shape[1], device=self.device))
        return from_logit(x, self.hparams["logit_alpha"]).view(n, *self.data_shape) if self.image else x
