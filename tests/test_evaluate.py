"""Evaluation dispatch: metrics by capability, n/a with reasons, failed metrics kept apart, reference floors."""
import dataclasses
import math
import re

import pytest
import torch

import models
from bench import catalog, datasets
from bench import evaluate as ev
from bench.sampling import sample_run
from bench.train import RunSpec, train
from conftest import needs_mnist
from core.errors import UserError
from metrics import wasserstein

LOOP = {"log_every": 10, "val_every": 10, "checkpoint_every": 10, "val_size": 200}
SMALL_EVAL = {"n_samples": {"points": 300}, "iwae_k": [1, 10], "iwae_n_test": {"points": 100}}


def _run(tmp_path, method, dataset="ring8", **hp):
    run = tmp_path / method
    train(RunSpec.build(method, dataset, 0, {"steps": 20, **hp}, loop=LOOP), run, progress=False)
    sample_run(run, 300)
    return run


def _records(result):
    return {r["metric"]: r for r in result["records"]}


def _matches_catalog(result, data, evaluators=()):
    """Every record is of a catalog metric, and the metrics with values are those the catalog says apply."""
    records = result["records"]
    assert all(catalog.find(r["metric"]) for r in records), [r["metric"] for r in records]
    capabilities = models.get(result["run"]["method"]).capabilities
    ok = {catalog.find(r["metric"]).name for r in records if r["status"] == "ok"}
    assert sorted(ok) == sorted(catalog.applicable(capabilities, data, evaluators))


def test_flow_gets_exact_nll_sample_metrics_and_modes(tmp_path):
    result = ev.evaluate(_run(tmp_path, "realnvp", width=16), SMALL_EVAL)
    rec = _records(result)
    _matches_catalog(result, {"points", "mixture"})
    assert rec["test_nll"]["status"] == "ok" and rec["test_nll"]["n"] == 10_000
    assert rec["elbo_gap"]["value"] == 0.0
    for metric in ("w1", "w2", "sliced_w2", "precision", "recall", "modes_covered", "high_quality", "mode_kl"):
        assert rec[metric]["status"] == "ok" and rec[metric]["n"] == 300, metric
    assert rec["w2"]["value"] >= rec["sliced_w2"]["value"] - 1e-9  # SW2 <= W2
    assert 0 <= rec["modes_covered"]["value"] <= 8


def test_gan_likelihood_is_not_applicable_with_a_reason(tmp_path):
    result = ev.evaluate(_run(tmp_path, "dcgan"), SMALL_EVAL)
    rec = _records(result)
    _matches_catalog(result, {"points", "mixture"})
    for metric in ("test_nll", "elbo_gap"):
        assert rec[metric]["status"] == "n/a" and rec[metric]["value"] is None
        assert "no tractable density" in rec[metric]["reason"]
    assert rec["w2"]["status"] == "ok"


def test_vae_reports_elbo_iwae_and_gap(tmp_path):
    result = ev.evaluate(_run(tmp_path, "vae"), SMALL_EVAL)
    rec = _records(result)
    _matches_catalog(result, {"points", "mixture"})
    assert {"elbo", "iwae_k1", "iwae_k10", "elbo_gap", "test_nll"} <= set(rec)
    assert rec["test_nll"]["value"] == pytest.approx(-rec["iwae_k10"]["value"])
    assert rec["elbo_gap"]["settings"]["k"] == 10 and math.isfinite(rec["elbo_gap"]["value"])


def test_a_failing_metric_is_recorded_and_the_others_kept(tmp_path, monkeypatch):
    run = _run(tmp_path, "realnvp", width=16)

    def broken(*args, **kwargs):
        raise RuntimeError("solver exploded")

    monkeypatch.setattr(ev, "exact_wasserstein", broken)
    rec = _records(ev.evaluate(run, SMALL_EVAL))
    assert rec["w2"]["status"] == "failed" and "solver exploded" in rec["w2"]["reason"]
    assert rec["sliced_w2"]["status"] == "ok" and rec["test_nll"]["status"] == "ok"


