"""Bad config or CLI input fails fast with a one-line message that names the problem and the valid choices,
before any compute and without leaving outputs."""
import hashlib
import json
import subprocess
import sys

import pytest
import yaml

import models
from bench import cli, config
from core.errors import UserError

GOOD = {"datasets": ["moons"], "methods": ["realnvp"], "seeds": [0, 1]}


def test_default_config_is_valid():
    cfg = config.load(config.SCHEMA.parent / "default.yaml")
    runs, skipped = config.grid(cfg)
    assert ("moons", "realnvp", 0) in runs and ("moons", "realnvp", 1) in runs


def test_the_paper_config_is_valid_and_compiles_every_method_that_can_be():
    cfg = config.load(config.SCHEMA.parent / "paper.yaml")
    assert cfg["device"] == "cuda" and cfg["training"]["compile"]
    assert all(config.loop(cfg, m).get("compile") is True for m in cfg["methods"] if models.get(m).compiled)
    assert not any(config.loop(cfg, m).get("compile") for m in ("ffjord", "wgan-gp"))


def test_a_vaeinit_gan_given_its_vaes_sizes_is_valid():
    config.validate({**GOOD, "datasets": ["mnist", "moons"], "methods": ["vae", "dcgan-vaeinit"],
                     "hparams": {"vae@mnist": {"width": 16, "logit_alpha": 0.01},
                                 "dcgan-vaeinit": {"width": 16, "logit_alpha": 0.01}}})


@pytest.mark.parametrize("bad, message", [
    ({**GOOD, "seedz": [0]}, "Additional properties are not allowed ('seedz'"),
    ({**GOOD, "seeds": ["zero"]}, "at seeds.0: 'zero' is not of type 'integer'"),
    ({**GOOD, "device": "gpu"}, "at device"),
    ({**GOOD, "methods": ["realnvq"]}, "unknown method 'realnvq'; valid methods: dcgan, dcgan-vaeinit, ffjord,"),
    ({**GOOD, "datasets": ["moon"]},
     "unknown dataset 'moon'; valid datasets: moons, ring8, grid25, mnist, binarized_mnist"),
    ({**GOOD, "hparams": {"realnvp": {"stepz": 3}}}, "unknown hyper-parameter(s) stepz for method 'realnvp'; valid:"),
    ({**GOOD, "hparams": {"vae": {"steps": 3}}}, "hparams.vae names method 'vae', which is not in `methods`"),
    ({**GOOD, "training": {"log_every": 0}}, "at training.log_every: 0 is less than the minimum of 1"),
    ({**GOOD, "training": {"retry_diverged": "yes"}}, "at training.retry_diverged: 'yes' is not of type 'boolean'"),
    ({**GOOD, "training": {"compile": "realnvp"}}, "at training.compile: 'realnvp' is not of type 'array'"),
    ({**GOOD, "training": {"compile": ["otflow"]}},
     "training.compile names method 'otflow', which is not in `methods`"),
    ({**GOOD, "methods": ["ffjord"], "training": {"compile": ["ffjord"]}},
     ("training.compile: method 'ffjord' cannot train compiled (nothing in its step to compile; see its `compiled`); "
      "methods that can: dcgan, dcgan-vaeinit, otflow, realnvp, vae, wgan, wgan-vaeinit")),
    ({**GOOD, "evaluation": {"metrics": ["fidd"]}},
     "evaluation.metrics: unknown metric 'fidd'; valid metrics: test_nll, test_bpd, elbo, iwae_k, elbo_gap,"),
    ({**GOOD, "evaluation": {"n_samples": {"points": 20000}}},
     "at evaluation.n_samples.points: 20000 is greater than the maximum of 10000"),  # every test set has 10,000
    ({**GOOD, "hparams": {"realnvp": {"batch_size": 0}}},
     "hparams.realnvp: hyper-parameter batch_size of realnvp must be an integer >= 1, got 0"),
    ({**GOOD, "hparams": {"realnvp": {"width": -5}}},
     "hparams.realnvp: hyper-parameter width of realnvp must be an integer >= 1, got -5"),
    ({**GOOD, "datasets": ["mnist"], "methods": ["vae", "dcgan-vaeinit"], "hparams": {"vae": {"width": 16}}},
     "hparams of dcgan-vaeinit on mnist: dcgan-vaeinit loads the VAE decoder into its generator, but the VAE's "
     "decoder does not fit (width: vae 16 vs dcgan-vaeinit 32); give the GAN the VAE's latent_dim, width"),
    ({**GOOD, "datasets": ["binarized_mnist"], "methods": ["vae"], "hparams": {"vae": {"logit_alpha": 0.1}}},
     "unknown hyper-parameter(s) logit_alpha for method 'vae'"),  # the Bernoulli decoder has no logit transform
    ({**GOOD, "datasets": ["mnist"], "methods": ["wgan-vaeinit"], "hparams": {"wgan-vaeinit": {"logit_alpha": 0}}},
     "hparams of wgan-vaeinit on mnist: wgan-vaeinit loads the VAE decoder into its generator, but the VAE's "
     "decoder does not fit (logit_alpha: vae 0.05 vs wgan-vaeinit 0)"),
])
def test_invalid_configs_name_the_problem(bad, message):
    with pytest.raises(UserError) as info:
        config.validate(bad)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_retry_compile_and_metric_selection_are_accepted():
    cfg = config.validate({**GOOD, "methods": ["realnvp", "vae"], "evaluation": {"metrics": ["w2", "iwae_k"]},
                           "training": {"retry_diverged": True, "log_every": 5, "compile": ["realnvp"]}})
    assert cfg["training"]["retry_diverged"] is True and cfg["evaluation"]["metrics"] == ["w2", "iwae_k"]
    # Only the listed method's runs get the setting, so listing it leaves every other run's config hash alone.
    assert config.loop(cfg, "realnvp") == {"retry_diverged": True, "log_every": 5, "compile": True}
    assert config.loop(cfg, "vae") == {"retry_diverged": True, "log_every": 5}


