"""Pipeline config: load YAML, validate against config/schema.yaml, expand the run grid.

Every problem is a one-line UserError naming the bad key, its value and the fix, raised before any job runs.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

import models
from bench import catalog, datasets
from core.errors import UserError

SCHEMA = Path(__file__).resolve().parent.parent / "config" / "schema.yaml"


@lru_cache(maxsize=1)
def _schema() -> dict[str, Any]:
    return yaml.safe_load(SCHEMA.read_text())


def _with_defaults(cfg: dict[str, Any]) -> dict[str, Any]:
    props = _schema()["properties"]
    return {**{k: v["default"] for k, v in props.items() if "default" in v}, **cfg}


def load(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise UserError(f"config file {path} not found")
    try:
        cfg = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise UserError(f"config file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    return validate(cfg or {}, source=str(path))


def _check_schema(schema: dict[str, Any], value: Any, source: str, at: tuple[str, ...] = ()) -> None:
    """A UserError naming the first violation of `schema` (a part of config/schema.yaml found at `at`)."""
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(value))
    if error is not None:
        where = ".".join(str(p) for p in (*at, *error.absolute_path)) or "(top level)"
        raise UserError(f"{source}: invalid value at {where}: {error.message} (see config/schema.yaml)")


def validate(cfg: dict[str, Any], source: str = "config") -> dict[str, Any]:
    """Check a config dict against the schema and the registries; returns it with defaults filled in."""
    _check_schema(_schema(), cfg, source)
    cfg = _with_defaults(cfg)
    try:
        _check_names(cfg)
    except UserError as exc:
        raise UserError(f"{source}: {exc}") from None
    return cfg


def validate_evaluation(settings: dict[str, Any], source: str = "--settings") -> None:
    """Check evaluation settings given outside a config (the CLI's --settings) against the config's `evaluation`."""
    _check_schema(_schema()["properties"]["evaluation"], settings, source, ("evaluation",))


def _check_names(cfg: dict[str, Any]) -> None:
    for name in cfg["datasets"]:
        datasets.check_name(name)
    for name in cfg["methods"]:
        models.get(name)
    try:
        catalog.check_selection(cfg["evaluation"].get("metrics"))
    except UserError as exc:
        raise UserError(f"evaluation.metrics: {exc}") from None
    for method in cfg["training"].get("compile", []):
        if method not in cfg["methods"]:
            raise UserError(f"training.compile names method {method!r}, which is not in `methods` "
                            f"({', '.join(cfg['methods'])})")
        try:
            models.check_compilable(method)
        except UserError as exc:
            raise UserError(f"training.compile: {exc}") from None
    for key, deltas in cfg["hparams"].items():
        method, _, dataset = key.partition("@")
        if method not in cfg["methods"]:
            raise UserError(f"hparams.{key} names method {method!r}, which is not in `methods` "
                            f"({', '.join(cfg['methods'])})")
        for ds in [dataset] if dataset else cfg["datasets"]:
            if not models.get(method).unsupported.get(ds):
                try:
                    models.resolve_hparams(method, ds, deltas)
                except UserError as exc:
                    raise UserError(f"hparams.{key}: {exc}") from None
    for method in cfg["methods"]:  # a run that starts from others' trained runs must fit them
        cls = models.get(method)
        for ds in cfg["datasets"] if cls.requires else []:
            if not cls.unsupported.get(ds):
                required = {r: models.resolve_hparams(r, ds, overrides(cfg, r, ds)) for r in cls.requires}
                try:
                    cls.check_start(models.resolve_hparams(method, ds, overrides(cfg, method, ds)), required)
                except UserError as exc:
                    raise UserError(f"hparams of {method} on {ds}: {exc}") from None


def overrides(cfg: dict[str, Any], method: str, dataset: str) -> dict[str, Any]:
    """The config's hyper-parameter deltas for one (method, dataset): "method" keys, then "method@dataset"."""
    return {**cfg["hparams"].get(method, {}), **cfg["hparams"].get(f"{method}@{dataset}", {})}


def loop(cfg: dict[str, Any], method: str) -> dict[str, Any]:
    """The training-loop settings of one method's runs: `training` with its `compile` list resolved to
    `compile: true` for the listed methods (others carry no such key, so listing one method re-trains only it)."""
    settings = {k: v for k, v in cfg["training"].items() if k != "compile"}
    return {**settings, "compile": True} if method in cfg["training"].get("compile", []) else settings


def grid(cfg: dict[str, Any]) -> tuple[list[tuple[str, str, int]], list[tuple[str, str, str]]]:
    """(runs, skipped): every supported (dataset, method, seed), and the (dataset, method, reason) left out."""
    runs, skipped = [], []
    for ds in cfg["datasets"]:
        for method in cfg["methods"]:
            reason = models.get(method).unsupported.get(ds)
            if reason:
                skipped.append((ds, method, reason))
            else:
                runs.extend((ds, method, seed) for seed in cfg["seeds"])
    return runs, skipped
