"""Statistics over seeds against scipy, hand-worked examples and brute force."""
import math
import warnings

import numpy as np
import pytest
from scipy import stats as sps

from bench import catalog, stats


def test_t_interval_matches_scipy():
    x = np.array([23.1, 24.0, 22.5, 25.2, 23.8])
    ci = stats.t_interval(x, level=0.95)
    lo, hi = sps.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=sps.sem(x))
    assert ci.mean == pytest.approx(x.mean()) and ci.n == 5
    assert (ci.mean - ci.half_width, ci.mean + ci.half_width) == pytest.approx((lo, hi), rel=1e-12)
    assert (lo, hi) == pytest.approx((22.5, 25.0), abs=0.05)  # the notes' worked example (anchors-metrics §3)
    assert math.isnan(stats.t_interval([1.0]).half_width)


def test_summarize():
    s = stats.summarize([3.0, 1.0, 2.0, 10.0])
    assert s.values == (3.0, 1.0, 2.0, 10.0) and s.n == 4
    assert s.median == 2.5 and s.sd == pytest.approx(np.std([3, 1, 2, 10], ddof=1))
    assert s.low < s.mean < s.high and s.high - s.mean == pytest.approx(stats.t_interval(s.values).half_width)
    one = stats.summarize([4.0])
    assert one.mean == one.median == 4.0 and math.isnan(one.sd) and math.isnan(one.half_width)


def test_holm_hand_worked_example():
    # sorted: 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, 0.04·1 = 0.04 -> running max 0.06
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1


def test_holm_ignores_nan_in_the_family():
    out = stats.holm([0.01, math.nan, 0.04])
    assert out[0] == pytest.approx(0.02) and math.isnan(out[1]) and out[2] == pytest.approx(0.04)
    assert stats.holm([]).shape == (0,)


def _holm_step_down(p: np.ndarray, alpha: float) -> set[int]:
    """Holm (1979) as a procedure: reject p_(i) while p_(i) <= alpha / (m - i + 1), stop at the first failure."""
    rejected = set()
    for i, idx in enumerate(np.argsort(p, kind="stable")):
        if p[idx] > alpha / (len(p) - i):
            break
        rejected.add(int(idx))
    return rejected


def test_holm_matches_step_down_procedure_and_is_monotone():
    rng = np.random.default_rng(0)
    for _ in range(200):
        p = rng.uniform(0, 0.2, size=rng.integers(1, 9)) ** rng.uniform(0.5, 3)
        adj = stats.holm(p)
        order = np.argsort(p, kind="stable")
        assert np.all(np.diff(adj[order]) >= -1e-15)  # monotone in p
        assert np.all(adj >= p - 1e-15) and np.all(adj <= 1)
        for alpha in (0.001, 0.01, 0.05, 0.1):
            assert {int(i) for i in np.flatnonzero(adj <= alpha)} == _holm_step_down(p, alpha)


def test_welch_matches_scipy_and_not_student():
    x, y = [1.0, 1.1, 0.9, 1.05, 0.95], [1.5, 3.0, 0.2, 2.8, 1.9, 2.6]
    assert stats.welch_p(x, y) == pytest.approx(sps.ttest_ind(x, y, equal_var=False).pvalue, rel=1e-12)
    assert stats.welch_p(x, y) != pytest.approx(sps.ttest_ind(x, y).pvalue, rel=1e-3)
    assert math.isnan(stats.welch_p([1.0], y))


def test_mann_whitney_matches_scipy():
    x, y = [0.1, 0.4, 0.35, 0.8], [0.5, 0.9, 0.7, 1.2, 0.65]
    assert stats.mann_whitney_p(x, y) == pytest.approx(sps.mannwhitneyu(x, y, alternative="two-sided").pvalue)
    assert set(stats.TESTS) == {"welch", "mannwhitney"}