def test_cli_set_reads_an_exponent_as_a_number():
    assert cli._key_value("lr=1e-3") == ("lr", 0.001)  # YAML 1.1 alone would give the text '1e-3'
    assert cli._key_value("decoder=bernoulli") == ("decoder", "bernoulli")
    assert cli._key_value("steps=5") == ("steps", 5)


def test_method_dataset_overrides_win():
    cfg = config.validate({**GOOD, "hparams": {"realnvp": {"steps": 5, "lr": 0.1}, "realnvp@moons": {"steps": 7}}})
    assert config.overrides(cfg, "realnvp", "moons") == {"steps": 7, "lr": 0.1}


def _cli(*args: str) -> subprocess.CompletedProcess:
    # The timeout only guards against a hang: that no compute ran shows in the outputs, which must not exist.
    return subprocess.run([sys.executable, "-m", "bench.cli", *args], capture_output=True, text=True, timeout=300)


TRAIN = ["train", "--seed", "0", "--out", "{tmp}/run"]
MNIST = [*TRAIN, "--method", "realnvp", "--dataset", "mnist", "--data-root", "{tmp}/data"]
NOT_MNIST = b"\x1f\x8b" + b"0" * 100
NOT_MNIST_MD5 = hashlib.md5(NOT_MNIST).hexdigest()


