"""Measuring: wall time of a callable (synchronised on CUDA), peak memory, power-law fits.

Timing goes through ``torch.utils.benchmark.Timer`` (warm-up, CUDA synchronisation and
adaptive repetition handled there); this module only picks its settings in one place.
"""

from __future__ import annotations

from typing import Callable

import numpy as np


def time_it(fn: Callable[[], object], *, device: str = "cpu", min_run_time: float = 0.2,
            warmup: int = 1) -> float:
    """Median seconds per call of ``fn()`` (CUDA work is synchronised before each reading)."""
    import torch
    import torch.utils.benchmark as tb

    for _ in range(warmup):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    timer = tb.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return float(timer.blocked_autorange(min_run_time=min_run_time).median)


def cuda_peak_memory(fn: Callable[[], object]) -> int:
    """Peak bytes allocated on the current CUDA device while ``fn()`` runs, above the start."""
    import torch

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
        import torch

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
