"""The method contract (models/base.py, models/__init__.py): what `register` refuses at import, the hyper-parameter
specs of every method, and a new method added as the README says (one file in models/) run through the CLI."""
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import models
from bench import datasets
from core.errors import UserError
from core.names import DATASETS
from models.base import Method

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name", models.available())
def test_every_default_hyper_parameter_has_a_spec_that_its_default_satisfies(name):
    cls = models.get(name)
    spec = cls.full_hparam_spec()
    for ds in DATASETS:
        if ds not in cls.unsupported:
            for key, value in cls.defaults(ds).items():
                assert key in spec, f"{name} on {ds}: no HParam for {key}"
                assert spec[key].allows(value), f"{name} on {ds}: default {key}={value!r} is not {spec[key].describe()}"
            models.resolve_hparams(name, ds)


@pytest.mark.parametrize("name, overrides, message", [
    ("realnvp", {"width": -5}, "hyper-parameter width of realnvp must be an integer >= 1, got -5"),
    ("realnvp", {"width": 2.5}, "width of realnvp must be an integer >= 1, got 2.5"),  # wrong type
    ("realnvp", {"n_layers": True}, "n_layers of realnvp must be an integer >= 1, got True"),  # a bool is no number
    ("realnvp", {"lr": 0}, "lr of realnvp must be a number > 0, got 0"),
    ("realnvp", {"lr": "1e-3"}, "must be a number > 0, got '1e-3'; YAML reads a number like 1e-3 as text"),
    ("vae", {"sample_mode": "best"}, "sample_mode of vae must be one of 'mean', 'full', got 'best'"),  # bad choice
    ("wgan", {"clip": 0.0}, "clip of wgan must be a number > 0, got 0.0"),
    ("dcgan", {"beta2": 1.0}, "beta2 of dcgan must be a number >= 0 and < 1, got 1.0"),
    ("otflow", {"alpha": [1.0, 10.0]}, "alpha of otflow must be a list of 3 numbers, each >= 0, got [1.0, 10.0]"),
    ("ffjord", {"hidden": [64, 0]}, "hidden of ffjord must be a list of integers, each >= 1, got [64, 0]"),
    ("ffjord", {"solver": "dopri"}, "solver of ffjord must be one of 'dopri5',"),
])
def test_a_value_outside_its_spec_is_a_one_line_user_error(name, overrides, message):
    with pytest.raises(UserError, match=re.escape(message)) as err:
        models.resolve_hparams(name, "moons", overrides)
    assert str(err.value).startswith("hyper-parameter ") and "\n" not in str(err.value)


def test_logit_alpha_spec_on_images():
    assert models.resolve_hparams("realnvp", "mnist", {"logit_alpha": 0.01})["logit_alpha"] == 0.01
    with pytest.raises(UserError, match="logit_alpha of realnvp must be a number > 0 and < 0.5, got 0.5"):
        models.resolve_hparams("realnvp", "mnist", {"logit_alpha": 0.5})
    assert models.resolve_hparams("dcgan", "mnist", {"logit_alpha": 0})["logit_alpha"] == 0  # a GAN's sigmoid


def _declare(**attrs):
    """Register a throw-away Method subclass with `attrs` (a flow that implements everything by default)."""
    body = {"family": "flow", "capabilities": frozenset({"sample", "log_prob"}),
            "sample": lambda self, n: None, "log_prob": lambda self, x: None, "loss": lambda self, x: None, **attrs}
    return models.register("contract-test")(type("Declared", (Method,), body))


@pytest.mark.parametrize("attrs, message", [
    ({"family": "flows"}, "declares family 'flows'; known families: flow, cnf, vae, gan"),
    ({"capabilities": frozenset({"sample", "density"})}, "declares capabilities frozenset"),
    ({"capabilities": {"sample"}}, "need a frozenset"),
    ({"capabilities": frozenset({"sample", "log_prob", "inverse"})},
     "does not implement inverse, inverse_error, which its capabilities inverse, log_prob, sample require"),
    ({"loss": Method.loss}, "does not implement loss (or train_step)"),
    ({"hparam_spec": {"width": int}}, "hparam_spec entries must be models.base.HParam, not so for width"),
    ({"unsupported": {"cifar10": "no"}}, "`unsupported` names unknown dataset(s) cifar10"),
])
def test_register_refuses_a_bad_declaration(attrs, message):
    with pytest.raises(UserError, match="^method 'contract-test' .*" + re.escape(message)):
        _declare(**attrs)
    assert "contract-test" not in models.available()


def test_a_default_without_a_spec_is_named():
    _declare(defaults=classmethod(lambda cls, ds: {"steps": 1, "batch_size": 1, "lr": 1.0, "weight_decay": 0.0,
                                                   "width": 3}))
    try:
        with pytest.raises(UserError, match="method 'contract-test' declares no HParam for its hyper-parameter width"):
            models.resolve_hparams("contract-test", "moons")
    finally:
        del models._REGISTRY["contract-test"]


