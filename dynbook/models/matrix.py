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
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from dynbook.measure.costs import gemm_bytes, gemm_flops, intensity
from dynbook.measure.energy import EnergyMeter, EnergyReading
from dynbook.measure.timing import SavedTensorBytes, copy_bandwidth, cuda_peak_memory, interleaved_times, num_threads, time_it
from dynbook.book.stats import Estimate, timing_ratio

#: name → (torch dtype, allow TF32 for float32 matmuls)
DTYPES = {
    "fp32": (torch.float32, False),
    "tf32": (torch.float32, True),
    "bf16": (torch.bfloat16, False),
    "fp16": (torch.float16, False),
}


def check_dtype(dtype: str, device: str) -> None:
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r} is not allowed: expected one of {', '.join(DTYPES)}")
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
    if cache_bytes <= 0 or itemsize <= 0 or factor <= 0:
        raise ValueError(f"cache_bytes={cache_bytes}, itemsize={itemsize}, factor={factor}: expected positive values")
    n = 1
    while n * n * itemsize < factor * cache_bytes:
        n *= 2
    return n


def depth_past_cache(width: int, cache_bytes: int, itemsize: int = 4, *, factor: float = 2.0,
                     minimum: int = 2) -> int:
    """Layers of ``width × width`` weights needed for ``factor`` × ``cache_bytes`` in all."""
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
    seconds: float  # least of the repeats' medians
    energy: EnergyReading | None = None
    calls: int = 0  # calls inside the metered region (exact), 0 when not metered
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

    @property
    def pj_per_flop(self) -> float | None:
        """Idle-subtracted picojoules per FLOP over the ``calls`` metered calls, None where no
        counter was read."""
        if self.energy is None or not self.energy.available or self.calls < 1:
            return None
        return self.energy.per(self.flops * self.calls)


def gemm_sweep(ms, n: int, k: int, *, dtype: str = "fp32", device: str = "cpu",
               min_run_time: float = 0.2, repeats: int = 1, meter: EnergyMeter | None = None,
               energy_seconds: float = 1.0, progress: bool = False) -> list[GemmPoint]:
    """Time ``(m × k) @ (k × n)`` for each batch ``m`` (one weight matrix, as in a layer),
    the batches interleaved over ``repeats`` repeats.

    With a meter whose counter is readable, each point also runs for about
    ``energy_seconds`` inside the meter to read its energy (the call count is recorded)."""
    check_dtype(dtype, device)
    for m in ms:
        if int(m) < 1:
            raise ValueError(f"batch m={m!r} is not allowed: expected a positive integer")
    torch_dtype, _ = DTYPES[dtype]
    w = torch.randn(k, n, device=device, dtype=torch_dtype)
    xs = {int(m): torch.randn(int(m), k, device=device, dtype=torch_dtype) for m in ms}
    fns = {m: (lambda x=x: x @ w) for m, x in xs.items()}
    with matmul_mode(dtype), timing_threads(device):
        times = interleaved_times(fns, device=device, min_run_time=min_run_time, repeats=repeats,
                                  clock=timing_clock(device))
        points = []
        iterator = list(xs)
        if progress:
            from tqdm.auto import tqdm

            iterator = tqdm(iterator, desc=f"GEMM {dtype}", leave=False)
        for m in iterator:
            t = min(times[m])
            reading, calls = None, 0
            if meter is not None and meter.available:
                calls = max(1, int(energy_seconds / t))
                with meter:
                    for _ in range(calls):
                        fns[m]()
                reading = meter.reading
            points.append(GemmPoint(dtype, m, n, k, t, reading, calls, tuple(times[m])))
    return points


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


def mlp_reuse_sweep(batches, *, depth: int, width: int, device: str = "cpu",
                    dtype=torch.float32, min_run_time: float = 0.2, repeats: int = 1,
                    shared: bool = False) -> list[ReusePoint]:
    """Forward time of a depth-``depth`` MLP at each batch size (inference, no autograd)."""
    kind = "shared" if shared else "distinct"
    return reuse_comparison({kind: list(batches)}, depth=depth, width=width, device=device, dtype=dtype,
                            min_run_time=min_run_time, repeats=repeats)[kind]


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
    shared weights, or distinct over an independent distinct copy for the A/A control)."""
    if distinct.batch != shared.batch or distinct.flops != shared.flops:
        raise ValueError("reuse_ratio compares the two nets at one batch and equal FLOPs")
    return timing_ratio(list(distinct.times), list(shared.times), **kw)


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
