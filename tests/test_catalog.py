"""The metric catalog: one consistent entry per metric, record names, applicability, selection, light imports."""
import subprocess
import sys

import pytest

from bench import catalog
from core.errors import UserError


def test_entries_are_unique_and_their_references_resolve():
    assert len(catalog.BY_NAME) == len(catalog.METRICS)
    for m in catalog.METRICS:
        assert m.direction in {"lower", "higher", "zero", None}, m.name
        assert m.applies and all(isinstance(n, catalog.Needs) for n in m.applies), m.name
        for other in (m.replaced_by, m.same_as):
            assert not other or other in catalog.BY_NAME, (m.name, other)
    assert catalog.BY_NAME["test_nll"].replaced_by == "test_bpd" and catalog.BY_NAME["test_bpd"].same_as == "test_nll"


def test_titles_and_headers():
    assert catalog.BY_NAME["test_bpd"].header == "test NLL (bits/dim) ↓"
    assert catalog.BY_NAME["elbo_gap"].header == "ELBO gap (nats) →0"
    assert catalog.BY_NAME["high_quality"].header == "high quality (%) ↑" and catalog.scale("high_quality") == 100
    assert catalog.title("iwae_k10") == "IWAE bound (nats)" and catalog.title("training") == "training"


def test_records_find_their_entry():
    assert catalog.find("w2").name == "w2"
    assert catalog.find("iwae_k1").name == catalog.find("iwae_k1000").name == "iwae_k"
    assert catalog.find("training") is None and catalog.find("samples") is None  # a failed run, a failed group


def test_applicability():
    points, mixture = {"points"}, {"points", "mixture"}
    sample_metrics = ["w1", "w2", "sliced_w2"]
    assert catalog.applicable({"sample"}, points) == [*sample_metrics, "precision", "recall", "samples_per_s"]
    assert catalog.applicable({"log_prob", "sample"}, mixture) == [
        "test_nll", "elbo_gap", *sample_metrics, "modes_covered", "high_quality", "mode_kl", "precision", "recall",
        "samples_per_s"]
    assert catalog.applicable({"log_prob", "inverse", "sample"}, points)[:3] == ["test_nll", "elbo_gap",
                                                                                "inverse_error"]
    assert catalog.applicable({"elbo", "iwae", "sample"}, {"image"}) == [
        "test_nll", "test_bpd", "elbo", "iwae_k", "elbo_gap", *sample_metrics, "samples_per_s"]
    assert catalog.applicable({"sample"}, {"image"}, {"classifier", "inception"}) == [
        *sample_metrics, "fid", "fid_inception", "classes_covered", "class_kl", "precision", "recall",
        "samples_per_s"]
    assert catalog.needing("classifier") == ("fid", "classes_covered", "class_kl", "precision", "recall")


def test_selection_accepts_evaluated_metrics_only():
    catalog.check_selection(["w2", "iwae_k", "samples_per_s"])
    catalog.check_selection(None)
    with pytest.raises(UserError, match=r"unknown metric 'train_time_s'; valid metrics: test_nll, .*, samples_per_s$"):
        catalog.check_selection(["w2", "train_time_s"])  # a cost of the pipeline, not something evaluate computes


def test_the_catalog_imports_nothing_heavy():
    """Config validation imports it on every Snakefile parse."""
    code = ("import sys, bench.catalog; print(' '.join(sorted({'torch', 'ot', 'sklearn', 'torch_fidelity', "
            "'pandas', 'numpy', 'scipy'} & set(sys.modules))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
