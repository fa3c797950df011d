"""Aggregation cost rows, tables, figures and the self-contained report, on synthetic tidy tables."""
import dataclasses
import json
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from bench import catalog, claims, cli, report, stats, tables  # noqa: E402
from bench.aggregate import COLUMNS, collect  # noqa: E402
from core.errors import UserError  # noqa: E402

GAN_NA = "gan: an implicit model (samples only) has no tractable density or bound"
DIVERGED = "diverged: non-finite loss at step 1200"
FAMILY = {"data": "reference", "realnvp": "flow", "ffjord": "cnf", "vae": "vae", "dcgan": "gan", "wgan": "gan"}


def _row(dataset, method, seed, metric, value=None, status="ok", reason="", run_status="ok", unit="", hparams=None):
    config = {"dataset": dataset, "method": method, "seed": seed, "hparams": hparams or {"steps": 100}}
    return {"dataset": dataset, "method": method, "family": FAMILY[method], "seed": seed, "metric": metric,
            "value": value, "stderr": None, "n": 500, "unit": unit, "status": status, "reason": reason,
            "run_status": run_status, "git_commit": "0123456789abcdef", "git_dirty": False,
            "config_hash": f"hash-{method}", "config": json.dumps(config), "data_fingerprint": "fp",
            "packages": json.dumps({"torch": "2.14.1", "numpy": "2.4.6"}), "device": "cpu",
            "train_wall_time_s": 10.0, "slurm_job_train": None, "slurm_job_evaluate": None}


def _run(dataset, method, seed, values, hparams=None):
    na = {m: GAN_NA for m in ("test_nll", "elbo_gap")} if FAMILY[method] == "gan" else {}
    return ([_row(dataset, method, seed, m, v, hparams=hparams) for m, v in values.items()]
            + [_row(dataset, method, seed, m, status="n/a", reason=r, unit="nats") for m, r in na.items()])


def _failed(dataset, method, seed):
    return [_row(dataset, method, seed, "training", status="failed", reason=DIVERGED, run_status="failed")]


def synthetic() -> pd.DataFrame:
    """moons: floor, realnvp, vae, dcgan (seed 2 diverged); ring8: floor, dcgan; mnist: floor, realnvp, dcgan,
    wgan (every run failed). No CNF."""
    rows = _run("moons", "data", 0, {"test_nll": 0.30, "w2": 0.04, "precision": 0.98})
    rows += _run("ring8", "data", 0, {"w2": 0.01, "modes_covered": 8.0, "high_quality": 0.989})
    rows += _run("mnist", "data", 0, {"fid": 1.0, "classes_covered": 10.0, "w2": 5.0})
    for seed in range(3):
        rows += _run("moons", "realnvp", seed, {"test_nll": 0.35 + 0.01 * seed, "elbo_gap": 0.0,
                                                "w2": 0.07 + 0.001 * seed, "precision": 0.96 - 0.01 * seed,
                                                "train_time_s": 100.0 + seed, "train_peak_mem_mb": 300.0,
                                                "samples_per_s": 2000.0 + seed})
        rows += _run("moons", "vae", seed, {"test_nll": 0.5 + 0.02 * seed, "elbo": -0.6, "iwae_k10": -0.55,
                                            "elbo_gap": 0.1, "w2": 0.12 + 0.01 * seed, "precision": 0.90,
                                            "train_time_s": 50.0 + seed}, hparams={"latent_dim": 2})
        rows += _run("ring8", "dcgan", seed, {"w2": 0.3 + 0.1 * seed, "modes_covered": 5.0 + seed,
                                              "high_quality": 0.9, "train_time_s": 80.0}, hparams={"latent_dim": 3})
        rows += _run("mnist", "realnvp", seed, {"test_bpd": 1.5 + 0.1 * seed, "test_nll": 815.0 + 50 * seed,
                                                "fid": 20.0 + seed, "fid_inception": 30.0 + 2 * seed,
                                                "classes_covered": 10.0, "w2": 9.0,
                                                "train_time_s": 900.0})
    for seed in range(2):
        rows += _run("moons", "dcgan", seed, {"w2": 0.2 + 0.05 * seed, "precision": 0.7, "train_time_s": 60.0},
                     hparams={"latent_dim": 2})
        rows += _run("mnist", "dcgan", seed, {"fid": 40.0 + seed, "classes_covered": 7.0 + seed},
                     hparams={"latent_dim": 2})
    rows += _failed("moons", "dcgan", 2)
    rows += _failed("mnist", "wgan", 0) + _failed("mnist", "wgan", 1)
    return pd.DataFrame(rows, columns=COLUMNS)


