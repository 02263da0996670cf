"""Measuring: wall time of a callable (synchronised on CUDA), peak memory, power-law fits.

Timing goes through ``torch.utils.benchmark.Timer`` (warm-up, CUDA synchronisation and
adaptive repetition handled there); this module only picks its settings in one place.
"""

from __future__ import annotations

import weakref
from contextlib import contextmanager
from typing import Callable

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


def time_it(fn: Callable[[], object], *, device: str = "cpu", min_run_time: float = 0.2,
            warmup: int = 1) -> float:
    """Median seconds per call of ``fn()`` (CUDA work is synchronised before each reading)."""
    import torch.utils.benchmark as tb

    for _ in range(warmup):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    timer = tb.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
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
    """

    def __init__(self):
        self.bytes = 0
        self._seen: set = set()

    def _pack(self, t):
        key = (t.untyped_storage().data_ptr(), t.device.type)
        if key not in self._seen:
            self._seen.add(key)
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


def least_median_seconds(fns: dict, *, device: str, min_run_time: float = 0.1, repeats: int = 3) -> dict:
    """``{name: seconds}``: the least of ``repeats`` medians (``time_it``) of each callable, the
    callables interleaved. On a shared machine other processes only ever add time, so the
    least median is the most faithful reading, and interleaving spreads a burst of load over
    all of them instead of one."""
    seconds = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            seconds[name].append(time_it(fn, device=device, min_run_time=min_run_time))
    return {name: min(ts) for name, ts in seconds.items()}




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
