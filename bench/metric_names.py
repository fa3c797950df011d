"""The names of the metrics an evaluation can report, for the `evaluation.metrics` selection.

Kept apart from bench/evaluate.py so that validating a config (on every Snakefile parse) does not import the
metric implementations (POT, scikit-learn, torch-fidelity).
"""
from __future__ import annotations

from core.errors import UserError

# Every metric a run's records can carry (besides "training", the record of a failed run); "iwae_k" stands for
# the records iwae_k1, iwae_k10, ... (one per `iwae_k` setting).
METRICS = ("test_nll", "test_bpd", "elbo", "iwae_k", "elbo_gap", "inverse_error", "w1", "w2", "sliced_w2",
           "precision", "recall", "modes_covered", "high_quality", "mode_kl", "fid", "fid_inception",
           "classes_covered", "class_kl", "samples_per_s")


def check_metrics(names: list[str] | None) -> None:
    unknown = [n for n in names or () if n not in METRICS]
    if unknown:
        raise UserError(f"unknown metric {unknown[0]!r}; valid metrics: {', '.join(METRICS)}")
