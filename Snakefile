# dgmbench pipeline over the grid dataset x method x seed:
#   train -> sample -> evaluate -> aggregate -> report (tables, figures, report.html); reference (data-vs-data floors) per dataset;
#   mnist_classifier (the MNIST feature extractor) once; per-run figures from saved checkpoints and samples.
#   snakemake --cores 2                                   # config/default.yaml
#   snakemake --cores 8 --configfile config/paper.yaml    # a config file replaces the default entirely
# Every rule calls one `dgmbench <verb>` command, so each step also runs by hand with the same arguments.
import json
import os
import shlex
import sys

import yaml
from snakemake.exceptions import WorkflowError

import models
from bench import config as bench_config
from bench import datasets as bench_datasets
from core.errors import UserError

if not workflow.overwrite_configfiles:  # no --configfile: the default config, updated by any --config KEY=VALUE
    config.update({**yaml.safe_load(open(os.path.join(workflow.basedir, "config/default.yaml"))), **config})
try:
    CFG = bench_config.validate(dict(config), source=", ".join(map(str, workflow.overwrite_configfiles or ["config/default.yaml"])))
except UserError as exc:
    raise WorkflowError(str(exc)) from None

for _name in set(CFG["datasets"]) & set(bench_datasets.IMAGE_DATASETS):
    try:  # a missing or corrupt MNIST stops here, before any job runs
        bench_datasets.load(_name, CFG["data_root"])
    except UserError as exc:
        raise WorkflowError(str(exc)) from None

RUNS, SKIPPED = bench_config.grid(CFG)
for dataset, method, reason in SKIPPED:
    print(f"dgmbench: skipping {method} on {dataset}: {reason}", file=sys.stderr)

_bin = os.path.join(os.path.dirname(sys.executable), "dgmbench")
DGMBENCH = shlex.quote(_bin) if os.path.exists(_bin) else f"{shlex.quote(sys.executable)} -m bench.cli"
RUN = "results/runs/{dataset}/{method}/seed{seed}"
CLASSIFIER = "results/evaluators/mnist_classifier.pt"
DATA_ROOT = f"--data-root {shlex.quote(CFG['data_root'])}" if CFG["data_root"] else ""
EVAL = shlex.quote(json.dumps(CFG["evaluation"], sort_keys=True))
IMAGE_DATASETS = set(bench_datasets.IMAGE_DATASETS)


def required_runs(w):
    """Run folders of the methods this one starts from (e.g. the VAE of the same dataset and seed)."""
    return {name: RUN.format(dataset=w.dataset, method=name, seed=w.seed) for name in models.get(w.method).requires}


def classifier_for(w):
    return [CLASSIFIER] if w.dataset in IMAGE_DATASETS else []


def classifier_arg(w):
    return f"--classifier {CLASSIFIER}" if w.dataset in IMAGE_DATASETS else ""


wildcard_constraints:
    dataset="|".join(CFG["datasets"]),
    method="|".join(sorted(set(CFG["methods"]) | {r for m in CFG["methods"] for r in models.get(m).requires})),
    seed=r"\d+",


rule all:
    input:
        "reports/report.html",


rule mnist_classifier:
    output:
        weights=CLASSIFIER,
        info=CLASSIFIER.replace(".pt", ".json"),
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,
    benchmark:
        "results/evaluators/benchmark_mnist_classifier.tsv"
    shell:
        "{DGMBENCH} train-classifier --out {output.weights} {DATA_ROOT} --threads {threads}"


rule train:
    input:
        lambda w: [f"{run}/checkpoint.pt" for run in required_runs(w).values()],
    output:
        checkpoint=f"{RUN}/checkpoint.pt",
        log=f"{RUN}/train_log.csv",
        provenance=f"{RUN}/provenance.json",
    params:
        run=lambda w: RUN.format(**w),
        hparams=lambda w: shlex.quote(json.dumps(bench_config.overrides(CFG, w.method, w.dataset), sort_keys=True)),
        loop=lambda w: shlex.quote(json.dumps(bench_config.loop(CFG, w.method), sort_keys=True)),
        init=lambda w: " ".join(f"--init {name}={run}" for name, run in required_runs(w).items()),
    threads: 1
    resources:
        mem_mb=4000,
        runtime=240,
        gpu=lambda w: 1 if CFG["device"] != "cpu" else 0,
    benchmark:
        f"{RUN}/benchmark_train.tsv"
    shell:
        "{DGMBENCH} train --method {wildcards.method} --dataset {wildcards.dataset} --seed {wildcards.seed}"
        " --out {params.run} --hparams {params.hparams} --loop {params.loop} --device {CFG[device]} {DATA_ROOT}"
        " {params.init} --threads {threads} --no-progress"


rule sample:
    input:
        f"{RUN}/checkpoint.pt",
    output:
        f"{RUN}/samples.pt",
    params:
        run=lambda w: RUN.format(**w),
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    benchmark:
        f"{RUN}/benchmark_sample.tsv"
    shell:
        "{DGMBENCH} sample --run {params.run} --settings {EVAL} --threads {threads}"


rule evaluate:
    input:
        checkpoint=f"{RUN}/checkpoint.pt",
        samples=f"{RUN}/samples.pt",
        classifier=classifier_for,
    output:
        f"{RUN}/metrics.json",
    params:
        run=lambda w: RUN.format(**w),
        classifier=classifier_arg,
    threads: 1
    resources:
        mem_mb=6000,
        runtime=120,
    benchmark:
        f"{RUN}/benchmark_evaluate.tsv"
    shell:
        "{DGMBENCH} evaluate --run {params.run} --settings {EVAL} {params.classifier} --threads {threads}"


rule reference:
    input:
        classifier=classifier_for,
    output:
        "results/reference/{dataset}.json",
    params:
        classifier=classifier_arg,
    threads: 1
    resources:
        mem_mb=6000,
        runtime=60,
    benchmark:
        "results/reference/benchmark_{dataset}.tsv"
    shell:
        "{DGMBENCH} reference --dataset {wildcards.dataset} --out {output} --settings {EVAL} {DATA_ROOT}"
        " {params.classifier} --threads {threads}"


rule aggregate:
    input:
        runs=[f"results/runs/{d}/{m}/seed{s}/metrics.json" for d, m, s in RUNS],
        reference=[f"results/reference/{d}.json" for d in CFG["datasets"]],
    output:
        "results/metrics.csv",
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "{DGMBENCH} aggregate {input.reference} {input.runs} --out {output}"


rule report:
    input:
        metrics="results/metrics.csv",
        logs=[f"results/runs/{d}/{m}/seed{s}/train_log.csv" for d, m, s in RUNS],
        figures=[f"reports/figures/runs/{d}/{m}/seed{s}.png" for d, m, s in RUNS],
    output:
        summary="reports/tables/summary.md",
        markdown="reports/report.md",
        html="reports/report.html",
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "{DGMBENCH} report --metrics {input.metrics} --runs-dir results/runs --out-dir reports"


rule run_figure:
    input:
        checkpoint=f"{RUN}/checkpoint.pt",
        samples=f"{RUN}/samples.pt",
    output:
        "reports/figures/runs/{dataset}/{method}/seed{seed}.png",
    params:
        run=lambda w: RUN.format(**w),
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "{DGMBENCH} plot-run --run {params.run} --out {output}"
