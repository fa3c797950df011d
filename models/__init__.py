"""The models registry: one file per method, registered by decorator, discovered automatically.

Adding a method touches one new file in this folder:

    from models import register
    from models.base import Method

    @register("mymethod")
    class MyMethod(Method):
        family = "flow"
        capabilities = frozenset({"log_prob", "sample"})
        ...
"""
from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from typing import Any

from bench.errors import UserError

_REGISTRY: dict[str, type] = {}
_discovered = False


def register(name: str) -> Callable[[type], type]:
    """Class decorator: make a `models.base.Method` subclass available under `name`."""

    def deco(cls: type) -> type:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"method name {name!r} registered twice ({_REGISTRY[name].__module__}, {cls.__module__})")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def _discover() -> None:
    """Import every module of this package once, so their @register decorators run."""
    global _discovered
    if not _discovered:
        for mod in pkgutil.iter_modules(__path__):
            importlib.import_module(f"{__name__}.{mod.name}")
        _discovered = True


def available() -> list[str]:
    """Names of all registered methods, sorted."""
    _discover()
    return sorted(_REGISTRY)


def get(name: str) -> type:
    """The Method class registered as `name`; a UserError listing the valid names otherwise."""
    _discover()
    if name not in _REGISTRY:
        raise UserError(f"unknown method {name!r}; valid methods: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def check_compilable(name: str) -> None:
    """A UserError unless method `name` can train compiled (`training.compile`)."""
    if not get(name).compiled:
        compilable = ", ".join(m for m in sorted(_REGISTRY) if _REGISTRY[m].compiled)
        raise UserError(f"method {name!r} cannot train compiled (nothing in its step to compile; see its `compiled`); "
                        f"methods that can: {compilable}")


def resolve_hparams(name: str, dataset: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The method's code defaults for `dataset`, updated by `overrides`; unknown keys, and a `steps` or
    `batch_size` that is not a positive integer, are a UserError."""
    cls = get(name)
    reason = cls.unsupported.get(dataset)
    if reason:
        raise UserError(f"method {name!r} does not run on dataset {dataset!r}: {reason}")
    hp = cls.defaults(dataset)
    bad = sorted(set(overrides or {}) - set(hp))
    if bad:
        raise UserError(f"unknown hyper-parameter(s) {', '.join(bad)} for method {name!r}; "
                        f"valid: {', '.join(sorted(hp))}")
    hp = {**hp, **(overrides or {})}
    for key in ("steps", "batch_size"):  # what the training loop counts with
        if not isinstance(hp[key], int) or hp[key] < 1:
            raise UserError(f"hyper-parameter {key} of {name} must be a positive integer, got {hp[key]!r}")
    return hp


def create(name: str, dataset: Any, **overrides: Any) -> Any:
    """Build method `name` for `dataset` (a `bench.datasets.Dataset` or a dataset name) from its defaults."""
    from bench import datasets

    ds = datasets.load(dataset) if isinstance(dataset, str) else dataset
    return get(name)(ds, resolve_hparams(name, ds.name, overrides))
