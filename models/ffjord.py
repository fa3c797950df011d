"""FFJORD: a continuous normalizing flow with a free-form vector field and a stochastic or exact trace
(Grathwohl, Chen, Bettencourt, Sutskever & Duvenaud, ICLR 2019).

Data x flows to the latent z = x(T) along ∂ₜx = f(x, t), an MLP whose every layer sees t (FFJORD's "concatsquash"
layers on 2-D, as its train_toy.py; "concat" layers on MNIST). The end time T is fixed (FFJORD can also learn it).
The instantaneous change of variables gives

    log p(x) = log N(x(T); 0, I) + ∫₀ᵀ tr(∂f/∂x(x(t), t)) dt,

solved jointly with x by torchdiffeq's dopri5 (adaptive Dormand–Prince; `atol`/`rtol` in training, the tighter
`eval_atol`/`eval_rtol` for `log_prob`, sampling and the inverse error). The trace is either exact (d autograd
passes, the FFJORD "brute_force" divergence, cheap in 2-D) or Hutchinson's estimator εᵀ(∂f/∂x)ε with one
Rademacher or Gaussian ε per example, drawn once per solve (unbiased for the trace, hence for log p).
Sampling runs ∂ₜx = f backwards from z ~ N(0, I) at t = T to t = 0. Training backpropagates through the solver's
operations (no adjoint: the models are small). `solver_info()["nfe"]` is the number of function evaluations of
the most recent solve.

MNIST (models/images.py convention): x ∈ {0..255}^784 is dequantized, y = (x + u)/256, and logit-transformed with
FFJORD's α = 1e-6; the flow models the 784-d logit vector with a small concat MLP (a CPU-sized stand-in for the
paper's multiscale conv net), Hutchinson's trace in training and evaluation (the exact trace needs 784 backward
passes per function evaluation), so the reported log p(y) is an unbiased estimate that includes the logit Jacobian.
Samples map back with `from_logit`; `inverse_error` is measured in the flow's (logit) space.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torchdiffeq import odeint

from models import register
from models.base import HParam, Losses, Method
from models.images import CONTINUOUS_ONLY, LOGIT_ALPHA, dequantize, from_logit, to_logit

ACTIVATIONS = {"tanh": torch.tanh, "softplus": nn.functional.softplus}
TOLERANCE = HParam(float, gt=0)  # the solver's atol and rtol
ESTIMATOR = HParam(str, choices=("exact", "hutchinson"))  # of the divergence tr(∂f/∂x)


class ConcatLinear(nn.Module):
    """FFJORD's "concat" layer: W[h, t] + b."""

    def __init__(self, a: int, b: int) -> None:
        super().__init__()
        self.linear = nn.Linear(a + 1, b)

    def forward(self, t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return self.linear(torch.cat([h, t.expand(len(h), 1)], 1))


class ConcatSquashLinear(nn.Module):
    """FFJORD's "concatsquash" layer: (Wh + b)·sigmoid(g t + c) + e t, element-wise gates and biases in t."""

    def __init__(self, a: int, b: int) -> None:
        super().__init__()
        self.linear = nn.Linear(a, b)
        self.gate = nn.Linear(1, b)
        self.bias_t = nn.Linear(1, b, bias=False)

    def forward(self, t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        t = t.reshape(1, 1)
        return self.linear(h) * torch.sigmoid(self.gate(t)) + self.bias_t(t)


LAYERS = {"concat": ConcatLinear, "concatsquash": ConcatSquashLinear}


class TimeMLP(nn.Module):
    """f(x, t): time-conditioned linear layers (`layer_type`) with an activation between them."""

    def __init__(self, d: int, hidden: list[int], activation: str, layer_type: str) -> None:
        super().__init__()
        if layer_type not in LAYERS or activation not in ACTIVATIONS:
            raise ValueError(f"layer_type must be one of {sorted(LAYERS)} and activation one of "
                             f"{sorted(ACTIVATIONS)}, got {layer_type!r}, {activation!r}")
        sizes = [d, *hidden, d]
        self.layers = nn.ModuleList(LAYERS[layer_type](a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True))
        self.act = ACTIVATIONS[activation]

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        t = t.to(x)
        h = x
        for i, layer in enumerate(self.layers):
            h = layer(t, h)
            if i < len(self.layers) - 1:
                h = self.act(h)
        return h


def divergence(f: torch.Tensor, x: torch.Tensor, estimator: str, noise: torch.Tensor | None,
               create_graph: bool) -> torch.Tensor:
    """tr(∂f/∂x) per example: exact (one autograd pass per dimension) or Hutchinson εᵀ(∂f/∂x)ε."""
    if estimator == "exact":
        return sum(torch.autograd.grad(f[:, i].sum(), x, create_graph=create_graph, retain_graph=True)[0][:, i]
                   for i in range(x.shape[1]))
    if estimator == "hutchinson":
        vjp = torch.autograd.grad((f * noise).sum(), x, create_graph=create_graph, retain_graph=True)[0]
        return (vjp * noise).sum(1)
    raise ValueError(f"trace_estimator must be 'exact' or 'hutchinson', got {estimator!r}")


class CNFDynamics(nn.Module):
    """∂ₜ(x, ℓ) = (f(x, t), tr(∂f/∂x)); counts its evaluations. Outside autograd (evaluation) it differentiates
    internally and returns detached tensors, so no graph builds up across solver steps."""

    def __init__(self, net: TimeMLP) -> None:
        super().__init__()
        self.net = net
        self.nfe = 0
        self.estimator, self.noise_kind, self.noise = "exact", "rademacher", None

    def start(self, x: torch.Tensor, estimator: str, noise_kind: str) -> None:
        self.nfe, self.estimator, self.noise_kind = 0, estimator, noise_kind
        self.noise = sample_noise(x, noise_kind) if estimator == "hutchinson" else None

    def forward(self, t: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        self.nfe += 1
        x = state[0]
        outer_grad = torch.is_grad_enabled()
        with torch.enable_grad():
            xg = x if (outer_grad and x.requires_grad) else x.detach().requires_grad_(True)
            f = self.net(t, xg)
            div = divergence(f, xg, self.estimator, self.noise, create_graph=outer_grad)
        if not outer_grad:
            f, div = f.detach(), div.detach()
        return f, div


class VelocityOnly(nn.Module):
    def __init__(self, dynamics: CNFDynamics) -> None:
        super().__init__()
        self.dynamics = dynamics

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        self.dynamics.nfe += 1
        return self.dynamics.net(t, x)


def sample_noise(x: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "rademacher":
        return torch.randint(0, 2, x.shape, device=x.device).to(x.dtype) * 2 - 1
    if kind == "gaussian":
        return torch.randn_like(x)
    raise ValueError(f"hutchinson_noise must be 'rademacher' or 'gaussian', got {kind!r}")


@register("ffjord")
class FFJORD(Method):
    family = "cnf"
    capabilities = frozenset({"log_prob", "sample", "inverse"})
    unsupported = CONTINUOUS_ONLY
    compiled = ()  # the adaptive solver's step count depends on the data: no fixed graph to compile
    hparam_spec = {
        "hidden": HParam(list, items=int, ge=1), "activation": HParam(str, choices=tuple(ACTIVATIONS)),
        "layer_type": HParam(str, choices=tuple(LAYERS)), "time_length": HParam(float, gt=0),
        "solver": HParam(str, choices=("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun", "euler", "midpoint",
                                       "heun2", "heun3", "rk4", "explicit_adams", "implicit_adams", "fixed_adams")),
        "atol": TOLERANCE, "rtol": TOLERANCE, "eval_atol": TOLERANCE, "eval_rtol": TOLERANCE,
        "trace_estimator": ESTIMATOR, "eval_trace_estimator": ESTIMATOR,
        "hutchinson_noise": HParam(str, choices=("rademacher", "gaussian")), "logit_alpha": LOGIT_ALPHA}

    @classmethod
    def defaults(cls, dataset: str) -> dict[str, Any]:
        if dataset == "mnist":
            # Not the paper's multiscale conv CNF (multi-GPU): a 2-layer concat MLP of width 256, softplus as in
            # FFJORD's train_cnf.py, Hutchinson (Rademacher) trace, logit α = 1e-6, Adam lr 1e-3, atol = rtol =
            # 1e-5 in training: what a CPU can train at all (docs/performance.md has its cost per step).
            return {"hidden": [256, 256], "activation": "softplus", "layer_type": "concat", "time_length": 0.5,
                    "solver": "dopri5",
                    "atol": 1e-5, "rtol": 1e-5, "eval_atol": 1e-6, "eval_rtol": 1e-6,
                    "trace_estimator": "hutchinson", "eval_trace_estimator": "hutchinson",
                    "hutchinson_noise": "rademacher", "logit_alpha": 1e-6, "steps": 20_000, "batch_size": 64,
                    "lr": 1e-3, "weight_decay": 0.0}
        # FFJORD's train_toy.py: dims 64-64-64, tanh, concatsquash layers, T = 0.5 (fixed here; FFJORD also
        # learns T), dopri5 atol = rtol = 1e-5, brute-force divergence, batch 100, 10k iterations, Adam lr 1e-3,
        # weight decay 1e-5.
        return {"hidden": [64, 64, 64], "activation": "tanh", "layer_type": "concatsquash", "time_length": 0.5,
                "solver": "dopri5",
                "atol": 1e-5, "rtol": 1e-5, "eval_atol": 1e-6, "eval_rtol": 1e-6, "trace_estimator": "exact",
                "eval_trace_estimator": "exact", "hutchinson_noise": "rademacher", "steps": 10_000,
                "batch_size": 100, "lr": 1e-3, "weight_decay": 1e-5}

    def __init__(self, dataset: Any, hparams: dict[str, Any]) -> None:
        super().__init__(dataset, hparams)
        self.image = len(self.data_shape) > 1
        self.d = math.prod(self.data_shape)
        self.dynamics = CNFDynamics(TimeMLP(self.d, list(hparams["hidden"]), hparams["activation"],
                                            hparams["layer_type"]))
        self._last: dict[str, Any] = {}

    @property
    def _dtype(self) -> torch.dtype:
        return self.dynamics.net.layers[0].linear.weight.dtype

    def _times(self, x: torch.Tensor, reverse: bool = False) -> torch.Tensor:
        t = torch.tensor([0.0, self.hparams["time_length"]], dtype=x.dtype, device=x.device)
        return t.flip(0) if reverse else t

    def _record(self, kind: str, atol: float, rtol: float, estimator: str | None) -> None:
        self._last = {"solve": kind, "nfe": self.dynamics.nfe, "atol": atol, "rtol": rtol}
        if estimator is not None:
            self._last["trace"] = estimator

    def integrate(self, x: torch.Tensor, atol: float, rtol: float, estimator: str) -> tuple[torch.Tensor, torch.Tensor]:
        """x(0) = x → (z = x(T), ∫₀ᵀ tr(∂f/∂x) dt), solved to the given tolerances."""
        hp = self.hparams
        self.dynamics.start(x, estimator, hp["hutchinson_noise"])
        z, ell = odeint(self.dynamics, (x, x.new_zeros(len(x))), self._times(x), atol=atol, rtol=rtol,
                        method=hp["solver"])
        self._record("density", atol, rtol, estimator)
        return z[-1], ell[-1]

    def _flow(self, x: torch.Tensor, reverse: bool) -> torch.Tensor:
        hp = self.hparams
        self.dynamics.nfe = 0
        out = odeint(VelocityOnly(self.dynamics), x, self._times(x, reverse), atol=hp["eval_atol"],
                     rtol=hp["eval_rtol"], method=hp["solver"])[-1]
        self._record("inverse" if reverse else "forward", hp["eval_atol"], hp["eval_rtol"], None)
        return out

    def _log_prob(self, x: torch.Tensor, atol: float, rtol: float, estimator: str) -> torch.Tensor:
        z, ell = self.integrate(x, atol, rtol, estimator)
        return -0.5 * z.pow(2).sum(1) - 0.5 * self.d * math.log(2 * math.pi) + ell

    def _to_flow_space(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | float]:
        """Points: unchanged. Images: the dequantized, logit-transformed, flattened image and its log-Jacobian."""
        if not self.image:
            return x.to(self._dtype), 0.0
        y, log_det = to_logit(dequantize(x).to(self._dtype), self.hparams["logit_alpha"])
        return y.flatten(1), log_det

    def _data_log_prob(self, x: torch.Tensor, atol: float, rtol: float, estimator: str) -> torch.Tensor:
        y, pre_log_det = self._to_flow_space(x)
        return self._log_prob(y, atol, rtol, estimator) + pre_log_det

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Points: log p(x). Images: log p(y) of the dequantized image y on [0,1] (models/images.py). Evaluation
        tolerances and trace estimator."""
        hp = self.hparams
        return self._data_log_prob(x, hp["eval_atol"], hp["eval_rtol"], hp["eval_trace_estimator"])

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        hp = self.hparams
        return -self._data_log_prob(x, hp["atol"], hp["rtol"], hp["trace_estimator"]).mean()

    def train_step(self, x: torch.Tensor, optimizers: dict[str, torch.optim.Optimizer], step: int) -> Losses:
        out = super().train_step(x, optimizers, step)
        return {**out, "nfe": float(self._last["nfe"])}

    @torch.no_grad()
    def validation_loss(self, x: torch.Tensor) -> float:
        """Mean NLL at the training tolerances (the cheaper solve; the evaluator reports the tight one)."""
        hp = self.hparams
        return -self._data_log_prob(x, hp["atol"], hp["rtol"], hp["eval_trace_estimator"]).mean().item()

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        x = self._flow(torch.randn(n, self.d, device=self.device, dtype=self._dtype), reverse=True)
        return from_logit(x, self.hparams["logit_alpha"]).float().view(n, *self.data_shape) if self.image else x

    def inverse(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The density solve at the evaluation tolerances and trace estimator."""
        hp = self.hparams
        return self.integrate(x.to(self._dtype), hp["eval_atol"], hp["eval_rtol"], hp["eval_trace_estimator"])

    @torch.no_grad()
    def inverse_error(self, x: torch.Tensor) -> torch.Tensor:
        """Per example ‖x − g(g⁻¹(x))‖₂ (forward then backward solve at the evaluation tolerances), in the flow's
        space: the points themselves, or the dequantized logit image."""
        x = self._to_flow_space(x)[0]
        return (x - self._flow(self._flow(x, reverse=False), reverse=True)).norm(dim=1)

    def solver_info(self) -> dict[str, Any]:
        hp = self.hparams
        est = hp["eval_trace_estimator"]
        return {"solver": hp["solver"], "time_length": hp["time_length"], "atol": hp["atol"], "rtol": hp["rtol"],
                "eval_atol": hp["eval_atol"], "eval_rtol": hp["eval_rtol"], "trace": est,
                "estimator": "exact" if est == "exact" else f"hutchinson ({hp['hutchinson_noise']}, unbiased)",
                "nfe": self._last.get("nfe"), "nfe_solve": self._last.get("solve")}
