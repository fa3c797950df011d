"""The interface every method implements, and the parts most methods share."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils._pytree import tree_map_only

CAPABILITIES = frozenset({"log_prob", "sample", "elbo", "iwae"})
TRAIN_KEYS = ("steps", "batch_size", "lr", "weight_decay")  # hyper-parameters the training loop reads
# What a training step returns to log: 0-dim tensors left on the model's device (the loop fetches a whole log
# interval's in one transfer, where an `.item()` per step would make the host wait for the device at every step)
# or numbers the host already has.
Losses = dict[str, torch.Tensor | float]


class Method(nn.Module):
    """A generative model plus its training objective.

    Subclasses set `family` and `capabilities`, implement `defaults` (every hyper-parameter, training ones in
    TRAIN_KEYS included, for a dataset name) and `sample`, and either `loss` (one optimizer minimizing it) or
    their own `train_step` (e.g. the alternating updates of a GAN). Capabilities decide which metrics apply:
    "log_prob" (exact likelihood), "elbo"/"iwae" (latent-variable bounds), "sample" (everyone).
    Networks and optimizers are plain PyTorch (`nn.Linear`, `nn.Conv2d`, `torch.optim`); the harness applies any
    speed setting itself.
    """

    name: ClassVar[str]
    family: ClassVar[str]
    capabilities: ClassVar[frozenset[str]]
    unsupported: ClassVar[dict[str, str]] = {}  # dataset name -> why this method does not run on it
    requires: ClassVar[tuple[str, ...]] = ()  # methods whose trained run (same dataset and seed) this one starts from
    compiled: ClassVar[tuple[str, ...]] = ("loss",)  # what `compile_training` compiles; () where nothing can be

    def __init__(self, dataset: Any, hparams: dict[str, Any]) -> None:
        super().__init__()
        unknown = set(self.capabilities) - CAPABILITIES
        if unknown:
            raise ValueError(f"{type(self).__name__} declares unknown capabilities {unknown}")
        self.hparams = dict(hparams)
        self.data_shape = tuple(dataset.train.shape[1:])

    @classmethod
    def defaults(cls, dataset: str) -> dict[str, Any]:
        raise NotImplementedError

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
        raise NotImplementedError(f"{self.name} has no tractable likelihood")


def _graph_step(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn`, compiled to CUDA graphs, with each call a new graph step: the replay reuses the memory of the previous
    call's outputs and saved activations, which that call's backward has consumed by then. The outputs are returned
    as copies, since the training loop keeps a log interval's losses until it fetches them."""
    def call(*args: Any) -> Any:
        torch.compiler.cudagraph_mark_step_begin()
        out = fn(*args)
        return tree_map_only(torch.Tensor, torch.clone, out)

    return call