@pytest.mark.parametrize("args, files, message", [
    ([*TRAIN, "--method", "nope", "--dataset", "moons"], {},
     "unknown method 'nope'; valid methods: dcgan, dcgan-vaeinit,"),
    ([*TRAIN, "--method", "realnvp", "--dataset", "nope"], {}, "unknown dataset 'nope'; valid datasets: moons"),
    ([*TRAIN, "--method", "realnvp", "--dataset", "moons", "--set", "stepz=1"], {}, "unknown hyper-parameter(s) stepz"),
    ([*TRAIN, "--method", "realnvp", "--dataset", "moons", "--set", "batch_size=0"], {},
     "hyper-parameter batch_size of realnvp must be an integer >= 1, got 0"),
    ([*TRAIN, "--method", "realnvp", "--dataset", "moons", "--set", "width=-5"], {},
     "hyper-parameter width of realnvp must be an integer >= 1, got -5"),
    ([*TRAIN, "--method", "realnvp", "--dataset", "moons", "--loop", json.dumps({"retry_diverged": "yes"})], {},
     "training-loop setting retry_diverged='yes' is invalid; valid: log_every,"),
    ([*TRAIN, "--method", "wgan-gp", "--dataset", "moons", "--loop", json.dumps({"compile": True})], {},
     "method 'wgan-gp' cannot train compiled (nothing in its step to compile; see its `compiled`); methods that can:"),
    (MNIST, {}, "MNIST file train-images-idx3-ubyte not found in {tmp}/data/MNIST/raw (plain or .gz); set "
                "DGMBENCH_DATA_ROOT (or `data_root` in the config) to a folder holding MNIST/raw, or run "
                "`dgmbench download mnist --data-root {tmp}/data`"),
    (MNIST, {"data/MNIST/raw/train-images-idx3-ubyte.gz": NOT_MNIST},
     f"MNIST file {{tmp}}/data/MNIST/raw/train-images-idx3-ubyte.gz is corrupt (md5 {NOT_MNIST_MD5}, "
     "expected f68b3c2dcbeaaa9fbdd348bbdeb94873); delete it and run `dgmbench download mnist --data-root {tmp}/data`"),
    (["evaluate", "--run", "{tmp}/run", "--settings", json.dumps({"metrics": ["fidd"]})], {},
     "unknown metric 'fidd'; valid metrics: test_nll, test_bpd, elbo, iwae_k,"),
    (["reference", "--dataset", "ring8", "--out", "{tmp}/run/ring8.json", "--settings",
      json.dumps({"n_samples": {"points": 20000}})], {},
     "--settings: invalid value at evaluation.n_samples.points: 20000 is greater than the maximum of 10000"),
])
def test_cli_bad_input_fails_fast_without_outputs(tmp_path, args, files, message):
    for name, data in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
    res = _cli(*(a.replace("{tmp}", str(tmp_path)) for a in args))
    assert res.returncode == 2 and message.replace("{tmp}", str(tmp_path)) in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("bad, message", [
    ({**GOOD, "methods": ["nope"]}, "unknown method 'nope'; valid methods: dcgan, dcgan-vaeinit, ffjord"),
    ({**GOOD, "seeds": ["zero"]}, "invalid value at seeds.0: 'zero' is not of type 'integer'"),
    ({**GOOD, "evaluation": {"metrics": ["fidd"]}}, "evaluation.metrics: unknown metric 'fidd'; valid metrics: "),
])
def test_snakemake_rejects_a_bad_config_before_running(tmp_path, bad, message):
    """The Snakefile validates the config before planning: no job runs and nothing is written. (Not timed: the
    SLURM executor plugin's import alone can take 10 s on a machine without a SLURM controller.)"""
    repo = config.SCHEMA.parent.parent
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    res = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--snakefile", str(repo / "Snakefile"),
                          "--directory", str(tmp_path), "--configfile", str(tmp_path / "bad.yaml")],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode != 0
    assert message in res.stdout + res.stderr
    assert not (tmp_path / "results").exists() and not (tmp_path / "reports").exists()


def test_an_unusable_path_is_one_line_naming_it(tmp_path):
    (tmp_path / "file").write_text("")
    out = tmp_path / "file" / "run"  # a folder inside a file
    res = _cli(*TRAIN[:-1], str(out), "--method", "realnvp", "--dataset", "moons", "--set", "steps=5")
    assert res.returncode == 2
    assert res.stderr.strip() == (f"dgmbench: error: Not a directory: {out}; give a path whose folders exist or can "
                                  "be created, and can be written")
