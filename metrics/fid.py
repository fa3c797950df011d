"""Fréchet distance (FID) and its torch-fidelity integration, with an MNIST-classifier feature extractor.

FID (Heusel et al. 2017) is the squared Fréchet / 2-Wasserstein distance between Gaussians fitted to the
features of two sample sets (Dowson & Landau 1982). On MNIST, ImageNet Inception features are slow on CPU and
questionable for 28×28 digits, so the default extractor is a small MNIST classifier (``MnistClassifier``); its
numbers are only comparable under the same weights, which is why its torch-fidelity name carries the weights
hash. Finite-sample FID is biased upward by about c/N (Chong & Forsyth 2020): always report N.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch_fidelity import calculate_metrics, register_feature_extractor
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from metrics._arrays import as_float64

_PSD_TOL = 1e-6  # relative size of a negative eigenvalue still treated as rounding noise
_NAME_PREFIX = "mnist-classifier-"



def _psd_eigh(matrix: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Eigen-decomposition of a symmetric PSD matrix with eigenvalues below the rounding floor set to 0.

    The floor is ``d · eps · max|λ|`` (numpy's matrix_rank tolerance): such eigenvalues are noise, and keeping
    them would add about sqrt(eps) relative error per null direction once square-rooted.
    """
    vals, vecs = np.linalg.eigh((matrix + matrix.T) / 2)
    scale = np.abs(vals).max(initial=0.0)
    if vals.min(initial=0.0) < -_PSD_TOL * scale:
        raise ValueError(f"{what} is not positive semi-definite (eigenvalue {vals.min():.3g}); "
                         "pass covariance matrices")
    return np.where(vals > vals.size * np.finfo(np.float64).eps * scale, vals, 0.0), vecs


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Squared Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2) (Dowson & Landau 1982).

    ``d² = ‖mu1 − mu2‖² + tr(S1) + tr(S2) − 2 tr((S1^{1/2} S2 S1^{1/2})^{1/2})``, the FID of Heusel et al. 2017
    and the squared Bures–Wasserstein W2 between the Gaussians. The trace term is computed from symmetric
    eigen-decompositions (S1^{1/2} via ``eigh``, then the eigenvalues of the PSD matrix S1^{1/2} S2 S1^{1/2}),
    which stays real and accurate for singular covariances (fewer samples than dimensions, dead features).
    Rounding-level eigenvalues (either sign) are set to 0; clearly non-PSD or non-finite input raises
    ``ValueError`` instead of returning NaN. The result is not clipped and can be about −1e-12 for equal inputs.
    """
    m1, m2, s1, s2 = (as_float64(v) for v in (mu1, mu2, sigma1, sigma2))
    if m1.ndim != 1 or m1.shape != m2.shape or s1.shape != (m1.size, m1.size) or s2.shape != s1.shape:
        raise ValueError("expected means (d,) and covariances (d, d); "
                         f"got {m1.shape}, {s1.shape}, {m2.shape}, {s2.shape}")
    if not all(np.isfinite(v).all() for v in (m1, m2, s1, s2)):
        raise ValueError("frechet_distance got non-finite means or covariances (NaN/inf in the features?)")
    vals1, vecs1 = _psd_eigh(s1, "sigma1")
    sqrt_s1 = (vecs1 * np.sqrt(vals1)) @ vecs1.T
    vals, _ = _psd_eigh(sqrt_s1 @ s2 @ sqrt_s1, "S1^1/2 sigma2 S1^1/2")
    diff = m1 - m2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.sqrt(vals).sum())


def fid(features_a, features_b) -> float:
    """FID between two feature sets (N×d each): ``frechet_distance`` of their means and covariances.

    Covariances use ``np.cov(rowvar=False)`` (ddof=1), as in TTUR and torch-fidelity. Needs N ≥ 2 per set;
    N should exceed d (Heusel et al. recommend N ≥ 10,000).
    """
    a, b = as_float64(features_a), as_float64(features_b)
    if a.ndim != 2 or b.ndim != 2 or len(a) < 2 or len(b) < 2:
        raise ValueError(f"fid needs two 2-D feature arrays with at least 2 rows each; got {a.shape} and {b.shape}")
    return frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))


class MnistClassifier(nn.Module):
    """Small MNIST CNN: conv(32)–pool–conv(64)–pool–fc(128, "penultimate")–fc(10, "logits").

    Accepts uint8 images in 0–255 or float images in [0, 1], shaped B×1×28×28, B×28×28 or B×784.
    ``forward`` returns logits (train with cross-entropy); ``features`` returns (penultimate, logits).
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc1 = nn.Linear(64 * 7 * 7, 128)
        self.fc2 = nn.Linear(128, num_classes)

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.dtype == torch.uint8:
            x = x.float() / 255.0
        x = x.float().reshape(-1, 1, 28, 28)
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        penultimate = F.relu(self.fc1(x.flatten(1)))
        return penultimate, self.fc2(penultimate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)[1]


def weights_hash(weights_path: str | Path) -> str:
    """SHA-256 hex digest of a weights file (recorded with every FID so numbers can be traced to weights)."""
    return hashlib.sha256(Path(weights_path).read_bytes()).hexdigest()