@pytest.fixture(scope="module")
def res() -> tables.Results:
    return tables.Results(synthetic())


def _table(tables, name):
    return next(t for t in tables if t.name == name)


def _cells(table, method):
    row = next(r for r in table.rows if r[0].text == method)
    return dict(zip(table.header, row, strict=True))


def _squeezed(markdown):
    """Markdown tables with tabulate's column padding collapsed to one space."""
    return re.sub(" {2,}", " ", markdown)


def test_summary_table_cells_floor_na_and_failed(res):
    moons = _table(tables.summary_tables(res), "summary_moons")
    assert [r[0].text for r in moons.rows] == ["data (floor)", "realnvp", "vae", "dcgan"]
    realnvp = _cells(moons, "realnvp")
    ci = stats.t_interval([0.35, 0.36, 0.37])
    assert realnvp["test NLL (nats) ↓"].text == tables.fmt_mean_hw(ci.mean, ci.half_width) == "0.360 ± 0.025"
    dcgan = _cells(moons, "dcgan")
    assert (dcgan["seeds"].text, dcgan["failed"].text) == ("3", "1")
    failed_note = moons.notes[dcgan["failed"].notes[0] - 1]
    assert failed_note == f"dcgan: seed 2: {DIVERGED}"
    nll = dcgan["test NLL (nats) ↓"]
    assert nll.text == "n/a" and moons.notes[nll.notes[0] - 1] == GAN_NA
    assert dcgan["ELBO gap (nats) →0"].notes == nll.notes  # one footnote per reason
    assert dcgan["W2 ↓"].text == tables.fmt_mean_hw(0.225, stats.t_interval([0.2, 0.25]).half_width)
    md = _squeezed(moons.markdown(Path()))
    assert "| dcgan | 3 | 1 [1] |" in md and "n/a [2]" in md and f"- [2] {GAN_NA}" in md


def test_summary_table_images_and_all_failed_method(res):
    mnist = _table(tables.summary_tables(res), "summary_mnist")
    headers = " ".join(mnist.header)
    assert "test NLL (bits/dim) ↓" in headers and "nats" not in headers  # bits/dim replaces nats on images
    wgan = _cells(mnist, "wgan")
    assert wgan["failed"].text == "2" and wgan["FID ↓"].text == "failed"
    assert DIVERGED in mnist.notes[wgan["FID ↓"].notes[0] - 1]
    assert _cells(mnist, "data (floor)")["test NLL (bits/dim) ↓"].text == "–"
    assert "modes covered" not in headers and "classes covered ↑" in headers
    # the standard Inception FID (a user's weights file) beside the classifier's, where runs recorded it
    assert _cells(mnist, "realnvp")["FID (Inception) ↓"].text == tables.fmt_mean_hw(
        32.0, stats.t_interval([30.0, 32.0, 34.0]).half_width)
    assert _cells(mnist, "dcgan")["FID (Inception) ↓"].text == "–"
    nll = _cells(mnist, "dcgan")["test NLL (bits/dim) ↓"]  # no bits/dim record: the nats record's n/a stands
    assert nll.text == "n/a" and mnist.notes[nll.notes[0] - 1] == GAN_NA


