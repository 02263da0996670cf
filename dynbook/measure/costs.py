"""Cost models: FLOPs and compulsory bytes of the book's kernels, and the roofline they imply.

A kernel's *arithmetic intensity* (FLOP per byte it must move) against a machine's ridge
intensity (peak FLOP/s ÷ bandwidth) says whether arithmetic or data movement bounds it. These
counters are exact and hardware-free; the peaks and bandwidths they are held to are measured
(:func:`dynbook.measure.timing.copy_bandwidth`, :func:`dynbook.models.matrix.measure_peak_matmul`),
and the energy per FLOP and per byte is in :mod:`dynbook.measure.energy`.
"""

from __future__ import annotations


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


def kernel_costs(kind: str, *, itemsize: int = 4, **shape) -> dict:
    """FLOPs and compulsory memory traffic (every operand read once, the result written once)
    of one call. Shapes: ``gemm(n, k, batch)`` = ``(batch, k) @ (k, n)``;
    ``stencil(sites, batch)`` and ``dense_operator(sites, batch)`` = one diffusion step of
    ``batch`` fields; ``scan(length, channels, batch)`` = a prefix sum along ``length``."""
    if kind == "gemm":
        n, k, b = shape["n"], shape["k"], shape["batch"]
        return {"flops": 2 * n * k * b, "bytes": itemsize * (n * k + k * b + n * b)}
    if kind == "stencil":
        s, b = shape["sites"], shape["batch"]
        # 4 neighbour adds, -4u, +α·lap: 7 FLOPs per site; read u, write the new u
        return {"flops": 7 * s * b, "bytes": itemsize * 2 * s * b}
    if kind == "dense_operator":
        s, b = shape["sites"], shape["batch"]
        return {"flops": 2 * s * s * b, "bytes": itemsize * (s * s + 2 * s * b)}
    if kind == "scan":
        n = shape["length"] * shape["channels"] * shape["batch"]
        return {"flops": n, "bytes": itemsize * 2 * n}
    raise ValueError(f"kind={kind!r} is not allowed: expected 'gemm', 'stencil', 'dense_operator' or 'scan'")