class MnistClassifierExtractor(FeatureExtractorBase):
    """torch-fidelity feature extractor over ``MnistClassifier`` (features "penultimate" (128-d) and "logits").

    Built by torch-fidelity as ``cls(name, features_list, feature_extractor_weights_path=..., **kwargs)``; loads
    the state dict from ``feature_extractor_weights_path`` and refuses weights whose hash does not match the
    hash in a name made by ``register_mnist_extractor``.
    """

    def __init__(self, name: str, features_list, feature_extractor_weights_path: str | None = None, **kwargs) -> None:
        super().__init__(name, features_list)
        if feature_extractor_weights_path is None:
            raise ValueError(f"extractor {name!r} needs feature_extractor_weights_path (a MnistClassifier state dict)")
        if name.startswith(_NAME_PREFIX) and name != _NAME_PREFIX + weights_hash(feature_extractor_weights_path)[:12]:
            raise ValueError(
                f"weights {feature_extractor_weights_path} do not match extractor {name!r}; register them first"
            )
        self.net = MnistClassifier()
        self.net.load_state_dict(torch.load(feature_extractor_weights_path, map_location="cpu", weights_only=True))

    @staticmethod
    def get_provided_features_list() -> tuple[str, ...]:
        return ("penultimate", "logits")

    @staticmethod
    def get_default_feature_layer_for_metric(metric: str) -> str:
        return {"isc": "logits", "fid": "penultimate", "kid": "penultimate", "prc": "penultimate"}[metric]

    @staticmethod
    def can_be_compiled() -> bool:
        return True

    @staticmethod
    def get_dummy_input_for_compile() -> torch.Tensor:
        return torch.zeros(1, 1, 28, 28, dtype=torch.uint8)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        penultimate, logits = self.net.features(x)
        out = {"penultimate": penultimate, "logits": logits}
        return tuple(out[name] for name in self.features_list)


def register_mnist_extractor(weights_path: str | Path) -> str:
    """Register ``MnistClassifierExtractor`` with torch-fidelity as ``mnist-classifier-<first 12 hex of sha256>``.

    The weights hash in the name keeps torch-fidelity's cache (keyed by extractor name, not weights) from ever
    serving statistics of other weights. Idempotent; returns the name.
    """
    name = _NAME_PREFIX + weights_hash(weights_path)[:12]
    if name not in FEATURE_EXTRACTORS_REGISTRY:
        register_feature_extractor(name, MnistClassifierExtractor)
    return name


class _Images(torch.utils.data.Dataset):
    """Indexable wrapper returning bare tensors, the only Dataset item type torch-fidelity accepts."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.images[i]


def _to_uint8_rgb(images: torch.Tensor) -> torch.Tensor:
    """Gray images (uint8 0–255 or float [0, 1]) → uint8 B×3×H×W, the input torch-fidelity's Inception needs."""
    if images.dtype != torch.uint8:
        images = (images.float().clamp(0, 1) * 255).round().to(torch.uint8)
    images = images.reshape(len(images), 1, *images.shape[-2:]) if images.dim() == 3 else images
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images


def torch_fidelity_metrics(
    generated,
    real,
    extractor_name: str | None = None,
    weights_path: str | Path | None = None,
    prc: bool = True,
    cuda: bool = False,
    batch_size: int = 256,
    prc_neighborhood: int = 3,
) -> dict[str, float | str]:
    """FID and k-NN precision/recall/F-score of ``generated`` vs ``real`` images via torch-fidelity.

    Wraps ``torch_fidelity.calculate_metrics``. ``extractor_name``: the name returned by
    ``register_mnist_extractor(weights_path)`` for the same ``weights_path`` (images passed unchanged: float
    [0, 1] or uint8, B×1×28×28), or None for torch-fidelity's ``inception-v3-compat`` (2048-d pool features, images
    converted to uint8 with the gray channel repeated; ``weights_path`` is then the Inception weights file,
    None downloads them; about 6 images/s on CPU). Runs on CPU unless ``cuda``; torch-fidelity's cache is off.
    Precision/recall follow Kynkäänniemi et al. 2019 with k = ``prc_neighborhood`` (input1 = generated,
    input2 = real). Returns {fid, precision, recall, f_score, extractor}; precision, recall, f_score only with ``prc``.
    """
    gen, ref = (torch.as_tensor(v) for v in (generated, real))
    if extractor_name is None:
        extractor_name, gen, ref = "inception-v3-compat", _to_uint8_rgb(gen), _to_uint8_rgb(ref)
    out = calculate_metrics(
        input1=_Images(gen),
        input2=_Images(ref),
        cuda=cuda,
        batch_size=batch_size,
        fid=True,
        prc=prc,
        prc_neighborhood=prc_neighborhood,
        feature_extractor=extractor_name,
        feature_extractor_weights_path=None if weights_path is None else str(weights_path),
        cache=False,
        save_cpu_ram=True,  # no DataLoader worker processes; chunked PRC (same result, less memory)
        verbose=False,
    )
    result: dict[str, float | str] = {"fid": float(out["frechet_inception_distance"]), "extractor": extractor_name}
    if prc:
        result.update({k: float(out[k]) for k in ("precision", "recall", "f_score")})
    return result
