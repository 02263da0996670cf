"""One linear time-invariant sequence map, three ways, and what each costs.

The map is one :class:`~dynbook.models.ssm.S4D` layer without its skip term:
``y_l = Σ_{j ≤ l} K_{l−j} u_j`` per channel, ``K_l = 2 Re Σ_n C_n B̄_n Ā_n^l``. It is computed

* ``"toeplitz"``: as a dense lower-triangular Toeplitz matrix ``T_{lj} = K_{l−j}`` applied by
  one batched matrix product (matrix form: ``O(H L² b)`` FLOPs, GEMM-shaped, ``H L²`` numbers
  to hold);
* ``"fft"``: as an FFT convolution, zero-padded to ``2L`` (``O(H b L log L)``);
* ``"scan"``: as the recurrence ``h_l = Ā h_{l−1} + u_l``, ``y_l = 2 Re Σ_n C_n B̄_n h_{l,n}``
  by the parallel scan of :mod:`dynbook.kernels.scan` (dynamical form: ``O(H N b L)`` work in
  ``O(log L)`` rounds), or ``"recurrence"``: the same one step at a time (the reference).

Chapter 5 shows that recurrence, convolution and scan agree; this module adds the dense matrix
and measures the trade-off map: :func:`cost_sweep` times every form over lengths and batch
sizes by interleaved readings (:func:`dynbook.models.ssm.interleaved_seconds`), and
:func:`crossover` finds where the matrix stops winning.

Shapes: inputs ``u: (H, b, L)`` (channel, batch, length), the layout every form reads
without a copy; operators are built once per length (:class:`Operators`), as a trained
layer's would be.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Sequence

import numpy as np
import torch

from dynbook._checks import one_of, positive_int
from dynbook.book.stats import Estimate, timing_ratio
from dynbook.kernels.scan import linear_scan_parallel, linear_scan_reference
from dynbook.models.ssm import S4D, interleaved_seconds

FORMS = ("toeplitz", "fft", "scan", "recurrence")


@dataclass
class Operators:
    """Everything a form needs, built once for ``length``: ``kernel (H, L)``, ``toeplitz
    (H, L, L)``, ``kernel_fft (H, L + 1)``, ``dA``, ``CdB`` (H, N/2) complex."""

    length: int
    kernel: torch.Tensor
    toeplitz: torch.Tensor
    kernel_fft: torch.Tensor
    dA: torch.Tensor
    CdB: torch.Tensor


def make_layer(width: int, d_state: int, *, seed: int = 0) -> S4D:
    """An :class:`~dynbook.models.ssm.S4D` layer (``H = width``, ``N = d_state``) from ``seed``."""
    positive_int("width", width)
    positive_int("d_state", d_state, minimum=2)
    torch.manual_seed(seed)
    return S4D(width, d_state)


def toeplitz_matrix(kernel: torch.Tensor) -> torch.Tensor:
    """``(H, L, L)`` lower-triangular Toeplitz matrices ``T[h, l, j] = K[h, l − j]`` (0 for j > l)."""
    if kernel.ndim != 2:
        raise ValueError(f"kernel must be (H, L), got shape {tuple(kernel.shape)}")
    L = kernel.shape[-1]
    # windows of the zero-padded kernel, flipped: T[l, j] = Kp[L − 1 + l − j] (one copy, no index arrays)
    padded = torch.cat([kernel.new_zeros(kernel.shape[0], L - 1), kernel], dim=-1)
    return padded.unfold(-1, L, 1).flip(-1).contiguous()


def operators(layer: S4D, length: int, *, dtype=torch.float32) -> Operators:
    """The three forms' operators for sequences of ``length`` (float ``dtype``)."""
    L = positive_int("length", length)
    with torch.no_grad():
        K = layer.kernel(L).to(dtype)
        dA, CdB, _ = layer.discretize()
    cdtype = torch.complex128 if dtype == torch.float64 else torch.complex64
    return Operators(L, K, toeplitz_matrix(K).contiguous(), torch.fft.rfft(K, n=2 * L),
                     dA.detach().to(cdtype), CdB.detach().to(cdtype))


def apply(ops: Operators, u: torch.Tensor, form: str) -> torch.Tensor:
    """``y = K * u`` (causal, per channel) by ``form`` ∈ :data:`FORMS`; ``u: (H, b, L)``."""
    one_of("form", form, FORMS)
    if u.ndim != 3 or u.shape[-1] != ops.length or u.shape[0] != ops.kernel.shape[0]:
        raise ValueError(f"u must be (H, b, L) = ({ops.kernel.shape[0]}, b, {ops.length}), got {tuple(u.shape)}")
    L = ops.length
    if form == "toeplitz":
        return torch.bmm(u, ops.toeplitz.transpose(1, 2))
    if form == "fft":
        return torch.fft.irfft(torch.fft.rfft(u, n=2 * L) * ops.kernel_fft[:, None, :], n=2 * L)[..., :L]
    a = ops.dA[:, :, None, None]  # (H, N/2, 1, 1): the same Ā at every step
    drive = u.to(ops.dA.dtype)[:, None, :, :]  # (H, 1, b, L), B = 1 (folded into C)
    scan = linear_scan_parallel if form == "scan" else linear_scan_reference
    h = scan(a, drive.expand(-1, a.shape[1], -1, -1))
    return 2 * torch.einsum("hn,hnbl->hbl", ops.CdB, h).real.to(u.dtype)


