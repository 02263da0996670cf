"""Matrix limits: GEMM/GEMV sweeps, the roofline, layer-to-layer reuse, training cost vs depth.

Conventions. A GEMM multiplies ``(M × K) @ (K × N)``; ``M`` is the batch. It costs
``2 M N K`` FLOP (one multiply and one add per term) and must move at least
``itemsize · (M K + K N + M N)`` bytes (each operand read once, the result written once):
its arithmetic intensity is the ratio. The roofline bounds attainable throughput by
``min(peak FLOP/s, intensity × bandwidth)`` (Williams et al. 2009); both ceilings are
*measured* on the running machine, not taken from a data sheet.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from .energy import EnergyMeter, EnergyReading
from .measure import SavedTensorBytes, cuda_peak_memory, time_it

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


# ----------------------------------------------------------------------------- counting


def gemm_flops(m: int, n: int, k: int) -> int:
    return 2 * m * n * k


def gemm_bytes(m: int, n: int, k: int, itemsize: int) -> int:
    """Minimal memory traffic of a GEMM: read A (m×k) and B (k×n) once, write C (m×n) once."""
    return itemsize * (m * k + k * n + m * n)


def intensity(m: int, n: int, k: int, itemsize: int) -> float:
    """Arithmetic intensity in FLOP per byte; ≈ 2/itemsize · m for m ≪ n = k (a GEMV at m = 1)."""
    return gemm_flops(m, n, k) / gemm_bytes(m, n, k, itemsize)


def roofline(intensity_flop_per_byte, peak_flops: float, bandwidth: float):
    """Attainable FLOP/s at the given intensity: ``min(peak, I · bandwidth)``."""
    import numpy as np

    return np.minimum(peak_flops, np.asarray(intensity_flop_per_byte, dtype=float) * bandwidth)


def ridge_intensity(peak_flops: float, bandwidth: float) -> float:
    """Intensity where the two roofs meet: below it a kernel is bandwidth-bound."""
    return peak_flops / bandwidth


# ----------------------------------------------------------------------------- ceilings


def measure_peak_matmul(device: str, dtype: str = "fp32", size: int = 4096, *,
                        min_run_time: float = 0.5) -> float:
    """Peak matmul throughput in FLOP/s: a large square GEMM of ``size``."""
    check_dtype(dtype, device)
    torch_dtype, _ = DTYPES[dtype]
    a = torch.randn(size, size, device=device, dtype=torch_dtype)
    b = torch.randn(size, size, device=device, dtype=torch_dtype)
    with matmul_mode(dtype):
        t = time_it(lambda: a @ b, device=device, min_run_time=min_run_time)
    return gemm_flops(size, size, size) / t


def measure_copy_bandwidth(device: str, nbytes: int = 256 * 2**20, *, min_run_time: float = 0.5) -> float:
    """Copy bandwidth in bytes/s: ``dst.copy_(src)`` reads and writes ``nbytes`` each."""
    if nbytes < 2**20:
        raise ValueError(f"nbytes={nbytes} is not allowed: expected at least 1 MiB so caches do not dominate")
    src = torch.empty(nbytes // 4, device=device, dtype=torch.float32).uniform_()
    dst = torch.empty_like(src)
    t = time_it(lambda: dst.copy_(src), device=device, min_run_time=min_run_time)
    return 2 * src.numel() * 4 / t


# ----------------------------------------------------------------------------- GEMM sweep


@dataclass
class GemmPoint:
    """One measured GEMM ``(m × k) @ (k × n)``."""

    dtype: str
    m: int
    n: int
    k: int
    seconds: float
    energy: EnergyReading | None = None

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
        """Idle-subtracted picojoules per FLOP, None where no counter was read."""
        if self.energy is None or not self.energy.available:
            return None
        calls = self.energy.seconds / self.seconds
        return self.energy.per(self.flops * calls)



def gemm_sweep(ms, n: int, k: int, *, dtype: str = "fp32", device: str = "cpu",
               min_run_time: float = 0.2, meter: EnergyMeter | None = None,
               energy_seconds: float = 1.0, progress: bool = False) -> list[GemmPoint]:
    """Time ``(m × k) @ (k × n)`` for each batch ``m`` (one weight matrix, as in a layer).

    With a meter whose counter is readable, each point also runs for about
    ``energy_seconds`` inside the meter to read its energy."""
    check_dtype(dtype, device)
    for m in ms:
        if int(m) < 1:
            raise ValueError(f"batch m={m!r} is not allowed: expected a positive integer")
    torch_dtype, _ = DTYPES[dtype]
    w = torch.randn(k, n, device=device, dtype=torch_dtype)
    points = []
    iterator = ms
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(ms, desc=f"GEMM {dtype}", leave=False)
    with matmul_mode(dtype):
        for m in iterator:
            x = torch.randn(int(m), k, device=device, dtype=torch_dtype)
            fn = lambda: x @ w  # noqa: E731
            t = time_it(fn, device=device, min_run_time=min_run_time)
            reading = None
            if meter is not None and meter.available:
                reps = max(1, int(energy_seconds / t))
                with meter:
                    for _ in range(reps):
                        fn()
                reading = meter.reading
            points.append(GemmPoint(dtype, int(m), n, k, t, reading))
    return points


# ----------------------------------------------------------------------------- reuse across layers


def make_mlp(depth: int, width: int, *, device: str = "cpu", dtype=torch.float32, bias: bool = False):
    """``depth`` square Linear layers with ReLU between: the weights are the only data reused."""
    if depth < 1 or width < 1:
        raise ValueError(f"depth={depth}, width={width} are not allowed: expected positive integers")
    layers = []
    for i in range(depth):
        layers.append(torch.nn.Linear(width, width, bias=bias))
        if i < depth - 1:
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers).to(device=device, dtype=dtype)


def weight_bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


@dataclass
class ReusePoint:
    batch: int
    seconds: float  # one forward pass through all layers
    flops: int
    weight_bytes: int

    @property
    def flops_per_s(self) -> float:
        return self.flops / self.seconds

    @property
    def weight_bytes_per_s(self) -> float:
        """Rate at which the pass streams the weights it must read (once per pass)."""
        return self.weight_bytes / self.seconds


def mlp_reuse_sweep(batches, *, depth: int, width: int, device: str = "cpu",
                    dtype=torch.float32, min_run_time: float = 0.2) -> list[ReusePoint]:
    """Forward time of a depth-``depth`` MLP at each batch size (inference, no autograd)."""
    model = make_mlp(depth, width, device=device, dtype=dtype)
    wbytes = weight_bytes(model)
    out = []
    with torch.inference_mode():
        for b in batches:
            x = torch.randn(int(b), width, device=device, dtype=dtype)
            t = time_it(lambda: model(x), device=device, min_run_time=min_run_time)
            out.append(ReusePoint(int(b), t, depth * gemm_flops(int(b), width, width), wbytes))
    return out


# ----------------------------------------------------------------------------- training vs depth


@dataclass
class TrainingPoint:
    depth: int
    forward_seconds: float  # inference only
    step_seconds: float  # forward + backward + SGD update
    saved_bytes: int  # tensors autograd keeps for backward (measured by hooks)
    peak_bytes: int | None  # CUDA allocator peak during a step, None on CPU
    parameter_bytes: int


def training_cost(depths, *, width: int, batch: int, device: str = "cpu",
                  min_run_time: float = 0.2) -> list[TrainingPoint]:
    """Per depth: inference time, training-step time, activation memory kept for backward."""
    out = []
    for depth in depths:
        model = make_mlp(int(depth), width, device=device)
        opt = torch.optim.SGD(model.parameters(), lr=1e-6)
        x = torch.randn(batch, width, device=device)

        def step():
            opt.zero_grad(set_to_none=True)
            model(x).square().mean().backward()
            opt.step()

        with torch.inference_mode():
            t_fwd = time_it(lambda: model(x), device=device, min_run_time=min_run_time)
        t_step = time_it(step, device=device, min_run_time=min_run_time)
        with SavedTensorBytes() as saved:
            loss = model(x).square().mean()
        del loss
        peak = cuda_peak_memory(step) if device == "cuda" else None
        out.append(TrainingPoint(int(depth), t_fwd, t_step, saved.bytes, peak, weight_bytes(model)))
    return out
