"""Matrix limits: GEMM/GEMV sweeps, the roofline, layer-to-layer reuse, training cost vs depth.

Conventions. A GEMM multiplies ``(M × K) @ (K × N)``; ``M`` is the batch. It costs
``2 M N K`` FLOP (one multiply and one add per term) and must move at least
``itemsize · (M K + K N + M N)`` bytes (each operand read once, the result written once):
its arithmetic intensity is the ratio. The roofline bounds attainable throughput by
``min(peak FLOP/s, intensity × bandwidth)`` (Williams et al. 2009); both ceilings are
*measured* on the running machine, not taken from a data sheet, and the caches add roofs
of their own: a kernel whose operands sit in a cache can run above the DRAM roof.

Timing on a CPU runs on one thread (:func:`timing_threads`): on a shared machine a second
intra-op thread waits for a busy core, and the wait, not the work, then sets the time (issue
9 measured batch 8 at 50× the time of batch 1 with two threads, 1.4–1.8× with one).
On a CPU the clock is that thread's CPU time (:func:`timing_clock`), so the time a shared
machine gives to other processes is not charged to the kernel. Comparisons are timed
interleaved (:func:`dynbook.measure.timing.interleaved_times`) and decided on ratios with bootstrap
intervals (:func:`dynbook.book.stats.timing_ratio`).

Chapter 1 runs each experiment as one call that returns what it measured and the estimates its
claims are decided on: :func:`plan` (the sizes), :func:`measure_ceilings` (C1's roofs),
:func:`batch_study` (C1), :func:`reuse_study` (C2a, C2b), :func:`depth_study` (C3a, C3b) and
:func:`energy_study` (C4a, C4b: a copy, an FMA loop, a GEMV and a GEMM metered by
:func:`dynbook.measure.metered.metered`); ``plot_*`` draw its figures. The chapter records,
decides and tells.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import numpy as np
import torch

from dynbook import _checks
from dynbook.book.stats import Estimate, exact, timing_ratio
from dynbook.measure import energy as _energy, timing as _timing
from dynbook.measure.costs import gemm_bytes, gemm_flops, intensity, roofline
from dynbook.measure.fits import affine_fit, relative_error, slope_ratio
from dynbook.measure.timing import (SavedTensorBytes, copy_bandwidth, cuda_peak_memory, interleaved_times,
                                    num_threads, time_it)

#: name → (torch dtype, allow TF32 for float32 matmuls)
DTYPES = {
    "fp32": (torch.float32, False),
    "tf32": (torch.float32, True),
    "bf16": (torch.bfloat16, False),
    "fp16": (torch.float16, False),
}


def check_dtype(dtype: str, device: str) -> None:
    """Raise ``ValueError`` (naming the dtype) unless ``dtype`` can run on ``device``."""
    _checks.one_of("dtype", dtype, DTYPES)
    if dtype == "tf32" and device != "cuda":
        raise ValueError("dtype='tf32' is not allowed on device 'cpu': TF32 is a CUDA tensor-core mode")


def supported_dtypes(device: str) -> list[str]:
    """The dtypes the sweep covers on ``device``: fp32 everywhere; tf32 and bf16 on CUDA
    (bf16 only where the GPU supports it)."""
    if device == "cuda":
        out = ["fp32", "tf32"]
        if torch.cuda.is_bf16_supported():
            out.append("bf16")
        return out
    return ["fp32"]


@contextlib.contextmanager
def matmul_mode(dtype: str):
    """Set TF32 on or off for the duration (fp32 means true fp32, not TF32)."""
    _, tf32 = DTYPES[dtype]
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


def timing_threads(device: str):
    """The intra-op threading every timing of this module runs under: one thread on a CPU
    (see the module docstring), the device's own scheduling on CUDA."""
    return num_threads(1) if device == "cpu" else contextlib.nullcontext()


def timing_clock(device: str) -> str:
    """The clock of every timing of this module: on a CPU the one working thread's CPU time
    (:func:`dynbook.measure.timing.time_it`; time the core gives to other processes is not charged),
    on CUDA the synchronised wall clock."""
    return "thread" if device == "cpu" else "wall"


# ----------------------------------------------------------------------------- sizing


def size_past_cache(cache_bytes: int, itemsize: int = 4, *, factor: float = 1.25) -> int:
    """The smallest power of two ``n`` whose ``n × n`` matrix of ``itemsize`` bytes is at
    least ``factor`` times ``cache_bytes``: a weight matrix that cannot stay on chip (read
    over and over, a matrix larger than a least-recently-used cache misses on every line)."""
    _checks.positive("cache_bytes", cache_bytes)
    _checks.positive("itemsize", itemsize)
    _checks.positive("factor", factor)
    n = 1
    while n * n * itemsize < factor * cache_bytes:
        n *= 2
    return n


