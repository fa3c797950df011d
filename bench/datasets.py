"""Versioned datasets with fixed, seeded train/validation/test splits.

2-D sets (float32, N×2) are regenerated bit-identically from fixed seeds; the mixtures and moons also expose
their exact log-density so the data's own entropy (the floor of any model's test NLL) can be reported.
MNIST (uint8, N×1×28×28, kept in memory as one tensor) is read from the raw IDX files under a configurable
data root and checked against the canonical MD5 sums.
"""
from __future__ import annotations

import gzip
import hashlib
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache, lru_cache
from pathlib import Path

import numpy as np
import torch

from core.errors import UserError
from core.names import DATASETS, IMAGE_DATASETS

DATA_ROOT_ENV = "DGMBENCH_DATA_ROOT"
TOY_SPLIT_SIZES = {"train": 50_000, "val": 5_000, "test": 10_000}
MNIST_VAL_SIZE = 5_000  # the last 5,000 of the 60k training images; never trained on


@dataclass(frozen=True)
class Dataset:
    name: str
    version: str
    kind: str  # "points" (float32 N×d) or "image" (uint8 N×1×28×28)
    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor
    fingerprint: str
    labels: dict[str, torch.Tensor] = field(default_factory=dict)
    log_prob: Callable[[torch.Tensor], torch.Tensor] | None = None  # exact data density, when known
    train_transform: Callable[[torch.Tensor], torch.Tensor] | None = None  # applied to every training batch
    info: dict = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return int(np.prod(self.train.shape[1:]))

    def split(self, name: str) -> torch.Tensor:
        return {"train": self.train, "val": self.val, "test": self.test}[name]

    def to_float(self, x: torch.Tensor) -> torch.Tensor:
        """Data on the scale of model samples: points unchanged, images as float32 in [0,1]."""
        return x.float() / (self.info["levels"] - 1) if self.kind == "image" else x


def _fingerprint(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p)
    return h.hexdigest()[:16]


def _gaussian_mixture_log_prob(centers: torch.Tensor, std: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """log p(x) = logsumexp_k [ -log K + log N(x; c_k, std² I) ] for an equal-weight isotropic mixture."""

    c = centers.to(torch.float64)
    d = c.shape[1]
    const = -d * math.log(std) - 0.5 * d * math.log(2 * math.pi) - math.log(len(c))

    def log_prob(x: torch.Tensor) -> torch.Tensor:
        chunk = max(1, 2**25 // len(c))  # bound the chunk × components distance matrix to 256 MB
        parts = [torch.logsumexp(-0.5 * torch.cdist(xc, c).pow(2) / std**2, dim=1)
                 for xc in x.to(torch.float64).split(chunk)]
        return torch.cat(parts) + const

    return log_prob


def _mixture(name: str, centers: np.ndarray, std: float, seed: int) -> Dataset:
    splits = {}
    for i, (split, n) in enumerate(TOY_SPLIT_SIZES.items()):
        rng = np.random.default_rng([seed, i])
        comp = rng.integers(len(centers), size=n)
        splits[split] = torch.from_numpy((centers[comp] + std * rng.standard_normal((n, 2))).astype(np.float32))
    c = torch.from_numpy(centers.astype(np.float32))
    return Dataset(
        name=name, version="v1", kind="points", **splits,
        fingerprint=_fingerprint(name.encode(), *(s.numpy().tobytes() for s in splits.values())),
        log_prob=_gaussian_mixture_log_prob(c, std),
        info={"centers": c, "std": std},
    )


def _moons_log_prob(noise: float, n_quad: int = 4096) -> Callable[[torch.Tensor], torch.Tensor]:
    """Density of sklearn's make_moons as n → ∞: each half-moon is an arc with t uniform on [0, π], blurred by
    isotropic Gaussian noise; the integral over t is a midpoint rule with spacing π/n_quad ≪ noise."""
    t = (torch.arange(n_quad, dtype=torch.float64) + 0.5) * math.pi / n_quad
    outer = torch.stack([torch.cos(t), torch.sin(t)], 1)
    inner = torch.stack([1 - torch.cos(t), 1 - torch.sin(t) - 0.5], 1)
    return _gaussian_mixture_log_prob(torch.cat([outer, inner]), noise)


def _moons(seed: int = 1234, noise: float = 0.05) -> Dataset:
    from sklearn.datasets import make_moons

    splits = {
        split: torch.from_numpy(make_moons(n_samples=n, noise=noise, random_state=seed + i)[0].astype(np.float32))
        for i, (split, n) in enumerate(TOY_SPLIT_SIZES.items())
    }
    return Dataset(
        name="moons", version="v1", kind="points", **splits,
        fingerprint=_fingerprint(b"moons", *(s.numpy().tobytes() for s in splits.values())),
        log_prob=_moons_log_prob(noise), info={"noise": noise},
    )


def _ring8() -> Dataset:
    angles = 2 * np.pi * np.arange(8) / 8
    return _mixture("ring8", np.stack([np.cos(angles), np.sin(angles)], 1), 0.01, seed=2008)


def _grid25() -> Dataset:
    g = np.array([-4.0, -2.0, 0.0, 2.0, 4.0])
    return _mixture("grid25", np.stack(np.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2), 0.05, seed=2025)


# --- MNIST -------------------------------------------------------------------------------------------------
MNIST_FILES = {  # name: (md5 of the uncompressed file, md5 of the .gz), canonical values
    "train-images-idx3-ubyte": ("6bbc9ace898e44ae57da46a324031adb", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
    "train-labels-idx1-ubyte": ("a25bea736e30d166cdddb491f175f624", "d53e105ee54ea40749a09fcbcd1e9432"),
    "t10k-images-idx3-ubyte": ("2646ac647ad5339dbf082846283269ea", "9fb629c4189551a2d022fa330f9573f3"),
    "t10k-labels-idx1-ubyte": ("27ae3e4e09519cfbb04c329615203637", "ec29112dd5afa0611ce80d1b7f02629c"),
}


def default_data_root() -> Path:
    """$DGMBENCH_DATA_ROOT, else the user cache folder (where `dgmbench download mnist` puts the files)."""
    env = os.environ.get(DATA_ROOT_ENV)
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("dgmbench")) / "data"


def _read_idx(root: Path, name: str) -> tuple[np.ndarray, str]:
    raw = root / "MNIST" / "raw"
    md5_plain, md5_gz = MNIST_FILES[name]
    for path, expected, opener in ((raw / name, md5_plain, open), (raw / f"{name}.gz", md5_gz, gzip.open)):
        if not path.exists():
            continue
        digest = hashlib.md5(path.read_bytes()).hexdigest()
        if digest != expected:
            raise UserError(
                f"MNIST file {path} is corrupt (md5 {digest}, expected {expected}); delete it and run "
                f"`dgmbench download mnist --data-root {root}`"
            )
        with opener(path, "rb") as fh:
            data = fh.read()
        ndim = data[3]
        shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
        return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape), expected
    raise UserError(
        f"MNIST file {name} not found in {raw} (plain or .gz); set {DATA_ROOT_ENV} (or `data_root` in the config) "
        f"to a folder holding MNIST/raw, or run `dgmbench download mnist --data-root {root}`"
    )


@lru_cache(maxsize=2)
def _mnist(root: Path) -> Dataset:
    (tr_x, h1), (tr_y, h2), (te_x, h3), (te_y, h4) = (
        _read_idx(root, n) for n in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                                     "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"))
    images = torch.from_numpy(tr_x.copy()).unsqueeze(1)
    labels = torch.from_numpy(tr_y.astype(np.int64))
    cut = len(images) - MNIST_VAL_SIZE
    return Dataset(
        name="mnist", version="v1", kind="image",
        train=images[:cut], val=images[cut:], test=torch.from_numpy(te_x.copy()).unsqueeze(1),
        labels={"train": labels[:cut], "val": labels[cut:], "test": torch.from_numpy(te_y.astype(np.int64))},
        fingerprint=_fingerprint(h1.encode(), h2.encode(), h3.encode(), h4.encode(), f"val{MNIST_VAL_SIZE}".encode()),
        info={"levels": 256},
    )


