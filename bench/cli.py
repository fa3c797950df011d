"""`dgmbench`: every pipeline step as a command that also runs by hand with the same arguments."""
from __future__ import annotations

import argparse
import errno
import json
import re
import sys
from pathlib import Path
from typing import Any, NoReturn

import yaml

from bench.allocator import keep_freed_memory
from core.errors import UserError

_EXPONENT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+")


def _key_value(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    parsed = yaml.safe_load(value)
    if isinstance(parsed, str) and _EXPONENT.fullmatch(parsed):  # YAML 1.1 reads 1e-3 as text: a user means 0.001
        parsed = float(parsed)
    return key, parsed


def _json_object(text: str) -> dict[str, Any]:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return obj


def _threads(n: int) -> None:
    if n:
        import torch

        torch.set_num_threads(n)


def cmd_list(args: argparse.Namespace) -> None:
    import models
    from bench import datasets

    print("methods:")
    for name in models.available():
        cls = models.get(name)
        print(f"  {name:<16} {cls.family:<6} {', '.join(sorted(cls.capabilities))}")
        by_reason: dict[str, list[str]] = {}
        for ds, reason in cls.unsupported.items():
            by_reason.setdefault(reason, []).append(ds)
        for reason, names in by_reason.items():
            print(f"      not on {', '.join(names)}: {reason}")
        if args.hparams:
            for ds in datasets.available():
                if ds not in cls.unsupported:
                    print(f"      {ds}: {json.dumps(cls.defaults(ds))}")
    print("datasets:")
    for name in datasets.available():
        print(f"  {name}")


def cmd_train(args: argparse.Namespace) -> None:
    from bench.train import RunSpec, train

    spec = RunSpec.build(args.method, args.dataset, args.seed, {**args.hparams, **dict(args.set)},
                         device=args.device, data_root=args.data_root, loop={**args.loop}, init_runs=dict(args.init))
    _threads(args.threads)
    status = train(spec, args.out, progress=None if args.progress else False)
    note = f" ({status['reason']})" if status["status"] != "ok" else ""
    if "retry" in status:
        note += f" (retried with seed {status['retry']['seed']} after: {status['retry']['original_status']['reason']})"
    print(f"{spec.method}/{spec.dataset}/seed{spec.seed}: {status['status']}{note} -> {args.out}")


def _print_records(result: dict[str, Any]) -> None:
    for rec in result["records"]:
        value = f"{rec['value']:.6g}" if rec["value"] is not None else rec["status"]
        print(f"{rec['metric']:<16} {value} {rec['unit']}" + (f"  ({rec['reason']})" if rec["reason"] else ""))


def cmd_sample(args: argparse.Namespace) -> None:
    from bench import datasets
    from bench.evaluate import sample_size, settings_for
    from bench.sampling import sample_run
    from bench.train import CHECKPOINT, load_checkpoint

    _threads(args.threads)
    s = settings_for(args.settings)
    spec = load_checkpoint(args.run / CHECKPOINT)["spec"]
    out = sample_run(args.run, sample_size(datasets.load(spec["dataset"], spec["data_root"]), s), device=s["device"])
    print(f"{out['n']} samples ({out['status']}) -> {args.run}")


def cmd_evaluate(args: argparse.Namespace) -> None:
    from bench.evaluate import evaluate

    _threads(args.threads)
    _print_records(evaluate(args.run, args.settings, args.classifier))


def cmd_reference(args: argparse.Namespace) -> None:
    from bench.evaluate import reference

    _threads(args.threads)
    _print_records(reference(args.dataset, args.out, args.settings, args.data_root, args.classifier))


def cmd_train_classifier(args: argparse.Namespace) -> None:
    from bench.classifier import train_classifier

    _threads(args.threads)
    info = train_classifier(args.out, args.data_root, epochs=args.epochs)
    print(f"MNIST classifier: test accuracy {info['test_accuracy']:.4f}, sha256 {info['sha256'][:12]} -> {args.out}")


def cmd_plot_run(args: argparse.Namespace) -> None:
    from bench.figures import run_figure

    run_figure(args.run, args.out)


def cmd_aggregate(args: argparse.Namespace) -> None:
    from bench.aggregate import aggregate

    df = aggregate(args.metrics, args.out)
    print(f"{len(df)} rows from {len(args.metrics)} runs -> {args.out}")


def cmd_report(args: argparse.Namespace) -> None:
    from bench.report import report

    written = report(args.metrics, args.out_dir, args.runs_dir, test=args.test)
    print(f"{len(written)} files (tables, figures, report.md, report.html) -> {args.out_dir}")


def cmd_download(args: argparse.Namespace) -> None:
    from bench import datasets

    root = Path(args.data_root) if args.data_root else datasets.default_data_root()
    print(f"MNIST -> {datasets.download_mnist(root)}")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dgmbench", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("list", help="registered methods and datasets")
    s.add_argument("--hparams", action="store_true", help="also print every method's default hyper-parameters")
    s.set_defaults(func=cmd_list)

    s = sub.add_parser("train", help="train one run")
    s.add_argument("--method", required=True)
    s.add_argument("--dataset", required=True)
    s.add_argument("--seed", type=int, required=True)
    s.add_argument("--out", type=Path, required=True, help="run folder (checkpoint, log, provenance)")
    s.add_argument("--set", type=_key_value, action="append", default=[], metavar="KEY=VALUE",
                   help="override a hyper-parameter (repeatable), e.g. --set steps=500")
    s.add_argument("--hparams", type=_json_object, default={}, help="hyper-parameter overrides as a JSON object")
    s.add_argument("--init", type=_key_value, action="append", default=[], metavar="METHOD=RUN_DIR",
                   help="trained run a method starts from (e.g. --init vae=results/runs/mnist/vae/seed0)")
    s.add_argument("--loop", type=_json_object, default={}, help="training-loop settings as a JSON object")
    s.add_argument("--device", default="cpu")
    s.add_argument("--data-root", default=None, help="folder holding MNIST/raw")
    s.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    s.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("sample", help="draw a trained run's evaluation samples into samples.pt")
    s.add_argument("--run", type=Path, required=True, help="run folder written by `dgmbench train`")
    s.add_argument("--settings", type=_json_object, default={}, help="evaluation settings as a JSON object")
    s.add_argument("--threads", type=int, default=0)
    s.set_defaults(func=cmd_sample)

    s = sub.add_parser("evaluate", help="evaluate one trained and sampled run into its metrics.json")
    s.add_argument("--run", type=Path, required=True, help="run folder written by `dgmbench train`")
    s.add_argument("--settings", type=_json_object, default={}, help="evaluation settings as a JSON object")
    s.add_argument("--classifier", type=Path, default=None, help="MNIST classifier weights (FID, class coverage)")
    s.add_argument("--threads", type=int, default=0)
    s.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("reference", help="data-vs-data floor of the sample metrics for one dataset")
    s.add_argument("--dataset", required=True)
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--settings", type=_json_object, default={})
    s.add_argument("--data-root", default=None)
    s.add_argument("--classifier", type=Path, default=None)
    s.add_argument("--threads", type=int, default=0)
    s.set_defaults(func=cmd_reference)

    s = sub.add_parser("train-classifier", help="train the MNIST feature extractor used by FID and class coverage")
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--data-root", default=None)
    s.add_argument("--epochs", type=int, default=5)
    s.add_argument("--threads", type=int, default=0)
    s.set_defaults(func=cmd_train_classifier)

    s = sub.add_parser("plot-run", help="figure of one run (samples, density, latent space / image grid)")
    s.add_argument("--run", type=Path, required=True)
    s.add_argument("--out", type=Path, required=True)
    s.set_defaults(func=cmd_plot_run)

    s = sub.add_parser("aggregate", help="collect metrics.json files into one tidy CSV")
    s.add_argument("metrics", type=Path, nargs="+")
    s.add_argument("--out", type=Path, required=True)
    s.set_defaults(func=cmd_aggregate)

    s = sub.add_parser("report", help="tables, figures and the HTML/Markdown report from the tidy CSV")
    s.add_argument("--metrics", type=Path, required=True, help="tidy CSV written by `dgmbench aggregate`")
    s.add_argument("--runs-dir", type=Path, default=Path("results/runs"), help="run folders (train_log.csv)")
    s.add_argument("--out-dir", type=Path, required=True,
                   help="report folder: tables/, figures/ (per-run figures read from figures/runs/), report.{md,html}")
    s.add_argument("--test", choices=["welch", "mannwhitney"], default="welch", help="test between methods")
    s.set_defaults(func=cmd_report)

    s = sub.add_parser("download", help="fetch a dataset that is not generated locally (needs internet)")
    s.add_argument("dataset", choices=["mnist"])
    s.add_argument("--data-root", default=None)
    s.set_defaults(func=cmd_download)
    return p


def _fail(message: str) -> NoReturn:
    print(f"dgmbench: error: {message}", file=sys.stderr)
    sys.exit(2)


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    keep_freed_memory()
    try:
        args.func(args)
    except UserError as exc:
        _fail(str(exc))
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            _fail(f"could not write {exc.filename}: {exc.strerror} (no partial file was left); free space on that "
                  "disk or write the results to another one (--out, or snakemake --directory), then re-run")
        if exc.filename is None:
            raise
        _fail(f"{exc.strerror}: {exc.filename}; give a path whose folders exist or can be created, and can be written")


if __name__ == "__main__":
    main()
