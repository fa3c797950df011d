"""Every metric the suite reports, one entry each: what it is called, which side is better, when it applies and
how the report shows it. Evaluation, statistics and report all read this module.

Stdlib only: config validation imports it on every Snakefile parse, before any metric implementation (torch,
POT, scikit-learn, torch-fidelity) is needed.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from core.errors import UserError

Direction = Literal["lower", "higher", "zero"]  # "zero": closer to 0 is better (the loss is |x|)
ARROW = {"lower": "↓", "higher": "↑", "zero": "→0"}


@dataclass(frozen=True)
class Needs:
    """One way a metric applies to a run: every field set here must hold (empty: no requirement)."""
    capability: str = ""  # of the model: log_prob, elbo, iwae, inverse
    data: str = ""  # points, image, or mixture (points drawn from known mode centers)
    evaluator: str = ""  # classifier (the suite's MNIST classifier), inception (evaluation.inception_weights)

    def holds(self, capabilities: Iterable[str], data: Iterable[str], evaluators: Iterable[str]) -> bool:
        return ((not self.capability or self.capability in capabilities) and (not self.data or self.data in data)
                and (not self.evaluator or self.evaluator in evaluators))


@dataclass(frozen=True)
class Metric:
    """A metric and how it is read.

    `applies` lists the alternatives under which a run gets a value (any one suffices; the default: every run,
    from its samples). `stage` says who records it: `dgmbench evaluate` (selectable in `evaluation.metrics`) or
    `dgmbench aggregate` (the cost of the pipeline's rules). `unit` is the unit of the value as the report shows
    it, after `scale`. `replaced_by` hides this column on a dataset where that metric has values (test NLL in
    bits/dim instead of nats on images); `same_as` names the metric this one re-expresses, whose n/a or failed
    record stands for it when it has none (no bits/dim record for a GAN)."""
    name: str
    label: str
    direction: Direction | None
    unit: str = ""
    applies: tuple[Needs, ...] = (Needs(),)
    stage: Literal["evaluate", "aggregate"] = "evaluate"
    summary: bool = False  # a column of the summary tables
    cost: bool = False  # a column of the cost tables
    scale: float = 1.0
    replaced_by: str = ""
    same_as: str = ""
    prefix: bool = False  # the name stands for a family of records: iwae_k -> iwae_k1, iwae_k10, ...

    @property
    def title(self) -> str:
        """The label with its unit: 'test NLL (nats)'."""
        return f"{self.label} ({self.unit})" if self.unit else self.label

    @property
    def header(self) -> str:
        """The column header: the title and the arrow of the better side."""
        return f"{self.title} {ARROW[self.direction]}" if self.direction else self.title


DENSITY = (Needs(capability="log_prob"), Needs(capability="iwae"))  # an exact likelihood or a bound on it
IMAGE_CLASSIFIER = (Needs(data="image", evaluator="classifier"),)

IMAGE_DENSITY = (Needs(capability="log_prob", data="image"), Needs(capability="iwae", data="image"))
MIXTURE = (Needs(data="mixture"),)

# In the order of the report's columns.
METRICS = (
    Metric("test_nll", "test NLL", "lower", unit="nats", applies=DENSITY, summary=True, replaced_by="test_bpd"),
    Metric("test_bpd", "test NLL", "lower", unit="bits/dim", applies=IMAGE_DENSITY, summary=True, same_as="test_nll"),
    Metric("elbo", "ELBO", "higher", unit="nats", applies=(Needs(capability="elbo"),)),
    Metric("iwae_k", "IWAE bound", "higher", unit="nats", applies=(Needs(capability="iwae"),), prefix=True),
    Metric("elbo_gap", "ELBO gap", "zero", unit="nats", applies=DENSITY, summary=True),  # 0: exact likelihood
    Metric("inverse_error", "inverse error", "lower", applies=(Needs(capability="inverse"),)),
    Metric("w1", "W1", "lower", summary=True),
    Metric("w2", "W2", "lower", summary=True),
    Metric("sliced_w2", "sliced W2", "lower", summary=True),
    Metric("fid", "FID", "lower", applies=IMAGE_CLASSIFIER, summary=True),
    Metric("fid_inception", "FID (Inception)", "lower", applies=(Needs(data="image", evaluator="inception"),),
           summary=True),
    Metric("modes_covered", "modes covered", "higher", applies=MIXTURE, summary=True),
    Metric("high_quality", "high quality", "higher", unit="%", applies=MIXTURE, summary=True, scale=100),
    Metric("mode_kl", "mode KL", "lower", unit="nats", applies=MIXTURE),
    Metric("classes_covered", "classes covered", "higher", applies=IMAGE_CLASSIFIER, summary=True),
    Metric("class_kl", "class KL", "lower", unit="nats", applies=IMAGE_CLASSIFIER),
    # k-NN precision/recall: in data space on points, in the classifier's feature space on images
    Metric("precision", "precision", "higher", applies=(Needs(data="points"), *IMAGE_CLASSIFIER), summary=True),
    Metric("recall", "recall", "higher", applies=(Needs(data="points"), *IMAGE_CLASSIFIER), summary=True),
    Metric("train_time_s", "training time", "lower", unit="s", stage="aggregate", summary=True, cost=True),
    Metric("train_peak_mem_mb", "training peak memory", "lower", unit="MB", stage="aggregate", cost=True),
    Metric("eval_time_s", "sampling + evaluation time", "lower", unit="s", stage="aggregate", cost=True),
    Metric("samples_per_s", "samples/s", "higher", summary=True, cost=True),
)
BY_NAME = {m.name: m for m in METRICS}
SELECTABLE = tuple(m.name for m in METRICS if m.stage == "evaluate")  # what `evaluation.metrics` accepts
SUMMARY = tuple(m for m in METRICS if m.summary)
COST = tuple(m for m in METRICS if m.cost)


def find(record: str) -> Metric | None:
    """The entry of a record's metric (iwae_k10 -> iwae_k); None for records of no metric, such as `training`
    (a failed run) or a failed group of computations."""
    if record in BY_NAME:
        return BY_NAME[record]
    return next((m for m in METRICS if m.prefix and record.startswith(m.name)), None)


def direction(record: str) -> Direction | None:
    """The better side of a record's metric; None when it has none (and is never compared or ranked)."""
    metric = find(record)
    return metric.direction if metric else None


def title(record: str) -> str:
    metric = find(record)
    return metric.title if metric else record


def scale(record: str) -> float:
    metric = find(record)
    return metric.scale if metric else 1.0


def applicable(capabilities: Iterable[str], data: Iterable[str], evaluators: Iterable[str] = ()) -> list[str]:
    """The evaluated metrics that apply to a model with `capabilities` on data of the kinds `data` (e.g.
    {"points", "mixture"}) with the feature extractors `evaluators` at hand."""
    caps, kinds, tools = set(capabilities), set(data), set(evaluators)
    return [m.name for m in METRICS if m.stage == "evaluate" and any(n.holds(caps, kinds, tools) for n in m.applies)]


def needing(evaluator: str) -> tuple[str, ...]:
    """The metrics that some run gets only with the feature extractor `evaluator` (n/a without it)."""
    return tuple(m.name for m in METRICS if any(n.evaluator == evaluator for n in m.applies))


def check_selection(names: list[str] | None) -> None:
    """A UserError naming the first name in an `evaluation.metrics` selection that is not an evaluated metric."""
    unknown = [n for n in names or () if n not in SELECTABLE]
    if unknown:
        raise UserError(f"unknown metric {unknown[0]!r}; valid metrics: {', '.join(SELECTABLE)}")
