"""Measuring: wall time of a callable (synchronised on CUDA), peak memory, fits, caches.

Timing goes through ``torch.utils.benchmark.Timer`` (warm-up, CUDA synchronisation and
adaptive repetition handled there); this module only picks its settings in one place.
Comparisons are timed *interleaved* (:func:`interleaved_times`): every repeat runs each
candidate once, so a burst of load from other processes lands on all of them, and
:func:`dynbook.book.stats.timing_ratio` turns the repeats into a ratio with an interval.
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

_steady = False


def steady_allocator() -> bool:
    """Make repeated CPU timings of allocation-heavy code steady: glibc's malloc serves blocks
    above a *dynamic* threshold (128 KB rising to 32 MB) with fresh ``mmap`` pages and returns
    freed heap to the kernel, so the same call alternates between reused memory and
    page-faulting new memory. Measured here on chapter 5's parallel scan (L = 4096, one
    thread, thread CPU time): readings of one call spread over 16–42 ms, and the scan timed
    against a copy of itself came out 2.0× [0.85, 2.5]; with ``mmap`` off and trimming off,
    15–22 ms and 1.01× [0.95, 1.06].

    Sets ``M_MMAP_MAX = 0`` and ``M_TRIM_THRESHOLD = 1 GiB`` for the rest of the process
    (freed memory stays with the process and is reused). Returns whether it took effect:
    False where the C library has no ``mallopt`` (macOS, Windows); timings are then as noisy
    as the allocator makes them."""
    global _steady
    if _steady:
        return True
    import ctypes
    import ctypes.util

    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_max = -1, -4  # glibc's malloc.h
    _steady = mallopt(m_mmap_max, 0) == 1 and mallopt(m_trim_threshold, 1 << 30) == 1
    return _steady


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
    if timer_fn is None:
        timer = tb.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
        return float(timer.blocked_autorange(min_run_time=min_run_time).median)
    return _thread_autorange(fn, timer_fn, min_run_time)


def _thread_autorange(fn, now, min_run_time: float) -> float:
    """Median thread-CPU seconds per call over blocks of calls, collected for
    ``min_run_time`` of *wall* time (torch's ``blocked_autorange`` would wait for that much CPU
    time, which a call that sleeps or waits may never spend)."""
    import time

    n, per_call, start = 1, [], time.perf_counter()
    while True:
        w0, t0 = time.perf_counter(), now()
        for _ in range(n):
            fn()
        cpu, wall = now() - t0, time.perf_counter() - w0
        per_call.append(cpu / n)
        if time.perf_counter() - start >= min_run_time and len(per_call) >= 3:
            return float(np.median(per_call))
        if wall < min_run_time / 10:  # blocks of about a tenth of the budget, as torch sizes them
            n *= 2


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


def copy_bandwidth(device: str = "cpu", nbytes: int = 256 * 2**20, *, min_run_time: float = 0.5,
                   clock: str = "wall") -> float:
    """Measured copy bandwidth in bytes/s: ``dst.copy_(src)`` of ``nbytes``, counted as
    ``2·nbytes`` moved (read + write); the bandwidth roof that memory-bound kernels are held to.
    Small ``nbytes`` measure a cache level instead of memory (:func:`cache_bytes`)."""
    if nbytes < 16:
        raise ValueError(f"copy_bandwidth nbytes={nbytes!r} is not allowed: expected at least 16 bytes")
    src = torch.empty(nbytes // 4, device=device, dtype=torch.float32).uniform_()
    dst = torch.empty_like(src)
    t = time_it(lambda: dst.copy_(src), device=device, min_run_time=min_run_time, clock=clock)
    return 2 * src.numel() * 4 / t


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
    :func:`dynbook.book.stats.timing_ratio`. ``clock`` as in :func:`time_it`."""
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


@contextmanager
def blas_threads(n: int = 1):
    """Run numpy/scipy's BLAS and LAPACK on ``n`` threads inside the block (threadpoolctl;
    without it the libraries keep their threads: slower on small problems, same numbers).
    Small dense problems run faster on one thread, and on a machine shared with other
    processes OpenBLAS's spinning threads made chapter 8's ρ sweep seven times slower in wall
    time (16 s against 2.2 s)."""
    from dynbook._checks import positive_int

    positive_int("n", n)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - installed with the book's dependencies
        yield
        return
    with threadpool_limits(limits=n):
        yield


@contextmanager
def single_threaded():
    """PyTorch (:func:`num_threads`) and numpy's BLAS (:func:`blas_threads`) on one thread."""
    with num_threads(1), blas_threads(1):
        yield
