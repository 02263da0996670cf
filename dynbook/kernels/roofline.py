"""Rooflines of the book's kernels: the floor time that bytes, exp and shuffles set on a named GPU.

A kernel cannot run faster than the slowest of its resources allows. For each kernel this
module counts, from the shape and dtype alone,

* the bytes it must move once (read every input, write every output),
* the ``exp`` (MUFU ``ex2``) instructions, per element × elements,
* the warp-shuffle lane results (``shfl.sync``), per element × elements,
* the FP32 FMA lane operations (for the compute-bound ``rk4_mlp``),
* optionally, all instructions (thread-level, from the compiled PTX): an issue-rate floor, since
  an SM issues at most one warp instruction per scheduler (4 per SM) per clock,

and divides each by the GPU's rate for it. The floor is the largest of those times; the
*predicted fraction of copy bandwidth* is the bytes' time over the floor (1.0 when the kernel is
memory-bound). Per-element instruction counts come either from the design (defaults here) or
from the compiled PTX (:mod:`dynbook.kernels.static`), so a design that cannot reach its target
shows before any GPU time is spent. A benchmark prints measured ÷ predicted.

Rates per SM and clock are those of the CUDA C++ Programming Guide, "Arithmetic Instructions"
throughput table (results per clock cycle per multiprocessor): base-2 exponential (MUFU) 16 for
compute capability 7.5, 8.0 and 9.0; warp shuffle 32; FP32 multiply–add 64 (7.5, 8.0) and 128
(9.0). A warp ``shfl`` instruction produces 32 lane results, so one issues per clock per SM.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

__all__ = ["GPU", "GPUS", "Work", "floor", "linear_scan_work", "selective_scan_work",
           "selective_scan_backward_work", "rk4_mlp_work", "rk4_mlp_latency", "table"]


@dataclass(frozen=True)
class GPU:
    """The figures of one GPU that bound a kernel. ``dram_Bps``: the datasheet's memory
    bandwidth; ``copy_fraction``: the share of it a device-to-device copy reaches (an
    assumption until the benchmark measures it: HBM ≈ 0.90, GDDR6 ≈ 0.80); ``clock_hz``: the
    maximum (boost) SM clock; rates are per SM per clock."""

    name: str
    arch: int  # compute capability × 10: 90, 80, 75
    dram_Bps: float
    sm_count: int
    clock_hz: float
    copy_fraction: float
    exp_per_clock: int = 16
    shuffle_per_clock: int = 32
    fma_per_clock: int = 64
    issue_per_clock: int = 4  # warp instructions per SM per clock (4 schedulers, cc 7.x–9.0)
    source: str = ""

    @property
    def copy_Bps(self) -> float:
        return self.dram_Bps * self.copy_fraction

    def with_copy(self, copy_Bps: float) -> "GPU":
        """The same GPU with a measured copy bandwidth (bytes/s) in place of the assumption."""
        from dataclasses import replace

        return replace(self, copy_fraction=copy_Bps / self.dram_Bps)


#: The GPUs the book names. Figures from NVIDIA's datasheets and architecture whitepapers.
GPUS = {
    # H100 SXM5 80 GB: HBM3 3.35 TB/s, 132 SMs, 1980 MHz max SM clock (NVIDIA H100 Tensor Core
    # GPU datasheet; Hopper architecture whitepaper: 128 FP32 lanes per SM)
    "H100": GPU("NVIDIA H100 SXM5 80GB", 90, 3.35e12, 132, 1.98e9, 0.90, fma_per_clock=128,
                source="H100 datasheet (3.35 TB/s HBM3), Hopper whitepaper (132 SMs, 1980 MHz)"),
    # H200 SXM 141 GB: HBM3e 4.8 TB/s; the same GH100 die as H100 SXM (132 SMs, 1980 MHz)
    "H200": GPU("NVIDIA H200 SXM 141GB", 90, 4.8e12, 132, 1.98e9, 0.90, fma_per_clock=128,
                source="H200 datasheet (4.8 TB/s HBM3e), GH100 as in the H100 SXM (132 SMs, 1980 MHz)"),
    # A100 SXM4 80 GB: HBM2e 2.039 TB/s, 108 SMs, 1410 MHz boost (A100 datasheet; Ampere whitepaper)
    "A100": GPU("NVIDIA A100 SXM4 80GB", 80, 2.039e12, 108, 1.41e9, 0.90,
                source="A100 datasheet (2.039 TB/s HBM2e), Ampere whitepaper (108 SMs, 1410 MHz)"),
    # T4: GDDR6 320 GB/s, 40 SMs, 1590 MHz boost (T4 datasheet; Turing whitepaper) - the free Colab GPU
    "T4": GPU("NVIDIA T4 16GB", 75, 320e9, 40, 1.59e9, 0.80,
              source="T4 datasheet (320 GB/s GDDR6), Turing whitepaper (40 SMs, 1590 MHz)"),
}


@dataclass(frozen=True)
class Work:
    """What one kernel launch must do: bytes moved once, exp instructions, shuffle lane
    results and FP32 FMA lane operations (each a total over the launch)."""

    kernel: str
    bytes: float
    exp: float = 0.0
    shuffles: float = 0.0
    fma: float = 0.0
    instructions: float = 0.0  # thread instructions (all kinds); 0 when not counted
    notes: dict = field(default_factory=dict)


def floor(work: Work, gpu: GPU | str) -> dict:
    """The floor times (seconds) of ``work`` on ``gpu``: by bytes (at copy bandwidth), by exp,
    by shuffles, by FMA, by instruction issue; the floor (their maximum), what binds, and the
    predicted fraction of copy bandwidth (bytes' time ÷ floor)."""
    gpu = GPUS[gpu] if isinstance(gpu, str) else gpu
    per_s = gpu.sm_count * gpu.clock_hz
    times = {"bytes": work.bytes / gpu.copy_Bps,
             "exp": work.exp / (gpu.exp_per_clock * per_s),
             "shuffles": work.shuffles / (gpu.shuffle_per_clock * per_s),
             "fma": work.fma / (gpu.fma_per_clock * per_s),
             "issue": work.instructions / (32 * gpu.issue_per_clock * per_s)}
    bound = max(times, key=times.get)
    t = times[bound]
    return {"kernel": work.kernel, "gpu": gpu.name, "seconds": times, "floor_s": t, "bound": bound,
            "fraction_of_copy": times["bytes"] / t if t > 0 else float("nan"),
            "copy_Bps": gpu.copy_Bps}


# ----------------------------------------------------------------------------- per kernel


def linear_scan_work(numel: int, itemsize: int = 4, *, shuffles_per_element: float = 0.0,
                     instructions_per_element: float = 0.0, backward: bool = False) -> Work:
    """``linear_scan`` forward: read ``a``, ``b``, write ``h`` (3 · numel · itemsize). Its
    backward reads ``a``, ``g``, ``h`` and writes ``∂a``, ``∂b``: 5 · numel · itemsize."""
    k = 5 if backward else 3
    return Work("linear_scan" + ("_backward" if backward else ""), k * numel * itemsize,
                shuffles=shuffles_per_element * numel, instructions=instructions_per_element * numel)


def selective_scan_work(b: int, l: int, d: int, n: int, itemsize: int = 4, *, exp_per_element: float = 1.0,
                        shuffles_per_element: float = 0.0, instructions_per_element: float = 0.0) -> Work:
    """``selective_scan`` forward at ``(b, l, d, n)``: bytes of
    :func:`dynbook.kernels.scan.selective_scan_bytes`; ``b·l·d·n`` elements of the state, each
    needing ``exp_per_element`` exp (1: ``exp2(Δ · A log2 e)``) and ``shuffles_per_element``
    shuffles (the design's count, or the compiled one)."""
    from dynbook.kernels.scan import selective_scan_bytes

    elements = b * l * d * n
    return Work("selective_scan", selective_scan_bytes(b, l, d, n, itemsize),
                exp=exp_per_element * elements, shuffles=shuffles_per_element * elements,
                instructions=instructions_per_element * elements, notes={"elements": elements})


def selective_scan_backward_work(b: int, l: int, d: int, n: int, itemsize: int = 4, *,
                                 chunk: int = 256, exp_per_element: float = 1.0,
                                 shuffles_per_element: float = 0.0, instructions_per_element: float = 0.0) -> Work:
    """The fused backward: read ``u, Δ, ∂y`` (b·l·d each) and ``B, C`` (b·l·n each); write
    ``∂u, ∂Δ`` (b·l·d each) and ``∂B, ∂C`` (b·l·n each); plus the saved chunk-start states
    (b·d·n·⌈l/chunk⌉, read once). ``A, D`` and their gradients are small and left out."""
    chunks = math.ceil(l / chunk)
    nbytes = (5 * b * l * d + 4 * b * l * n + b * d * n * chunks) * itemsize
    elements = b * l * d * n
    return Work("selective_scan_backward", nbytes, exp=exp_per_element * elements,
                shuffles=shuffles_per_element * elements, instructions=instructions_per_element * elements,
                notes={"elements": elements, "chunks": chunks})


def rk4_mlp_work(batch: int, d: int, h: int, n_steps: int, itemsize: int = 4) -> Work:
    """The fused RK4 forward: reads ``y0`` and the weights once, writes ``y(t1)``; per step
    and row 4 field evaluations of ``2·d·h`` FMA and ``h`` exp (one per tanh)."""
    nbytes = (2 * batch * d + 2 * d * h + h + d) * itemsize
    evals = 4 * n_steps * batch
    return Work("rk4_mlp", nbytes, exp=evals * h, fma=evals * 2 * d * h)


def rk4_mlp_latency(instructions_per_step: float, n_steps: int, gpu: GPU | str,
                    cycles_per_instruction: tuple[float, float] = (1.0, 2.0)) -> tuple[float, float]:
    """A range for the time of one program's dependent chain of ``n_steps`` steps of
    ``instructions_per_step`` (per thread, counted in the compiled loop): each instruction
    takes between ``cycles_per_instruction[0]`` cycles (issue-bound) and ``[1]`` (waiting on
    the latency of the one before with nothing else to issue). A small batch gives each SM
    too few warps to hide latency, so this chain, not bytes or FLOPs, sets the time."""
    gpu = GPUS[gpu] if isinstance(gpu, str) else gpu
    lo, hi = cycles_per_instruction
    cycles = instructions_per_step * n_steps
    return cycles * lo / gpu.clock_hz, cycles * hi / gpu.clock_hz


def table(works: list[Work], gpus=("H100", "H200", "A100", "T4")) -> list[dict]:
    """One row per (kernel, GPU): floors in µs, what binds, predicted fraction of copy."""
    rows = []
    for w in works:
        for g in gpus:
            f = floor(w, g)
            rows.append({"kernel": w.kernel, "gpu": g, "bytes_us": f["seconds"]["bytes"] * 1e6,
                         "exp_us": f["seconds"]["exp"] * 1e6, "shuffles_us": f["seconds"]["shuffles"] * 1e6,
                         "fma_us": f["seconds"]["fma"] * 1e6, "issue_us": f["seconds"]["issue"] * 1e6,
                         "floor_us": f["floor_s"] * 1e6,
                         "bound": f["bound"], "fraction_of_copy": f["fraction_of_copy"]})
    return rows
