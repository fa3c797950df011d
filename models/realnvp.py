"""RealNVP: a stack of affine coupling layers with alternating halves (Dinh, Sohl-Dickstein & Bengio, ICLR 2017).

Course architecture: K = 6 couplings, each with its own s and t MLPs (width 128, LeakyReLU, tanh on the scale).
On MNIST the same flow (checkerboard halves, wider MLPs) models the dequantized, logit-transformed pixels
(models/images.py), so its NLL is a density of the same data as every other model's.
Normalizing direction x → z of coupling k, with A_k the conditioning coordinates and B_k the others (the
two halves swap from one coupling to the next):
    s = s_net(x_A), t = t_net(x_A),  z_A = x_A,  z_B = (x_B − t)·exp(−s),  log|det ∂z/∂x| = −Σ_i s_i.
This is the masked form of the course code, s = s_net(m·x)·(1−m), with the zero inputs and discarded outputs
of the mask not computed: the same family of functions with fewer flops (half the first and last layer on
MNIST). The scale of the conditioning coordinates is not a parameter at all, so the course code's error
(summing the scale net's raw outputs over all coordinates into log|det|) cannot occur.

Speed (the flow is matmul-bound at these sizes): the s and t nets of a coupling are stored as one stacked
(2 × ...) weight per layer and evaluated together by `baddbmm`, and the two halves stay separate tensors until the
end, so a coupling is a few large products instead of many small ones (measured in docs/performance.md).
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from models import register
from models.base import HParam, Method
from models.images import CONTINUOUS_ONLY, LOGIT_ALPHA, dequantize, from_logit, to_logit


class _STNets(nn.Module):
    """The s and t MLPs of one coupling (in → w → w → out, LeakyReLU, tanh on s), evaluated as one batched pair."""

    def __init__(self, n_in: int, width: int, n_out: int) -> None:
        super().__init__()
        sizes = [n_in, width, width, n_out]
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True), 1):
            bound = 1 / math.sqrt(a)  # nn.Linear's default initialization, weight and bias alike
            setattr(self, f"w{i}", nn.Parameter(torch.empty(2, a, b).uniform_(-bound, bound)))
            setattr(self, f"b{i}", nn.Parameter(torch.empty(2, 1, b).uniform_(-bound, bound)))

    def forward(self, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # LeakyReLU in place: a product's backward does not need its output, and rewriting it while it is in cache
        # beats filling a fresh buffer
        h = F.leaky_relu_(torch.baddbmm(self.b1, c.expand(2, -1, -1), self.w1))
        h = F.leaky_relu_(torch.baddbmm(self.b2, h, self.w2))
        # The last layer as two plain products, which give s and t as separate tensors (and avoid MKL's slow batched
        # matrix-vector product where there is one output, on 2-D data).
        (h_s, h_t), (w_s, w_t), (b_s, b_t) = h.unbind(0), self.w3.unbind(0), self.b3.unbind(0)
        return torch.tanh(torch.addmm(b_s, h_s, w_s)), torch.addmm(b_t, h_t, w_t)


@register("realnvp")
class RealNVP(Method):
    family = "flow"
    capabilities = frozenset({"log_prob", "sample", "inverse"})
    unsupported = CONTINUOUS_ONLY
    hparam_spec = {"n_layers": HParam(int, ge=1), "width": HParam(int, ge=1), "logit_alpha": LOGIT_ALPHA}

    @classmethod
    def defaults(cls, dataset: str) -> dict[str, Any]:
        if dataset == "mnist":
            return {"n_layers": 6, "width": 256, "logit_alpha": 0.05, "steps": 20_000, "batch_size": 64, "lr": 1e-4,
                    "weight_decay": 0.0}
        return {"n_layers": 6, "width": 128, "steps": 20_000, "batch_size": 256, "lr": 1e-4, "weight_decay": 0.0}

    def __init__(self, dataset: Any, hparams: dict[str, Any]) -> None:
        super().__init__(dataset, hparams)
        self.image = len(self.data_shape) > 1
        d, w = math.prod(self.data_shape), hparams["width"]
        if self.image:  # checkerboard halves of the pixel grid
            rows, cols = torch.meshgrid(torch.arange(self.data_shape[-2]), torch.arange(self.data_shape[-1]),
                                        indexing="ij")
            first = ((rows + cols) % 2 == 0).flatten()
        else:
            first = torch.arange(d) < d // 2
        # Coordinates are permuted once so that the two halves are contiguous: y = x[:, perm] = [first, rest].
        # A permutation has |det| = 1, and the latent is standard normal in any coordinate order.
        perm = torch.cat([first.nonzero().flatten(), (~first).nonzero().flatten()])
        self.register_buffer("perm", perm)
        self.register_buffer("inv_perm", torch.argsort(perm))
        self.n_first = int(first.sum())
        sizes = [(d - self.n_first, self.n_first), (self.n_first, d - self.n_first)]  # (conditioning, transformed)
        self.couplings = nn.ModuleList(_STNets(sizes[i % 2][0], w, sizes[i % 2][1]) for i in range(hparams["n_layers"]))

    def inverse(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x → z = g⁻¹(x) (in permuted coordinate order) and log|det ∂z/∂x| per example."""
        y = x[:, self.perm]
        halves, scales = [y[:, : self.n_first], y[:, self.n_first:]], []
        for i in reversed(range(len(self.couplings))):  # odd couplings condition on the first half
            s, t = self.couplings[i](halves[1 - i % 2])
            halves[i % 2] = (halves[i % 2] - t) * torch.exp(-s)
            scales.append(s)
        return torch.cat(halves, 1), -torch.cat(scales, 1).sum(1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """z → x = g(z), the generative direction."""
        halves = [z[:, : self.n_first], z[:, self.n_first:]]
        for i, nets in enumerate(self.couplings):
            s, t = nets(halves[1 - i % 2])
            halves[i % 2] = halves[i % 2] * torch.exp(s) + t
        return torch.cat(halves, 1)[:, self.inv_perm]

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
        x = self.forward(torch.randn(n, len(self.perm), device=self.device))
        return from_logit(x, self.hparams["logit_alpha"]).view(n, *self.data_shape) if self.image else x

    @torch.no_grad()
    def inverse_error(self, x: torch.Tensor) -> torch.Tensor:
        """Per example ‖x − g(g⁻¹(x))‖₂ in the flow's space: the points, or the dequantized logit image."""
        if self.image:
            x = to_logit(dequantize(x), self.hparams["logit_alpha"])[0].flatten(1)
        return (x - self.forward(self.inverse(x)[0])).norm(dim=1)