def test_ot_memory_budget_is_half_the_jobs_memory_at_most_8_gib():
    mib, physical = 2**20, ev.ot_memory_budget({})
    assert 0 < physical <= 8 * 2**30
    assert ev.ot_memory_budget({"SLURM_MEM_PER_NODE": "6000"}) == min(3000 * mib, physical)
    assert ev.ot_memory_budget({"SLURM_MEM_PER_CPU": "1000", "SLURM_CPUS_PER_TASK": "3"}) == min(1500 * mib, physical)
    assert ev.ot_memory_budget({"SLURM_MEM_PER_CPU": "1000"}) == min(500 * mib, physical)


def test_the_cgroup_memory_limit_is_the_least_on_the_process_cgroup_and_above(tmp_path, monkeypatch):
    """v1 (memory controller's own hierarchy) and v2 (unified, "max" where unlimited): the job's limit may sit on
    a parent of the process's cgroup (SLURM's job_N above step_0). Unreadable membership or no limit: None."""
    def tree(membership, files):
        root = tmp_path / str(len(list(tmp_path.iterdir())))
        for rel, text in files.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_text(text + "\n")
        (root / "cgroup").write_text(membership)
        return {"root": root, "membership": root / "cgroup"}

    v1 = tree("5:cpu,cpuacct:/\n4:memory:/slurm/job_7/step_0\n", {
        "memory/memory.limit_in_bytes": "9223372036854771712", "memory/slurm/job_7/memory.limit_in_bytes": "3000000000",
        "memory/slurm/job_7/step_0/memory.limit_in_bytes": "9223372036854771712"})
    v2 = tree("0::/slurm/job_7/step_0\n", {"slurm/job_7/memory.max": "2147483648",
                                             "slurm/job_7/step_0/memory.max": "max"})
    unlimited = tree("0::/user.slice\n", {"user.slice/memory.max": "max"})
    assert ev.cgroup_memory_limit(**v1) == 3_000_000_000 and ev.cgroup_memory_limit(**v2) == 2**31
    assert ev.cgroup_memory_limit(**unlimited) is None
    assert ev.cgroup_memory_limit(tmp_path, tmp_path / "missing") is None
    monkeypatch.setattr(ev, "cgroup_memory_limit", lambda: 4 * 2**20)
    assert ev.ot_memory_budget({}) == 2 * 2**20


def test_exact_w_in_a_small_slurm_allocation_takes_the_lazy_solver_and_the_same_value(monkeypatch):
    """n = 300 needs 4.3 MB dense: a 4 MB allocation gives a 2 MB budget, so the lazy solver runs, and says so."""
    ds, settings = datasets.load("ring8"), ev.settings_for({"metrics": ["w1", "w2"]})
    generated = ds.to_float(ds.train[:300]) + 0.1
    monkeypatch.delenv("SLURM_MEM_PER_CPU", raising=False)
    records = {}
    for mem in (None, "4"):
        if mem is None:
            monkeypatch.delenv("SLURM_MEM_PER_NODE", raising=False)
        else:
            monkeypatch.setenv("SLURM_MEM_PER_NODE", mem)
        records[mem] = {r.metric: r for r in ev.sample_records(ds, generated, settings, None)}
    for metric in ("w1", "w2"):
        dense, lazy = records[None][metric], records["4"][metric]
        assert (dense.settings["solver"], lazy.settings["solver"]) == ("POT emd2 exact", "POT emd2_lazy exact")
        assert lazy.value == pytest.approx(dense.value, rel=1e-9) and dense.value > 0.05


