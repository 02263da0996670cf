"""dynbook.measure.fits: slopes with t intervals, (partial) rank correlations with bootstrap intervals,
and [min, max] spreads, checked against closed forms and scipy in float64."""

import math

import numpy as np
import pytest
from scipy import stats as sst

from dynbook.measure import fits


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


def test_affine_fit_recovers_slope_and_intercept_where_loglog_does_not():
    depth = np.array([2, 4, 8, 16, 32.0])
    t = 5.0 + 0.25 * depth  # a fixed overhead plus a cost per layer
    slope, intercept = fits.affine_fit(depth, t)
    assert slope == pytest.approx(0.25) and intercept == pytest.approx(5.0)
    exponent, _ = fits.loglog_fit(depth, t)
    assert exponent < 0.8  # the overhead bends the log–log exponent away from 1
    with pytest.raises(ValueError):
        fits.affine_fit([1, 1], [2, 3])


def test_slope_ratio_recovers_a_known_ratio_with_an_interval():
    rng = np.random.default_rng(1)
    depth = np.array([2, 4, 8, 16.0])
    fwd = 1.0 + 0.1 * depth
    step = 2.0 + 0.3 * depth  # three times the forward cost per layer
    noise = lambda: 1 + 0.05 * rng.random((6, depth.size))  # load only adds time
    est = fits.slope_ratio(depth, step * noise(), fwd * noise())
    assert est.lo <= est.value <= est.hi
    assert 2.5 < est.value < 3.5 and 2.0 < est.lo and est.hi < 4.0
    exact = fits.slope_ratio(depth, np.tile(step, (3, 1)), np.tile(fwd, (3, 1)))
    assert exact.value == pytest.approx(3.0) and exact.lo == pytest.approx(3.0) and exact.hi == pytest.approx(3.0)
    with pytest.raises(ValueError):
        fits.slope_ratio(depth, step[None], fwd[None])


def test_loglog_fit_recovers_exponent():
    x = np.array([1, 2, 4, 8.0])
    slope, intercept = fits.loglog_fit(x, 3 * x**1.5)
    assert slope == pytest.approx(1.5) and np.exp(intercept) == pytest.approx(3)
    with pytest.raises(ValueError):
        fits.loglog_fit([1], [1])


def test_relative_error_in_float64_against_numpy_and_torch_inputs():
    import torch

    ref = np.array([[1.0, -4.0], [2.0, 0.5]])
    got = ref + np.array([[0.0, 0.004], [-0.002, 0.0]])
    assert fits.relative_error(got, ref) == pytest.approx(0.004 / 4.0)
    assert fits.relative_error(torch.tensor(got, dtype=torch.float32), torch.tensor(ref), norm="fro") == \
        pytest.approx(np.linalg.norm(got - ref) / np.linalg.norm(ref), rel=1e-3)
    assert fits.relative_error([0.5], [0.0]) == 0.5  # a zero reference: the absolute error
    with pytest.raises(ValueError, match="shape"):
        fits.relative_error(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="norm='l1'"):
        fits.relative_error(ref, ref, norm="l1")
