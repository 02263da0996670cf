"""Argument checks shared by the package: each raises ``ValueError`` naming the parameter, the
value and what is allowed, before any work is done (``name={value!r} is not allowed: expected …``)."""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Iterable


def _fail(name: str, value, expected: str):
    raise ValueError(f"{name}={value!r} is not allowed: expected {expected}")


def positive_int(name: str, value, *, minimum: int = 1) -> int:
    """An integer ≥ ``minimum`` (bools are refused)."""
    if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
        _fail(name, value, f"an integer >= {minimum}")
    return int(value)


def positive(name: str, value, *, allow_zero: bool = False) -> float:
    """A finite real number > 0 (≥ 0 with ``allow_zero``)."""
    ok = isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value) and \
        (value >= 0 if allow_zero else value > 0)
    if not ok:
        _fail(name, value, "a finite number >= 0" if allow_zero else "a finite number > 0")
    return float(value)


def in_range(name: str, value, lo: float, hi: float, *, closed: bool = True) -> float:
    """A finite real number in ``[lo, hi]`` (``(lo, hi)`` when not ``closed``)."""
    ok = isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value) and \
        (lo <= value <= hi if closed else lo < value < hi)
    if not ok:
        _fail(name, value, f"a number in {'[' if closed else '('}{lo:g}, {hi:g}{']' if closed else ')'}")
    return float(value)


def probability(name: str, value) -> float:
    """A probability in [0, 1]."""
    return in_range(name, value, 0.0, 1.0)


def one_of(name: str, value, allowed: Iterable):
    """One of ``allowed`` (a registry's keys, a tuple of names)."""
    allowed = list(allowed)
    if value not in allowed:
        _fail(name, value, "one of " + ", ".join(map(repr, allowed)))
    return value