def test_exact_w2_above_the_dense_size_takes_the_multiscale_solver_and_the_dense_value(monkeypatch):
    """W2 of 300 points with the dense size lowered to 100 × 100 pairs: the multiscale solver runs, says so, and
    gives POT's dense value; W1 stays dense, its faster solver."""
    monkeypatch.setattr(wasserstein, "_DENSE_PAIRS", 100**2)
    ds, settings = datasets.load("ring8"), ev.settings_for({"metrics": ["w1", "w2"]})
    generated = ds.to_float(ds.train[:300]) + 0.1
    records = {r.metric: r for r in ev.sample_records(ds, generated, settings, None)}
    assert (records["w1"].settings["solver"], records["w2"].settings["solver"]) == \
        ("POT emd2 exact", "POT multiscale exact")
    dense = wasserstein.exact_wasserstein(generated, ds.to_float(ds.test[:300]), p=2, solver="emd2")
    assert records["w2"].value == pytest.approx(dense, rel=1e-9) and dense > 0.05


def test_diverged_run_gets_a_failed_record(tmp_path):
    run = tmp_path / "div"
    status = train(RunSpec.build("realnvp", "moons", 0, {"steps": 200, "lr": 1e6}, loop=LOOP), run, progress=False)
    assert status["status"] == "diverged"
    sample_run(run, 300)
    result = ev.evaluate(run, SMALL_EVAL)
    assert result["status"] == "diverged"
    assert result["records"] == [{**result["records"][0], "metric": "training", "status": "failed"}]


def test_reference_floor_and_sample_size_checks(tmp_path):
    ref = _records(ev.reference("ring8", tmp_path / "ring8.json", SMALL_EVAL))
    assert ref["test_nll"]["value"] == pytest.approx(-4.293, abs=0.03)  # the ring's entropy
    assert ref["modes_covered"]["value"] == 8 and ref["high_quality"]["value"] > 0.95
    with pytest.raises(UserError, match="n_samples.points: 20000 is greater than the maximum of 10000"):
        ev.reference("ring8", tmp_path / "x.json", {"n_samples": {"points": 20_000}})  # the schema's bound
    ring8 = datasets.load("ring8")
    ring8 = dataclasses.replace(ring8, test=ring8.test[:500])  # a smaller test set than the schema allows for
    with pytest.raises(UserError, match="n_samples=1000 is larger than ring8's test set"):
        ev.sample_size(ring8, ev.settings_for({"n_samples": {"points": 1000}}))


@needs_mnist
def test_image_runs_get_bits_per_dim_fid_and_class_coverage(tmp_path):
    from bench.io import save_torch, write_json
    from metrics.fid import MnistClassifier

    torch.manual_seed(0)
    weights = tmp_path / "clf.pt"
    save_torch(weights, MnistClassifier().state_dict())  # untrained: the plumbing is under test, not the numbers
    write_json(tmp_path / "clf.json", {"test_accuracy": 0.1})
    run = tmp_path / "run"
    train(RunSpec.build("realnvp", "mnist", 0, {"steps": 2, "width": 16, "n_layers": 2}, loop=LOOP), run,
          progress=False)
    sample_run(run, 200)
    settings = {"n_samples": {"image": 200}, "batch_size": 500}
    result = ev.evaluate(run, settings, classifier=weights)
    rec = _records(result)
    _matches_catalog(result, {"image"}, {"classifier"})
    assert rec["test_nll"]["n"] == 10_000 and rec["test_bpd"]["unit"] == "bits/dim"
    assert rec["test_bpd"]["value"] == pytest.approx(rec["test_nll"]["value"] / (784 * math.log(2)) + 8)
    for metric in ("fid", "precision", "recall", "classes_covered", "class_kl", "w2"):
        assert rec[metric]["status"] == "ok" and rec[metric]["n"] == 200, metric
    assert rec["fid"]["settings"]["classifier_test_accuracy"] == 0.1
    assert rec["fid"]["settings"]["extractor"].startswith("mnist-classifier-")
    without = _records(ev.evaluate(run, settings))  # no classifier: its metrics are n/a, with the reason
    for metric in catalog.needing("classifier"):
        assert without[metric]["status"] == "n/a" and "pass --classifier" in without[metric]["reason"], metric
    assert without["w2"]["status"] == "ok" and without["test_bpd"]["value"] == rec["test_bpd"]["value"]


