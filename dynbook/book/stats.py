"""Estimates with intervals: the numbers that decide verdicts carry their spread.

An :class:`Estimate` is a value with a two-sided interval, the method that made it and the
samples behind it. Three ways to make one:

* :func:`over_seeds` – a quantity measured once per seed (random init, random data): the mean
  with a Student-t interval (n ≥ 2), or the bootstrap of another statistic.
* :func:`timing_ratio` – interleaved timing repeats of two callables' results: the ratio of
  their least medians, with a bootstrap interval over the repeats.
* :func:`exact` – a quantity without sampling noise (a deterministic computation in float64):
  the interval is the value itself, or ``value ± tolerance`` when a resolution is known
  (a bisection, a reference solution's error).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

LEVEL = 0.95


@dataclass(frozen=True)
class Estimate:
    """``value`` with the interval ``[lo, hi]`` (``level`` coverage), from ``method``."""

    value: float
    lo: float
    hi: float
    method: str = "exact"
    n: int = 1
    samples: tuple = field(default=(), repr=False)
    level: float = LEVEL

    def __post_init__(self):
        if not (self.lo <= self.value <= self.hi) and all(map(math.isfinite, (self.lo, self.value, self.hi))):
            raise ValueError(f"Estimate: value {self.value} is outside its interval [{self.lo}, {self.hi}]")

    @property
    def interval(self) -> tuple[float, float]:
        return (self.lo, self.hi)

    def map(self, fn: Callable[[float], float]) -> "Estimate":
        """The estimate of ``fn(quantity)`` for a monotone ``fn`` (interval ends mapped)."""
        a, b = fn(self.lo), fn(self.hi)
        return Estimate(fn(self.value), min(a, b), max(a, b), self.method, self.n,
                        tuple(fn(s) for s in self.samples), self.level)

    def as_dict(self) -> dict:
        return {"value": self.value, "interval": [self.lo, self.hi], "method": self.method,
                "n": self.n, "level": self.level,
                "samples": [float(s) for s in self.samples]}

    def __format__(self, spec: str) -> str:
        spec = spec or ".3g"
        return f"{self.value:{spec}} [{self.lo:{spec}}, {self.hi:{spec}}]"


def exact(value: float, tolerance: float = 0.0, *, method: str = "exact") -> Estimate:
    """A value without sampling noise; ``tolerance`` is its known resolution."""
    value = float(value)
    return Estimate(value, value - tolerance, value + tolerance, method if not tolerance else f"{method} ± resolution")


def over_seeds(samples: Sequence[float], *, statistic: str = "mean", level: float = LEVEL,
               n_boot: int = 4000, seed: int = 0) -> Estimate:
    """One measurement per seed → mean with a Student-t interval (``statistic="mean"``), or
    the median with a percentile-bootstrap interval (``statistic="median"``).

    With one sample the interval is the point: a verdict then rests on one seed, which the
    record says (``n = 1``)."""
    x = np.asarray([float(s) for s in samples], dtype=float)
    if x.size == 0:
        raise ValueError("over_seeds: samples is empty; expected at least one measurement")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"over_seeds: samples {x.tolist()} contain NaN or infinity")
    if statistic == "mean":
        m = float(x.mean())
        if x.size == 1:
            return Estimate(m, m, m, "single seed", 1, tuple(x), level)
        from scipy import stats

        half = float(stats.t.ppf(0.5 + level / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
        return Estimate(m, m - half, m + half, f"mean over {x.size} seeds, t interval", x.size, tuple(x), level)
    if statistic == "median":
        m = float(np.median(x))
        lo, hi = _bootstrap(x, np.median, level, n_boot, seed)
        return Estimate(m, min(lo, m), max(hi, m), f"median over {x.size} seeds, bootstrap", x.size, tuple(x), level)
    raise ValueError(f"over_seeds: statistic={statistic!r} is not allowed: expected 'mean' or 'median'")


def _bootstrap(x: np.ndarray, stat: Callable, level: float, n_boot: int, seed: int) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.shape[0], size=(n_boot, x.shape[0]))
    boots = np.array([stat(x[i]) for i in idx])
    a = (1 - level) / 2
    return float(np.quantile(boots, a)), float(np.quantile(boots, 1 - a))


def timing_ratio(numerator: Sequence[float], denominator: Sequence[float], *, level: float = LEVEL,
                 n_boot: int = 4000, seed: int = 0, bootstrap: str = "median") -> Estimate:
    """Ratio of two timed quantities from interleaved repeats: the value is the ratio of the
    least readings (on a shared machine load only adds time); the interval is a percentile
    bootstrap over the repeats of the ratio of medians (``bootstrap="median"``) or of least
    readings (``"least"``: a burst that hits a few readings moves it little, so two copies
    of one computation give ≈ 1 with a narrow interval), widened to contain the value."""
    if bootstrap not in ("median", "least"):
        raise ValueError(f"timing_ratio: bootstrap={bootstrap!r} is not allowed: expected 'median' or 'least'")
    a = np.asarray(numerator, dtype=float)
    b = np.asarray(denominator, dtype=float)
    if a.size < 2 or b.size < 2:
        raise ValueError(f"timing_ratio: need at least 2 repeats of each, got {a.size} and {b.size}")
    if bootstrap == "least" and (np.any(a <= 0) or np.any(b <= 0)):
        raise ValueError("timing_ratio: least readings must be positive")
    value = float(a.min() / b.min())
    rng = np.random.default_rng(seed)
    ia = rng.integers(0, a.size, size=(n_boot, a.size))
    ib = rng.integers(0, b.size, size=(n_boot, b.size))
    if bootstrap == "median":
        ratios = np.median(a[ia], axis=1) / np.median(b[ib], axis=1)
        method = f"least-time ratio, bootstrap of medians over {min(a.size, b.size)} interleaved repeats"
    else:
        ratios = a[ia].min(1) / b[ib].min(1)
        method = f"ratio of least readings, bootstrap over {min(a.size, b.size)} interleaved repeats"
    q = (1 - level) / 2
    lo, hi = float(np.quantile(ratios, q)), float(np.quantile(ratios, 1 - q))
    return Estimate(value, min(lo, value), max(hi, value), method, min(a.size, b.size), (), level)