def test_retried_runs_are_counted_and_footnoted():
    df = synthetic()
    retried = (df.dataset == "moons") & (df.method == "dcgan") & df.seed.isin([1, 2])  # seed 2 diverged again
    df.loc[retried, "retry_seed"] = df.loc[retried, "seed"] + 3_000_003
    res = tables.Results(df)
    assert res.runs.loc[("moons", "dcgan"), "n_retried"] == 2 and res.runs.n_retried.sum() == 2
    assert set(res.stats[(res.stats.method == "dcgan") & (res.stats.dataset == "moons")].n_retried) == {2}
    moons = _table(tables.summary_tables(res), "summary_moons")
    failed = _cells(moons, "dcgan")["failed"]
    assert failed.text == "1" and [moons.notes[k - 1] for k in failed.notes] == [
        f"dcgan: seed 2: {DIVERGED}", "dcgan: diverged, retried: seed 1 as seed 3000004, seed 2 as seed 3000005"]
    runs = report.runs_table(res)
    row = next(dict(zip(runs.header, r, strict=True)) for r in runs.rows
               if (r[0].text, r[1].text) == ("moons", "dcgan"))
    assert (row["failed"].text, row["retried"].text) == ("1", "2")
    assert "19 training runs, 3 failed or diverged, 2 retried with a new seed" in report.intro(res, "welch")[1].text


def test_columns_come_from_the_catalog(res, monkeypatch):
    moons = _table(tables.summary_tables(res), "summary_moons")
    # the summary metrics with values on moons, in the catalog's order (vae's elbo and iwae_k10 are no column)
    assert moons.header == ["method", "seeds", "failed", "test NLL (nats) ↓", "ELBO gap (nats) →0", "W2 ↓",
                            "precision ↑", "training time (s) ↓", "samples/s ↑"]
    assert moons.header[3:] == [catalog.BY_NAME[m].header for m in ("test_nll", "elbo_gap", "w2", "precision",
                                                                    "train_time_s", "samples_per_s")]
    cost = _table(tables.cost_tables(res), "cost_moons")
    assert cost.header[3:] == [catalog.BY_NAME[m].header for m in ("train_time_s", "train_peak_mem_mb",
                                                                   "samples_per_s")]
    renamed = dataclasses.replace(catalog.BY_NAME["w2"], label="Wasserstein-2", unit="u", scale=10.0)
    monkeypatch.setattr(catalog, "SUMMARY", (renamed,))
    moons = _table(tables.summary_tables(res), "summary_moons")
    assert moons.header == ["method", "seeds", "failed", "Wasserstein-2 (u) ↓"]
    assert _cells(moons, "data (floor)")["Wasserstein-2 (u) ↓"].text == "0.4"


def test_high_quality_is_shown_in_percent(res):
    ring8 = _table(tables.summary_tables(res), "summary_ring8")
    assert _cells(ring8, "data (floor)")["high quality (%) ↑"].text == "98.9"


def test_latex_is_booktabs_and_escaped(res):
    tex = _table(tables.summary_tables(res), "summary_moons").latex()
    assert r"\toprule" in tex and r"\midrule" in tex and r"\bottomrule" in tex
    assert r"\_" in tex and "test\\_nll" in tex and r"$\pm$" in tex and r"\textsuperscript{2}" in tex
    assert re.search(r"(?<!\\)_", tex.replace(r"\_", "")) is None  # no bare underscore left