def test_a_failing_shared_computation_fails_only_its_records(tmp_path, monkeypatch):
    run = _run(tmp_path, "realnvp", width=16)

    def broken(*args, **kwargs):
        raise RuntimeError("knn exploded")

    monkeypatch.setattr(ev, "knn_precision_recall", broken)
    rec = _records(ev.evaluate(run, SMALL_EVAL))
    for metric in ("precision", "recall"):
        assert rec[metric]["status"] == "failed" and "knn exploded" in rec[metric]["reason"]
    assert rec["w2"]["status"] == "ok" and rec["modes_covered"]["status"] == "ok"


def test_selected_metrics_are_the_only_ones_computed(tmp_path, monkeypatch):
    from models.vae import VAE

    run = _run(tmp_path, "vae")
    calls = []

    def not_selected(*args, **kwargs):
        calls.append(args)
        raise AssertionError("computed for a metric that was not selected")

    for name in ("exact_wasserstein", "knn_precision_recall", "mixture_mode_coverage"):
        monkeypatch.setattr(ev, name, not_selected)
    monkeypatch.setattr(VAE, "elbo", not_selected)
    iwae, ks = VAE.iwae, set()

    def recording_iwae(self, x, k, **kwargs):
        ks.add(k)
        return iwae(self, x, k, **kwargs)

    monkeypatch.setattr(VAE, "iwae", recording_iwae)
    rec = _records(ev.evaluate(run, {**SMALL_EVAL, "metrics": ["test_nll", "sliced_w2"]}))
    assert set(rec) == {"test_nll", "sliced_w2"} and calls == []
    assert rec["test_nll"]["status"] == "ok" and ks == {10}  # the NLL estimate needs IWAE at k_max only


def test_unknown_metric_names_the_valid_ones():
    with pytest.raises(UserError,
                       match=r"unknown metric 'fidd'; valid metrics: test_nll, test_bpd, .*, samples_per_s$"):
        ev.settings_for({"metrics": ["w2", "fidd"]})


def test_same_config_and_seed_give_identical_metrics(tmp_path):
    """On CPU a rerun reproduces every metric bit for bit (samples/s, a timing, aside)."""
    a, b = (ev.evaluate(_run(tmp_path / d, "realnvp", width=16), SMALL_EVAL) for d in "ab")

    def values(result):
        return [(r["metric"], r["value"], r["stderr"]) for r in result["records"] if r["metric"] != "samples_per_s"]

    assert values(a) == values(b) and len(values(a)) >= 10


