"""Measuring: wall time of a callable (synchronised on CUDA), peak memory, fits, caches.

Timing goes through ``torch.utils.benchmark.Timer`` (warm-up, CUDA synchronisation and
adaptive repetition handled there); this module only picks its settings in one place.
Comparisons are timed *interleaved* (:func:`interleaved_times`): every repeat runs each
candidate once, so a burst of load from other processes lands on all of them, and
:func:`dynbook.stats.timing_ratio` turns the repeats into a ratio with an interval.
"""

from __future__ import annotations

import weakref
from contextlib import contextmanager
from typing import Callable

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


CLOCKS = ("wall", "thread")


def _clock(clock: str, device: str):
    import time

    if clock not in CLOCKS:
        raise ValueError(f"clock={clock!r} is not allowed: expected one of {', '.join(map(repr, CLOCKS))}")
    if clock == "thread":
        if device != "cpu":
            raise ValueError(f"clock='thread' is not allowed on device {device!r}: it times CPU work only")
        return time.thread_time
    return None


def time_it(fn: Callable[[], object], *, device: str = "cpu", min_run_time: float = 0.2,
            warmup: int = 1, clock: str = "wall") -> float:
    """Median seconds per call of ``fn()`` (CUDA work is synchronised before each reading).

    ``clock="thread"`` (CPU only, for work on the calling thread, e.g. under
    ``num_threads(1)``) reads the thread's CPU time instead of the wall clock: on a machine
    shared with other processes, the time the core spends on them is not charged to ``fn``
    (their contention for caches and memory still is)."""
    import torch.utils.benchmark as tb

    timer_fn = _clock(clock, device)
    for _ in range(warmup):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    kw = {"timer": timer_fn} if timer_fn is not None else {}
    timer = tb.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads(), **kw)
    return float(timer.blocked_autorange(min_run_time=min_run_time).median)