def test_pairwise_direction_holm_and_floor_excluded(res):
    pairs = tables.pairwise_frame(res.df)
    assert "data" not in set(pairs.method_a) | set(pairs.method_b)
    prec = pairs[(pairs.dataset == "moons") & (pairs.metric == "precision")].set_index(["method_a", "method_b"])
    # higher precision is better: realnvp (0.95) beats vae (0.90) and dcgan (0.70) on every seed
    assert prec.loc[("realnvp", "vae"), "p_a_better"] == 1.0 and prec.loc[("realnvp", "dcgan"), "p_a_better"] == 1.0
    w2 = pairs[(pairs.dataset == "moons") & (pairs.metric == "w2")].set_index(["method_a", "method_b"])
    # lower W2 is better: realnvp beats vae
    assert w2.loc[("realnvp", "vae"), "p_a_better"] == 1.0 and w2.loc[("realnvp", "vae"), "hedges_g"] < 0
    x, y = [0.07, 0.071, 0.072], [0.12, 0.13, 0.14]
    assert w2.loc[("realnvp", "vae"), "p"] == pytest.approx(stats.welch_p(x, y))
    fam = pairs[(pairs.dataset == "moons") & (pairs.metric == "w2")]
    assert np.allclose(fam.p_holm, stats.holm(fam.p.to_numpy()), equal_nan=True)
    assert w2.loc[("realnvp", "vae"), "better"] == "realnvp"
    gap = pairs[(pairs.metric == "elbo_gap")].set_index(["method_a", "method_b"])
    assert gap.loc[("realnvp", "vae"), "p_a_better"] == 1.0  # |0| beats |0.1|: closer to zero is better
    mw = tables.pairwise_frame(res.df, test="mannwhitney")
    assert set(mw.test) == {"mannwhitney"} and not np.allclose(mw.p, pairs.p, equal_nan=True)


def test_rank_frame_winner_failed_runs_and_floor(res):
    ranks = tables.rank_frame(res.df).set_index(["dataset", "metric", "method"])
    assert "data" not in ranks.index.get_level_values("method")
    win = ranks.loc[("moons", "w2", "realnvp")]
    assert (win.mean_rank, win.min_rank, win.max_rank, win.rank_of_mean) == (1, 1, 1, 1)
    dcgan = ranks.loc[("moons", "w2", "dcgan")]  # failed on seed 2: ranked last there
    assert dcgan.per_seed_ranks == "3;3;3" and ranks.loc[("moons", "w2", "vae")].per_seed_ranks == "2;2;2"
    tie = ranks.loc[("moons", "precision", "vae")]  # higher is better; vae 0.90 vs dcgan 0.70, dcgan failed seed 2
    assert tie.mean_rank == 2
    table = _table(tables.rank_tables(res, tables.rank_frame(res.df)), "ranks_moons")
    assert _cells(table, "realnvp")["W2 ↓"].text == "1 [1–1]"


def test_approaches_table_evidence_comes_from_the_data(res):
    table = claims.approaches_table(res)
    by_claim = {r[0].text: dict(zip(table.header[1:], (c.text for c in r[1:]), strict=True)) for r in table.rows}
    likelihood = by_claim["computes the likelihood exactly"]
    assert "exact test NLL" in likelihood["flow (realnvp)"] and "0.360 ± 0.025" in likelihood["flow (realnvp)"]
    assert "IWAE bound" in likelihood["vae (vae)"]
    assert f"mnist/dcgan, moons/dcgan, ring8/dcgan: n/a: {GAN_NA}" in likelihood["gan (dcgan, wgan)"]
    assert by_claim["mode collapse"]["cnf"] == "course: no\nmeasured: not measured in this run"  # no CNF ran
    latent = by_claim["latent dimension q may differ from the data dimension n"]
    assert "moons (n = 2): vae q = 2 [config hash-vae]" in latent["vae (vae)"]
    assert "ring8 (n = 2): dcgan q = 3" in latent["gan (dcgan, wgan)"]
    assert "mnist (n = 784): realnvp q = n (a bijection)" in latent["flow (realnvp)"]
    modes = by_claim["mode collapse"]["gan (dcgan, wgan)"]
    ci = stats.t_interval([5.0, 6.0, 7.0])
    assert f"dcgan {tables.fmt_mean_hw(ci.mean, ci.half_width)}" in modes and "(floor 8)" in modes
    saddle = by_claim["saddle-point (min-max) training difficulty"]["gan (dcgan, wgan)"]
    assert "failed or diverged runs: 3 of 10" in saddle and "moons W2: dcgan seed sd 0.03536, CV 16%" in saddle
    assert "= 5.6 × floor" in by_claim["sample quality"]["gan (dcgan, wgan)"]  # moons dcgan W2 0.225 / 0.04
    assert "not measured in this run" in by_claim["sample quality"]["cnf"]


