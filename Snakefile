# dgmbench pipeline: train -> evaluate -> aggregate -> tables, over the grid dataset x method x seed.
#   snakemake --cores 2                                   # config/default.yaml
#   snakemake --cores 8 --configfile config/paper.yaml    # a config file replaces the default entirely
# Every rule calls one `dgmbench <verb>` command, so each step also runs by hand with the same arguments.
import json
import os
import shlex
import sys

import yaml
from snakemake.exceptions import WorkflowError

from bench import config as bench_config
from bench.errors import UserError

if not workflow.overwrite_configfiles:  # no --configfile: the default config, updated by any --config KEY=VALUE
    config.update({**yaml.safe_load(open(os.path.join(workflow.basedir, "config/default.yaml"))), **config})
try:
    CFG = bench_config.validate(dict(config), source=", ".join(map(str, workflow.overwrite_configfiles or ["config/default.yaml"])))
except UserError as exc:
    raise WorkflowError(str(exc)) from None

RUNS, SKIPPED = bench_config.grid(CFG)
for dataset, method, reason in SKIPPED:
    print(f"dgmbench: skipping {method} on {dataset}: {reason}", file=sys.stderr)

_bin = os.path.join(os.path.dirname(sys.executable), "dgmbench")
DGMBENCH = shlex.quote(_bin) if os.path.exists(_bin) else f"{shlex.quote(sys.executable)} -m bench.cli"
RUN = "results/runs/{dataset}/{method}/seed{seed}"


def _json_arg(obj):
    return shlex.quote(json.dumps(obj, sort_keys=True))


wildcard_constraints:
    dataset="|".join(CFG["datasets"]),
    method="|".join(CFG["methods"]),
    seed=r"\d+",


rule all:
    input:
        "reports/tables/summary.md",


rule train:
    output:
        checkpoint=f"{RUN}/checkpoint.pt",
        log=f"{RUN}/train_log.csv",
        provenance=f"{RUN}/provenance.json",
    params:
        run=lambda w: RUN.format(**w),
        hparams=lambda w: _json_arg(bench_config.overrides(CFG, w.method, w.dataset)),
        loop=_json_arg(CFG["training"]),
        data_root=lambda w: f"--data-root {shlex.quote(CFG['data_root'])}" if CFG["data_root"] else "",
    threads: 1
    resources:
        mem_mb=4000,
        runtime=120,
    benchmark:
        f"{RUN}/benchmark_train.tsv"
    shell:
        "{DGMBENCH} train --method {wildcards.method} --dataset {wildcards.dataset} --seed {wildcards.seed}"
        " --out {params.run} --hparams {params.hparams} --loop {params.loop} --device {CFG[device]} {params.data_root}"
        " --threads {threads} --no-progress"


rule evaluate:
    input:
        checkpoint=f"{RUN}/checkpoint.pt",
    output:
        f"{RUN}/metrics.json",
    params:
        run=lambda w: RUN.format(**w),
        settings=_json_arg(CFG["evaluation"]),
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    benchmark:
        f"{RUN}/benchmark_evaluate.tsv"
    shell:
        "{DGMBENCH} evaluate --run {params.run} --settings {params.settings} --threads {threads}"


rule aggregate:
    input:
        [f"results/runs/{d}/{m}/seed{s}/metrics.json" for d, m, s in RUNS],
    output:
        "results/metrics.csv",
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "{DGMBENCH} aggregate {input} --out {output}"


rule summary_table:
    input:
        "results/metrics.csv",
    output:
        "reports/tables/summary.md",
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "{DGMBENCH} report --metrics {input} --out-dir reports/tables"