@pytest.mark.parametrize("damage, message", [
    ("delete", "no samples file at {path}: draw them first with `dgmbench sample --run {run}`"),
    ("truncate",
     "samples file {path} is corrupt or truncated (.*); delete it and re-run `dgmbench sample --run {run}`"),
    ("foreign", "{path} was not written by `dgmbench sample`; delete it and re-run `dgmbench sample --run {run}`"),
])
@pytest.mark.parametrize("command", [["evaluate"], ["plot-run", "--out", "figure.png"]])
def test_cli_names_a_missing_or_broken_samples_file_in_one_line(tmp_path, damage, message, command):
    """Evaluation and the run figure read the samples file; without a usable one: exit 2, one line naming it and
    the command that draws it, nothing written."""
    import re
    import subprocess
    import sys

    run = _run(tmp_path, "realnvp", width=16)
    path = run / "samples.pt"
    if damage == "delete":
        path.unlink()
    elif damage == "truncate":
        path.write_bytes(path.read_bytes()[:100])
    else:
        torch.save(torch.zeros(3), path)
    command = [c if c != "figure.png" else str(tmp_path / c) for c in command]
    res = subprocess.run([sys.executable, "-m", "bench.cli", *command, "--run", str(run)], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 2
    line = res.stderr.strip()
    expected = re.escape(message.format(path=path, run=run)).replace(re.escape("(.*)"), r"\(\w+\)")
    assert "\n" not in line and re.fullmatch(f"dgmbench: error: {expected} \\(the pipeline's sample rule\\)", line)
    assert not (run / "metrics.json").exists() and not (tmp_path / "figure.png").exists()


@pytest.mark.parametrize("damage, message", [
    ("no weights", "no MNIST classifier at {clf}: train it with `dgmbench train-classifier --out {clf}`"),
    ("no record", "no classifier record at {record}: train it with `dgmbench train-classifier --out {clf}`"),
    ("truncated", r"MNIST classifier {clf} is corrupt or truncated \(\w+\); delete it and train it with"),
    ("foreign", r"{clf} does not hold the suite's MNIST classifier \(RuntimeError\); delete it and train it with"),
    ("no inception", "no Inception weights at {inception}: set evaluation.inception_weights to a local copy"),
])
def test_a_missing_or_broken_feature_extractor_stops_the_evaluation_before_any_compute(tmp_path, damage, message):
    from bench.io import save_torch, write_json
    from metrics.fid import MnistClassifier

    clf, record, inception = tmp_path / "clf.pt", tmp_path / "clf.json", tmp_path / "inception.pth"
    save_torch(clf, MnistClassifier().state_dict())
    write_json(record, {"test_accuracy": 0.1})
    settings = {"inception_weights": str(inception)} if damage == "no inception" else {}
    if damage == "no weights":
        clf.unlink()
    elif damage == "no record":
        record.unlink()
    elif damage == "truncated":
        clf.write_bytes(clf.read_bytes()[:100])
    elif damage == "foreign":
        save_torch(clf, {"weight": torch.zeros(3)})
    expected = message.format(**{k: re.escape(str(v)) for k, v in
                                 {"clf": clf, "record": record, "inception": inception}.items()})
    run = tmp_path / "never-trained"  # reached only after the check: its error would be "no checkpoint at ..."
    with pytest.raises(UserError, match=expected):
        ev.evaluate(run, settings, classifier=clf)
    with pytest.raises(UserError, match=expected):
        ev.reference("ring8", tmp_path / "ring8.json", settings, classifier=clf)
    assert not (tmp_path / "ring8.json").exists()


@pytest.mark.parametrize("settings, message", [
    ({"nsamples": 5}, r"evaluation: Additional properties are not allowed \('nsamples' was unexpected\)"),
    ({"n_samples": {"points": -5}}, "evaluation.n_samples.points: -5 is less than the minimum of 10"),
    ({"iwae_k": "ten"}, "evaluation.iwae_k: 'ten' is not of type 'array'"),
])
def test_evaluation_settings_from_the_command_line_are_checked_against_the_config_schema(settings, message):
    """--settings reach evaluate, sample and reference without a config file; a misspelt or invalid setting is an
    error naming it, not silently the default."""
    with pytest.raises(UserError, match=f"^--settings: invalid value at {message}"):
        ev.settings_for(settings)


def _toy_dataset(kind="points", levels=None):
    """Distinct train/val/test tensors (a swap of splits changes every number), a known density."""
    g = torch.Generator().manual_seed(0)
    shape = (2,) if kind == "points" else (1, 2, 2)
    train, val, test = (torch.randn(n, *shape, generator=g) + off for n, off in ((60, 5.0), (40, -5.0), (50, 0.0)))
    return datasets.Dataset(name="toy", version="v1", kind=kind, train=train, val=val, test=test, fingerprint="x",
                            log_prob=lambda x: -0.5 * x.double().pow(2).sum(1) - math.log(2 * math.pi),
                            info={} if levels is None else {"levels": levels})


class _FlowStub:
    """log_prob(x) = −|x|² (per example): the evaluator's records can be recomputed exactly."""
    device, capabilities, family = torch.device("cpu"), frozenset({"log_prob", "sample"}), "flow"

    def log_prob(self, x):
        return -x.flatten(1).double().pow(2).sum(1)

    def solver_info(self):
        return {}


class _VAEStub:
    """elbo(x) = −|x|²; iwae(x, k) = elbo(x) + log k: the gap grows with k and has a known sign."""
    device, capabilities, family = torch.device("cpu"), frozenset({"elbo", "iwae", "sample"}), "vae"

    def elbo(self, x):
        return -x.flatten(1).double().pow(2).sum(1)

    def iwae(self, x, k):
        return self.elbo(x) + math.log(k)


def test_exact_nll_is_over_the_whole_test_split():
    ds = _toy_dataset()
    rec = {r.metric: r for r in ev.likelihood_records(_FlowStub(), ds, ev.settings_for({"batch_size": 7}))}
    lp = -ds.test.double().pow(2).sum(1)
    assert rec["test_nll"].n == 50
    assert rec["test_nll"].value == pytest.approx(-lp.mean().item(), rel=1e-12)
    assert rec["test_nll"].stderr == pytest.approx(lp.std().item() / math.sqrt(50), rel=1e-12)


def test_vae_records_use_the_first_test_points_and_the_gap_is_iwae_kmax_minus_elbo():
    ds = _toy_dataset()
    s = ev.settings_for({"iwae_k": [10, 1, 100], "iwae_n_test": {"points": 30}})
    rec = {r.metric: r for r in ev.likelihood_records(_VAEStub(), ds, s)}
    elbo = -ds.test[:30].double().pow(2).sum(1)
    assert rec["elbo"].n == 30 and rec["elbo"].value == pytest.approx(elbo.mean().item(), rel=1e-12)
    assert rec["elbo"].stderr == pytest.approx(elbo.std().item() / math.sqrt(30), rel=1e-12)
    for k in (1, 10, 100):
        assert rec[f"iwae_k{k}"].value == pytest.approx(elbo.mean().item() + math.log(k), rel=1e-12)
    assert rec["test_nll"].value == pytest.approx(-(elbo.mean().item() + math.log(100)), rel=1e-12)
    assert rec["elbo_gap"].value == pytest.approx(math.log(100), rel=1e-9)  # IWAE_100 − ELBO ≥ 0
    assert rec["elbo_gap"].settings["k"] == 100


@pytest.mark.parametrize("levels, offset", [(256, 8.0), (2, 0.0)])
def test_bits_per_dim_record_and_its_standard_error(levels, offset):
    """8-bit images: nats of the [0,1]-scale density → bits/dim on the 0–255 scale (+ log2 256); binary images: a
    pmf, no rescaling. The standard error converts with the same factor 1/(D ln 2)."""
    ds = _toy_dataset("image", levels)
    nll = ev.Record("test_nll", 100.0, 3.0, 50, "nats")
    bpd = ev._bpd_record(nll, ds)
    assert bpd.value == pytest.approx(100.0 / (4 * math.log(2)) + offset, rel=1e-12)
    assert bpd.stderr == pytest.approx(3.0 / (4 * math.log(2)), rel=1e-12)
    assert bpd.unit == "bits/dim" and bpd.n == 50


def test_reference_floor_is_the_entropy_estimate_on_the_test_split(tmp_path, monkeypatch):
    ds = _toy_dataset()
    monkeypatch.setattr(ev.datasets, "load", lambda name, root=None: ds)
    monkeypatch.setattr(ev, "sample_records", lambda *a, **k: [])
    ref = ev.reference("toy", tmp_path / "ref.json", {"n_samples": {"points": 40}})
    rec = {r["metric"]: r for r in ref["records"]}
    lp = ds.log_prob(ds.test)
    assert rec["test_nll"]["n"] == 50 and rec["test_nll"]["value"] == pytest.approx(-lp.mean().item(), rel=1e-12)