def cuda_peak_memory(fn: Callable[[], object]) -> int:
    """Peak bytes allocated on the current CUDA device while ``fn()`` runs, above the start."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return int(torch.cuda.max_memory_allocated() - base)


class SavedTensorBytes:
    """Bytes of the tensors autograd keeps for backward, counted as they are saved.

    Device-independent: on a CPU, where no allocator reports a peak, this *is* the memory
    that training keeps alive between forward and backward (storage shared by several saved
    tensors is counted once).

    ``exclude``: tensors whose storage is not counted in ``bytes`` (pass the model's
    parameters: a Linear layer saves its weight for the input gradient, but the weights live
    whether or not anything trains, so they are not memory that backward *adds*). Their
    saved bytes go to ``excluded_bytes`` instead.
    """

    def __init__(self, exclude=()):
        self.bytes = 0
        self.excluded_bytes = 0
        self._seen: set = set()
        self._exclude = {(t.untyped_storage().data_ptr(), t.device.type) for t in exclude}

    def _pack(self, t):
        key = (t.untyped_storage().data_ptr(), t.device.type)
        if key not in self._seen:
            self._seen.add(key)
            if key in self._exclude:
                self.excluded_bytes += t.untyped_storage().nbytes()
            else:
                self.bytes += t.untyped_storage().nbytes()
        return t

    def __enter__(self):
        self._ctx = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc):
        self._ctx.__exit__(*exc)
        return False


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


class TensorBytesPeak(TorchDispatchMode):
    """Peak bytes of tensor storage allocated by ATen operators inside the ``with`` block.

    Every operator output whose storage is new (not an input's, not seen before) is counted
    while it lives (a finaliser subtracts it when the storage is freed). What it cannot see:
    scratch buffers a fused kernel allocates internally (e.g. the per-thread blocks of
    PyTorch's CPU flash-attention kernel), and memory held before the block. On a CPU, where
    no allocator reports a peak, this is the memory a computation *materialises*.
    """

    def __enter__(self):
        self.live = 0
        self.peak = 0
        self._tracked: dict[int, int] = {}
        return super().__enter__()

    def _free(self, key: int, nbytes: int) -> None:
        if self._tracked.pop(key, None) is not None:
            self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {id(t.untyped_storage()) for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            key = id(storage)
            if key in inputs or key in self._tracked:
                continue  # a view or an in-place result: no new memory
            nbytes = storage.nbytes()
            self._tracked[key] = nbytes
            self.live += nbytes
            self.peak = max(self.peak, self.live)
            weakref.finalize(storage, self._free, key, nbytes)
        return out


def peak_bytes(fn, *, device: str) -> int:
    """Peak memory of ``fn()`` above what was held before: the CUDA allocator's peak on a GPU,
    :class:`TensorBytesPeak` (tensors materialised by ATen operators) on a CPU."""
    if device == "cuda":
        return cuda_peak_memory(fn)
    with TensorBytesPeak() as tracker:
        fn()
    return tracker.peak


def _time_once(fn: Callable[[], object], device: str, clock: str = "wall") -> float:
    import time

    now = _clock(clock, device) or time.perf_counter
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = now()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return now() - t0


def interleaved_times(fns: dict, *, device: str, min_run_time: float = 0.1, repeats: int = 3,
                      warmup: int = 1, clock: str = "wall") -> dict:
    """``{name: [seconds per call, one per repeat]}``: each repeat times every callable once,
    the callables interleaved, after ``warmup`` untimed calls of each (at least one, which
    also sizes the reading). A callable faster than ``min_run_time`` is read by ``time_it``
    (a median over its own calls); a slower one by one synchronised call, since a block of
    calls would add nothing but time. Feed two of the lists to
    :func:`dynbook.stats.timing_ratio`. ``clock`` as in :func:`time_it`."""
    if repeats < 1:
        raise ValueError(f"repeats={repeats!r} is not allowed: expected a positive integer")
    slow = {}
    for name, fn in fns.items():
        for _ in range(max(0, warmup - 1)):
            fn()
        slow[name] = _time_once(fn, device, clock) >= min_run_time
    seconds = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            seconds[name].append(_time_once(fn, device, clock) if slow[name]
                                 else time_it(fn, device=device, min_run_time=min_run_time, warmup=0, clock=clock))
    return seconds


def least_median_seconds(fns: dict, *, device: str, min_run_time: float = 0.1, repeats: int = 3) -> dict:
    """``{name: seconds}``: the least of ``repeats`` medians (``time_it``) of each callable, the
    callables interleaved. On a shared machine other processes only ever add time, so the
    least median is the most faithful reading, and interleaving spreads a burst of load over
    all of them instead of one."""
    times = interleaved_times(fns, device=device, min_run_time=min_run_time, repeats=repeats)
    return {name: min(ts) for name, ts in times.items()}


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
    per-``x`` least times of its repeats). Returns a :class:`dynbook.stats.Estimate`."""
    from .stats import Estimate

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


# ----------------------------------------------------------------------------- the machine


def cache_bytes(device: str = "cpu", *, sysfs: str = "/sys/devices/system/cpu/cpu0/cache") -> dict:
    """Sizes of the data caches one core (CPU) or the whole GPU (CUDA) sees, in bytes:
    ``{"L1": …, "L2": …, "L3": …, "last": …}`` (levels the hardware lacks are absent;
    ``last`` is the last level). Read from sysfs on Linux, from the device properties on
    CUDA; ``{}`` where neither says."""
    if device == "cuda":
        l2 = int(getattr(torch.cuda.get_device_properties(torch.cuda.current_device()), "L2_cache_size", 0))
        return {"L2": l2, "last": l2} if l2 else {}
    from pathlib import Path

    out = {}
    for index in sorted(Path(sysfs).glob("index*")):
        try:
            kind = (index / "type").read_text().strip()
            level = int((index / "level").read_text())
            size = (index / "size").read_text().strip()
        except (OSError, ValueError):
            continue
        if kind == "Instruction":
            continue
        units = {"K": 2**10, "M": 2**20, "G": 2**30}
        n = int(size[:-1]) * units[size[-1]] if size[-1] in units else int(size)
        out[f"L{level}"] = n
    if out:
        out["last"] = out[max(out, key=lambda k: int(k[1:]))]
    return out


def free_memory_bytes(device: str = "cpu") -> int:
    """Memory a computation can still allocate: free device memory on CUDA
    (``torch.cuda.mem_get_info``), ``MemAvailable`` of ``/proc/meminfo`` on a CPU."""
    if device == "cuda":
        return int(torch.cuda.mem_get_info()[0])
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import psutil

    return int(psutil.virtual_memory().available)




@contextmanager
def num_threads(n: int):
    """Run PyTorch with ``n`` intra-op threads inside the block (tiny models train faster on
    one thread: splitting 10⁵-element operations costs more than it saves)."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)
