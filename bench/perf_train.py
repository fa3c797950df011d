"""Training throughput of every method at its default size, on this machine (a benchmark script, not a test).

    python -m bench.perf_train [--datasets moons,mnist] [--seconds 5] [--threads 1]

Times `train_step` on a fixed batch after one warm-up step and prints a Markdown table of steps/s and
samples/s (real examples consumed per step = batch_size). VAE-initialized GANs train exactly like their base GAN.
"""
from __future__ import annotations

import argparse
import platform
import time

import torch

import models
from bench import datasets


def throughput(method: str, dataset: datasets.Dataset, seconds: float) -> tuple[int, float]:
    torch.manual_seed(0)
    model = models.get(method)(dataset, models.resolve_hparams(method, dataset.name))
    optimizers, batch_size = model.configure_optimizers(), model.hparams["batch_size"]
    x = dataset.train[:batch_size]
    if dataset.train_transform is not None:
        x = dataset.train_transform(x)
    model.train_step(x, optimizers, 0)
    steps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        model.train_step(x, optimizers, steps)
        steps += 1
    return batch_size, steps / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", default="moons,mnist")
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{args.threads} thread(s), {args.seconds:.0f} s per method\n")
    print("| dataset | method | batch | steps/s | samples/s |\n|---|---|---|---|---|")
    for name in args.datasets.split(","):
        ds = datasets.load(name)
        for method in models.available():
            cls = models.get(method)
            if name in cls.unsupported or cls.requires:
                continue
            batch, rate = throughput(method, ds, args.seconds)
            print(f"| {name} | {method} | {batch} | {rate:.1f} | {rate * batch:.0f} |", flush=True)


if __name__ == "__main__":
    main()
