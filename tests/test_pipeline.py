"""End to end through Snakemake on a tiny config: train -> evaluate -> aggregate -> table, then a no-op rerun."""
import re
import subprocess
import sys

import pandas as pd
import yaml

from bench import config
from bench.config import SCHEMA
from conftest import needs_mnist

REPO = SCHEMA.parent.parent


def _snakemake(workdir, *args):
    return subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"),
                           "--directory", str(workdir), *args], capture_output=True, text=True, timeout=600)


@needs_mnist  # the default config includes MNIST, and the Snakefile checks the data before planning
def test_default_config_dry_run(tmp_path):
    runs, skipped = config.grid(config.load(REPO / "config" / "default.yaml"))
    res = _snakemake(tmp_path, "-n")
    assert res.returncode == 0, res.stderr
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", res.stdout, re.MULTILINE))
    assert counts["train"] == counts["evaluate"] == str(len(runs)) and counts["report"] == "1"
    assert counts["mnist_classifier"] == "1" and counts["reference"] == "3"
    for dataset, method, reason in skipped:  # skipped combinations are named with the reason
        assert f"skipping {method} on {dataset}: {reason}" in res.stderr


def test_tiny_pipeline_end_to_end(tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump({
        "datasets": ["moons"], "methods": ["realnvp", "vae"], "seeds": [0, 1],
        # fault injection: the VAE's learning rate makes every run diverge, also on its one retry (opted in
        # below); the pipeline must still finish and the report count the retries
        "hparams": {"realnvp": {"steps": 30, "width": 16}, "vae": {"steps": 30, "lr": 1.0e6}},
        "training": {"log_every": 10, "val_every": 10, "checkpoint_every": 10, "val_size": 500,
                     "retry_diverged": True},
        "evaluation": {"n_samples": {"points": 500}},
    }))
    res = _snakemake(tmp_path, "--cores", "2", "--configfile", str(cfg))
    assert res.returncode == 0, res.stderr[-3000:]
    summary = re.sub(" {2,}", " ", (tmp_path / "reports" / "tables" / "summary.md").read_text())  # table padding
    assert "| realnvp | 2 | 0 |" in summary and "| vae | 2 | 2 [" in summary
    assert "vae: seed 0: non-finite loss" in summary
    df = pd.read_csv(tmp_path / "results" / "metrics.csv")
    retries = df.drop_duplicates(["method", "seed"]).set_index(["method", "seed"]).retry_seed
    assert retries.loc["vae"].to_dict() == {0: 3_000_003, 1: 3_000_004} and retries.loc["realnvp"].isna().all()
    nll = df[(df.metric == "test_nll") & (df.method == "realnvp")]
    assert sorted(nll.seed) == [0, 1] and nll.value.notna().all()
    assert (df.git_commit.str.len() > 0).all() and df.data_fingerprint.nunique() == 1
    assert '"steps": 30' in nll.config.iloc[0] and "torch" in nll.packages.iloc[0]
    assert (tmp_path / "results/runs/moons/realnvp/seed0/benchmark_train.tsv").exists()
    assert (tmp_path / "reports/figures/runs/moons/realnvp/seed1.png").exists()
    html = (tmp_path / "reports/report.html").read_text()
    assert "data:image/png;base64," in html and "realnvp" in html and "non-finite loss" in html
    assert "2 failed or diverged, 2 retried with a new seed after diverging" in html
    w2 = df[(df.metric == "w2")].set_index("method")
    assert w2.loc["data", "n"] == 500 and w2.loc["data", "value"] > 0
    again = _snakemake(tmp_path, "--cores", "2", "--configfile", str(cfg))
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr
