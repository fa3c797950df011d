"""Statistics over training seeds: intervals, tests between methods, multiple-testing correction, effect sizes
and ranks. Pure functions on arrays (no files, no data frames).

Metric direction (bench/catalog.py): `loss_values` turns a metric into a loss (lower is better) so that every
comparison and rank is oriented the same way: lower-is-better metrics unchanged, toward-zero ones as |x|,
higher-is-better ones negated. Metrics without a direction are never compared or ranked.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from bench import catalog


def loss_values(metric: str, values: Sequence[float]) -> np.ndarray:
    """The metric as a loss, lower is better: x ('lower'), |x| ('zero'), −x ('higher')."""
    x = np.asarray(values, dtype=float)
    kind = catalog.direction(metric)
    if kind is None:
        raise ValueError(f"metric {metric!r} has no known direction (better is neither lower nor higher)")
    return {"lower": x, "zero": np.abs(x), "higher": -x}[kind]


@dataclass(frozen=True)
class Interval:
    mean: float
    half_width: float  # nan with fewer than two values
    n: int


def t_interval(values: Sequence[float], level: float = 0.95) -> Interval:
    """Student-t interval of the mean: x̄ ± t_{(1+level)/2, n−1} · s/√n, s the sample sd (ddof 1).

    Reference: Student (1908), Biometrika 6:1–25. With a handful of seeds bootstrap intervals under-cover, so
    the t-interval is the suite's interval (Agarwal et al. 2021, NeurIPS, discuss the small-n regime)."""
    x = np.asarray(values, dtype=float)
    if len(x) == 0:
        raise ValueError("t_interval of no values")
    if len(x) < 2:
        return Interval(float(x.mean()), math.nan, len(x))
    half = stats.t.ppf((1 + level) / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
    return Interval(float(x.mean()), float(half), len(x))


@dataclass(frozen=True)
class SeedSummary:
    """Descriptive statistics of one metric over seeds (values in seed order)."""
    mean: float
    sd: float  # sample sd (ddof 1); nan for one value
    half_width: float  # of the t-interval; nan for one value
    median: float
    values: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def low(self) -> float:
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        return self.mean + self.half_width


def summarize(values: Sequence[float], level: float = 0.95) -> SeedSummary:
    """Mean, sd (ddof 1), t-interval half-width (see `t_interval`), median and the values themselves."""
    x = np.asarray(values, dtype=float)
    ci = t_interval(x, level)
    sd = float(x.std(ddof=1)) if len(x) > 1 else math.nan
    return SeedSummary(ci.mean, sd, ci.half_width, float(np.median(x)), tuple(float(v) for v in x))


def _constant(x: Sequence[float]) -> bool:
    """Every value of x equal (exactly: float rounding in a mean is no variance)."""
    return bool(np.ptp(np.asarray(x, dtype=float)) == 0)


def welch_p(x: Sequence[float], y: Sequence[float]) -> float:
    """Two-sided p-value of Welch's unequal-variance t-test:
    t = (x̄ − ȳ)/√(s_x²/n_x + s_y²/n_y) on
    ν = (s_x²/n_x + s_y²/n_y)² / [(s_x²/n_x)²/(n_x−1) + (s_y²/n_y)²/(n_y−1)] degrees of freedom.
    nan with fewer than two values on a side or when both sides are constant (t undefined).
    Reference: Welch (1947), Biometrika 34:28–35."""
    x_constant, y_constant = _constant(x), _constant(y)
    if min(len(x), len(y)) < 2 or (x_constant and y_constant):
        return math.nan
    with warnings.catch_warnings():
        if x_constant or y_constant:  # an exact zero variance (every seed scored alike), not a cancellation
            warnings.filterwarnings("ignore", "Precision loss occurred in moment calculation", RuntimeWarning)
        return float(stats.ttest_ind(x, y, equal_var=False).pvalue)


def mann_whitney_p(x: Sequence[float], y: Sequence[float]) -> float:
    """Two-sided p-value of the Mann–Whitney U test, U = Σ_i Σ_j [x_i > y_j] + ½[x_i = y_j] (exact distribution
    without ties, normal approximation with tie correction otherwise, as scipy chooses). nan with an empty side.
    Reference: Mann & Whitney (1947), Ann. Math. Statist. 18:50–60."""
    if min(len(x), len(y)) < 1:
        return math.nan
    return float(stats.mannwhitneyu(x, y, alternative="two-sided").pvalue)


TESTS = {"welch": welch_p, "mannwhitney": mann_whitney_p}


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm–Bonferroni adjusted p-values (family-wise error control, any dependence). With the m non-nan
    p-values sorted ascending, p_(1) ≤ … ≤ p_(m):  p̃_(i) = min(1, max_{j ≤ i} (m − j + 1) · p_(j)).
    Rejecting every hypothesis with p̃ ≤ α is Holm's step-down procedure at level α. nan stays nan and does
    not count in m. Reference: Holm (1979), Scand. J. Statist. 6:65–70."""
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, math.nan)
    valid = np.flatnonzero(~np.isnan(p))
    order = valid[np.argsort(p[valid], kind="stable")]
    m = len(order)
    out[order] = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    return out


def hedges_g(x: Sequence[float], y: Sequence[float]) -> float:
    """Hedges' g of x minus y: J · (x̄ − ȳ)/s_p with the pooled sd
    s_p = √[((n_x−1)s_x² + (n_y−1)s_y²)/(n_x+n_y−2)]
    and the small-sample correction J = 1 − 3/(4(n_x+n_y) − 9).
    nan with fewer than two values on a side or when both sides are constant (s_p = 0).
    Reference: Hedges (1981), J. Educ. Statist. 6:107–128; Hedges & Olkin (1985), Statistical Methods for
    Meta-Analysis, ch. 5."""
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    nx, ny = len(a), len(b)
    if min(nx, ny) < 2:
        return math.nan
    sp = math.sqrt(((nx - 1) * a.var(ddof=1) + (ny - 1) * b.var(ddof=1)) / (nx + ny - 2))
    if _constant(a) and _constant(b):
        return math.nan
    return (1 - 3 / (4 * (nx + ny) - 9)) * (a.mean() - b.mean()) / sp


def prob_superiority(loss_x: Sequence[float], loss_y: Sequence[float]) -> float:
    """Probability of superiority of X over Y for losses (lower is better): P(X < Y) + ½ P(X = Y) over all
    pairs of one value from each sample, = 1 − U/(n_x n_y) with U the Mann–Whitney statistic of x over y.
    0.5 means no tendency. Reference: McGraw & Wong (1992), Psychol. Bull. 111:361–365; Vargha & Delaney (2000),
    J. Educ. Behav. Statist. 25:101–132 (their A)."""
    a, b = np.asarray(loss_x, dtype=float)[:, None], np.asarray(loss_y, dtype=float)[None, :]
    if a.size == 0 or b.size == 0:
        return math.nan
    return float(np.mean((a < b) + 0.5 * (a == b)))


def seed_ranks(losses: np.ndarray) -> np.ndarray:
    """Rank of every method on every seed: `losses` is methods × seeds (lower is better), nan = no value on
    that seed (failed or missing run), ranked after every value. Ties get their average rank (rank 1 = best).
    Reference: Friedman (1937), JASA 32:675–701; Demšar (2006), JMLR 7:1–30 (average ranks across runs)."""
    x = np.where(np.isnan(losses), np.inf, np.asarray(losses, dtype=float))
    return stats.rankdata(x, axis=0, method="average")


@dataclass(frozen=True)
class RankSummary:
    """One method's ranks over seeds: mean, range and the per-seed ranks (in seed order)."""
    mean: float
    low: float
    high: float
    per_seed: tuple[float, ...]


def rank_summaries(losses: np.ndarray) -> list[RankSummary]:
    """Per method (row of `losses`, see `seed_ranks`): the mean rank over seeds and its range [min, max]."""
    ranks = seed_ranks(losses)
    return [RankSummary(float(r.mean()), float(r.min()), float(r.max()), tuple(float(v) for v in r)) for r in ranks]
