"""Time and energy per unit of work, measured together with one repeat rule.

Every chapter that asks "what does one token, one sample, one FLOP cost" calls
:func:`metered`: the callables are interleaved (the order rotates each reading, so a burst of
load is spread over all of them), each reading runs one callable back to back for at least
``min_seconds`` (energy counters tick in milliseconds or coarser) inside an
:class:`~dynbook.measure.energy.EnergyMeter` region, and the reading is divided by the units of
work it did. Time is always measured; energy only where a counter can be read, and is
``None`` (never estimated) elsewhere.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping

from dynbook.book.stats import Estimate, over_seeds, timing_ratio


@dataclass(frozen=True)
class Metered:
    """The readings of one callable: per unit of work, one entry per reading."""

    name: str
    units_per_call: float
    calls_per_reading: int
    seconds: list[float]  # wall seconds per unit
    picojoules: list[float] | None  # net of idle power, per unit; None without a counter
    reason: str = ""  # why energy is unavailable
    gross_picojoules: list[float] | None = field(default=None)

    def time(self) -> Estimate:
        """Mean seconds per unit with a t interval over the readings."""
        return _over_readings(self.seconds)

    def energy(self) -> Estimate | None:
        """Mean net picojoules per unit with a t interval, or ``None`` (no counter)."""
        if self.picojoules is None or any(v is None or not math.isfinite(v) for v in self.picojoules):
            return None
        return _over_readings(self.picojoules)


def _over_readings(samples) -> Estimate:
    from dataclasses import replace

    est = over_seeds(samples)
    return replace(est, method=est.method.replace("seeds", "interleaved readings"))


def metered(fns: Mapping[str, Callable[[], object]], *, units: float | Mapping[str, float] = 1.0,
            meter=None, device: str = "cpu", readings: int = 3, min_seconds: float = 0.5) -> dict[str, Metered]:
    """``{name: Metered}`` for each callable of ``fns``: seconds (and, with a readable
    ``meter``, net picojoules) per unit of work, ``readings`` interleaved readings each.

    ``units`` is the work one call does (tokens, samples, FLOPs), one number or one per name.
    ``meter`` is an :class:`~dynbook.measure.energy.EnergyMeter` or ``None`` (time only); its
    idle power is measured before the first reading. Each callable runs once untimed first
    (warm-up), and a second, timed call sizes its readings to ``min_seconds``."""
    if not fns:
        raise ValueError("metered: fns is empty; expected {name: callable}")
    if not isinstance(readings, int) or readings < 2:
        raise ValueError(f"metered readings={readings!r} is not allowed: expected an integer >= 2 (an interval needs two)")
    if not min_seconds > 0:
        raise ValueError(f"metered min_seconds={min_seconds!r} is not allowed: expected > 0")
    per = {n: float(units[n] if isinstance(units, Mapping) else units) for n in fns}
    bad = {n: u for n, u in per.items() if not u > 0}
    if bad:
        raise ValueError(f"metered units={bad!r} are not allowed: each call must do a positive amount of work")
    calls = {}
    for name, fn in fns.items():
        fn()
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        calls[name] = max(1, math.ceil(min_seconds / max(time.perf_counter() - t0, 1e-9)))
    with_energy = meter is not None and meter.available
    secs = {n: [] for n in fns}
    pj = {n: [] for n in fns}
    gross = {n: [] for n in fns}
    names = list(fns)
    for r in range(readings):
        for name in names[r % len(names):] + names[:r % len(names)]:
            work = calls[name] * per[name]
            if with_energy:
                with meter:
                    for _ in range(calls[name]):
                        fns[name]()
                reading = meter.reading
                secs[name].append(reading.seconds / work)
                pj[name].append(reading.per(work))
                gross[name].append(reading.per(work, net=False))
            else:
                _sync(device)
                t0 = time.perf_counter()
                for _ in range(calls[name]):
                    fns[name]()
                _sync(device)
                secs[name].append((time.perf_counter() - t0) / work)
    reason = "" if with_energy else (meter.reason if meter is not None else "no energy meter was given")
    return {n: Metered(n, per[n], calls[n], secs[n], pj[n] if with_energy else None, reason,
                       gross[n] if with_energy else None) for n in fns}


def ratio(a: Metered, b: Metered, *, what: str = "time") -> Estimate | None:
    """``a`` ÷ ``b`` per unit of work, from paired interleaved readings (bootstrap of the
    median ratio, :func:`dynbook.book.stats.timing_ratio`); ``what`` is "time" or "energy"
    (``None`` when either has no energy reading)."""
    if what not in ("time", "energy"):
        raise ValueError(f"ratio what={what!r} is not allowed: expected 'time' or 'energy'")
    if what == "time":
        return timing_ratio(a.seconds, b.seconds)
    if a.energy() is None or b.energy() is None:
        return None
    return timing_ratio(a.picojoules, b.picojoules)


def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()
