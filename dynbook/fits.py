"""Statistics of fitted and correlated quantities, as :class:`~dynbook.stats.Estimate` s.

* :func:`loglog_slope` – a power-law exponent or convergence order, the least-squares slope of
  log y on log x, with its Student-t interval (n − 2 degrees of freedom).
* :func:`partial_rank_correlation` – Spearman's ρ of x and y with the (rank, linear)
  dependence on a third variable z removed, and its p-value.
* :func:`rank_correlation` – the same ρ (partial or not) with a percentile-bootstrap interval
  over the cases (runs), for a verdict.
* :func:`spread` – a value with the interval [min, max] of the cases it summarises (the
  honest interval when the cases are settings, not samples).

All in float64 with numpy/scipy; nothing here touches torch.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from .stats import LEVEL, Estimate


def _array(name, v) -> np.ndarray:
    a = np.asarray([float(s) for s in np.ravel(np.asarray(v, dtype=float))], dtype=float)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or infinity: {a.tolist()}")
    return a


def loglog_slope(x: Sequence[float], y: Sequence[float], *, level: float = LEVEL) -> Estimate:
    """Slope p of log y = p log x + b by least squares, with the t interval of the slope
    (standard error from the residuals, n − 2 degrees of freedom). Needs n ≥ 3 positive
    points; with exactly collinear points the interval is the point."""
    from scipy import stats

    x, y = _array("x", x), _array("y", y)
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same length, got {x.size} and {y.size}")
    if x.size < 3:
        raise ValueError(f"loglog_slope needs at least 3 points for an interval, got {x.size}")
    if np.any(x <= 0) or np.any(y <= 0):
        raise ValueError("loglog_slope needs positive x and y")
    lx, ly = np.log(x), np.log(y)
    sxx = float(((lx - lx.mean()) ** 2).sum())
    if sxx == 0:
        raise ValueError("loglog_slope: all x are equal, the slope is undefined")
    slope = float(((lx - lx.mean()) * (ly - ly.mean())).sum() / sxx)
    resid = ly - (ly.mean() + slope * (lx - lx.mean()))
    dof = x.size - 2
    se = math.sqrt(float((resid ** 2).sum()) / dof / sxx)
    half = float(stats.t.ppf(0.5 + level / 2, dof)) * se
    return Estimate(slope, slope - half, slope + half, f"log-log slope over {x.size} points, t interval",
                    x.size, tuple(float(v) for v in y), level)


def _ranks_residual(x, y, z):
    from scipy.stats import rankdata

    rx, ry = rankdata(x), rankdata(y)
    if z is None:
        return rx - rx.mean(), ry - ry.mean()
    rz = rankdata(z)
    design = np.column_stack([np.ones_like(rz), rz])
    return tuple(r - design @ np.linalg.lstsq(design, r, rcond=None)[0] for r in (rx, ry))


def _corr(a, b) -> float:
    den = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
    return float((a * b).sum() / den) if den > 0 else 0.0


def partial_rank_correlation(x, y, z) -> tuple[float, float]:
    """Spearman correlation of x and y with the (linear, rank) dependence on z removed, and its
    two-sided p-value (t test with n − 3 degrees of freedom). Returns (ρ, p)."""
    from scipy.stats import t as student

    x, y, z = _array("x", x), _array("y", y), _array("z", z)
    if not x.size == y.size == z.size:
        raise ValueError(f"x, y, z must have the same length, got {x.size}, {y.size}, {z.size}")
    if x.size < 4:
        raise ValueError(f"partial_rank_correlation needs at least 4 cases, got {x.size}")
    r = _corr(*_ranks_residual(x, y, z))
    dof = x.size - 3
    stat = r * math.sqrt(dof / max(1e-300, 1 - r * r))
    return r, float(2 * student.sf(abs(stat), dof))


def rank_correlation(x, y, z=None, *, level: float = LEVEL, n_boot: int = 2000,
                     seed: int = 0) -> Estimate:
    """Spearman's ρ of x and y (partial on z when given), with a percentile-bootstrap interval
    from resampling the cases with replacement (``n_boot`` resamples, a fixed ``seed``)."""
    x, y = _array("x", x), _array("y", y)
    z = None if z is None else _array("z", z)
    if x.size != y.size or (z is not None and z.size != x.size):
        raise ValueError("x, y (and z) must have the same length")
    if x.size < 5:
        raise ValueError(f"rank_correlation needs at least 5 cases, got {x.size}")
    value = _corr(*_ranks_residual(x, y, z))
    rng = np.random.default_rng(seed)
    boots = np.empty(n_boot)
    for i in range(n_boot):
        idx = rng.integers(0, x.size, x.size)
        boots[i] = _corr(*_ranks_residual(x[idx], y[idx], None if z is None else z[idx]))
    q = (1 - level) / 2
    lo, hi = float(np.quantile(boots, q)), float(np.quantile(boots, 1 - q))
    kind = "partial Spearman ρ" if z is not None else "Spearman ρ"
    return Estimate(value, min(lo, value), max(hi, value),
                    f"{kind} over {x.size} runs, bootstrap", x.size, (), level)


def spread(values: Sequence[float], *, center: str = "median") -> Estimate:
    """``center`` (median or mean) of ``values`` with the interval [min, max]: for quantities
    summarised over settings (architectures, loss powers), where a verdict should hold for
    every one of them."""
    v = _array("values", values)
    if v.size == 0:
        raise ValueError("spread: values is empty")
    if center not in ("median", "mean"):
        raise ValueError(f"center={center!r} is not allowed: expected 'median' or 'mean'")
    c = float(np.median(v) if center == "median" else v.mean())
    return Estimate(c, float(v.min()), float(v.max()), f"{center} over {v.size} cases, [min, max]",
                    v.size, tuple(v), LEVEL)


__all__ = ["loglog_slope", "partial_rank_correlation", "rank_correlation", "spread"]
