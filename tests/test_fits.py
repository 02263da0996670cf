"""dynbook.fits: slopes with t intervals, (partial) rank correlations with bootstrap intervals,
and [min, max] spreads, checked against closed forms and scipy in float64."""

import math

import numpy as np
import pytest
from scipy import stats as sst

from dynbook import fits


def test_loglog_slope_recovers_a_power_law_and_its_interval_covers_it():
    x = np.geomspace(1e-3, 1e-1, 6)
    rng = np.random.default_rng(0)
    y = 3.0 * x ** 0.5 * np.exp(0.02 * rng.standard_normal(x.size))
    est = fits.loglog_slope(x, y)
    assert est.lo < 0.5 < est.hi
    ref = sst.linregress(np.log(x), np.log(y))
    assert est.value == pytest.approx(ref.slope, rel=1e-12)
    half = sst.t.ppf(0.975, x.size - 2) * ref.stderr
    assert est.hi - est.value == pytest.approx(half, rel=1e-10)


def test_loglog_slope_of_an_exact_power_law_is_a_point():
    x = np.array([1.0, 2.0, 4.0, 8.0])
    est = fits.loglog_slope(x, x ** -1.5)
    assert est.value == pytest.approx(-1.5, abs=1e-12)
    assert est.hi - est.lo < 1e-10


def test_loglog_slope_rejects_bad_input():
    with pytest.raises(ValueError, match="at least 3 points"):
        fits.loglog_slope([1, 2], [1, 2])
    with pytest.raises(ValueError, match="positive"):
        fits.loglog_slope([1, 2, 3], [1, -2, 3])
    with pytest.raises(ValueError, match="NaN"):
        fits.loglog_slope([1, 2, 3], [1, float("nan"), 3])


def test_partial_rank_correlation_removes_a_common_cause():
    rng = np.random.default_rng(1)
    z = rng.standard_normal(300)
    x = z + 0.3 * rng.standard_normal(300)
    y = z + 0.3 * rng.standard_normal(300)  # x and y related only through z
    raw, _ = sst.spearmanr(x, y)
    part, p = fits.partial_rank_correlation(x, y, z)
    assert raw > 0.7 and abs(part) < 0.15 and p > 0.01
    # a direct link survives
    y2 = x + 0.3 * rng.standard_normal(300)
    part2, p2 = fits.partial_rank_correlation(x, y2, z)
    assert part2 > 0.5 and p2 < 1e-6


def test_rank_correlation_matches_spearman_and_its_interval_excludes_zero_only_when_related():
    rng = np.random.default_rng(2)
    x = rng.standard_normal(80)
    y = x + 0.5 * rng.standard_normal(80)
    est = fits.rank_correlation(x, y, seed=0)
    assert est.value == pytest.approx(sst.spearmanr(x, y)[0], rel=1e-12)
    assert est.lo > 0.5
    null = fits.rank_correlation(x, rng.standard_normal(80), seed=0)
    assert null.lo < 0 < null.hi
    # the same seed gives the same interval
    assert fits.rank_correlation(x, y, seed=0).interval == est.interval


def test_spread_is_median_with_min_max():
    est = fits.spread([3.0, 1.0, 2.0, 10.0])
    assert (est.value, est.lo, est.hi) == (2.5, 1.0, 10.0)
    assert fits.spread([1.0, 2.0, 6.0], center="mean").value == pytest.approx(3.0)
    with pytest.raises(ValueError, match="center='mode'"):
        fits.spread([1.0], center="mode")
    with pytest.raises(ValueError, match="empty"):
        fits.spread([])