def agreement(layer: S4D, *, length: int, batch: int, seed: int = 0) -> dict:
    """Largest deviation of each form from the recurrence, relative to the largest output,
    in float64 on random inputs ``(H, batch, length)``: ``{form: relative error}``."""
    import copy

    from dynbook.measure.fits import relative_error

    ops = operators(copy.deepcopy(layer).double(), length, dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(layer.D.shape[0], batch, length, generator=g, dtype=torch.float64)
    with torch.no_grad():
        ref = apply(ops, u, "recurrence")
        return {f: relative_error(apply(ops, u, f), ref) for f in ("toeplitz", "fft", "scan")}


def cost_sweep(layer: S4D, lengths: Sequence[int], batches: Sequence[int], *, repeats: int = 5,
               forms: Sequence[str] = ("toeplitz", "fft", "scan"), threads: int = 1, seed: int = 0,
               min_time: float = 0.005) -> dict:
    """Seconds per call of each form at every (length, batch), float32, on ``threads``
    intra-op threads, every reading of one batch size interleaved with all the others
    (:func:`~dynbook.models.ssm.interleaved_seconds`).

    Returns ``{"lengths", "batches", "readings": {(form, L, b): [s, ...]}, "least": {(form, b):
    [least s per length]}, "bytes": {(form, L, b): bytes held by the operator and the
    intermediates}}``."""
    from dynbook.measure.timing import num_threads

    lengths = [positive_int(f"lengths[{i}]", L, minimum=2) for i, L in enumerate(lengths)]
    batches = [positive_int(f"batches[{i}]", b) for i, b in enumerate(batches)]
    for f in forms:
        one_of("forms[i]", f, FORMS)
    H = layer.D.shape[0]
    half = layer.A_imag.shape[1]
    g = torch.Generator().manual_seed(seed)
    ops = {L: operators(layer, L) for L in lengths}
    readings, nbytes = {}, {}
    with torch.no_grad(), num_threads(threads):
        for b in batches:
            fns = {}
            for L in lengths:
                u = torch.randn(H, b, L, generator=g)
                for f in forms:
                    fns[(f, L, b)] = partial(apply, ops[L], u, f)
                    nbytes[(f, L, b)] = {"toeplitz": 4 * H * L * L, "fft": 8 * H * (b + 1) * (L + 1) * 2,
                                         "scan": 8 * H * half * b * L * 2}.get(f, 8 * H * half * b * L)
            readings.update(interleaved_seconds(fns, repeats=positive_int("repeats", repeats, minimum=2),
                                                min_time=min_time))
    least = {(f, b): [min(readings[(f, L, b)]) for L in lengths] for f in forms for b in batches}
    return {"lengths": lengths, "batches": batches, "forms": list(forms), "readings": readings,
            "least": least, "bytes": nbytes}


def log2_ratio(sweep: dict, numerator: str, denominator: str, length: int, batch: int, *, seed: int = 0) -> Estimate:
    """``log₂(t_numerator / t_denominator)`` at (``length``, ``batch``) from the sweep's
    interleaved readings (:func:`~dynbook.book.stats.timing_ratio`, bootstrap of least readings)."""
    r = sweep["readings"]
    return timing_ratio(r[(numerator, length, batch)], r[(denominator, length, batch)], seed=seed,
                        bootstrap="least").map(math.log2)


def crossover(sweep: dict, matrix: str, other: str, batch: int) -> float | None:
    """The length where ``matrix`` and ``other`` cost the same at ``batch``, by linear
    interpolation of ``log(t_matrix/t_other)`` in ``log L`` between the first pair of
    neighbouring lengths where the sign changes; ``None`` if it does not change sign in the sweep."""
    L = np.log(np.asarray(sweep["lengths"], float))
    r = np.log(np.asarray(sweep["least"][(matrix, batch)]) / np.asarray(sweep["least"][(other, batch)]))
    for i in range(len(L) - 1):
        if r[i] <= 0 < r[i + 1] or r[i] >= 0 > r[i + 1]:
            return float(math.exp(L[i] + (L[i + 1] - L[i]) * (-r[i]) / (r[i + 1] - r[i])))
    return None
