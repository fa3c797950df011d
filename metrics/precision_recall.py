"""Improved precision and recall of a generated sample against a real sample (Kynkäänniemi et al. 2019).

The support of each sample set is estimated as the union of balls around its points, each ball's radius being
the distance to the point's k-th nearest neighbour within its own set. Precision is the fraction of generated
points inside the real support (sample quality); recall is the fraction of real points inside the generated
support (coverage). Works in any feature space: data space for 2-D toy sets, classifier features for images.
This is the same estimator as torch-fidelity's PRC (input1 = generated, input2 = real).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PrecisionRecall:
    """Fractions in [0, 1] and the neighbourhood size k used for the radii."""

    precision: float
    recall: float
    k: int


def _to_tensor(x) -> torch.Tensor:
    x = torch.as_tensor(x).detach().cpu().double()
    return x.reshape(len(x), -1)


def _cdist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Euclidean distances; the exact (non-matmul) kernel is both faster and more accurate in low dimension."""
    mode = "donot_use_mm_for_euclid_dist" if a.shape[1] <= 8 else "use_mm_for_euclid_dist"
    return torch.cdist(a, b, compute_mode=mode)


def _knn_radii(points: torch.Tensor, k: int, chunk_size: int) -> torch.Tensor:
    """Distance from each point to its k-th nearest neighbour in the same set, the point itself excluded."""
    radii = [_cdist(part, points).topk(k + 1, dim=1, largest=False).values[:, -1] for part in points.split(chunk_size)]
    return torch.cat(radii)


def _inside_fraction(queries: torch.Tensor, centers: torch.Tensor, radii: torch.Tensor, chunk_size: int) -> float:
    """Fraction of ``queries`` within distance ``radii[j]`` of at least one ``centers[j]``."""
    inside = [(_cdist(part, centers) <= radii).any(dim=1) for part in queries.split(chunk_size)]
    return torch.cat(inside).double().mean().item()


def knn_precision_recall(real, generated, k: int = 3, chunk_size: int = 1024) -> PrecisionRecall:
    """k-NN precision and recall (Kynkäänniemi et al. 2019, "Improved precision and recall metric").

    With r_k(x; S) the distance from x ∈ S to its k-th nearest neighbour in S \\ {x}:
    ``precision = mean_{g ∈ G} 1[∃ r ∈ R: ‖g − r‖ ≤ r_k(r; R)]`` and
    ``recall = mean_{r ∈ R} 1[∃ g ∈ G: ‖r − g‖ ≤ r_k(g; G)]``.
    Inputs are N×d (more axes are flattened per sample); distances use ``torch.cdist`` in float64 on
    ``chunk_size`` rows at a time, so memory stays at chunk_size × N. Both sets need more than k points.
    """
    r, g = _to_tensor(real), _to_tensor(generated)
    if r.shape[1] != g.shape[1] or min(len(r), len(g)) <= k:
        raise ValueError(f"need two sets of equal dimension with more than k={k} points; got {r.shape} and {g.shape}")
    precision = _inside_fraction(g, r, _knn_radii(r, k, chunk_size), chunk_size)
    recall = _inside_fraction(r, g, _knn_radii(g, k, chunk_size), chunk_size)
    return PrecisionRecall(precision=precision, recall=recall, k=k)
