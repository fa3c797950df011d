"""The models registry: one file per method, registered by decorator, discovered automatically.

Adding a method touches one new file in this folder:

    from models import register
    from models.base import HParam, Method

    @register("mymethod")
    class MyMethod(Method):
        family = "flow"
        capabilities = frozenset({"log_prob", "sample"})
        hparam_spec = {"width": HParam(int, ge=1)}
        ...

`register` checks the declarations (family, capabilities and the methods they require, hyper-parameter specs,
dataset names) when the file is imported.
"""
from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from typing import Any

from core.errors import UserError
from core.names import DATASETS, FAMILIES
from models.base import CAPABILITIES, HParam, Method

_REGISTRY: dict[str, type] = {}
_discovered = False


def register(name: str) -> Callable[[type], type]:
    """Class decorator: make a `models.base.Method` subclass available under `name`."""

    def deco(cls: type) -> type:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"method name {name!r} registered twice ({_REGISTRY[name].__module__}, {cls.__module__})")
        _check_declarations(name, cls)
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def _check_declarations(name: str, cls: type) -> None:
    """A UserError naming the first declaration of `cls` that breaks the Method contract (models/base.py)."""
    where = f"method {name!r} ({cls.__module__}.{cls.__qualname__})"
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise UserError(f"{where} must subclass models.base.Method")
    family = getattr(cls, "family", None)
    if family not in FAMILIES:
        raise UserError(f"{where} declares family {family!r}; known families: {', '.join(FAMILIES)}")
    caps = getattr(cls, "capabilities", None)
    if not isinstance(caps, frozenset) or not caps <= set(CAPABILITIES) or "sample" not in caps:
        raise UserError(f"{where} declares capabilities {caps!r}; need a frozenset with \"sample\" and any of "
                        f"{', '.join(CAPABILITIES)}")
    missing = [f for cap in sorted(caps) for f in CAPABILITIES[cap] if getattr(cls, f) is getattr(Method, f)]
    if cls.train_step is Method.train_step and cls.loss is Method.loss:
        missing.append("loss (or train_step)")
    if missing:
        raise UserError(f"{where} does not implement {', '.join(missing)}, which its capabilities "
                        f"{', '.join(sorted(caps))} require")
    bad = [k for k, v in cls.full_hparam_spec().items() if not isinstance(v, HParam)]
    if bad:
        raise UserError(f"{where}: hparam_spec entries must be models.base.HParam, not so for {', '.join(bad)}")
    unknown = sorted(set(cls.unsupported) - set(DATASETS))
    if unknown:
        raise UserError(f"{where}: `unsupported` names unknown dataset(s) {', '.join(unknown)}; "
                        f"known: {', '.join(DATASETS)}")


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
    """The method's code defaults for `dataset`, updated by `overrides`; an unknown key, or a value outside its
    `HParam` spec, is a UserError."""
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
    spec = cls.full_hparam_spec()
    for key, value in hp.items():
        if key not in spec:
            raise UserError(f"method {name!r} declares no HParam for its hyper-parameter {key}; add it to the "
                            f"class's hparam_spec ({cls.__module__})")
        if not spec[key].allows(value):
            hint = ("; YAML reads a number like 1e-3 as text, write 1.0e-3" if isinstance(value, str)
                    and spec[key].type in (int, float) and _is_number(value) else "")
            raise UserError(f"hyper-parameter {key} of {name} must be {spec[key].describe()}, got {value!r}{hint}")
    return hp


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def create(name: str, dataset: Any, **overrides: Any) -> Method:
    """Build method `name` for `dataset` (a dataset object: its `name` and `train` split) from its defaults updated
    by `overrides`."""
    return get(name)(dataset, resolve_hparams(name, dataset.name, overrides))