def test_optional_hooks_have_defaults_on_the_base_class():
    flow = models.create("realnvp", datasets.load("moons"), width=8)
    vae = models.create("vae", datasets.load("moons"), width=8)
    assert flow.latent_dim == 2 and flow.solver_info() == {}
    assert vae.latent_dim == 2 and models.create("vae", datasets.load("moons"), latent_dim=3).latent_dim == 3
    with pytest.raises(NotImplementedError):
        vae.inverse(torch.zeros(1, 2))
    x = datasets.load("moons").test[:64]
    assert flow.inverse_error(x).max() < 1e-5


# The README's "Adding a method", followed to the letter: one file in models/. NICE (Dinh, Krueger & Bengio 2015):
# additive couplings and a diagonal scaling.
NICE = '''"""NICE (Dinh et al. 2015): additive couplings of alternating halves, then a diagonal scaling."""
import math

import torch
from torch import nn

from models import register
from models.base import HParam, Method


@register("nice")
class NICE(Method):
    family = "flow"
    capabilities = frozenset({"log_prob", "sample", "inverse"})
    unsupported = {"mnist": "a 2-D example", "binarized_mnist": "a 2-D example"}
    hparam_spec = {"n_layers": HParam(int, ge=1), "width": HParam(int, ge=1)}

    @classmethod
    def defaults(cls, dataset):
        return {"n_layers": 4, "width": 64, "steps": 2000, "batch_size": 256, "lr": 1e-3, "weight_decay": 0.0}

    def __init__(self, dataset, hparams):
        super().__init__(dataset, hparams)
        d, w = self.data_shape[0], hparams["width"]
        self.halves = [d // 2, d - d // 2]
        self.nets = nn.ModuleList(
            nn.Sequential(nn.Linear(self.halves[i % 2], w), nn.ReLU(), nn.Linear(w, self.halves[1 - i % 2]))
            for i in range(hparams["n_layers"]))
        self.log_scale = nn.Parameter(torch.zeros(d))

    def inverse(self, x):
        h = list(x.split(self.halves, 1))
        for i, net in enumerate(self.nets):
            h[1 - i % 2] = h[1 - i % 2] - net(h[i % 2])
        return torch.cat(h, 1) * torch.exp(-self.log_scale), -self.log_scale.sum().expand(len(x))

    def forward(self, z):
        h = list((z * torch.exp(self.log_scale)).split(self.halves, 1))
        for i in reversed(range(len(self.nets))):
            h[1 - i % 2] = h[1 - i % 2] + self.nets[i](h[i % 2])
        return torch.cat(h, 1)

    def log_prob(self, x):
        z, log_det = self.inverse(x)
        return -0.5 * z.pow(2).sum(1) - 0.5 * z.shape[1] * math.log(2 * math.pi) + log_det

    def loss(self, x):
        return -self.log_prob(x).mean()

    @torch.no_grad()
    def sample(self, n):
        return self.forward(torch.randn(n, sum(self.halves), device=self.device))

    @torch.no_grad()
    def inverse_error(self, x):
        return (x - self.forward(self.inverse(x)[0])).norm(dim=1)
'''


def _dgmbench(*args):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run([sys.executable, "-m", "bench.cli", *map(str, args)], capture_output=True, text=True,
                         cwd=REPO, env=env, timeout=300)
    assert res.returncode == 0, res.stderr
    return res.stdout


def test_a_new_method_in_one_file_runs_through_the_cli(tmp_path):
    path = REPO / "models" / "nice.py"
    assert not path.exists()
    path.write_text(NICE)
    try:
        assert any(line.split()[:2] == ["nice", "flow"] for line in _dgmbench("list").splitlines())
        run, settings = tmp_path / "run", json.dumps({"n_samples": {"points": 500}})
        _dgmbench("train", "--method", "nice", "--dataset", "moons", "--seed", "0", "--out", run, "--set", "steps=300",
                  "--loop", json.dumps({"val_every": 100, "checkpoint_every": 100, "val_size": 500}), "--no-progress")
        _dgmbench("sample", "--run", run, "--settings", settings)
        _dgmbench("evaluate", "--run", run, "--settings", settings)
        _dgmbench("plot-run", "--run", run, "--out", tmp_path / "nice.png")
    finally:
        path.unlink()
        for cached in (REPO / "models" / "__pycache__").glob("nice.*"):
            cached.unlink()
    result = json.loads((run / "metrics.json").read_text())
    records = {r["metric"]: r for r in result["records"]}
    assert result["family"] == "flow" and result["status"] == "ok"
    assert math.isfinite(records["test_nll"]["value"]) and records["test_nll"]["value"] < 3  # a model that learned
    assert records["elbo_gap"]["value"] == 0 and records["inverse_error"]["value"] < 1e-4
    assert not {"elbo", "test_bpd"} & set(records) and not any(m.startswith("iwae_k") for m in records)
    assert all(r["status"] == "ok" for r in records.values()), [r for r in records.values() if r["status"] != "ok"]
    assert (tmp_path / "nice.png").stat().st_size > 0
