"""Intervals that decide verdicts: coverage of the t interval, bootstrap of timing ratios."""

import numpy as np
import pytest

from dynbook.book import stats


def test_t_interval_covers_the_mean_at_its_level():
    rng = np.random.default_rng(0)
    hits = 0
    for _ in range(2000):
        e = stats.over_seeds(rng.normal(1.0, 2.0, size=4))
        hits += e.lo <= 1.0 <= e.hi
    assert hits / 2000 == pytest.approx(0.95, abs=0.015)


def test_single_seed_is_a_point_and_empty_or_nan_is_refused():
    e = stats.over_seeds([2.0])
    assert (e.lo, e.value, e.hi, e.n) == (2.0, 2.0, 2.0, 1)
    with pytest.raises(ValueError, match="empty"):
        stats.over_seeds([])
    with pytest.raises(ValueError, match="NaN"):
        stats.over_seeds([1.0, float("nan")])
    with pytest.raises(ValueError, match="statistic"):
        stats.over_seeds([1.0, 2.0], statistic="mode")


def test_median_bootstrap_contains_the_median():
    e = stats.over_seeds([1.0, 2.0, 3.0, 10.0, 2.5], statistic="median")
    assert e.value == 2.5 and e.lo <= 2.5 <= e.hi


def test_timing_ratio_of_noisy_repeats():
    rng = np.random.default_rng(1)
    a = 2.0 * (1 + rng.exponential(0.05, size=9))  # load only ever adds time
    b = 1.0 * (1 + rng.exponential(0.05, size=9))
    e = stats.timing_ratio(a, b)
    assert e.lo <= e.value <= e.hi
    assert 1.7 < e.lo and e.hi < 2.4
    with pytest.raises(ValueError, match="2 repeats"):
        stats.timing_ratio([1.0], [1.0, 2.0])


def test_exact_with_resolution():
    e = stats.exact(1.0, 2**-10)
    assert e.interval == (1.0 - 2**-10, 1.0 + 2**-10)
    with pytest.raises(ValueError, match="outside"):
        stats.Estimate(5.0, 0.0, 1.0)


def test_least_reading_bootstrap_resists_bursts_of_load():
    rng = np.random.default_rng(1)
    base = 0.01 * (1 + 0.01 * rng.random(7))
    copy_ = 0.01 * (1 + 0.01 * rng.random(7))
    copy_[[1, 4]] *= 2.5  # two readings hit by load
    est = stats.timing_ratio(copy_, base, bootstrap="least")
    assert est.lo <= est.value <= est.hi and est.hi < 1.1
    assert est.method.startswith("ratio of least readings")
    assert stats.timing_ratio(3 * base, base, bootstrap="least").lo > 2.9
    with pytest.raises(ValueError, match="bootstrap='mode'"):
        stats.timing_ratio(base, base, bootstrap="mode")
    with pytest.raises(ValueError, match="positive"):
        stats.timing_ratio([1.0, -1.0], [1.0, 2.0], bootstrap="least")
