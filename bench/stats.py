"""Statistics over training seeds."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class Interval:
    mean: float
    half_width: float  # nan with fewer than two values
    n: int


def t_interval(values: Sequence[float], level: float = 0.95) -> Interval:
    """Mean ± t_{(1+level)/2, n−1} · s/√n (Student-t; bootstrap intervals under-cover with a handful of seeds)."""
    x = np.asarray(values, dtype=float)
    if len(x) == 0:
        raise ValueError("t_interval of no values")
    if len(x) < 2:
        return Interval(float(x.mean()), math.nan, len(x))
    half = stats.t.ppf((1 + level) / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
    return Interval(float(x.mean()), float(half), len(x))
