"""Statistics of fitted and correlated quantities, as :class:`~dynbook.book.stats.Estimate` s.

* :func:`loglog_slope` – a power-law exponent or convergence order, the least-squares slope of
  log y on log x, with its Student-t interval (n − 2 degrees of freedom).
* :func:`partial_rank_correlation` – Spearman's ρ of x and y with the (rank, linear)
  dependence on a third variable z removed, and its p-value.
* :func:`rank_correlation` – the same ρ (partial or not) with a percentile-bootstrap interval
  over the cases (runs), for a verdict.
* :func:`loglog_fit`, :func:`affine_fit` – plain least-squares (slope, intercept) pairs;
  :func:`slope_ratio` – the ratio of two timed quantities' affine slopes, bootstrapped.
* :func:`relative_error` – ‖a − b‖ / ‖b‖ (max-abs or 2-norm), the one comparison of a result
  against its reference that chapters, tests and benchmarks share.
* :func:`spread` – a value with the interval [min, max] of the cases it summarises (the
  honest interval when the cases are settings, not samples).

All in float64 with numpy/scipy (:func:`relative_error` also takes torch tensors).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from dynbook.book.stats import LEVEL, Estimate


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


def loglog_fit(x, y) -> tuple[float, float]:
    """Least-squares slope and intercept of log y against log x (a power-law exponent or a
    convergence order)."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    keep = (x > 0) & (y > 0) & np.isfinite(x) & np.isfinite(y)
    if keep.sum() < 2:
        raise ValueError("loglog_fit needs at least two positive, finite points")
    slope, intercept = np.polyfit(np.log(x[keep]), np.log(y[keep]), 1)
    return float(slope), float(intercept)


def affine_fit(x, y) -> tuple[float, float]:
    """Least-squares slope and intercept of ``y ≈ intercept + slope · x``: the cost per unit
    of ``x`` (per layer, per step) on top of a fixed cost. Unlike a log–log exponent, a
    fixed overhead does not bend the slope."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"affine_fit: x and y must be 1-D of one length, got {x.shape} and {y.shape}")
    if np.unique(x).size < 2 or not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError("affine_fit needs finite values at two or more distinct x")
    slope, intercept = np.polyfit(x, y, 1)
    return float(slope), float(intercept)


def slope_ratio(x, numerator, denominator, *, level: float = 0.95, n_boot: int = 2000, seed: int = 0):
    """Ratio of the affine slopes (:func:`affine_fit`) of two timed quantities against ``x``.

    ``numerator`` and ``denominator`` are ``(repeats, len(x))`` arrays of seconds from
    interleaved repeats. On a shared machine load only adds time, so each fit uses the least
    time at each ``x``; the interval is a bootstrap over repeats (each resample fits the
    per-``x`` least times of its repeats). Returns a :class:`dynbook.book.stats.Estimate`."""
    from dynbook.book.stats import Estimate

    a = np.asarray(numerator, dtype=float)
    b = np.asarray(denominator, dtype=float)
    x = np.asarray(x, dtype=float)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != x.size or b.shape[1] != x.size:
        raise ValueError(f"slope_ratio: expected (repeats, {x.size}) arrays, got {a.shape} and {b.shape}")
    if a.shape[0] < 2 or b.shape[0] < 2:
        raise ValueError("slope_ratio: need at least 2 repeats of each")

    def ratio(ta, tb):
        sb = affine_fit(x, tb)[0]
        return affine_fit(x, ta)[0] / sb if sb > 0 else float("nan")

    value = ratio(a.min(axis=0), b.min(axis=0))
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        ia = rng.integers(0, a.shape[0], a.shape[0])
        ib = rng.integers(0, b.shape[0], b.shape[0])
        boots.append(ratio(a[ia].min(axis=0), b[ib].min(axis=0)))
    boots = np.asarray(boots)
    boots = boots[np.isfinite(boots)]
    if not np.isfinite(value) or boots.size == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), "slope ratio (denominator slope ≤ 0)", a.shape[0])
    q = (1 - level) / 2
    lo, hi = float(np.quantile(boots, q)), float(np.quantile(boots, 1 - q))
    return Estimate(value, min(lo, value), max(hi, value),
                    f"ratio of affine slopes of least times, bootstrap over "
                    f"{min(a.shape[0], b.shape[0])} interleaved repeats", min(a.shape[0], b.shape[0]), (), level)


def relative_error(result, reference, *, norm: str = "max") -> float:
    """``‖result − reference‖ / ‖reference‖`` in float64, with ``norm`` "max" (largest absolute
    entry) or "fro" (2-norm of all entries). Accepts torch tensors, arrays or numbers of one
    shape; a zero reference gives the absolute error."""
    if norm not in ("max", "fro"):
        raise ValueError(f"relative_error norm={norm!r} is not allowed: expected 'max' or 'fro'")
    a = _as_float64(result)
    b = _as_float64(reference)
    if a.shape != b.shape:
        raise ValueError(f"relative_error: result has shape {a.shape}, reference {b.shape}")
    size = (lambda v: float(np.max(np.abs(v), initial=0.0))) if norm == "max" else (lambda v: float(np.linalg.norm(v)))
    scale = size(b)
    err = size(a - b)
    return err / scale if scale > 0 else err


def _as_float64(v) -> np.ndarray:
    if hasattr(v, "detach"):
        v = v.detach().to("cpu").double().numpy()
    return np.asarray(v, dtype=np.float64)