def _dynamic_binarization(x: torch.Tensor) -> torch.Tensor:
    return torch.bernoulli(x.float() / 255.0).to(torch.uint8)


@lru_cache(maxsize=2)
def _binarized_mnist(root: Path) -> Dataset:
    """MNIST binarized as in Burda et al. (IWAE): every training batch is re-binarized at random with
    P(1) = pixel/255 (dynamic binarization); validation and test are binarized once with a fixed seed."""
    gray = _mnist(root)
    gen = torch.Generator().manual_seed(123)
    fixed = {s: torch.bernoulli(gray.split(s).float() / 255.0, generator=gen).to(torch.uint8) for s in ("val", "test")}
    return Dataset(
        name="binarized_mnist", version="v1", kind="image", train=gray.train, **fixed, labels=gray.labels,
        fingerprint=_fingerprint(gray.fingerprint.encode(), b"binarized-dynamic-seed123"),
        train_transform=_dynamic_binarization, info={"levels": 2},
    )


def download_mnist(root: Path) -> Path:
    """Fetch MNIST into root/MNIST/raw through torchvision (needs internet)."""
    import torchvision

    torchvision.datasets.MNIST(str(root), train=True, download=True)
    return root / "MNIST" / "raw"


# The builder of each name in core.names.DATASETS (2-D sets take no argument, images the data root)
BUILDERS: dict[str, Callable[..., Dataset]] = {"moons": _moons, "ring8": _ring8, "grid25": _grid25, "mnist": _mnist,
                                               "binarized_mnist": _binarized_mnist}


def available() -> list[str]:
    return list(DATASETS)


def check_name(name: str) -> None:
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; valid datasets: {', '.join(DATASETS)}")


def load(name: str, data_root: str | Path | None = None) -> Dataset:
    """Load a dataset by name; the MNIST variants from `data_root` (default: see `default_data_root`)."""
    check_name(name)
    if name in IMAGE_DATASETS:
        return BUILDERS[name](Path(data_root or default_data_root()).expanduser().resolve())
    return _cached_toy(name)


@cache
def _cached_toy(name: str) -> Dataset:
    return BUILDERS[name]()