def _fake_run_files(runs_dir, figs_dir):
    for seed in range(2):
        run = runs_dir / "moons" / "realnvp" / f"seed{seed}"
        run.mkdir(parents=True)
        pd.DataFrame({"step": [10, 20, 30], "wall_s": [1.0, 2.0, 3.0], "loss": [2.0, 1.0, 0.5],
                      "val_loss": [None, 1.1, None]}).to_csv(run / "train_log.csv", index=False)
    gan = runs_dir / "moons" / "dcgan" / "seed0"
    gan.mkdir(parents=True)
    pd.DataFrame({"step": [10, 20], "wall_s": [1, 2], "d_loss": [1.3, 1.2], "g_loss": [0.7, 0.9]}).to_csv(
        gan / "train_log.csv", index=False)
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [0, 1])
    out = figs_dir / "runs" / "moons" / "realnvp" / "seed0.png"
    out.parent.mkdir(parents=True)
    fig.savefig(out)
    plt.close(fig)


def test_report_end_to_end_is_self_contained(tmp_path):
    csv = tmp_path / "metrics.csv"
    synthetic().to_csv(csv, index=False)
    runs, out = tmp_path / "runs", tmp_path / "reports"
    _fake_run_files(runs, out / "figures")
    cli.main(["report", "--metrics", str(csv), "--runs-dir", str(runs), "--out-dir", str(out)])
    for name in ("summary.md", "summary.csv", "summary_moons.tex", "pairwise.md", "pairwise.csv", "ranks.md",
                 "ranks.csv", "cost.md", "approaches.md"):
        assert (out / "tables" / name).is_file(), name
    for name in ("curves_moons.png", "distributions_moons.png", "samples_moons.png", "cost_quality.png"):
        assert (out / "figures" / name).is_file(), name
    page = (out / "report.html").read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:|//)""", page, re.I)
    assert "<link" not in page and "<script" not in page
    sources = re.findall(r'<img[^>]*src="([^"]*)"', page)
    assert len(sources) == 6 and all(s.startswith("data:image/png;base64,") for s in sources)
    for dataset in ("moons", "ring8", "mnist"):
        assert f'id="summary_{dataset}"' in page and f"Summary: {dataset}" in (out / "report.md").read_text()
    assert 'id="approaches"' in page and DIVERGED in page and GAN_NA in page
    md = _squeezed((out / "report.md").read_text())
    assert "](figures/curves_moons.png)" in md and "base64" not in md
    stats_csv = pd.read_csv(out / "tables" / "summary.csv")
    row = stats_csv[(stats_csv.dataset == "moons") & (stats_csv.method == "dcgan") & (stats_csv.metric == "w2")].iloc[0]
    assert (row.n, row.n_runs, row.n_failed, row["values"]) == (2, 3, 1, "0.2;0.25")
    assert row.half_width == pytest.approx(stats.t_interval([0.2, 0.25]).half_width)
    summary = _squeezed((out / "tables" / "summary.md").read_text())
    assert "| realnvp | 3 | 0 |" in summary and "test_nll" in summary
    assert "| dcgan | 3 | 1 [1] | n/a [2] | n/a [2] |" in summary  # "n/a" survives the CSV round trip


def test_report_of_a_single_failed_run_completes(tmp_path):
    csv = tmp_path / "metrics.csv"
    pd.DataFrame(_failed("moons", "dcgan", 0), columns=COLUMNS).to_csv(csv, index=False)
    written = report.report(csv, tmp_path / "reports", tmp_path / "no-runs")
    assert tmp_path / "reports" / "report.html" in written
    assert "| dcgan | 1 | 1 [1] |" in _squeezed((tmp_path / "reports" / "tables" / "summary.md").read_text())


