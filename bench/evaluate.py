"""Apply the metrics that fit a run's capabilities and dataset, one record per metric, into `metrics.json`.

- Likelihood models: exact test NLL over the whole test set (bits/dim on images); CNFs add their solver
  settings, number of function evaluations and inverse error. Latent-variable models: ELBO, IWAE_k and the
  ELBO gap; their test NLL is the IWAE bound with the largest k. Flows report an ELBO gap of 0 by construction.
- Every model's samples: exact W1 and W2 (POT's dense solver, for W2 above 2,000 × 2,000 pairs the certified
  multiscale one, or POT's lazy one where neither fits `ot_memory_budget()`; `exact_solver`) and sliced W2
  against the same number of test points;
  2-D: k-NN precision/recall in data space and, for mixtures, mode coverage; images: FID, precision/recall
  (torch-fidelity on the suite's MNIST classifier features) and class coverage.
- `reference` applies the sample metrics to real data (train vs test, same n): the noise floor every model's
  numbers are read against, with the data's own entropy (the NLL floor) where the density is known.
A metric that does not apply to a method is an "n/a" record with the reason; a metric that fails is a
"failed" record and the others are kept; a diverged run gets a "failed" record. The setting `metrics` (names from
bench/catalog.py) restricts the records to those metrics and skips the computations only the others need.
"""
from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from bench import catalog, datasets, provenance
from bench.config import validate_evaluation
from bench.io import read_json, write_json
from bench.sampling import SAMPLES, load_samples
from bench.seeding import resolve_device
from bench.train import PROVENANCE, load_model
from core.errors import UserError
from metrics.likelihood import bits_per_dim, nll_nats
from metrics.modes import class_coverage, mixture_mode_coverage
from metrics.precision_recall import knn_precision_recall
from metrics.wasserstein import MAX_OT_BYTES, exact_solver, exact_wasserstein, sliced_wasserstein

if TYPE_CHECKING:
    from bench.classifier import Classifier

METRICS_FILE = "metrics.json"
EVAL_DEFAULTS: dict[str, Any] = {
    "batch_size": 1000,
    "device": "cpu",
    "n_samples": {"points": 5000, "image": 2000},
    "iwae_k": [1, 10, 100, 1000],
    "iwae_n_test": {"points": 2000, "image": 500},
    "sliced_projections": 200,
    "pr_k": 3,
    "inverse_error_n": 1000,
    "inception_weights": None,  # torch-fidelity's Inception weights file: adds the standard Inception FID on images
    "metrics": None,  # names of catalog.SELECTABLE to compute; None: every applicable metric
}


@dataclass
class Record:
    metric: str
    value: float | None = None
    stderr: float | None = None
    n: int | None = None
    unit: str = ""
    status: str = "ok"  # ok | n/a | failed
    reason: str = ""
    settings: dict[str, Any] = field(default_factory=dict)
    wall_time_s: float = 0.0


def settings_for(user: dict[str, Any] | None) -> dict[str, Any]:
    """The evaluation defaults updated by the config; per-kind settings ({points, image}) merge key by key."""
    user = user or {}
    validate_evaluation(user)
    catalog.check_selection(user.get("metrics"))
    return {k: {**v, **user.get(k, {})} if isinstance(v, dict) else user.get(k, v) for k, v in EVAL_DEFAULTS.items()}


def wanted(s: dict[str, Any], *records: str) -> bool:
    """Whether the settings ask for the metric of any of `records` (iwae_k10 is the metric iwae_k)."""
    return s["metrics"] is None or any((m := catalog.find(r)) is not None and m.name in s["metrics"] for r in records)


def _selected(records: list[Record], s: dict[str, Any]) -> list[Record]:
    """The records of the selected metrics, and those of no metric (a failed group of computations)."""
    return [r for r in records if catalog.find(r.metric) is None or wanted(s, r.metric)]


def _kind_value(setting: Any, ds: datasets.Dataset) -> Any:
    return setting[ds.kind] if isinstance(setting, dict) else setting


def sample_size(ds: datasets.Dataset, settings: dict[str, Any]) -> int:
    n = _kind_value(settings["n_samples"], ds)
    if n > len(ds.test) or n > len(ds.train):
        raise UserError(f"evaluation.n_samples={n} is larger than {ds.name}'s test set ({len(ds.test)}); lower it")
    return n


@torch.no_grad()
def _batched(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, batch_size: int,
             device: torch.device) -> torch.Tensor:
    return torch.cat([fn(part.to(device)).double().cpu() for part in x.split(batch_size)])


def _mean_record(metric: str, values: torch.Tensor, unit: str, **settings: Any) -> Record:
    v = values.double()
    return Record(metric, v.mean().item(), (v.std() / math.sqrt(len(v))).item() if len(v) > 1 else None, len(v),
                  unit, settings=settings)