def test_hedges_g_hand_computation():
    # means 2.5 and 5; s_x² = 5/3, s_y² = 2.5; s_p² = (3·5/3 + 4·2.5)/7 = 15/7; d = −2.5/√(15/7) = −1.707825;
    # J = 1 − 3/(4·9 − 9) = 8/9  ->  g = −1.518067
    assert stats.hedges_g([1, 2, 3, 4], [3, 4, 5, 6, 7]) == pytest.approx(-1.518067, abs=1e-6)
    assert stats.hedges_g([3, 4, 5, 6, 7], [1, 2, 3, 4]) == pytest.approx(1.518067, abs=1e-6)
    assert math.isnan(stats.hedges_g([1.0], [2.0, 3.0])) and math.isnan(stats.hedges_g([1, 1], [1, 1]))
    # constant sides: the mean of [0.1]*3 rounds to 0.1 + 1e-17, which must not read as a tiny sd and a huge g
    assert math.isnan(stats.hedges_g([0.0] * 3, [0.1] * 3)) and math.isnan(stats.welch_p([0.0] * 3, [0.1] * 3))
    # both are scale-free: values of order 1e-14 (an inverse error) are not constants
    x, y = np.array([1, 2, 3, 4]), np.array([3, 4, 5, 6, 7])
    assert stats.hedges_g(1e-14 * x, 1e-14 * y) == pytest.approx(-1.518067, abs=1e-6)
    assert stats.welch_p(1e-14 * x, 1e-14 * y) == pytest.approx(stats.welch_p(x, y), rel=1e-12)


def test_probability_of_superiority():
    # losses: pairs (1,2) win, (1,3) win, (2,2) tie, (2,3) win -> 3.5 / 4
    assert stats.prob_superiority([1, 2], [2, 3]) == 0.875
    x, y = [0.3, 0.1, 0.7, 0.5], [0.4, 0.9, 0.6]
    u_x = sps.mannwhitneyu(x, y).statistic  # counts x > y
    assert stats.prob_superiority(x, y) == pytest.approx(1 - u_x / (len(x) * len(y)))
    assert stats.prob_superiority([1, 2], [1, 2]) == 0.5


def test_direction_and_loss_values():
    # Every catalog entry, each with the side a reader expects to be better.
    expected = {"test_nll": "lower", "test_bpd": "lower", "elbo": "higher", "iwae_k": "higher", "elbo_gap": "zero",
                "inverse_error": "lower", "w1": "lower", "w2": "lower", "sliced_w2": "lower", "precision": "higher",
                "recall": "higher", "modes_covered": "higher", "high_quality": "higher", "mode_kl": "lower",
                "fid": "lower", "fid_inception": "lower", "classes_covered": "higher", "class_kl": "lower",
                "samples_per_s": "higher", "train_time_s": "lower", "train_peak_mem_mb": "lower",
                "eval_time_s": "lower"}
    assert set(expected) == set(catalog.BY_NAME)
    for metric, side in expected.items():
        assert catalog.direction(metric) == side, metric
    assert catalog.direction("iwae_k5000") == "higher"  # every IWAE bound's record
    assert catalog.direction("training") is None and catalog.direction("iwae") is None
    assert list(stats.loss_values("w2", [0.1, 0.2])) == [0.1, 0.2]
    assert list(stats.loss_values("precision", [0.9, 0.5])) == [-0.9, -0.5]
    assert list(stats.loss_values("elbo_gap", [-0.3, 0.1])) == [0.3, 0.1]
    with pytest.raises(ValueError):
        stats.loss_values("training", [1.0])


def test_seed_ranks_ties_missing_and_a_constant_winner():
    losses = np.array([[0.1, 0.2, 0.1],     # wins every seed
                       [0.5, 0.3, 0.4],
                       [0.5, np.nan, 0.4]])  # ties method 1 on seeds 0 and 2, failed on seed 1
    assert stats.seed_ranks(losses).tolist() == [[1, 1, 1], [2.5, 2, 2.5], [2.5, 3, 2.5]]
    best, mid, last = stats.rank_summaries(losses)
    assert (best.mean, best.low, best.high) == (1, 1, 1)
    assert mid.mean == pytest.approx(7 / 3) and (mid.low, mid.high) == (2, 2.5) and mid.per_seed == (2.5, 2, 2.5)
    assert last.high == 3


def test_one_constant_side_still_has_a_p_value_and_an_effect_size():
    """A method that covers 8 modes on every seed against one that varies: s_p > 0, so Welch's t and Hedges' g
    are defined (only both sides constant leaves them undefined). Welch's t is then y's one-sample t,
    (8 − 6)/√(1/3) on 2 degrees of freedom, and scipy's precision-loss warning, meant for nearly equal values, is
    not raised for an exact zero variance."""
    x, y = [8.0, 8.0, 8.0], [5.0, 6.0, 7.0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert stats.welch_p(x, y) == pytest.approx(2 * sps.t.sf(2 * math.sqrt(3), 2), rel=1e-12)
    assert stats.hedges_g(x, y) == pytest.approx((1 - 3 / 15) * 2 / math.sqrt(0.5), rel=1e-12)  # s_p² = 1/2
    assert math.isnan(stats.hedges_g([], [1.0, 2.0])) and math.isnan(stats.welch_p([8.0, 8.0], [8.0, 8.0]))
