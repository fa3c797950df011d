"""The interface every method implements, and the parts most methods share."""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils._pytree import tree_map_only

# Each capability (it decides which metrics and figures apply) and what a method declaring it must implement
# (`models.register` checks).
CAPABILITIES = {"sample": ("sample",), "log_prob": ("log_prob",), "elbo": ("elbo",), "iwae": ("iwae",),
                "inverse": ("inverse", "inverse_error")}
TRAIN_KEYS = ("steps", "batch_size", "lr", "weight_decay")  # hyper-parameters the training loop reads
# What a training step returns to log: 0-dim tensors left on the model's device (the loop fetches a whole log
# interval's in one transfer, where an `.item()` per step would make the host wait for the device at every step)
# or numbers the host already has.
Losses = dict[str, torch.Tensor | float]


_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "a boolean", list: "a list"}


@dataclass(frozen=True)
class HParam:
    """A hyper-parameter's type and allowed values, checked before any compute (`models.resolve_hparams`).

    `type` is int, float (an int is accepted too), str, bool or list; a list's items have the type `items`, and
    `length` fixes how many there are. Bounds (`ge`, `gt`, `le`, `lt`) apply to the value or to each list item;
    `choices` lists the allowed values.
    """

    type: type
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: tuple[Any, ...] | None = None
    items: type | None = None
    length: int | None = None

    def describe(self) -> str:
        """The allowed values in words, e.g. "an integer >= 1" or "one of 'mean', 'full'"."""
        if self.choices is not None:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        bounds = " and ".join(f"{op} {b}" for op, b in ((">=", self.ge), (">", self.gt), ("<=", self.le),
                                                          ("<", self.lt)) if b is not None)
        if self.type is list:
            count = f"{self.length} " if self.length is not None else ""
            item = _TYPE_NAMES[self.items].split(" ", 1)[1] + "s" if self.items else "items"
            return f"a list of {count}{item}" + (f", each {bounds}" if bounds else "")
        return _TYPE_NAMES[self.type] + (f" {bounds}" if bounds else "")

    def allows(self, value: Any) -> bool:
        if self.type is list:
            return (isinstance(value, list | tuple) and len(value) > 0
                    and (self.length is None or len(value) == self.length)
                    and all(self._scalar_allows(self.items, v) for v in value))
        return self._scalar_allows(self.type, value) and (self.choices is None or value in self.choices)

    def _scalar_allows(self, kind: type | None, value: Any) -> bool:
        if kind is not None and not _is_a(kind, value):
            return False
        return ((self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
                and (self.le is None or value <= self.le) and (self.lt is None or value < self.lt))


def _is_a(kind: type, value: Any) -> bool:
    """isinstance, except that a bool is no number and an int is a float (YAML and JSON write 1 for 1.0)."""
    if kind is bool:
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    return isinstance(value, (int, float) if kind is float else kind)


class Method(nn.Module):
    """A generative model plus its training objective.

    Subclasses set `family` and `capabilities`, implement `defaults` (every hyper-parameter, training ones in
    TRAIN_KEYS included, for a dataset name) with a `hparam_spec` for the keys they introduce, `sample`, and either
    `loss` (one optimizer minimizing it) or their own `train_step` (e.g. the alternating updates of a GAN).
    Capabilities decide which metrics apply: "log_prob" (exact likelihood), "elbo"/"iwae" (latent-variable bounds),
    "inverse" (flows: latent panel, inverse error), "sample" (everyone); `models.register` checks the declarations.
    """

    name: ClassVar[str]
    family: ClassVar[str]
    capabilities: ClassVar[frozenset[str]]
    unsupported: ClassVar[dict[str, str]] = {}  # dataset name -> why this method does not run on it
    requires: ClassVar[tuple[str, ...]] = ()  # methods whose trained run (same dataset and seed) this one starts from
    compiled: ClassVar[tuple[str, ...]] = ("loss",)  # what `compile_training` compiles; () where nothing can be
    # The type and range of each hyper-parameter this class introduces (its subclasses inherit them; see
    # `full_hparam_spec`); here the training loop's.
    hparam_spec: ClassVar[dict[str, HParam]] = {
        "steps": HParam(int, ge=1), "batch_size": HParam(int, ge=1), "lr": HParam(float, gt=0),
        "weight_decay": HParam(float, ge=0)}

    def __init__(self, dataset: Any, hparams: dict[str, Any]) -> None:
        super().__init__()
        self.hparams = dict(hparams)
        self.data_shape = tuple(dataset.train.shape[1:])

    @classmethod
    def defaults(cls, dataset: str) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def full_hparam_spec(cls) -> dict[str, HParam]:
        """The spec of every hyper-parameter: the `hparam_spec` of each class it inherits from, its own last."""
        return {k: v for c in reversed(cls.__mro__) for k, v in vars(c).get("hparam_spec", {}).items()}

    @classmethod
    def check_start(cls, hparams: dict[str, Any], required: dict[str, dict[str, Any]]) -> None:
        """A UserError unless a run with `hparams` can start from trained runs of the `requires` methods with the
        hyper-parameters `required` (name -> hparams); the config checks it before any compute, `init_from` again."""

    def init_from(self, trained: dict[str, Method]) -> None:
        """Start from the trained models named in `requires` (called once, before the first step)."""
        if self.requires:
            raise NotImplementedError(f"{self.name} requires {self.requires} but does not implement init_from")

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def compile_training(self) -> None:
        """Replace the methods named in `compiled` (what the training step differentiates; each call's backward
        runs before the next call) by their `torch.compile`d versions (inductor; one graph per batch shape).
        Opt-in (`training.compile`): the same model and objective, with fused kernels; numbers agree with eager
        mode to float rounding, and are reproducible on CPU. It pays only where a step is many small operations
        (reports/perf.md). On a GPU the compiled code also runs as CUDA graphs (mode "reduce-overhead"), since
        launching a small model's hundreds of kernels one by one takes longer than running them (`_graph_step`)."""
        cuda = self.device.type == "cuda"
        for name in self.compiled:
            fn = torch.compile(getattr(self, name), dynamic=False, mode="reduce-overhead" if cuda else None)
            setattr(self, name, _graph_step(fn) if cuda else fn)

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        hp = self.hparams
        return {"opt": FusedAdam(self.parameters(), lr=hp["lr"], weight_decay=hp["weight_decay"])}

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def loss_terms(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The training loss under "loss", beside any of its parts worth logging; by default `loss` alone."""
        return {"loss": self.loss(x)}

    def train_step(self, x: torch.Tensor, optimizers: dict[str, torch.optim.Optimizer], step: int) -> Losses:
        """One update; returns the losses to log. The default minimizes `loss_terms`' "loss" with the single
        optimizer and logs all its terms."""
        (opt,) = optimizers.values()
        opt.zero_grad(set_to_none=True)
        terms = self.loss_terms(x)
        terms["loss"].backward()
        opt.step()
        return terms

    @torch.no_grad()
    def validation_loss(self, x: torch.Tensor) -> float | None:
        """The objective on held-out data (for model selection and the training log); None if it has none."""
        return self.loss(x).item() if "log_prob" in self.capabilities else None

    def sample(self, n: int) -> torch.Tensor:
        raise NotImplementedError

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Per-example log-density in nats (capability "log_prob"; images: see models/images.py)."""
        raise NotImplementedError(f"{self.name} has no tractable likelihood")

    def elbo(self, x: torch.Tensor) -> torch.Tensor:
        """Per-example evidence lower bound on log p(x), in nats (capability "elbo")."""
        raise NotImplementedError(f"{self.name} has no ELBO")

    def iwae(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """Per-example importance-weighted bound with `k` samples, in nats (capability "iwae")."""
        raise NotImplementedError(f"{self.name} has no IWAE bound")

    def inverse(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x → (z = g⁻¹(x), log|det ∂z/∂x| per example), x in the flow's space: the points, or the flattened logit
        image (capability "inverse"; the figures draw z)."""
        raise NotImplementedError(f"{self.name} has no inverse")

    def inverse_error(self, x: torch.Tensor) -> torch.Tensor:
        """Per example ‖x − g(g⁻¹(x))‖₂ in the flow's space, for data x (capability "inverse"; evaluation records
        its mean)."""
        raise NotImplementedError(f"{self.name} has no inverse")

    def solver_info(self) -> dict[str, Any]:
        """An ODE solver's settings and function evaluations, recorded with the likelihood metrics; {} without one."""
        return {}

    @property
    def latent_dim(self) -> int:
        """The latent dimension q: the `latent_dim` hyper-parameter where there is one, else (flows) the data's."""
        return self.hparams.get("latent_dim", math.prod(self.data_shape))


def _graph_step(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn`, compiled to CUDA graphs, with each call a new graph step: the replay reuses the memory of the previous
    call's outputs and saved activations, which that call's backward has consumed by then. The outputs are returned
    as copies, since the training loop keeps a log interval's losses until it fetches them."""
    def call(*args: Any) -> Any:
        torch.compiler.cudagraph_mark_step_begin()
        out = fn(*args)
        return tree_map_only(torch.Tensor, torch.clone, out)

    return call


class FusedAdam(torch.optim.Adam):
    """Adam with PyTorch's fused kernel (the update of all parameters in one operation instead of about ten small
    operations per parameter tensor, a large share of a small model's step on CPU), with less Python around it.

    At every call torch's `step` regroups the state of the parameters that have a gradient by device and dtype and
    increments each one's step counter with an operation of its own: for RealNVP's 36 tensors on one CPU thread that
    took as long as the update itself (250 against 130 µs per step here). This class builds the argument lists once
    and makes every step counter a view into one tensor, incremented by one operation, for as long as the same
    parameters have gradients (OT-Flow's constant term never has one). `torch._fused_adam_` then gets exactly the
    arguments torch passes it, so parameters, state and `state_dict` equal `torch.optim.Adam(fused=True)`'s bit for
    bit (tests/test_training.py). Steps this path does not cover (the first, which creates the state; one in which
    other parameters have gradients; a closure; options the models do not use, such as amsgrad) run torch's `step`.
    """

    def __init__(self, params: Any, **kwargs: Any) -> None:
        super().__init__(params, fused=True, **kwargs)
        # The parameters without a gradient, the tensor of all step counters, and per parameter group: (group, its
        # parameters with a gradient, their exp_avgs, exp_avg_sqs and step-counter views)
        self._plan: tuple[list[torch.Tensor], torch.Tensor, list[tuple[Any, ...]]] | None = None

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        self._plan = None

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._plan = None  # the state tensors were replaced

    def _build_plan(self) -> None:
        """The plan for the parameters that have a gradient now, if they all have state and the options allow."""
        groups = self.param_groups
        if any(group["amsgrad"] or group["differentiable"] or group["decoupled_weight_decay"]
               or torch.is_tensor(group["lr"]) for group in groups):
            return  # options this path does not cover
        live = [[p for p in group["params"] if p.grad is not None] for group in groups]
        params = [p for group_live in live for p in group_live]
        if len({(p.device, p.dtype) for p in params}) != 1 or not all(self.state.get(p) for p in params):
            return
        counters = torch.stack([self.state[p]["step"] for p in params])
        for i, p in enumerate(params):
            self.state[p]["step"] = counters[i]
        idle = [p for group in groups for p in group["params"] if p.grad is None]
        states = [[self.state[p] for p in group_live] for group_live in live]
        self._plan = idle, counters, [
            (group, group_live, [s["exp_avg"] for s in st], [s["exp_avg_sq"] for s in st], [s["step"] for s in st])
            for group, group_live, st in zip(groups, live, states, strict=True)]

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        if closure is None and self._plan is None:
            self._build_plan()
        if closure is not None or self._plan is None:
            return super().step(closure)
        idle, counters, plan = self._plan
        grads = [[p.grad for p in params] for _, params, *_ in plan]
        if any(g is None for group_grads in grads for g in group_grads) or any(p.grad is not None for p in idle):
            self._plan = None  # other parameters have gradients this time: a new plan next step
            return super().step(closure)
        counters.add_(1)
        for (group, params, exp_avgs, exp_avg_sqs, steps), group_grads in zip(plan, grads, strict=True):
            beta1, beta2 = group["betas"]
            torch._fused_adam_(params, group_grads, exp_avgs, exp_avg_sqs, [], steps, amsgrad=False, lr=group["lr"],
                               beta1=beta1, beta2=beta2, weight_decay=group["weight_decay"], eps=group["eps"],
                               maximize=group["maximize"], grad_scale=None, found_inf=None)
        return None


def linear(n_in: int, n_out: int, bias: bool = True) -> nn.Linear:
    """nn.Linear(n_in, n_out), its weight stored column-major when it has fewer inputs than outputs: the same values,
    shape and state_dict (loading copies into it). Autograd computes a weight's gradient in the weight's layout, and
    MKL writes a product with two to eight output columns slowly. With the column-major weight the layer's two
    backward products (the input's gradient, n_in columns wide, and the weight's) are computed wide instead: 44 and
    37 µs against 230 and 224 for the conv decoder's 2 → 3,136 at batch 64, 8 and 8 against 37 and 41 µs for 2 → 128
    at batch 256 (one CPU thread); the forward is as fast either way. The weight's gradient is the same bit for bit,
    the input's changes in the last bits (another summation order)."""
    layer = nn.Linear(n_in, n_out, bias=bias)
    if n_in < n_out:
        layer.weight = nn.Parameter(layer.weight.detach().t().contiguous().t())
    return layer


def mlp(sizes: list[int], activation: type[nn.Module] = nn.LeakyReLU, out: nn.Module | None = None) -> nn.Sequential:
    """Linear layers (`linear`) of the given sizes with `activation` between them and an optional output module."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(linear(a, b))
        if i < len(sizes) - 2:
            layers.append(activation())
    if out is not None:
        layers.append(out)
    return nn.Sequential(*layers)