def _bpd_record(nll: Record, ds: datasets.Dataset) -> Record:
    """Bits/dim: 8-bit images carry a density of dequantized pixels on [0,1] (add log2 256 per dim for the
    0–255 scale); binary images carry a probability mass function (no rescaling)."""
    dim, levels = ds.dim, ds.info["levels"]
    scale = 256 if levels == 256 else 1
    note = "0-255 scale, uniform dequantization" if levels == 256 else "probability of the binary pixels"
    return Record("test_bpd", bits_per_dim(nll.value, dim, scale=scale),
                  nll.stderr / (dim * math.log(2)) if nll.stderr else None, nll.n, "bits/dim",
                  settings={**nll.settings, "scale": note})


def likelihood_records(model: Any, ds: datasets.Dataset, s: dict[str, Any]) -> list[Record]:
    """Likelihood records; computes only what the selected metrics need (it may return a few more records)."""
    dev, caps = model.device, model.capabilities
    need_nll = wanted(s, "test_nll", "test_bpd")
    nll, out = None, []
    if "log_prob" in caps:
        info = model.solver_info()
        if need_nll:
            res = nll_nats(_batched(model.log_prob, ds.test, s["batch_size"], dev))
            nll = Record("test_nll", res.mean, res.stderr, res.n, "nats", settings={"estimator": "exact", **info})
            out.append(nll)
        out.append(Record("elbo_gap", 0.0, unit="nats",
                          settings={"why": "exact likelihood: no bound, gap 0 by construction"}))
        if "inverse" in caps and wanted(s, "inverse_error"):
            x = ds.test[: s["inverse_error_n"]]
            out.append(_mean_record("inverse_error", _batched(model.inverse_error, x, s["batch_size"], dev), "",
                                    norm="L2 of x - g(g^-1(x))", **info))
    elif "iwae" in caps:
        x = ds.test[: _kind_value(s["iwae_n_test"], ds)]
        if wanted(s, "elbo", "elbo_gap"):
            elbo = _batched(model.elbo, x, s["batch_size"], dev)
            out.append(_mean_record("elbo", elbo, "nats", split="test"))
        ks = sorted(s["iwae_k"])  # the last one, k_max, gives the NLL estimate and the gap
        if not wanted(s, "iwae_k"):
            ks = ks[-1:] if wanted(s, "test_nll", "test_bpd", "elbo_gap") else []
        for k in ks:
            iw = _batched(lambda b, k=k: model.iwae(b, k), x, max(1, s["batch_size"] // k), dev)
            out.append(_mean_record(f"iwae_k{k}", iw, "nats", k=k))
        if need_nll:
            nll = _mean_record("test_nll", -iw, "nats", estimator=f"IWAE k={k} (upper bound on the NLL)", k=k)
            out.append(nll)
        if wanted(s, "elbo_gap"):
            out.append(_mean_record("elbo_gap", iw - elbo, "nats", definition=f"IWAE_{k} - ELBO", k=k))
    else:
        why = f"{model.family}: an implicit model (samples only) has no tractable density or bound"
        return [Record(m, unit="nats", status="n/a", reason=why) for m in ("test_nll", "elbo_gap")]
    if ds.kind == "image" and nll is not None:
        out.append(_bpd_record(nll, ds))
    return out


def cgroup_memory_limit(root: Path = Path("/sys/fs/cgroup"),
                        membership: Path = Path("/proc/self/cgroup")) -> int | None:
    """The smallest memory limit, in bytes, on this process's cgroup or any cgroup above it: `memory.max` (cgroup v2)
    or `memory.limit_in_bytes` (v1, under `root`/memory), where a container or a scheduler confines the job
    without saying so in its environment. None where no limit is set or none can be read (e.g. not Linux)."""
    try:
        lines = membership.read_text().splitlines()
    except OSError:
        return None
    limits = []
    for line in lines:  # "hierarchy-id:controllers:path"; v2's controllers field is empty
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            base, name = root, "memory.max"
        elif "memory" in controllers.split(","):
            base, name = root / "memory", "memory.limit_in_bytes"
        else:
            continue
        group = Path(path.lstrip("/"))
        for folder in (group, *group.parents):
            try:
                text = (base / folder / name).read_text().strip()
            except OSError:
                continue
            if text.isdigit():  # v2 writes "max" where there is no limit
                limits.append(int(text))
    return min(limits, default=None)


def ot_memory_budget(environ: dict[str, str] | None = None) -> float:
    """Bytes exact W may spend before it takes POT's lazy solver (as exact, O(n) memory; `exact_solver`): half the
    memory this job may use, at most the metric's own 8 GiB. That memory is the least of the machine's, its cgroup
    limit (`cgroup_memory_limit`), and a SLURM job's allocation where there is one (`--mem`, or `--mem-per-cpu` ×
    `--cpus-per-task`), so that a large n in a container or on a cluster computes W instead of getting the job
    killed for exceeding its memory."""
    env = os.environ if environ is None else environ
    memory = []  # bytes the job may use, from each source that says
    if hasattr(os, "sysconf"):  # POSIX
        memory.append(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    if (limit := cgroup_memory_limit()) is not None:
        memory.append(limit)
    if env.get("SLURM_MEM_PER_NODE"):
        memory.append(int(env["SLURM_MEM_PER_NODE"]) * 2**20)
    elif env.get("SLURM_MEM_PER_CPU"):
        memory.append(int(env["SLURM_MEM_PER_CPU"]) * int(env.get("SLURM_CPUS_PER_TASK", 1)) * 2**20)
    return min([MAX_OT_BYTES, *(m / 2 for m in memory)])


def sample_records(ds: datasets.Dataset, generated: torch.Tensor, s: dict[str, Any],
                   classifier: Classifier | None) -> list[Record]:
    """Sample-based metrics of `generated` (n samples in data space) against the first n test points."""
    n = len(generated)
    real_data = ds.to_float(ds.test[:n])
    real, gen = real_data.flatten(1).double(), generated.flatten(1).double()
    out: list[Record] = []

    def shared(metrics: tuple[str, ...], fn: Callable[[], Any]) -> Any:
        """A computation several records read (e.g. precision and recall), done only when one of them is selected:
        on failure each is a failed record."""
        if not wanted(s, *metrics):
            return None
        try:
            return fn()
        except Exception as exc:  # one failing metric must not erase the others
            out.extend(Record(m, n=n, status="failed", reason=f"{type(exc).__name__}: {exc}") for m in metrics)
            return None

    def run(metric: str, fn: Callable[[], Any], unit: str = "", **settings: Any) -> None:
        t0 = time.perf_counter()
        value = shared((metric,), fn)
        if value is not None:
            out.append(Record(metric, float(value), n=n, unit=unit, settings={"reference": "test", **settings},
                              wall_time_s=time.perf_counter() - t0))

    budget = ot_memory_budget()
    for metric, p in (("w1", 1), ("w2", 2)):
        solver = exact_solver(n, n, p, budget)
        run(metric, lambda p=p, solver=solver: exact_wasserstein(gen, real, p=p, solver=solver),
            solver=f"POT {solver} exact")
    run("sliced_w2", lambda: sliced_wasserstein(gen, real, n_projections=s["sliced_projections"], seed=0),
        projections=s["sliced_projections"])
    if ds.kind == "points":
        pr = shared(("precision", "recall"), lambda: knn_precision_recall(real, gen, k=s["pr_k"]))
        if pr is not None:
            run("precision", lambda: pr.precision, k=s["pr_k"], space="data")
            run("recall", lambda: pr.recall, k=s["pr_k"], space="data")
        mode_metrics = ("modes_covered", "high_quality", "mode_kl")
        cov = shared(mode_metrics, lambda: mixture_mode_coverage(gen, ds.info["centers"], ds.info["std"])) \
            if "centers" in ds.info else None
        if cov is not None:
            run("modes_covered", lambda: cov.modes_covered, of=cov.num_modes, threshold="3 sigma")
            run("high_quality", lambda: cov.high_quality_fraction, threshold="3 sigma")
            run("mode_kl", lambda: cov.kl_to_uniform, "nats", histogram="high-quality samples vs uniform")
    elif classifier is not None:
        from metrics.fid import register_mnist_extractor, torch_fidelity_metrics

        name, accuracy = register_mnist_extractor(classifier.path), classifier.info["test_accuracy"]
        tf_metrics = ("fid", "precision", "recall")
        tf = shared(tf_metrics, lambda: torch_fidelity_metrics(generated, real_data, extractor_name=name,
                                                                weights_path=classifier.path))
        for key in tf_metrics if tf is not None else ():
            run(key, lambda key=key: tf[key], extractor=name, classifier_test_accuracy=accuracy, via="torch-fidelity")
        classes = shared(("classes_covered", "class_kl"), lambda: class_coverage(_batched(
            classifier.net, generated, s["batch_size"], torch.device("cpu")).argmax(1).long(), 10))
        if classes is not None:
            run("classes_covered", lambda: classes.classes_covered, of=10, classifier=name)
            run("class_kl", lambda: classes.kl_to_uniform, "nats", classifier=name)
    else:
        why = "needs the suite's MNIST classifier: pass --classifier (the pipeline's mnist_classifier rule trains it)"
        out += [Record(m, n=n, status="n/a", reason=why) for m in catalog.needing("classifier") if wanted(s, m)]
    if ds.kind == "image" and s["inception_weights"]:
        from metrics.fid import torch_fidelity_metrics

        run("fid_inception", lambda: torch_fidelity_metrics(generated, real_data, prc=False,
                                                            weights_path=s["inception_weights"])["fid"],
            extractor="inception-v3-compat", weights=str(s["inception_weights"]), via="torch-fidelity")
    return out


def check_evaluators(classifier: Path | None, s: dict[str, Any]) -> Classifier | None:
    """Read the feature extractors' files before any metric is computed: a missing or broken one is a UserError
    naming it, not a metric failed after the likelihood's compute. Returns the loaded classifier, if any."""
    loaded = None
    if classifier is not None:
        from bench.classifier import load_classifier

        loaded = load_classifier(classifier)
    if s["inception_weights"] and not Path(s["inception_weights"]).is_file():
        raise UserError(f"no Inception weights at {s['inception_weights']}: set evaluation.inception_weights to "
                        "a local copy of torch-fidelity's weights file (weights-inception-2015-12-05-6726825d.pth) "
                        "or unset it")
    return loaded


def _timed_group(fn: Callable[[], list[Record]], name: str) -> list[Record]:
    t0 = time.perf_counter()
    try:
        records = fn()
    except UserError:
        raise
    except Exception as exc:
        return [Record(name, status="failed", reason=f"{type(exc).__name__}: {exc}")]
    for r in records:
        r.wall_time_s = r.wall_time_s or (time.perf_counter() - t0) / len(records)
    return records


def evaluate(run_dir: Path, settings: dict[str, Any] | None = None, classifier: Path | None = None) -> dict[str, Any]:
    """Evaluate a trained and sampled run; writes and returns `run_dir/metrics.json`."""
    run_dir, s = Path(run_dir), settings_for(settings)
    loaded = check_evaluators(classifier, s)
    model, ckpt = load_model(run_dir, s["device"])
    spec, status = ckpt["spec"], ckpt["status"]
    ds = datasets.load(spec["dataset"], spec["data_root"])
    if status["status"] != "ok":
        records = [Record("training", status="failed", reason=status["reason"])]
    else:
        saved = load_samples(run_dir)
        if saved["n"] != sample_size(ds, s):
            raise UserError(f"{run_dir / SAMPLES} holds {saved['n']} samples but the evaluation asks for "
                            f"{sample_size(ds, s)}; re-run `dgmbench sample`")
        torch.manual_seed(spec["seed"] + 2_000_003)  # dequantization and importance-sampling noise
        records = _timed_group(lambda: likelihood_records(model, ds, s), "likelihood")
        records += _timed_group(lambda: sample_records(ds, saved["samples"], s, loaded), "samples")
        records.append(Record("samples_per_s", saved["samples_per_s"], n=saved["n"], unit="1/s",
                              settings={"device": s["device"]}))
        records = _selected(records, s)
    result = {
        "run": {k: spec[k] for k in ("dataset", "method", "seed")},
        "family": model.family,
        "status": status["status"],
        "records": [asdict(r) for r in records],
        "train": read_json(run_dir / PROVENANCE),
        "evaluation": {"settings": s, "machine": provenance.collect(resolve_device(s["device"]))},
    }
    write_json(run_dir / METRICS_FILE, result)
    return result


def reference(dataset: str, out: Path, settings: dict[str, Any] | None = None, data_root: str | None = None,
              classifier: Path | None = None) -> dict[str, Any]:
    """The data-vs-data floor: sample metrics of n training points against the n test points, and the data's
    own entropy (the NLL floor) where its density is known. Written in the shape of a run's metrics.json."""
    s = settings_for(settings)
    loaded = check_evaluators(classifier, s)
    ds = datasets.load(dataset, data_root)
    n = sample_size(ds, s)
    records = _timed_group(lambda: sample_records(ds, ds.to_float(ds.train[:n]), s, loaded), "samples")
    if ds.log_prob is not None and wanted(s, "test_nll"):
        res = nll_nats(ds.log_prob(ds.test))
        records.insert(0, Record("test_nll", res.mean, res.stderr, res.n, "nats",
                                 settings={"what": "entropy of the data density on the test set (NLL floor)"}))
    spec = {"dataset": dataset, "method": "data", "seed": 0, "settings": s}
    result = {
        "run": {"dataset": dataset, "method": "data", "seed": 0},
        "family": "reference",
        "status": "ok",
        "records": [asdict(r) for r in records],
        "train": {"spec": spec, "config_hash": provenance.config_hash(spec), "train_wall_time_s": 0.0,
                  "data": {"name": ds.name, "version": ds.version, "fingerprint": ds.fingerprint},
                  "machine": provenance.collect(torch.device("cpu"))},
        "evaluation": {"settings": s, "machine": provenance.collect(torch.device("cpu"))},
    }
    write_json(out, result)
    return result