def _metrics_json(path, family="flow", train_wall=12.5):
    path.parent.mkdir(parents=True, exist_ok=True)
    machine = {"git": {"commit": "abc", "dirty": False}, "packages": {}, "device": "cpu", "slurm_job_id": None}
    path.write_text(json.dumps({
        "run": {"dataset": "moons", "method": "m", "seed": 0}, "family": family, "status": "ok",
        "records": [{"metric": "w2", "value": 0.1, "stderr": None, "n": 10, "unit": "", "status": "ok", "reason": ""}],
        "train": {"machine": machine, "config_hash": "h", "spec": {}, "data": {"fingerprint": "fp"},
                  "train_wall_time_s": train_wall},
        "evaluation": {"machine": machine}}))


HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def test_collect_adds_cost_rows_from_benchmark_files(tmp_path):
    run = tmp_path / "run" / "metrics.json"
    _metrics_json(run)
    (run.parent / "benchmark_train.tsv").write_text(HEADER + "28.5\t0:00:28\t-\t4399\t1352\t1411\t0.1\t0\t24\t7\n")
    (run.parent / "benchmark_sample.tsv").write_text(HEADER + "5.5\t0:00:05\t790\t3389\t517\t574\t1\t0\t55\t3\n")
    (run.parent / "benchmark_evaluate.tsv").write_text(HEADER + "10.0\t0:00:10\t795\t3687\t447\t560\t6\t4\t28\t34\n")
    df = collect([run]).set_index("metric")
    assert df.loc["train_time_s", "value"] == 28.5 and df.loc["train_time_s", "unit"] == "s"
    assert df.loc["eval_time_s", "value"] == 15.5
    assert "train_peak_mem_mb" not in df.index  # "-" is skipped


def test_collect_cost_fallbacks_and_reference(tmp_path):
    run = tmp_path / "run" / "metrics.json"
    _metrics_json(run)
    (run.parent / "benchmark_evaluate.tsv").write_text(HEADER + "10.0\t0:00:10\t795\t3687\t447\t560\t6\t4\t28\t34\n")
    df = collect([run]).set_index("metric")
    assert df.loc["train_time_s", "value"] == 12.5  # provenance wall time when no train benchmark
    assert "eval_time_s" not in df.index and "train_peak_mem_mb" not in df.index
    ref = tmp_path / "reference" / "moons.json"
    _metrics_json(ref, family="reference", train_wall=0.0)
    assert list(collect([ref]).metric) == ["w2"]


@pytest.mark.parametrize("damage, message", [
    ("missing", "no metrics file at {path}: write it with `dgmbench evaluate --run {run}`"),
    ("truncated", r"metrics file {path} is corrupt or truncated \(JSONDecodeError\); delete it and write it with"),
    ("foreign", "{path} was not written by `dgmbench evaluate` or `dgmbench reference`; delete it and write it"),
])
def test_aggregate_names_a_missing_or_broken_metrics_file(tmp_path, damage, message):
    path = tmp_path / "run" / "metrics.json"
    _metrics_json(path)
    if damage == "missing":
        path.unlink()
    elif damage == "truncated":
        path.write_text(path.read_text()[:50])
    else:
        path.write_text(json.dumps({"records": []}))
    with pytest.raises(UserError, match=message.format(path=re.escape(str(path)), run=re.escape(str(path.parent)))):
        collect([path])


def test_report_names_a_missing_or_foreign_metrics_table(tmp_path):
    with pytest.raises(UserError, match="no metrics table at .*: build it with `dgmbench aggregate"):
        report.report(tmp_path / "metrics.csv", tmp_path / "out")
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    with pytest.raises(UserError, match=r"other.csv is not a metrics table of `dgmbench aggregate` \(no column"):
        report.report(tmp_path / "other.csv", tmp_path / "out")
    assert not (tmp_path / "out").exists()
