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
    Networks and optimizers are plain PyTorch (`nn.Linear`, `nn.Conv2d`, `torch.optim`); the harness applies any
    speed setting itself.
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
        """The optimizers by name; by default one Adam over all parameters, fused: one kernel updates them all, and the
        step never reads a value back from the device."""
        hp = self.hparams
        return {"opt": torch.optim.Adam(self.parameters(), lr=hp["lr"], weight_decay=hp["weight_decay"], fused=True)}

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