def depth_past_cache(width: int, cache_bytes: int, itemsize: int = 4, *, factor: float = 2.0,
                     minimum: int = 2) -> int:
    """Layers of ``width × width`` weights needed for ``factor`` × ``cache_bytes`` in all."""
    _checks.positive_int("width", width)
    per_layer = width * width * itemsize
    return max(minimum, -(-int(factor * cache_bytes) // per_layer))


def training_bytes(depth: int, *, width: int, batch: int, itemsize: int = 4) -> int:
    """Upper estimate of what a training step of :func:`make_mlp` holds: weights and their
    gradients, two activations per layer kept for backward, and the transient buffers of one
    layer's backward."""
    w = depth * width * width * itemsize
    return 2 * w + 2 * depth * batch * width * itemsize + 4 * (width * width + batch * width) * itemsize


def depths_that_fit(depths, *, width: int, batch: int, free_bytes: int, itemsize: int = 4,
                    share: float = 0.5) -> list[int]:
    """The depths, smallest first, that :func:`training_cost` can hold at once in ``share`` of
    ``free_bytes`` (the device's free memory, :func:`dynbook.measure.timing.free_memory_bytes`):
    every depth's trained net and its frozen twin stay alive for the interleaved timing, and
    one training step (:func:`training_bytes`) runs at a time."""
    kept, resident = [], 0
    for d in sorted(int(x) for x in depths):
        twin = d * width * width * itemsize  # the frozen twin's weights
        weights = d * width * width * itemsize
        step = training_bytes(d, width=width, batch=batch, itemsize=itemsize)
        if resident + weights + twin + step > share * free_bytes:
            break
        kept.append(d)
        resident += weights + twin
    return kept


# ----------------------------------------------------------------------------- ceilings


def measure_peak_matmul(device: str, dtype: str = "fp32", size: int = 4096, *,
                        min_run_time: float = 0.5) -> float:
    """Peak matmul throughput in FLOP/s: a large square GEMM of ``size``."""
    check_dtype(dtype, device)
    torch_dtype, _ = DTYPES[dtype]
    a = torch.randn(size, size, device=device, dtype=torch_dtype)
    b = torch.randn(size, size, device=device, dtype=torch_dtype)
    with matmul_mode(dtype), timing_threads(device):
        t = time_it(lambda: a @ b, device=device, min_run_time=min_run_time, clock=timing_clock(device))
    return gemm_flops(size, size, size) / t


def _copy_bandwidth(device: str, nbytes: int, min_run_time: float) -> float:
    with timing_threads(device):
        return copy_bandwidth(device, nbytes, min_run_time=min_run_time, clock=timing_clock(device))


def measure_copy_bandwidth(device: str, nbytes: int = 256 * 2**20, *, min_run_time: float = 0.5) -> float:
    """Copy bandwidth in bytes/s: ``dst.copy_(src)`` reads and writes ``nbytes`` each."""
    if nbytes < 2**20:
        raise ValueError(f"nbytes={nbytes} is not allowed: expected at least 1 MiB so caches do not dominate")
    return _copy_bandwidth(device, nbytes, min_run_time)


def measure_cache_roofs(device: str, caches: dict, *, min_run_time: float = 0.1) -> dict:
    """Copy bandwidth with both buffers inside each cache level of ``caches``
    (:func:`dynbook.measure.timing.cache_bytes`; each buffer a quarter of the level): ``{level:
    bytes/s}``. These are the roofs a kernel whose operands stay in that cache can reach."""
    out = {}
    for level, size in caches.items():
        if level == "last" or level == "L1":
            continue
        out[level] = _copy_bandwidth(device, max(4096, size // 4), min_run_time)
    return out


# ----------------------------------------------------------------------------- GEMM sweep


@dataclass
class GemmPoint:
    """One measured GEMM ``(m × k) @ (k × n)``; ``times`` are the interleaved repeats."""

    dtype: str
    m: int
    n: int
    k: int
    seconds: float  # least of the repeats
    times: tuple = ()

    @property
    def itemsize(self) -> int:
        return torch.empty((), dtype=DTYPES[self.dtype][0]).element_size()

    @property
    def flops(self) -> int:
        return gemm_flops(self.m, self.n, self.k)

    @property
    def bytes(self) -> int:
        return gemm_bytes(self.m, self.n, self.k, self.itemsize)

    @property
    def flops_per_s(self) -> float:
        return self.flops / self.seconds

    @property
    def bytes_per_s(self) -> float:
        return self.bytes / self.seconds

    @property
    def intensity(self) -> float:
        return intensity(self.m, self.n, self.k, self.itemsize)


def gemm_sweep(ms, n: int, k: int, *, dtype: str = "fp32", device: str = "cpu",
               min_run_time: float = 0.2, repeats: int = 1) -> list[GemmPoint]:
    """Time ``(m × k) @ (k × n)`` for each batch ``m`` (one weight matrix, as in a layer),
    the batches interleaved over ``repeats`` repeats. (Energy per unit of work is measured
    by :func:`dynbook.measure.metered.metered`, as :func:`energy_study` does.)"""
    check_dtype(dtype, device)
    for m in ms:
        _checks.positive_int("batch m", m)
    torch_dtype, _ = DTYPES[dtype]
    w = torch.randn(k, n, device=device, dtype=torch_dtype)
    xs = {int(m): torch.randn(int(m), k, device=device, dtype=torch_dtype) for m in ms}
    fns = {m: (lambda x=x: x @ w) for m, x in xs.items()}
    with matmul_mode(dtype), timing_threads(device):
        times = interleaved_times(fns, device=device, min_run_time=min_run_time, repeats=repeats,
                                  clock=timing_clock(device))
    return [GemmPoint(dtype, m, n, k, min(times[m]), tuple(times[m])) for m in xs]


def efficiency_ratio(small: GemmPoint, large: GemmPoint, **kw) -> Estimate:
    """FLOP/s of ``large`` over FLOP/s of ``small`` (same weights, two batches), from their
    interleaved repeats: ``(t_small · F_large / F_small) / t_large``."""
    scale = large.flops / small.flops
    return timing_ratio([t * scale for t in small.times], list(large.times), **kw)


# ----------------------------------------------------------------------------- reuse across layers


def make_mlp(depth: int, width: int, *, device: str = "cpu", dtype=torch.float32, bias: bool = False,
             shared: bool = False):
    """``depth`` square Linear layers with ReLU between: the weights are the only data reused.
    ``shared=True`` ties every layer to one weight matrix (same FLOPs, one matrix's bytes)."""
    if depth < 1 or width < 1:
        raise ValueError(f"depth={depth}, width={width} are not allowed: expected positive integers")
    layers = []
    for i in range(depth):
        layers.append(torch.nn.Linear(width, width, bias=bias))
        if i < depth - 1:
            layers.append(torch.nn.ReLU())
    model = torch.nn.Sequential(*layers).to(device=device, dtype=dtype)
    if shared:
        first = model[0]
        for layer in model:
            if isinstance(layer, torch.nn.Linear):
                layer.weight = first.weight
                if bias:
                    layer.bias = first.bias
    return model


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of the model's distinct parameters (a tied weight counts once)."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


@dataclass
class ReusePoint:
    batch: int
    seconds: float  # one forward pass through all layers (least of the repeats)
    flops: int
    weight_bytes: int
    times: tuple = ()

    @property
    def flops_per_s(self) -> float:
        return self.flops / self.seconds

    @property
    def weight_bytes_per_s(self) -> float:
        """Rate at which the pass streams the weights it must read (once per pass)."""
        return self.weight_bytes / self.seconds


REUSE_KINDS = ("distinct", "shared", "distinct_copy")


def reuse_comparison(plan, *, depth: int, width: int, device: str = "cpu", dtype=torch.float32,
                     min_run_time: float = 0.1, repeats: int = 3, copy_bytes: int = 0) -> dict[str, list[ReusePoint]]:
    """Forward time of MLPs of equal depth, width and FLOPs, timed interleaved.

    ``plan`` maps a kind to its batch sizes (a plain list means both ``distinct`` and
    ``shared``): ``distinct`` has its own weight matrix per layer (``depth × width²`` weights
    to fetch per pass), ``shared`` ties all layers to one matrix (``width²``, which can stay in
    a cache), ``distinct_copy`` is a second, independently drawn distinct net (the A/A
    control: any difference between it and ``distinct`` is noise). With ``copy_bytes``, a
    ``dst.copy_(src)`` of that many bytes is timed in the same repeats, returned as
    ``"copy"`` (a point whose ``weight_bytes`` are the bytes it reads and writes).
    Returns ``{kind: [ReusePoint per batch]}``."""
    if not isinstance(plan, dict):
        plan = {"distinct": list(plan), "shared": list(plan)}
    bad = set(plan) - set(REUSE_KINDS)
    if bad:
        raise ValueError(f"reuse_comparison kinds {sorted(bad)} are not allowed: expected {REUSE_KINDS}")
    models = {kind: make_mlp(depth, width, device=device, dtype=dtype, shared=(kind == "shared"))
              for kind in plan}
    xs = {int(b): torch.randn(int(b), width, device=device, dtype=dtype) for bs in plan.values() for b in bs}
    fns = {(kind, int(b)): (lambda m=models[kind], x=xs[int(b)]: m(x)) for kind, bs in plan.items() for b in bs}
    if copy_bytes:
        src = torch.empty(max(1, copy_bytes // 4), device=device, dtype=torch.float32).uniform_()
        dst = torch.empty_like(src)
        fns[("copy", 0)] = lambda: dst.copy_(src)
    with torch.inference_mode(), timing_threads(device):
        times = interleaved_times(fns, device=device, min_run_time=min_run_time, repeats=repeats,
                                  clock=timing_clock(device))
    out = {kind: [ReusePoint(int(b), min(times[kind, int(b)]), depth * gemm_flops(int(b), width, width),
                             weight_bytes(models[kind]), tuple(times[kind, int(b)])) for b in bs]
           for kind, bs in plan.items()}
    if copy_bytes:
        out["copy"] = [ReusePoint(0, min(times["copy", 0]), 0, 2 * src.numel() * 4, tuple(times["copy", 0]))]
    return out


def reuse_ratio(distinct: ReusePoint, shared: ReusePoint, **kw) -> Estimate:
    """Time of one pass over the time of another at the same batch and FLOPs (distinct over
    shared weights, or distinct over an independent distinct copy for the A/A control).

    The interval bootstraps the least readings, as the value does (``bootstrap="least"``): at
    batch 1 each pass streams its weights from DRAM, and on a shared VM a reading now and then
    runs slow; medians of 9 readings let the A/A control (two distinct-weight nets, one
    computation) reach 0.98× [0.77, 1.37] in three runs on one idle machine, least readings do not."""
    if distinct.batch != shared.batch or distinct.flops != shared.flops:
        raise ValueError("reuse_ratio compares the two nets at one batch and equal FLOPs")
    return timing_ratio(list(distinct.times), list(shared.times), **{"bootstrap": "least", **kw})


def streaming_fraction(point: ReusePoint, copy: ReusePoint, **kw) -> Estimate:
    """Rate at which a pass streams its weights (``weight_bytes / seconds``) over the rate of
    a copy timed in the same repeats (bytes read and written / seconds): near 1 when moving
    the weights is all the pass does, small when arithmetic sets its time."""
    scale = point.weight_bytes / copy.weight_bytes
    return timing_ratio([t * scale for t in copy.times], list(point.times), **kw)


def flop_ratio_guard(estimate: Estimate, time_ratio: float, flop_ratio: float) -> Estimate:
    """``estimate`` unchanged while ``time_ratio`` (time at a larger batch ÷ time at batch 1)
    stays within ``flop_ratio`` (their FLOP ratio). Beyond it, time grows faster than the
    arithmetic: neither bytes nor FLOPs set it (threads waiting for a busy core did, in issue
    9's 50× at batch 8), so the measurement cannot decide a claim about data movement; the
    interval is widened to ``[min(lo, 1), max(hi, flop_ratio)]``, which any threshold between
    1 and ``flop_ratio`` straddles, and the verdict becomes "inconclusive"."""
    if time_ratio <= flop_ratio:
        return estimate
    return Estimate(estimate.value, min(estimate.lo, 1.0), max(estimate.hi, float(flop_ratio)),
                    f"{estimate.method}; widened: time grew {time_ratio:.3g}× for {flop_ratio:g}× the FLOPs",
                    estimate.n, estimate.samples, estimate.level)


# ----------------------------------------------------------------------------- training vs depth


@dataclass
class TrainingPoint:
    depth: int
    forward_seconds: float  # inference only (least of the repeats)
    step_seconds: float  # forward + backward + SGD update
    frozen_seconds: float  # the same step with every layer but the last frozen
    saved_bytes: int  # activations autograd keeps for backward (hooks; parameters excluded)
    checkpointed_bytes: int  # the same count with the whole stack checkpointed (recomputed)
    saved_parameter_bytes: int  # parameters autograd also kept (not counted above)
    peak_bytes: int | None  # CUDA allocator peak during a step, None on CPU
    parameter_bytes: int
    forward_times: tuple = ()
    step_times: tuple = ()
    frozen_times: tuple = ()


def saved_activation_bytes(model: torch.nn.Module, x: torch.Tensor, *, checkpointed: bool = False):
    """``(activation bytes, parameter bytes)`` autograd keeps for backward in one forward
    pass of ``model`` on ``x``. ``checkpointed`` runs the stack under
    :func:`torch.utils.checkpoint.checkpoint`, which keeps only its input and recomputes the
    rest during backward."""
    params = list(model.parameters())
    with SavedTensorBytes(exclude=params) as saved:
        if checkpointed:
            from torch.utils.checkpoint import checkpoint

            out = checkpoint(model, x, use_reentrant=False)
        else:
            out = model(x)
        loss = out.square().mean()
    del loss, out
    return saved.bytes, saved.excluded_bytes


def training_cost(depths, *, width: int, batch: int, device: str = "cpu",
                  min_run_time: float = 0.2, repeats: int = 1) -> list[TrainingPoint]:
    """Per depth: inference time, training-step time, the step's time with all layers but
    the last frozen (no backward through depth), activation memory kept for backward and the
    same with checkpointing. All timings interleaved across depths over ``repeats``."""
    models, fns, extra = {}, {}, {}
    for depth in depths:
        depth = int(depth)
        model = make_mlp(depth, width, device=device)
        frozen = make_mlp(depth, width, device=device)
        for p in list(frozen.parameters())[:-1]:
            p.requires_grad_(False)
        x = torch.randn(batch, width, device=device)
        opt = torch.optim.SGD(model.parameters(), lr=1e-6)
        opt_frozen = torch.optim.SGD([p for p in frozen.parameters() if p.requires_grad], lr=1e-6)

        def step(model=model, opt=opt, x=x):
            opt.zero_grad(set_to_none=True)
            model(x).square().mean().backward()
            opt.step()

        def frozen_step(model=frozen, opt=opt_frozen, x=x):
            opt.zero_grad(set_to_none=True)
            model(x).square().mean().backward()
            opt.step()

        def forward(model=model, x=x):
            with torch.inference_mode():
                return model(x)

        models[depth] = (model, x)
        fns[("forward", depth)] = forward
        fns[("step", depth)] = step
        fns[("frozen", depth)] = frozen_step
    with timing_threads(device):
        times = interleaved_times(fns, device=device, min_run_time=min_run_time, repeats=repeats,
                                  clock=timing_clock(device))
    out = []
    for depth, (model, x) in models.items():
        saved, saved_params = saved_activation_bytes(model, x)
        ckpt, _ = saved_activation_bytes(model, x, checkpointed=True)
        peak = cuda_peak_memory(fns[("step", depth)]) if device == "cuda" else None
        out.append(TrainingPoint(depth, min(times["forward", depth]), min(times["step", depth]),
                                 min(times["frozen", depth]), saved, ckpt, saved_params, peak,
                                 weight_bytes(model), tuple(times["forward", depth]),
                                 tuple(times["step", depth]), tuple(times["frozen", depth])))
    return out


# ----------------------------------------------------------------------------- chapter 1's experiments


@dataclass(frozen=True)
class Plan:
    """The sizes of one run of chapter 1; what the parameters leave open (``None``) follows
    the machine's caches (:func:`plan`)."""

    device: str
    dtypes: tuple  # swept dtypes; the last, the fastest, is the headline one quoted in prose
    caches: dict  # level → bytes (:func:`dynbook.measure.timing.cache_bytes`)
    n: int  # N = K of the GEMM sweep
    max_batch: int  # largest M of the sweep
    width: int  # width of the reuse MLPs
    depth: int  # their depth

    @property
    def headline(self) -> str:
        return self.dtypes[-1]

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.headline][0]

    @property
    def itemsize(self) -> int:
        return torch.empty((), dtype=self.torch_dtype).element_size()

    @property
    def llc(self) -> int:
        """Bytes of the last-level cache (32 MiB assumed where the machine does not say)."""
        return self.caches.get("last", 32 * 2**20)

    @property
    def m_control(self) -> int:
        """C1's control batch: 16× below the largest, so both batches are large."""
        return max(1, self.max_batch // 16)

    @property
    def batches(self) -> list[int]:
        """Powers of four up to ``max_batch``, with the control and the largest batch."""
        powers = {4**i for i in range(int(math.log(self.max_batch, 4)) + 1)}
        return sorted(powers | {self.m_control, self.max_batch})

    def describe(self) -> str:
        caches = ", ".join(f"{k} {v / 2**20:.3g} MiB" for k, v in self.caches.items()) or "unknown"
        threads = 1 if self.device == "cpu" else "device"
        return (f"caches {caches}; N = K = {self.n} ({self.n**2 * self.itemsize / 2**20:.0f} MiB of "
                f"{self.headline} weights); M in {self.batches}; MLP depth {self.depth}, width "
                f"{self.width}; threads while timing: {threads}")


def plan(device: str, *, max_batch: int, mlp_width: int, dtypes=None, matrix_size: int | None = None,
         min_matrix_size: int = 1, mlp_depth: int | None = None, caches: dict | None = None) -> Plan:
    """Chapter 1's sizes on ``device``: ``dtypes`` default to :func:`supported_dtypes`; N = K
    to the smallest power of two past the last-level cache (:func:`size_past_cache`), at
    least ``min_matrix_size``; the MLP depth to twice the last-level cache of weights
    (:func:`depth_past_cache`, at most 512 layers)."""
    dtypes = tuple(dtypes or supported_dtypes(device))
    for name in dtypes:
        check_dtype(name, device)
    _checks.positive_int("max_batch", max_batch)
    _checks.positive_int("mlp_width", mlp_width)
    caches = _timing.cache_bytes(device) if caches is None else dict(caches)
    partial = Plan(device, dtypes, caches, 1, max_batch, mlp_width, 1)
    n = matrix_size or max(min_matrix_size, size_past_cache(partial.llc, partial.itemsize))
    depth = mlp_depth or min(512, depth_past_cache(mlp_width, partial.llc, partial.itemsize))
    return Plan(device, dtypes, caches, int(n), int(max_batch), int(mlp_width), int(depth))


#: largest relative (Frobenius) error of a 64 × 256 @ 256 × 96 matmul against float64, per dtype
MATMUL_TOLERANCE = {"fp32": 1e-5, "tf32": 5e-3, "bf16": 2e-2, "fp16": 5e-3}


def matmul_error(dtype: str, device: str, *, m: int = 64, k: int = 256, n: int = 96) -> float:
    """Relative Frobenius error of an ``(m × k) @ (k × n)`` matmul in ``dtype`` (under its
    TF32 mode) against the same product of the float64 operands."""
    check_dtype(dtype, device)
    a = torch.randn(m, k, device=device, dtype=torch.float64)
    b = torch.randn(k, n, device=device, dtype=torch.float64)
    dt = DTYPES[dtype][0]
    with matmul_mode(dtype):
        got = (a.to(dt) @ b.to(dt)).double()
    return relative_error(got, a @ b, norm="fro")


@dataclass
class Ceilings:
    """What the machine can do: peak matmul FLOP/s per dtype, DRAM copy bandwidth and the
    copy bandwidth inside each cache level (bytes/s)."""

    peak: dict  # dtype → FLOP/s
    copy: float  # bytes/s, buffers past the last-level cache
    caches: dict  # level → bytes/s, buffers inside the level
    cache_bytes: dict  # level → bytes
    copy_bytes: int  # bytes of each DRAM copy buffer

    def last_cache_bandwidth(self) -> float:
        """The copy roof of the largest cache level measured (the DRAM roof without one)."""
        if not self.caches:
            return self.copy
        return self.caches[max(self.caches, key=lambda k: self.cache_bytes[k])]


def measure_ceilings(plan: Plan, *, peak_size: int, copy_bytes: int, min_run_time: float) -> Ceilings:
    """Peak matmul (a ``peak_size`` square GEMM per dtype) and DRAM copy (``copy_bytes``, at
    least 4 × the last-level cache), each read over ``4 × min_run_time``; the cache roofs over
    ``2 × min_run_time`` (:func:`measure_cache_roofs`)."""
    _checks.positive("min_run_time", min_run_time)
    peak = {name: measure_peak_matmul(plan.device, name, size=peak_size, min_run_time=4 * min_run_time)
            for name in plan.dtypes}
    nbytes = max(int(copy_bytes), 4 * plan.llc)
    copy = measure_copy_bandwidth(plan.device, nbytes, min_run_time=4 * min_run_time)
    caches = measure_cache_roofs(plan.device, plan.caches, min_run_time=2 * min_run_time)
    return Ceilings(peak, copy, caches, dict(plan.caches), nbytes)


@dataclass
class BatchStudy:
    """GEMMs of one ``N × N`` weight matrix across batches (C1): ``sweep[dtype]`` are the
    points; ``gain`` is FLOP/s at the largest batch ÷ at batch 1 in the headline dtype,
    ``gain_control`` the same between the control batch and the largest."""

    sweep: dict  # dtype → [GemmPoint]
    headline: str
    m_max: int
    m_control: int
    gain: Estimate
    gain_control: Estimate

    @property
    def by_m(self) -> dict:
        return {p.m: p for p in self.sweep[self.headline]}

    @property
    def gemv(self) -> GemmPoint:
        return self.by_m[1]

    @property
    def largest(self) -> GemmPoint:
        return self.by_m[self.m_max]


def batch_study(plan: Plan, *, min_run_time: float, repeats: int) -> BatchStudy:
    """:func:`gemm_sweep` of ``plan.batches`` in every dtype, and C1's two ratios
    (:func:`efficiency_ratio`)."""
    sweep = {name: gemm_sweep(plan.batches, plan.n, plan.n, dtype=name, device=plan.device,
                              min_run_time=min_run_time, repeats=repeats) for name in plan.dtypes}
    by_m = {p.m: p for p in sweep[plan.headline]}
    return BatchStudy(sweep, plan.headline, plan.max_batch, plan.m_control,
                      efficiency_ratio(by_m[1], by_m[plan.max_batch]),
                      efficiency_ratio(by_m[plan.m_control], by_m[plan.max_batch]))


@dataclass
class ReuseStudy:
    """C2a and C2b on one MLP shape: the forward passes at each batch (``distinct``,
    ``shared``, the independent ``twin`` at batch 1 and a DRAM ``copy``, all timed in the same
    repeats) and the four estimates decided on."""

    distinct: dict  # batch → ReusePoint, a weight matrix per layer
    shared: dict  # batch → ReusePoint, one matrix for all layers
    twin: ReusePoint  # a second distinct-weight net, batch 1 (the A/A control)
    copy: ReusePoint  # dst.copy_(src) of copy_bytes
    control_batch: int
    batch8_ratio: float  # time at batch 8 ÷ time at batch 1 (8× the FLOPs)
    stream: Estimate  # C2a: weight-streaming rate at batch 1 ÷ copy rate (guarded)
    stream_control: Estimate  # the same at control_batch
    reuse: Estimate  # C2b: distinct ÷ shared time at batch 1 (guarded)
    reuse_control: Estimate  # distinct ÷ twin time at batch 1


def reuse_study(*, depth: int, width: int, device: str, dtype: str, control_batch: int,
                copy_bytes: int, min_run_time: float, repeats: int) -> ReuseStudy:
    """Time the distinct-weight MLP at batches 1, 8, 32 and ``control_batch``, its
    shared-weight twin at 1, 8, 32, an independent distinct net at 1 and a copy of
    ``copy_bytes``, interleaved (:func:`reuse_comparison`); then C2a's streaming fractions
    and C2b's time ratios, both of batch 1 guarded by :func:`flop_ratio_guard` (batch 8 does
    8× the FLOPs of batch 1: a time growing faster is set by neither bytes nor arithmetic)."""
    _checks.positive_int("control_batch", control_batch)
    batches = {"distinct": [1, 8, 32, control_batch], "shared": [1, 8, 32], "distinct_copy": [1]}
    with matmul_mode(dtype):
        res = reuse_comparison(batches, depth=depth, width=width, device=device, dtype=DTYPES[dtype][0],
                               min_run_time=min_run_time, repeats=repeats, copy_bytes=copy_bytes)
    distinct = {p.batch: p for p in res["distinct"]}
    shared = {p.batch: p for p in res["shared"]}
    twin, copy = res["distinct_copy"][0], res["copy"][0]
    ratio8 = distinct[8].seconds / distinct[1].seconds
    return ReuseStudy(distinct, shared, twin, copy, control_batch, ratio8,
                      flop_ratio_guard(streaming_fraction(distinct[1], copy), ratio8, 8),
                      streaming_fraction(distinct[control_batch], copy),
                      flop_ratio_guard(reuse_ratio(distinct[1], shared[1]), ratio8, 8),
                      reuse_ratio(distinct[1], twin))


@dataclass
class DepthStudy:
    """C3a and C3b: training memory and time against depth (:func:`training_cost`)."""

    depths: list
    points: list  # TrainingPoint per depth
    activation_bytes: int  # one layer's activation, batch × width × 4 B
    per_layer: float  # activation bytes kept per added layer
    checkpointed_per_layer: float  # the same, checkpointed
    residual: float  # largest distance (bytes) of a depth's count from the affine line
    memory: Estimate  # C3a: per_layer ÷ activation_bytes (exact)
    memory_control: Estimate
    cost: Estimate  # C3b: slope of step time ÷ slope of forward time over depth
    cost_control: Estimate  # the same with all but the last layer frozen

    def times(self, kind: str) -> np.ndarray:
        """``(repeats, depths)`` seconds of ``kind``: "forward", "step" or "frozen"."""
        _checks.one_of("kind", kind, ("forward", "step", "frozen"))
        return np.array([getattr(p, f"{kind}_times") for p in self.points]).T

    def bytes(self, kind: str) -> np.ndarray:
        """Bytes per depth: "saved", "checkpointed", "parameter" or "peak" (CUDA)."""
        _checks.one_of("kind", kind, ("saved", "checkpointed", "parameter", "peak"))
        return np.array([getattr(p, f"{kind}_bytes") for p in self.points], dtype=float)


def depth_study(depths, *, width: int, batch: int, device: str, min_run_time: float, repeats: int,
                seed: int = 0, free_bytes: int | None = None) -> DepthStudy:
    """Train MLPs of the ``depths`` that fit in half the free memory (:func:`depths_that_fit`;
    at least three must) and fit bytes and times against depth. Bytes are exact integers:
    the per-layer slope comes from the end points and ``residual`` says how far any depth
    lies from that line. Times: :func:`dynbook.measure.fits.slope_ratio`, bootstrap seeded
    by ``seed``."""
    _checks.positive_int("width", width)
    _checks.positive_int("batch", batch)
    free = _timing.free_memory_bytes(device) if free_bytes is None else free_bytes
    fit = depths_that_fit(depths, width=width, batch=batch, free_bytes=free)
    if len(fit) < 3:
        raise RuntimeError(f"only depths {fit} of {list(depths)} fit in half the free memory of {device}: "
                           "lower train_width")
    pts = training_cost(fit, width=width, batch=batch, device=device, min_run_time=min_run_time,
                        repeats=repeats)
    d = np.array(fit, dtype=float)
    saved = np.array([p.saved_bytes for p in pts], dtype=float)
    ckpt = np.array([p.checkpointed_bytes for p in pts], dtype=float)
    per_layer = (saved[-1] - saved[0]) / (d[-1] - d[0])
    ckpt_per_layer = (ckpt[-1] - ckpt[0]) / (d[-1] - d[0])
    residual = float(np.abs(saved - (saved[0] + per_layer * (d - d[0]))).max())
    activation = batch * width * 4
    times = {kind: np.array([getattr(p, f"{kind}_times") for p in pts]).T
             for kind in ("forward", "step", "frozen")}
    return DepthStudy(fit, pts, activation, float(per_layer), float(ckpt_per_layer), residual,
                      exact(per_layer / activation), exact(ckpt_per_layer / activation),
                      slope_ratio(fit, times["step"], times["forward"], n_boot=1000, seed=seed),
                      slope_ratio(fit, times["frozen"], times["forward"], n_boot=1000, seed=seed))


@dataclass
class EnergyStudy:
    """C4a and C4b: the two measured costs (per repeat) and the estimates decided on, each
    ``None`` with ``reason`` when a cost came out non-positive (idle noise above the signal)."""

    pj_per_byte: list
    pj_per_flop: list
    share: Estimate | None  # C4a: movement's share of the GEMV's predicted energy
    share_control: Estimate | None  # the same for the large-batch GEMM
    fit: Estimate | None  # C4b: measured ÷ predicted GEMV energy
    fit_control: Estimate | None  # measured ÷ the arithmetic-only prediction
    reason: str = ""


def energy_study(meter, *, device: str, dtype: str, n: int, m_large: int, copy_bytes: int,
                 repeats: int, seconds: float) -> EnergyStudy:
    """Meter a DRAM copy, an FMA loop, a GEMV ``(1 × n) @ (n × n)`` and a GEMM at ``m_large``
    (:func:`dynbook.measure.energy.energy_per_call`, ``repeats`` interleaved readings of about
    ``seconds`` each, timed on one CPU thread), fit the two costs per repeat and split and
    predict the GEMV (:func:`dynbook.measure.energy.movement_study`)."""
    dt = DTYPES[dtype][0]
    kernels = {"copy": _energy.copy_kernel(device, copy_bytes), "fma": _energy.fma_kernel(device),
               "gemv": _energy.gemm_kernel(device, 1, n, name="gemv", dtype=dt),
               "gemm": _energy.gemm_kernel(device, m_large, n, name="gemm", dtype=dt)}
    with timing_threads(device), matmul_mode(dtype):
        per_call = _energy.energy_per_call(list(kernels.values()), meter, repeats=repeats,
                                           seconds=seconds, device=device)
    m = _energy.movement_study(per_call, kernels, target="gemv", control="gemm")
    try:
        est = {k: _energy.over_repeats(m[k]) for k in
               ("share", "control_share", "measured_over_model", "measured_over_arithmetic")}
    except ValueError as e:
        return EnergyStudy(m["pj_per_byte"], m["pj_per_flop"], None, None, None, None,
                           f"the measured costs are not usable ({e})")
    return EnergyStudy(m["pj_per_byte"], m["pj_per_flop"], est["share"], est["control_share"],
                       est["measured_over_model"], est["measured_over_arithmetic"])


# ----------------------------------------------------------------------------- chapter 1's figures


def plot_roofline(ax, study: BatchStudy, ceilings: Ceilings, *, title: str = "") -> None:
    """Each dtype's GEMMs at their intensity under its DRAM roof (dashed), and the cache
    roofs of the headline dtype (dotted)."""
    intens = np.logspace(-1, 4, 200)
    for name, pts in study.sweep.items():
        line, = ax.plot([p.intensity for p in pts], [p.flops_per_s / 1e12 for p in pts], "o-",
                        label=f"{name} GEMM")
        ax.plot(intens, roofline(intens, ceilings.peak[name], ceilings.copy) / 1e12, "--",
                color=line.get_color(), alpha=0.6, label=f"{name} roof (DRAM)")
        for p in pts:
            ax.annotate(f"M={p.m}", (p.intensity, p.flops_per_s / 1e12), fontsize=7,
                        textcoords="offset points", xytext=(3, -9))
    for level, bw in ceilings.caches.items():
        ax.plot(intens, roofline(intens, ceilings.peak[study.headline], bw) / 1e12, ":", color="grey",
                alpha=0.8, label=f"{level} roof ({ceilings.cache_bytes[level] / 2**20:.3g} MiB)")
    ax.set(xscale="log", yscale="log", xlabel="arithmetic intensity (FLOP/byte)", ylabel="TFLOP/s",
           title=title)
    ax.legend(fontsize=7)


def plot_reuse(ax, study: ReuseStudy, ceilings: Ceilings, dtype: str, *, title: str = "") -> None:
    """Forward time against batch of both MLPs (markers) with their roofline predictions
    ``max(FLOP / peak, weight bytes / bandwidth)`` (lines): DRAM for the distinct weights,
    the last-level cache for the shared matrix."""
    for kind, pts, bw, style in (("distinct weights", study.distinct, ceilings.copy, "o-"),
                                 ("one shared matrix", study.shared, ceilings.last_cache_bandwidth(), "s-")):
        pts = [pts[b] for b in sorted(pts)]
        line, = ax.plot([p.batch for p in pts], [p.seconds * 1e3 for p in pts], style, label=kind)
        floor = [max(p.flops / ceilings.peak[dtype], p.weight_bytes / bw) * 1e3 for p in pts]
        ax.plot([p.batch for p in pts], floor, "--", color=line.get_color(), alpha=0.6)
    ax.set(xscale="log", yscale="log", xlabel="batch", ylabel="forward time (ms)", title=title)
    ax.legend()


def plot_depth(ax_memory, ax_time, study: DepthStudy, *, device: str = "cpu") -> None:
    """Bytes kept for backward (with and without checkpointing; parameters apart) and the
    forward, training-step and frozen-step times against depth, with affine fits."""
    d = np.array(study.depths, dtype=float)
    ax_memory.plot(d, study.bytes("saved") / 2**20, "o", label="activations kept")
    ax_memory.plot(d, study.bytes("checkpointed") / 2**20, "^", label="… with checkpointing")
    ax_memory.plot(d, study.bytes("parameter") / 2**20, "s--", alpha=0.6, label="parameters")
    if device == "cuda":
        ax_memory.plot(d, study.bytes("peak") / 2**20, "x:", label="CUDA peak (step)")
    for y in (study.bytes("saved"), study.bytes("checkpointed")):
        k, c = affine_fit(d, y)
        ax_memory.plot(d, (c + k * d) / 2**20, "k-", lw=0.8, alpha=0.6)
    ax_memory.set(xlabel="depth", ylabel="MiB")
    ax_memory.legend(fontsize=8)
    for name, kind in (("forward", "forward"), ("training step", "step"), ("last layer trained", "frozen")):
        y = study.times(kind).min(axis=0) * 1e3
        k, c = affine_fit(d, y)
        line, = ax_time.plot(d, y, "o", label=name)
        ax_time.plot(d, c + k * d, "-", color=line.get_color(), lw=0.8)
    ax_time.set(xlabel="depth", ylabel="ms")
    ax_time.legend(fontsize=8)


def plot_energy(ax, points: dict, dtype: str, measured: EnergyStudy | None = None, *,
                title: str = "") -> None:
    """Energy per FLOP of each GEMM of ``points`` (label → GemmPoint): bars split Horowitz's
    45 nm model into arithmetic and DRAM traffic; black markers split the same way with the
    measured costs, where there are some."""
    models = [_energy.EnergyModel(p.flops, p.bytes, dtype=dtype) for p in points.values()]
    x = np.arange(len(points))
    arith = np.array([m.arithmetic_pj / m.flops for m in models])
    ax.bar(x, arith, width=0.35, label="45 nm model: arithmetic")
    ax.bar(x, [m.dram_pj / m.flops for m in models], width=0.35, bottom=arith, label="45 nm model: DRAM traffic")
    if measured is not None:
        e_b, e_f = float(np.mean(measured.pj_per_byte)), float(np.mean(measured.pj_per_flop))
        ax.plot(x + 0.3, [e_f + e_b * p.bytes / p.flops for p in points.values()], "ko",
                label="measured costs: total")
        ax.plot(x + 0.3, [e_f] * len(x), "k_", markersize=14, label="measured costs: arithmetic")
    ax.set(xticks=x, xticklabels=list(points), yscale="log", ylabel="pJ per FLOP", title=title)
    ax.legend(fontsize=8)
