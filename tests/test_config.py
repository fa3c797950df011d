"""Bad config or CLI input fails fast with a one-line message that names the problem and the valid choices."""
import subprocess
import sys
import time

import pytest
import yaml

from bench import config
from bench.errors import UserError

GOOD = {"datasets": ["moons"], "methods": ["realnvp"], "seeds": [0, 1]}


def test_default_config_is_valid():
    cfg = config.load(config.SCHEMA.parent / "default.yaml")
    runs, skipped = config.grid(cfg)
    assert ("moons", "realnvp", 0) in runs and ("moons", "realnvp", 1) in runs


@pytest.mark.parametrize("bad, message", [
    ({**GOOD, "seedz": [0]}, "Additional properties are not allowed ('seedz'"),
    ({**GOOD, "seeds": ["zero"]}, "at seeds.0: 'zero' is not of type 'integer'"),
    ({**GOOD, "device": "gpu"}, "at device"),
    ({**GOOD, "methods": ["realnvq"]}, "unknown method 'realnvq'; valid methods: dcgan, dcgan-vaeinit, ffjord,"),
    ({**GOOD, "datasets": ["moon"]}, "unknown dataset 'moon'; valid datasets: moons, ring8, grid25, mnist, binarized_mnist"),
    ({**GOOD, "hparams": {"realnvp": {"stepz": 3}}}, "unknown hyper-parameter(s) stepz for method 'realnvp'; valid:"),
    ({**GOOD, "hparams": {"vae": {"steps": 3}}}, "hparams.vae names method 'vae', which is not in `methods`"),
    ({**GOOD, "training": {"log_every": 0}}, "at training.log_every: 0 is less than the minimum of 1"),
])
def test_invalid_configs_name_the_problem(bad, message):
    with pytest.raises(UserError) as info:
        config.validate(bad)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_method_dataset_overrides_win():
    cfg = config.validate({**GOOD, "hparams": {"realnvp": {"steps": 5, "lr": 0.1}, "realnvp@moons": {"steps": 7}}})
    assert config.overrides(cfg, "realnvp", "moons") == {"steps": 7, "lr": 0.1}


def _cli(*args, timeout=10):
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "bench.cli", *args], capture_output=True, text=True, timeout=timeout)
    return res, time.perf_counter() - t0


@pytest.mark.parametrize("args, message", [
    (["--method", "nope", "--dataset", "moons"], "unknown method 'nope'; valid methods: dcgan, dcgan-vaeinit,"),
    (["--method", "realnvp", "--dataset", "nope"], "unknown dataset 'nope'; valid datasets: moons"),
    (["--method", "realnvp", "--dataset", "moons", "--set", "stepz=1"], "unknown hyper-parameter(s) stepz"),
])
def test_cli_bad_names_fail_fast(tmp_path, args, message):
    res, seconds = _cli("train", *args, "--seed", "0", "--out", str(tmp_path / "run"))
    assert res.returncode == 2 and message in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert seconds < 10
    assert not (tmp_path / "run").exists()


def test_snakemake_rejects_a_bad_config_before_running(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**GOOD, "methods": ["nope"]}))
    res = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--configfile", str(bad)],
                         capture_output=True, text=True, timeout=60, cwd=config.SCHEMA.parent.parent)
    assert res.returncode != 0
    assert "unknown method 'nope'; valid methods: dcgan, dcgan-vaeinit, ffjord" in res.stdout + res.stderr
