"""Linear recurrences along a sequence: the scan behind state-space models.

Two operations, each as a sequential PyTorch reference, a pure-PyTorch parallel scan and a
Triton kernel:

* ``linear_scan(a, b)``: ``h_t = a_t · h_{t−1} + b_t`` along the last axis, ``h_{−1} = 0``,
  for any leading shape (S4D's diagonal recurrence is one row per state component).
* ``selective_scan(u, delta, A, B, C, D)``: Mamba's selective scan (Gu & Dao 2023, Alg. 2),
  with input-dependent step ``Δ`` and projections ``B``, ``C``.

Glossary (code name → symbol in the papers):

=========  ======================  =====================================================
``u``      ``x`` (b, l, d)          input sequence, ``d`` channels
``delta``  ``Δ`` (b, l, d)          step size per token and channel (already positive)
``A``      ``A`` (d, n)             diagonal state matrix, one row of ``n`` per channel
``B``      ``B`` (b, l, n)          input projection per token (selective)
``C``      ``C`` (b, l, n)          output projection per token (selective)
``D``      ``D`` (d,)               skip connection
``dA``     ``Ā = exp(Δ A)``         zero-order-hold transition
``dBu``    ``B̄ u = Δ B u``          discretised input (Mamba's simplified ZOH for ``B``)
=========  ======================  =====================================================

Why a scan is parallel: the pairs ``(a, b)`` compose associatively,
``(a₁, b₁) ∘ (a₂, b₂) = (a₁ a₂, a₂ b₁ + b₂)`` (apply step 1, then step 2), so any
prefix-scan algorithm computes all ``h_t`` in ``O(log l)`` depth. The Triton kernels run
``tl.associative_scan`` over chunks of ``BLOCK_L`` steps and carry the state from chunk to
chunk inside one program, so any ``l`` works and every input is read once.

``selective_scan``'s forward is laid out as Mamba's CUDA kernel is: a chunk is a
``(RUN, PAR, BLOCK_D)`` tile whose RUN consecutive tokens of one channel sit in one thread's
registers, so the scan along a run needs no shuffles; only the PAR run totals are scanned across
threads (the lanes of one warp in the headline tile), in one pass that yields the state both
after and before each run. It loops over the ``n`` states (registers do not grow with ``n``: the
state carried from chunk to chunk lives in a small per-program scratch; ``n ≤ MAX_N``) and uses
``exp2`` of ``Δ · A log₂e``: one MUFU instruction per (token, channel, state). Compiled for
sm_90 at (32, 32, 1 warp) it issues 1 exp, 1.5 shuffles and 11.9 instructions per element in
its PTX (10.6 in the SASS; ``dynbook.kernels.static``).

Gradients: ``linear_scan``'s backward is itself a reversed linear scan,
``λ_t = g_t + a_{t+1} λ_{t+1}``, ``∂L/∂b_t = λ_t``, ``∂L/∂a_t = λ_t h_{t−1}``, computed by the
same Triton kernel run on reversed indices (fused with the ``λ h_{t−1}`` product): it loads
the sequence from its end and scans forward, never ``associative_scan(reverse=True)``
(triton#4362). ``selective_scan``'s backward is a fused kernel too: the forward saves the state
at each chunk start (``b·⌈l/BLOCK_L⌉·n·d`` values), and the backward walks the chunks from the
end, recomputing ``h`` inside each chunk and running the adjoint recurrence with forward scans
over reversed indices; no ``(b, l, d, n)`` tensor is materialised. For ``n > SSM_BWD_MAX_N``
(where every backward tile spills) it recomputes through :func:`selective_scan_chunked`.
"""

from __future__ import annotations

import math

import torch

from dynbook.kernels import resolve_impl
from dynbook.kernels._interpret import KernelSet

try:  # Triton is optional: the PyTorch paths work without it
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised only where triton is missing
    triton = None
    tl = None

__all__ = [
    "linear_scan", "linear_scan_reference", "linear_scan_parallel",
    "selective_scan", "selective_scan_reference", "selective_scan_parallel", "selective_scan_chunked",
    "linear_scan_bytes", "selective_scan_bytes", "selective_scan_flops",
    "selective_scan_inputs", "bench_selective_scan", "bench_linear_scan",
]

_FLOAT = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_COMPLEX = (torch.complex64, torch.complex128)


# ----------------------------------------------------------------------------- checks


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulate half precision in float32; keep float64 and complex as they are."""
    return dtype if dtype in (torch.float64, *_COMPLEX) else torch.float32


def _need_tensor(name: str, x, ndim: int | None = None, *, complex_ok: bool = True):
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} = {type(x).__name__} is not allowed: expected a torch.Tensor")
    allowed = _FLOAT + (_COMPLEX if complex_ok else ())
    if x.dtype not in allowed:
        raise ValueError(f"{name}.dtype = {x.dtype} is not allowed: expected one of "
                         f"{', '.join(str(d) for d in allowed)}")
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{name}.shape = {tuple(x.shape)} is not allowed: expected {ndim} dimensions")


def _check_linear(a, b) -> tuple[torch.Tensor, torch.Tensor]:
    _need_tensor("a", a)
    _need_tensor("b", b)
    if a.ndim < 1 or b.ndim < 1:
        raise ValueError(f"a.shape = {tuple(a.shape)}, b.shape = {tuple(b.shape)} are not allowed: "
                         "expected at least one dimension (the sequence axis, last)")
    try:
        shape = torch.broadcast_shapes(a.shape, b.shape)
    except RuntimeError:
        raise ValueError(f"a.shape = {tuple(a.shape)} and b.shape = {tuple(b.shape)} are not allowed: "
                         "expected shapes that broadcast to a common shape") from None
    if a.device != b.device:
        raise ValueError(f"a.device = {a.device}, b.device = {b.device}: expected one device")
    return a.expand(shape), b.expand(shape)


def _check_selective(u, delta, A, B, C, D):
    _need_tensor("u", u, 3, complex_ok=False)
    bsz, l, d = u.shape
    _need_tensor("delta", delta, 3, complex_ok=False)
    _need_tensor("A", A, 2, complex_ok=False)
    _need_tensor("B", B, 3, complex_ok=False)
    _need_tensor("C", C, 3, complex_ok=False)
    if delta.shape != u.shape:
        raise ValueError(f"delta.shape = {tuple(delta.shape)} is not allowed: expected u's shape {tuple(u.shape)}")
    if A.shape[0] != d:
        raise ValueError(f"A.shape = {tuple(A.shape)} is not allowed: expected ({d}, n) for u of shape {tuple(u.shape)}")
    n = A.shape[1]
    for name, x in (("B", B), ("C", C)):
        if x.shape != (bsz, l, n):
            raise ValueError(f"{name}.shape = {tuple(x.shape)} is not allowed: expected (b, l, n) = {(bsz, l, n)}")
    if D is not None:
        _need_tensor("D", D, 1, complex_ok=False)
        if D.shape != (d,):
            raise ValueError(f"D.shape = {tuple(D.shape)} is not allowed: expected (d,) = ({d},) or None")
    for name, x in (("delta", delta), ("A", A), ("B", B), ("C", C), ("D", D)):
        if x is not None and x.device != u.device:
            raise ValueError(f"{name}.device = {x.device} is not allowed: expected u's device {u.device}")


def _triton_ready(x: torch.Tensor) -> None:
    if triton is None:
        raise RuntimeError("impl='triton' needs the triton package")
    if x.dtype in _COMPLEX:
        raise ValueError(f"dtype = {x.dtype} is not allowed with impl='triton': expected a real "
                         "floating dtype (use impl='torch' or the parallel scan for complex)")


# ----------------------------------------------------------------------------- references


def linear_scan_reference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Sequential ``h_t = a_t h_{t−1} + b_t`` along the last axis, accumulated in float32
    (float64/complex kept). ``a``, ``b``: broadcastable ``(..., l)``; returns ``(..., l)``.

    Moves ``3 · numel · itemsize`` bytes at best (read ``a``, ``b``, write ``h``) and does
    ``2 · numel`` FLOPs, but in ``l`` dependent steps: the slow, obviously right version.
    """
    a, b = _check_linear(a, b)
    out_dtype = torch.result_type(a, b)
    acc = _acc_dtype(out_dtype)
    a, b = a.to(acc), b.to(acc)
    h = torch.zeros(b.shape[:-1], dtype=acc, device=b.device)
    hs = []
    for t in range(b.shape[-1]):
        h = a[..., t] * h + b[..., t]
        hs.append(h)
    if not hs:
        return b.to(out_dtype)
    return torch.stack(hs, dim=-1).to(out_dtype)


def _odd_even_scan(a: torch.Tensor, b: torch.Tensor, dim: int) -> torch.Tensor:
    """Work-efficient parallel scan along ``dim`` (odd–even / Blelloch recursion).

    Combine neighbouring pairs (2k, 2k+1) into one step, scan the half-length sequence
    recursively (that gives every odd ``h``), then fill in the even ones:
    ``h_{2k} = a_{2k} h_{2k−1} + b_{2k}``. Depth ``O(log l)``, work ``O(l)``; each level is a
    few whole-tensor operations (``addcmul`` fuses a multiply with its add).
    """
    l = b.shape[dim]
    if l <= 1:
        return b
    m = l // 2
    pre = (slice(None),) * dim

    def sl(x, *s):
        return x[pre + (slice(*s),)]

    a_even, b_even = sl(a, 0, None, 2), sl(b, 0, None, 2)
    a_odd, b_odd = sl(a, 1, None, 2), sl(b, 1, None, 2)
    h_odd = _odd_even_scan(a_odd * sl(a_even, m), torch.addcmul(b_odd, a_odd, sl(b_even, m)), dim)
    shape = torch.broadcast_shapes(a.shape, b.shape)
    out = torch.empty(shape, dtype=h_odd.dtype, device=h_odd.device)
    out[pre + (slice(1, None, 2),)] = h_odd
    out[pre + (slice(0, 1),)] = sl(b_even, 1)
    if b_even.shape[dim] > 1:
        out[pre + (slice(2, None, 2),)] = torch.addcmul(sl(b_even, 1, None), sl(a_even, 1, None),
                                                         sl(h_odd, b_even.shape[dim] - 1))
    return out


def linear_scan_parallel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``linear_scan`` by a pure-PyTorch parallel scan (the baseline the kernel must beat).

    Same maths as :func:`linear_scan_reference` in ``O(log l)`` rounds of whole-tensor
    operations; differentiable by autograd; complex inputs allowed.
    """
    a, b = _check_linear(a, b)
    out_dtype = torch.result_type(a, b)
    acc = _acc_dtype(out_dtype)
    # scan along a leading axis: every slice of the recursion is then a block of whole rows
    a0 = a.to(acc).movedim(-1, 0).contiguous()
    b0 = b.to(acc).movedim(-1, 0).contiguous()
    return _odd_even_scan(a0, b0, 0).movedim(0, -1).to(out_dtype)


def selective_scan_reference(u, delta, A, B, C, D=None) -> torch.Tensor:
    """Sequential selective scan (float32 accumulation, float64 kept), one step per token.

    ``u, delta: (b, l, d)``, ``A: (d, n)``, ``B, C: (b, l, n)``, ``D: (d,)`` or None →
    ``y: (b, l, d)``: ``h_t = exp(Δ_t A) ⊙ h_{t−1} + Δ_t B_t u_t``, ``y_t = C_t · h_t + D u_t``.
    """
    _check_selective(u, delta, A, B, C, D)
    acc = _acc_dtype(u.dtype)
    u_, dt, A_, B_, C_ = (x.to(acc) for x in (u, delta, A, B, C))
    bsz, l, d = u.shape
    h = torch.zeros(bsz, d, A.shape[1], dtype=acc, device=u.device)
    ys = []
    # split once: indexing x[:, t] inside the loop makes autograd zero-fill a full-length
    # gradient at every step (quadratic in l for training)
    dts, us, Bs, Cs = (x.unbind(1) for x in (dt, u_, B_, C_))
    for t in range(l):
        dA = torch.exp(dts[t][:, :, None] * A_)  # (b, d, n)
        h = dA * h + (dts[t] * us[t])[:, :, None] * Bs[t][:, None, :]
        ys.append(torch.einsum("bdn,bn->bd", h, Cs[t]))
    y = torch.stack(ys, dim=1) if ys else u_.new_zeros(u_.shape)
    if D is not None:
        y = y + u_ * D.to(acc)
    return y.to(u.dtype)


def selective_scan_parallel(u, delta, A, B, C, D=None) -> torch.Tensor:
    """Selective scan by the pure-PyTorch parallel scan; materialises ``(b, l, d, n)``
    tensors (``Ā``, ``B̄u``, ``h``), which is what the fused kernel avoids."""
    _check_selective(u, delta, A, B, C, D)
    acc = _acc_dtype(u.dtype)
    u_, dt, A_, B_, C_ = (x.to(acc) for x in (u, delta, A, B, C))
    dA = torch.exp(dt[..., None] * A_)  # (b, l, d, n)
    dBu = (dt * u_)[..., None] * B_[:, :, None, :]
    h = _odd_even_scan(dA, dBu, 1)  # (b, l, d, n), l-slices are contiguous (d, n) blocks
    y = torch.einsum("bldn,bln->bld", h, C_)
    if D is not None:
        y = y + u_ * D.to(acc)
    return y.to(u.dtype)


def selective_scan_chunked(u, delta, A, B, C, D=None, *, chunk: int = 256) -> torch.Tensor:
    """Selective scan in chunks of ``chunk`` tokens: a parallel scan inside each chunk, the
    state carried from chunk to chunk — the Triton kernel's schedule, in PyTorch.

    Only ``(b, chunk, d, n)`` tensors are materialised (they stay in cache), so time and
    memory grow linearly in ``l``; this is the fast way to run the scan on a CPU.
    """
    _check_selective(u, delta, A, B, C, D)
    if chunk < 1:
        raise ValueError(f"chunk = {chunk!r} is not allowed: expected a positive integer")
    acc = _acc_dtype(u.dtype)
    u_, dt, A_, B_, C_ = (x.to(acc) for x in (u, delta, A, B, C))
    bsz, l, d = u.shape
    h = torch.zeros(bsz, d, A.shape[1], dtype=acc, device=u.device)
    ys = []
    for start in range(0, l, chunk):
        sl = slice(start, start + chunk)
        dA = torch.exp(dt[:, sl, :, None] * A_)  # (b, T, d, n)
        dBu = (dt[:, sl] * u_[:, sl])[..., None] * B_[:, sl, None, :]
        # fold the carried state into the first step: h_start = Ā_0 h + B̄_0 u_0
        dBu = torch.cat([torch.addcmul(dBu[:, :1], dA[:, :1], h[:, None]), dBu[:, 1:]], dim=1)
        hs = _odd_even_scan(dA, dBu, 1)
        ys.append(torch.einsum("bldn,bln->bld", hs, C_[:, sl]))
        h = hs[:, -1]
    y = torch.cat(ys, dim=1) if ys else u_.new_zeros(u_.shape)
    if D is not None:
        y = y + u_ * D.to(acc)
    return y.to(u.dtype)


def linear_scan_bytes(numel: int, itemsize: int) -> int:
    """Bytes ``linear_scan`` must move once: read ``a`` and ``b``, write ``h``."""
    return 3 * numel * itemsize


def selective_scan_bytes(b: int, l: int, d: int, n: int, itemsize: int, *, has_D: bool = True) -> int:
    """Bytes the forward must move once: read ``u, Δ`` (b·l·d each), ``B, C`` (b·l·n each),
    ``A`` (d·n), ``D`` (d); write ``y`` (b·l·d). Float32 ``A``/``D`` assumed at ``itemsize``."""
    return (3 * b * l * d + 2 * b * l * n + d * n + (d if has_D else 0)) * itemsize


def selective_scan_flops(b: int, l: int, d: int, n: int) -> int:
    """FLOPs of the forward, counting ``exp`` as one: per (b, l, d, n) element ``Δ·A``,
    ``exp``, ``(Δu)·B``, the scan's multiply–add (2) and ``C·h`` multiply–add (2)."""
    return 7 * b * l * d * n


# ----------------------------------------------------------------------------- Triton

#: Every launch configuration the autotuner may choose, (BLOCK_R, BLOCK_L, num_warps): the
#: tests run each in the interpreter and ``dynbook.kernels.static`` compiles each for sm_90/80/75.
LINEAR_SCAN_CONFIGS = ((1, 1024, 4), (2, 1024, 4), (4, 512, 4), (8, 256, 4), (4, 1024, 8),
                       (16, 256, 8), (2, 2048, 8))  # (32, 128, 4) spilled in the backward
#: (BLOCK_L, BLOCK_D, num_warps) of the selective-scan forward for float32 (the autotuner's
#: list). (32, 32, 1) holds 32 elements per thread in one warp, so the scan across runs is
#: shuffles only, and issues the fewest instructions per element; the two-warp tiles (also 32
#: per thread) and the 16-per-thread tiles (about twice the instructions per element) put more
#: warps on each SM when b·d is small, which only a GPU can weigh. Larger tiles spill (see
#: dynbook.kernels.static).
SSM_FWD_CONFIGS = ((32, 32, 1), (64, 32, 2), (32, 64, 2), (32, 16, 1), (16, 32, 1))
#: The forward's configurations for 16-bit and float64 inputs, 8–16 elements per thread (the
#: 32-element tile spills for bf16, whose loads are vectorised 8 wide).
SSM_FWD_CONFIGS_SMALL = ((32, 16, 1), (16, 32, 1), (16, 16, 1))
#: Tokens of one channel that one thread scans in registers (Mamba's items per thread).
SSM_RUN = 8
#: Largest state size the Triton selective scan takes (its registers do not grow with n: the
#: carried states live in a per-program scratch; the static table compiles n = 16 and n = 64).
MAX_N = 64


if triton is not None:

    @triton.jit
    def _combine(a1, b1, a2, b2):
        # (a1, b1) first, then (a2, b2): h ↦ a2 (a1 h + b1) + b2
        return a1 * a2, a2 * b1 + b2

    @triton.jit
    def _add(x, y):
        return x + y

    @triton.jit
    def _sum(x, axis: tl.constexpr):
        # tl.sum spelled with the builtin reduce, so that an interpreted copy of this module
        # (see _kernel) never calls a compiled-mode library function
        return tl.reduce(x, axis, _add)

    @triton.jit
    def _linear_scan_kernel(A, X, H, HPREV, DA, R, L, BLOCK_R: tl.constexpr, BLOCK_L: tl.constexpr,
                            REVERSE: tl.constexpr, ACC: tl.constexpr):
        """Rows ``[pid·BLOCK_R, …)`` of contiguous ``(R, L)`` arrays.

        Forward (REVERSE=False): ``H_t = A_t H_{t−1} + X_t``.
        Backward (REVERSE=True): ``H_t = A_{t+1} H_{t+1} + X_t`` (the adjoint λ, with ``X`` the
        incoming gradient), and ``DA_t = λ_t · HPREV_{t−1}`` (the gradient of ``a``).
        """
        pid = tl.program_id(0)
        rows = pid * BLOCK_R + tl.arange(0, BLOCK_R)
        row_ok = rows < R
        local = tl.arange(0, BLOCK_L)
        carry = tl.full([BLOCK_R], 0.0, ACC)
        n_chunks = (L + BLOCK_L - 1) // BLOCK_L
        shift = 1 if REVERSE else 0
        for i in range(0, n_chunks):
            # The backward walks the sequence from its end by reversing the *index*, so the
            # scan itself always runs forward: tl.associative_scan(..., reverse=True) with a
            # non-commutative combine is miscompiled by some Triton versions (triton#4362).
            if REVERSE:
                cols = L - 1 - (i * BLOCK_L + local)  # local step j is time L−1−(i·BLOCK_L+j)
            else:
                cols = i * BLOCK_L + local
            offs = rows[:, None].to(tl.int64) * L + cols[None, :]
            ok = row_ok[:, None] & (cols[None, :] >= 0) & (cols[None, :] < L)
            # padding is the identity step (a = 1, b = 0), placed after the last real step in
            # scan order; the backward reads a one step ahead (a_{t+1}, and a_L = 1)
            ok_a = row_ok[:, None] & (cols[None, :] >= 0) & (cols[None, :] + shift < L)
            a = tl.load(A + offs + shift, mask=ok_a, other=1.0).to(ACC)
            x = tl.load(X + offs, mask=ok, other=0.0).to(ACC)
            a_cum, x_cum = tl.associative_scan((a, x), 1, _combine)
            h = a_cum * carry[:, None] + x_cum
            tl.store(H + offs, h.to(H.dtype.element_ty), mask=ok)
            if REVERSE:
                ok_prev = ok & (cols[None, :] >= 1)
                h_prev = tl.load(HPREV + offs - 1, mask=ok_prev, other=0.0).to(ACC)
                tl.store(DA + offs, (h * h_prev).to(DA.dtype.element_ty), mask=ok)
            carry = _sum(tl.where(local[None, :] == BLOCK_L - 1, h, 0.0), 1)

    @triton.jit
    def _combine_excl(ai1, xi1, ae1, xe1, ai2, xi2, ae2, xe2):
        # pairs (inclusive, exclusive) of prefix maps: for segment 1 then segment 2,
        # inclusive = incl2 ∘ incl1 and exclusive = excl2 ∘ incl1 (associative). Scanning the
        # elements (f_p, identity) yields at p both f_p∘…∘f_0 and f_{p−1}∘…∘f_0: the state
        # after each run and the state before it, with no shift across threads.
        return ai1 * ai2, ai2 * xi1 + xi2, ai1 * ae2, ae2 * xi1 + xe2

    @triton.jit
    def _ssm_fwd_kernel(U, DELTA, A2, B, C, D, Y, HS, SCR, L, DIM, N, N_CHUNKS, HAS_D: tl.constexpr,
                        STORE_STATES: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr,
                        BLOCK_N: tl.constexpr, RUN: tl.constexpr, ACC: tl.constexpr):
        """One program per (batch, block of BLOCK_D channels), walking the sequence in chunks of
        BLOCK_L = RUN · PAR tokens held as a ``(RUN, PAR, BLOCK_D)`` tile: channels across lanes
        (``d`` is contiguous in memory), PAR runs across lanes, and the RUN consecutive tokens
        of a run in one thread's registers (Mamba's "a thread owns a run of tokens").

        For each state ``n`` (a loop: registers do not grow with ``n``): ``Ā = exp2(Δ · A log₂e)``
        (one MUFU op), ``B̄u = Δ u B_n``; a scan along each run inside the thread; one scan of
        the PAR run totals across lanes that gives, with :func:`_combine_excl`, both the state
        after each run and the state before it (no gather); ``y += C_n h``. The state carried
        from chunk to chunk is kept per program in ``SCR: (b, ⌈d/BLOCK_D⌉, BLOCK_N, BLOCK_D)``
        (a few KB that stay in L1/L2), not in a register tile selected by ``n``; when
        STORE_STATES, each chunk's starting state is also written to ``HS: (b, N_CHUNKS, N,
        DIM)`` for the backward."""
        PAR: tl.constexpr = BLOCK_L // RUN
        pid_b = tl.program_id(0)
        pid_d = tl.program_id(1)
        ds = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
        r = tl.arange(0, RUN)
        p = tl.arange(0, PAR)
        base = pid_b.to(tl.int64) * L
        within = r[:, None] + p[None, :] * RUN  # (RUN, PAR): token within the chunk
        w3 = within[:, :, None] + 0 * ds[None, None, :]
        ds3 = ds[None, None, :] + 0 * within[:, :, None]
        d_ok3 = ds3 < DIM
        tile_off = w3 * DIM + ds3  # offsets inside a chunk (int32)
        last = r[:, None, None] == RUN - 1
        # this program's carried states, one row of BLOCK_D per state (as a (PAR, BLOCK_D) tile)
        scr = SCR + (pid_b.to(tl.int64) * tl.num_programs(1) + pid_d) * BLOCK_N * BLOCK_D + \
            (tl.arange(0, BLOCK_D)[None, :] + 0 * p[:, None])
        one = tl.full([PAR, BLOCK_D], 1.0, ACC)
        zero = tl.full([PAR, BLOCK_D], 0.0, ACC)
        if HAS_D:
            D3 = tl.load(D + ds3, mask=d_ok3, other=0.0).to(ACC)
        for c in range(0, (L + BLOCK_L - 1) // BLOCK_L):  # N_CHUNKS only indexes HS
            tl.debug_barrier()  # the states the previous chunk left in SCR are visible to every thread
            ts = c * BLOCK_L + w3
            m = (ts < L) & d_ok3
            off = (base + ts) * DIM + ds3
            u = tl.load(U + off, mask=m, other=0.0).to(ACC)
            # padded tokens and channels: Δ = 0 → Ā = 1 and B̄u = 0, the identity step
            dt = tl.load(DELTA + off, mask=m, other=0.0).to(ACC)
            dtu = dt * u
            if HAS_D:
                y = D3 * u
            else:
                y = tl.full([RUN, PAR, BLOCK_D], 0.0, ACC)
            tok = base + c * BLOCK_L + within
            t_ok = tok < base + L
            for n in range(0, N):
                a_n = tl.load(A2 + ds * N + n, mask=ds < DIM, other=0.0)[None, None, :]
                b_n = tl.load(B + tok * N + n, mask=t_ok, other=0.0).to(ACC)[:, :, None]
                c_n = tl.load(C + tok * N + n, mask=t_ok, other=0.0).to(ACC)[:, :, None]
                dA = tl.exp2(dt * a_n)
                a_k, x_k = tl.associative_scan((dA, dtu * b_n), 0, _combine)  # along each run: in-thread
                h0 = tl.load(scr + n * BLOCK_D, mask=c > 0, other=0.0)  # the chunk's starting state
                if STORE_STATES:
                    hs_off = (pid_b.to(tl.int64) * N_CHUNKS * N + c * N + n) * DIM + ds[None, :] + 0 * p[:, None]
                    tl.store(HS + hs_off, h0, mask=(p[:, None] == 0) & (ds[None, :] < DIM))
                # run totals (each run's last step, read in registers), scanned across the runs
                a_t = _sum(tl.where(last, a_k, 0.0), 0)
                x_t = _sum(tl.where(last, x_k, 0.0), 0)
                ai, xi, ae, xe = tl.associative_scan((a_t, x_t, one, zero), 0, _combine_excl)
                h_start = ae * h0 + xe  # the state before each run
                y += (a_k * h_start[None, :, :] + x_k) * c_n
                tl.store(scr + n * BLOCK_D, ai * h0 + xi, mask=p[:, None] == PAR - 1)  # the state after the chunk
            if STORE_STATES:  # small tiles: registers to spare
                tl.store(Y + off, y.to(Y.dtype.element_ty), mask=m)
            else:  # addresses and mask formed again rather than kept live across the n loop
                tl.store(Y + (base + c * BLOCK_L) * DIM + tile_off, y.to(Y.dtype.element_ty),
                         mask=(w3 < L - c * BLOCK_L) & d_ok3)

    @triton.jit
    def _ssm_bwd_kernel(U, DELTA, A2, B, C, D, GY, HS, DU, DDELTA, DA_PART, DB, DC, DD_PART,
                        L, DIM, N, N_CHUNKS, HAS_D: tl.constexpr, BLOCK_L: tl.constexpr,
                        BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, RUN: tl.constexpr, ACC: tl.constexpr):
        """Fused backward of :func:`_ssm_fwd_kernel`, chunk by chunk from the end, recomputing
        inside each chunk from the saved chunk-start states ``HS`` (no ``(b, l, d, n)`` tensor),
        on the forward's ``(RUN, PAR, BLOCK_D)`` tiles.

        Per state ``n``: ``h_{t−1}`` by the forward's two-level scan over the inputs shifted one
        token inside each run; the adjoint ``λ_t = C_t g_t + Ā_{t+1} λ_{t+1}`` by *forward*
        scans only (triton#4362): inside each run over the tokens loaded in reverse order, and
        across runs over the run maps taken in reverse order with ``tl.gather``; ``λ`` is
        brought back to token order with one in-thread gather. ``∂u, ∂Δ`` accumulate over ``n``
        in registers; ``∂B, ∂C`` (sums over channels) are added atomically; ``∂A, ∂D`` are
        per-program partial sums (``DA_PART: (b, N, DIM)``, ``DD_PART: (b, DIM)``)."""
        PAR: tl.constexpr = BLOCK_L // RUN
        pid_b = tl.program_id(0)
        pid_d = tl.program_id(1)
        ds = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
        ns = tl.arange(0, BLOCK_N)
        r = tl.arange(0, RUN)
        p = tl.arange(0, PAR)
        d_ok = ds < DIM
        if HAS_D:
            D_d = tl.load(D + ds, mask=d_ok, other=0.0).to(ACC)
        lam_carry = tl.full([BLOCK_N, BLOCK_D], 0.0, ACC)  # λ at the first token of the later chunk
        dA_acc = tl.full([BLOCK_N, BLOCK_D], 0.0, ACC)
        dD_acc = tl.full([BLOCK_D], 0.0, ACC)
        base = pid_b.to(tl.int64) * L
        hs_base = pid_b.to(tl.int64) * N_CHUNKS * N
        within = r[:, None] + p[None, :] * RUN          # (RUN, PAR): token order
        within_r = (RUN - 1 - r)[:, None] + p[None, :] * RUN  # each run read from its end
        last = r[:, None, None] == RUN - 1
        zero_d = 0 * ds[None, :]
        prev = tl.maximum(p - 1, 0)[:, None] + zero_d       # the run before
        mirror = (PAR - 1 - p)[:, None] + zero_d            # runs in reverse order
        after = tl.maximum(PAR - 2 - p, 0)[:, None] + zero_d  # the run after, in reversed order
        flip_run = (RUN - 1 - r)[:, None, None] + 0 * (p[None, :, None] + ds[None, None, :])  # run reversed
        for i in range(0, N_CHUNKS):
            c = N_CHUNKS - 1 - i
            ts = c * BLOCK_L + within
            t_ok = ts < L
            tok = base + ts
            m = t_ok[:, :, None] & d_ok[None, None, :]
            off = tok[:, :, None] * DIM + ds[None, None, :]
            u = tl.load(U + off, mask=m, other=0.0).to(ACC)
            dt = tl.load(DELTA + off, mask=m, other=0.0).to(ACC)
            g = tl.load(GY + off, mask=m, other=0.0).to(ACC)
            # the same tokens shifted back one step inside each run (a run's first: identity)
            m_p = m & (r[:, None, None] >= 1)
            dt_p = tl.load(DELTA + off - DIM, mask=m_p, other=0.0).to(ACC)
            dtu_p = dt_p * tl.load(U + off - DIM, mask=m_p, other=0.0).to(ACC)
            # each run from its end: C g at the token, Δ of the token after it
            tr = c * BLOCK_L + within_r
            tr_ok = tr < L
            m_r = tr_ok[:, :, None] & d_ok[None, None, :]
            off_r = (base + tr)[:, :, None] * DIM + ds[None, None, :]
            g_r = tl.load(GY + off_r, mask=m_r, other=0.0).to(ACC)
            dt_n = tl.load(DELTA + off_r + DIM, mask=((tr + 1) < L)[:, :, None] & d_ok[None, None, :],
                           other=0.0).to(ACC)
            if HAS_D:
                du = D_d[None, None, :] * g
                dD_acc += _sum(_sum(g * u, 0), 0)
            else:
                du = tl.full([RUN, PAR, BLOCK_D], 0.0, ACC)
            ddt = tl.full([RUN, PAR, BLOCK_D], 0.0, ACC)
            hs_row = (hs_base + c * N) * DIM
            for n in range(0, N):
                is_n = ns[:, None] == n
                a2_n = tl.load(A2 + ds * N + n, mask=d_ok, other=0.0).to(ACC)
                b_n = tl.load(B + tok * N + n, mask=t_ok, other=0.0).to(ACC)
                b_p = tl.load(B + tok * N + n - N, mask=t_ok & (r[:, None] >= 1), other=0.0).to(ACC)
                c_r = tl.load(C + (base + tr) * N + n, mask=tr_ok, other=0.0).to(ACC)
                h_chunk = tl.load(HS + hs_row + n * DIM + ds, mask=d_ok, other=0.0).to(ACC)
                # h_{t−1}: in-run scan of the shifted steps, then the runs' starting states
                dA = tl.exp2(dt * a2_n[None, None, :])
                dBu = dt * u * b_n[:, :, None]
                a_p, x_p = tl.associative_scan((tl.exp2(dt_p * a2_n[None, None, :]), dtu_p * b_p[:, :, None]),
                                               0, _combine)
                a_l = _sum(tl.where(last, a_p * dA, 0.0), 0)  # run totals: shifted part, then the last step
                x_l = _sum(tl.where(last, x_p * dA + dBu, 0.0), 0)
                pa, px = tl.associative_scan((a_l, x_l), 0, _combine)
                h_end = pa * h_chunk[None, :] + px
                h_start = tl.where(p[:, None] == 0, h_chunk[None, :], tl.gather(h_end, prev, 0))
                h_prev = a_p * h_start[None, :, :] + x_p
                h = dA * h_prev + dBu
                # λ: in-run scan from each run's end, then across runs from the chunk's end
                a_k, x_k = tl.associative_scan((tl.exp2(dt_n * a2_n[None, None, :]), c_r[:, :, None] * g_r),
                                               0, _combine)
                fa, fx = tl.associative_scan((tl.gather(_sum(tl.where(last, a_k, 0.0), 0), mirror, 0),
                                              tl.gather(_sum(tl.where(last, x_k, 0.0), 0), mirror, 0)), 0, _combine)
                lam_in = _sum(tl.where(is_n, lam_carry, 0.0), 0)
                first = fa * lam_in[None, :] + fx  # λ at the first token of run PAR−1−j
                into = tl.where(p[:, None] == PAR - 1, lam_in[None, :], tl.gather(first, after, 0))
                lam_r = a_k * into[None, :, :] + x_k
                lam_carry = tl.where(is_n, _sum(tl.where(p[:, None] == PAR - 1, first, 0.0), 0)[None, :], lam_carry)
                lam = tl.where(m, tl.gather(lam_r, flip_run, 0), 0.0)  # token order (in registers)
                # gradients through h_t = Ā h_{t−1} + Δ u B and y_t = Σ C h_t
                gdA = lam * h_prev * dA  # ∂L/∂(Δ A) at each token
                du += lam * dt * b_n[:, :, None]
                ddt += lam * u * b_n[:, :, None] + gdA * (a2_n * 0.6931471805599453)[None, None, :]
                dA_acc = tl.where(is_n, dA_acc + _sum(_sum(gdA * dt, 0), 0)[None, :], dA_acc)
                tl.atomic_add(DB + tok * N + n, _sum(lam * dt * u, 2), mask=t_ok)
                tl.atomic_add(DC + tok * N + n, _sum(g * h, 2), mask=t_ok)
            tl.store(DU + off, du.to(DU.dtype.element_ty), mask=m)
            tl.store(DDELTA + off, ddt.to(DDELTA.dtype.element_ty), mask=m)
        tl.store(DA_PART + (pid_b.to(tl.int64) * N + ns[:, None]) * DIM + ds[None, :], dA_acc,
                 mask=(ns[:, None] < N) & d_ok[None, :])
        tl.store(DD_PART + pid_b.to(tl.int64) * DIM + ds, dD_acc, mask=d_ok)

    def _cuda_configs(pairs):
        return [triton.Config(kw, num_warps=w) for kw, w in pairs]

    # On a GPU the tile sizes are tuned per shape; the interpreter uses fixed small tiles.
    _linear_scan_tuned = triton.autotune(
        configs=_cuda_configs([({"BLOCK_R": r, "BLOCK_L": bl}, w) for r, bl, w in LINEAR_SCAN_CONFIGS]),
        key=["R", "L", "REVERSE"],
    )(_linear_scan_kernel)
    def _prune_ssm(configs, named_args, **kwargs):
        small = ssm_forward_configs(named_args["U"].dtype) is SSM_FWD_CONFIGS_SMALL
        keep = {(bl, bd, w) for bl, bd, w in (SSM_FWD_CONFIGS_SMALL if small else SSM_FWD_CONFIGS)}
        return [c for c in configs if (c.kwargs["BLOCK_L"], c.kwargs["BLOCK_D"], c.num_warps) in keep]

    _ssm_fwd_tuned = triton.autotune(
        configs=_cuda_configs([({"BLOCK_L": bl, "BLOCK_D": bd}, w)
                               for bl, bd, w in dict.fromkeys(SSM_FWD_CONFIGS + SSM_FWD_CONFIGS_SMALL)]),
        key=["L", "DIM", "N"], prune_configs_by={"early_config_prune": _prune_ssm},
    )(_ssm_fwd_kernel)


_JIT_NAMES = ("_combine", "_combine_excl", "_add", "_sum", "_linear_scan_kernel", "_ssm_fwd_kernel",
              "_ssm_bwd_kernel")
_KERNELS = KernelSet(globals(), _JIT_NAMES)


def _kernel(name: str, device: torch.device):
    """The Triton kernel ``name`` for tensors on ``device`` (interpreted on a CPU)."""
    return _KERNELS.get(name, device)


def _pow2(x: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(1, x))))


def _tl_acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _launch_linear(a2, x2, *, reverse=False, h_prev=None, block_l=None):
    """``a2, x2: (R, L)`` contiguous → ``h`` (and ``da`` when ``reverse``). ``block_l``: an
    int (BLOCK_L; BLOCK_R then fills a 4096-element tile) or a pair ``(BLOCK_R, BLOCK_L)``."""
    R, L = x2.shape
    h = torch.empty_like(x2)
    da = torch.empty_like(a2) if reverse else h
    h_prev = h_prev if reverse else h  # unused pointers still need a tensor
    acc = _tl_acc(x2.dtype)
    if x2.is_cuda and block_l is None:
        grid = lambda meta: (triton.cdiv(R, meta["BLOCK_R"]),)  # noqa: E731
        _linear_scan_tuned[grid](a2, x2, h, h_prev, da, R, L, REVERSE=reverse, ACC=acc)
    else:
        if isinstance(block_l, tuple):
            br, bl = block_l
        else:
            bl = block_l or min(_pow2(L), 256)
            br = max(1, min(_pow2(R), 4096 // bl))
        _kernel("_linear_scan_kernel", x2.device)[(triton.cdiv(R, br),)](a2, x2, h, h_prev, da, R, L, BLOCK_R=br,
                                                   BLOCK_L=bl, REVERSE=reverse, ACC=acc)
    return (h, da) if reverse else h


class _LinearScanTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b, block_l):
        shape = b.shape
        a2 = a.reshape(-1, shape[-1]).contiguous()
        b2 = b.reshape(-1, shape[-1]).contiguous()
        h = _launch_linear(a2, b2, block_l=block_l)
        ctx.save_for_backward(a2, h)
        ctx.shape, ctx.block_l = shape, block_l
        return h.reshape(shape)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_h):
        a2, h = ctx.saved_tensors
        g2 = grad_h.reshape(h.shape).contiguous().to(h.dtype)
        lam, da = _launch_linear(a2, g2, reverse=True, h_prev=h, block_l=ctx.block_l)
        return da.reshape(ctx.shape), lam.reshape(ctx.shape), None


def linear_scan(a: torch.Tensor, b: torch.Tensor, *, impl: str = "auto",
                _block_l: int | tuple[int, int] | None = None) -> torch.Tensor:
    """``h_t = a_t · h_{t−1} + b_t`` along the last axis (``h_{−1} = 0``), any leading shape.

    ``a``, ``b``: broadcastable tensors ``(..., l)``; returns ``h`` of the broadcast shape in
    ``result_type(a, b)``, accumulated in float32 (float64 kept). ``impl``: ``"triton"`` (the
    fused kernel: reads ``a``, ``b`` and writes ``h`` once), ``"torch"`` (the sequential
    reference) or ``"auto"`` (Triton for CUDA tensors). Differentiable for every ``impl``.
    """
    impl = resolve_impl(impl, b if isinstance(b, torch.Tensor) else a)
    if impl == "torch":
        return linear_scan_reference(a, b)
    a, b = _check_linear(a, b)
    _triton_ready(b)
    dtype = torch.result_type(a, b)
    _triton_ready(a.to(dtype))
    if b.shape[-1] == 0 or b.numel() == 0:
        return b.to(dtype).clone()
    return _LinearScanTriton.apply(a.to(dtype), b.to(dtype), _block_l)


LOG2E = 1.4426950408889634


def ssm_forward_configs(dtype: torch.dtype) -> tuple:
    """The forward autotuner's candidates for input ``dtype``: 32 elements per thread for
    float32, 8–16 otherwise (the larger tile spills there). The registers do not depend on the
    number of states, so neither does the list."""
    return SSM_FWD_CONFIGS if dtype == torch.float32 else SSM_FWD_CONFIGS_SMALL


def triton_supports(dtype: torch.dtype, capability: tuple[int, int]) -> bool:
    """Whether the scan kernels compile for ``dtype`` on a GPU of compute ``capability``.
    Triton targets sm_75 and newer; bf16 compiles for sm_75 too (it is converted to float32 in
    registers), as the static table (``results/static/kernels.json``) records."""
    return tuple(capability) >= (7, 5) and dtype in _FLOAT


def ssm_backward_config(L: int, d: int) -> tuple[int, int, int]:
    """(BLOCK_L, BLOCK_D, num_warps) of the fused backward (and of the forward that saves its
    chunk-start states): chunks of up to 32 tokens and 32 channels, four elements per thread.
    The backward keeps about twenty tiles alive; more elements per thread spill (see
    ``dynbook.kernels.static``)."""
    bl, bd = min(32, max(8, _pow2(L))), min(32, max(8, _pow2(d)))
    return bl, bd, max(1, min(8, bl * bd // 128))


#: Largest n of the fused backward: beyond it every configuration spills (its adjoint and
#: gradient carries grow with n), so the backward recomputes through selective_scan_chunked.
SSM_BWD_MAX_N = 16
#: Every configuration :func:`ssm_backward_config` can return (compiled by dynbook.kernels.static).
SSM_BWD_CONFIGS = tuple(sorted({ssm_backward_config(l, d) for l in (1, 16, 32, 4096) for d in (1, 16, 32, 4096)}))


def ssm_scratch(bsz: int, d: int, n: int, dtype: torch.dtype, device, *, block_d: int | None = None) -> torch.Tensor:
    """The forward's per-program carried states: ``b · ⌈d/BLOCK_D⌉ · BLOCK_N · BLOCK_D``
    accumulator values, for ``block_d`` or (None) whichever configuration the autotuner picks
    (a few hundred KB)."""
    most = block_d or max(bd for _, bd, _ in ssm_forward_configs(dtype))
    return torch.empty(bsz * max(2, _pow2(n)) * (d + most), dtype=_acc_dtype(dtype), device=device)


def _launch_ssm(u, delta, A, B, C, D, *, blocks=None, store_states=False):
    """Forward kernel; returns ``y`` and (when ``store_states``) the chunk-start states
    ``(b, chunks, n, d)`` in the accumulation dtype. ``blocks``: (BLOCK_L, BLOCK_D[, warps])."""
    bsz, L, d = u.shape
    n = A.shape[1]
    u, delta, B, C = (x.contiguous() for x in (u, delta, B, C))
    acc_t = _acc_dtype(u.dtype)
    A2 = (A.to(acc_t) * LOG2E).contiguous()  # exp(Δ A) = exp2(Δ · A log₂e): one MUFU op
    y = torch.empty_like(u)
    has_d = D is not None
    D_arg = D.contiguous() if has_d else A2
    bn = max(2, _pow2(n))
    acc = _tl_acc(u.dtype)
    if u.is_cuda and blocks is None and not store_states:
        grid = lambda meta: (bsz, triton.cdiv(d, meta["BLOCK_D"]))  # noqa: E731
        scr = ssm_scratch(bsz, d, n, u.dtype, u.device)
        with _on(u.device):
            _ssm_fwd_tuned[grid](u, delta, A2, B, C, D_arg, y, y, scr, L, d, n, 1, HAS_D=has_d,
                                 STORE_STATES=False, BLOCK_N=bn, RUN=SSM_RUN, ACC=acc)
        return y, None
    if blocks is None:
        blocks = ssm_backward_config(L, d) if u.is_cuda else (16, min(_pow2(d), 16), 4)
    bl, bd = blocks[0], blocks[1]
    warps = blocks[2] if len(blocks) > 2 else 4
    n_chunks = triton.cdiv(L, bl)
    hs = torch.empty((bsz, n_chunks, n, d), dtype=acc_t, device=u.device) if store_states else y
    scr = ssm_scratch(bsz, d, n, u.dtype, u.device, block_d=bd)
    with _on(u.device):
        _kernel("_ssm_fwd_kernel", u.device)[(bsz, triton.cdiv(d, bd))](
            u, delta, A2, B, C, D_arg, y, hs, scr, L, d, n, n_chunks, HAS_D=has_d, STORE_STATES=store_states,
            BLOCK_L=bl, BLOCK_D=bd, BLOCK_N=bn, RUN=min(SSM_RUN, bl), ACC=acc, num_warps=warps)
    return y, (hs if store_states else None)


def _launch_ssm_bwd(u, delta, A, B, C, D, gy, hs, blocks):
    bsz, L, d = u.shape
    n = A.shape[1]
    acc_t = _acc_dtype(u.dtype)
    A2 = (A.to(acc_t) * LOG2E).contiguous()
    u, delta, B, C, gy = (x.contiguous() for x in (u, delta, B, C, gy))
    bl, bd = blocks[0], blocks[1]
    warps = blocks[2] if len(blocks) > 2 else 4
    n_chunks = hs.shape[1]
    du = torch.empty_like(u, dtype=acc_t)
    ddelta = torch.empty_like(u, dtype=acc_t)
    dB = torch.zeros(B.shape, dtype=acc_t, device=u.device)
    dC = torch.zeros(C.shape, dtype=acc_t, device=u.device)
    dA_part = torch.empty((bsz, n, d), dtype=acc_t, device=u.device)
    dD_part = torch.empty((bsz, d), dtype=acc_t, device=u.device)
    has_d = D is not None
    with _on(u.device):
        _kernel("_ssm_bwd_kernel", u.device)[(bsz, triton.cdiv(d, bd))](
            u, delta, A2, B, C, D.contiguous() if has_d else A2, gy, hs, du, ddelta, dA_part, dB, dC, dD_part,
            L, d, n, n_chunks, HAS_D=has_d, BLOCK_L=bl, BLOCK_D=bd, BLOCK_N=max(2, _pow2(n)), RUN=min(SSM_RUN, bl),
            ACC=_tl_acc(u.dtype), num_warps=warps)
    return du, ddelta, dA_part.sum(0).t(), dB, dC, (dD_part.sum(0) if has_d else None)


def _on(device: torch.device):
    import contextlib

    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


class _SSMTriton(torch.autograd.Function):
    """Fused forward (saves the state at each chunk start: ``b·⌈l/BLOCK_L⌉·n·d`` values) and
    fused backward that recomputes inside each chunk. For n > SSM_BWD_MAX_N the backward
    recomputes through :func:`selective_scan_chunked` and differentiates it with autograd."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, blocks):
        need = any(ctx.needs_input_grad[:6])
        fused = A.shape[1] <= SSM_BWD_MAX_N
        if need and fused and blocks is None:
            blocks = ssm_backward_config(u.shape[1], u.shape[2]) if u.is_cuda else (16, min(_pow2(u.shape[2]), 16), 4)
        y, hs = _launch_ssm(u, delta, A, B, C, D, blocks=blocks, store_states=need and fused)
        if need:
            ctx.save_for_backward(u, delta, A, B, C, D, hs)
            ctx.blocks, ctx.fused = blocks, fused
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y):
        u, delta, A, B, C, D, hs = ctx.saved_tensors
        needs = ctx.needs_input_grad[:6]
        if ctx.fused:
            grads = _launch_ssm_bwd(u, delta, A, B, C, D, grad_y, hs, ctx.blocks)
        else:
            with torch.enable_grad():
                leaves = [None if x is None else x.detach().to(_acc_dtype(x.dtype)).requires_grad_(bool(nd))
                          for x, nd in zip((u, delta, A, B, C, D), needs)]
                y = selective_scan_chunked(*leaves)
                wrt = [x for x, nd in zip(leaves, needs) if x is not None and nd]
                got = iter(torch.autograd.grad(y, wrt, grad_y.to(y.dtype)) if wrt else ())
            grads = [next(got) if (x is not None and nd) else None for x, nd in zip(leaves, needs)]
        out = [None if (g is None or not need) else g.to(x.dtype)
               for g, x, need in zip(grads, (u, delta, A, B, C, D), needs)]
        return (*out, None)


def selective_scan(u, delta, A, B, C, D=None, *, impl: str = "auto", _blocks=None) -> torch.Tensor:
    """Mamba's selective scan: ``u, delta: (b, l, d)``, ``A: (d, n)``, ``B, C: (b, l, n)``,
    ``D: (d,)`` or None → ``y: (b, l, d)`` in ``u``'s dtype, with

    ``h_t = exp(Δ_t A) ⊙ h_{t−1} + Δ_t B_t u_t``,  ``y_t = C_t · h_t + D ⊙ u_t``, ``h_{−1} = 0``.

    ``impl``: ``"triton"`` (one fused pass: reads ``u, Δ, B, C`` once, writes ``y`` once, the
    ``(d, n)`` state stays in registers; ``n ≤ MAX_N``), ``"torch"`` (sequential reference) or
    ``"auto"`` (Triton for CUDA tensors it supports, else the chunked scan on CUDA and the
    reference elsewhere).
    Float32 accumulation for half-precision inputs. Differentiable for every ``impl``.
    """
    asked = impl
    impl = resolve_impl(impl, u if isinstance(u, torch.Tensor) else torch.empty(0))
    if impl == "triton" and asked == "auto" and (not triton_supports(u.dtype, torch.cuda.get_device_capability(u.device))
                                                 or A.shape[1] > MAX_N):
        impl = "torch"  # auto: the PyTorch path where the kernel does not apply
    if impl == "torch":
        if asked == "auto" and u.is_cuda:
            return selective_scan_chunked(u, delta, A, B, C, D)
        return selective_scan_reference(u, delta, A, B, C, D)
    _check_selective(u, delta, A, B, C, D)
    _triton_ready(u)
    if u.numel() == 0 or A.shape[1] == 0:
        return selective_scan_reference(u, delta, A, B, C, D)
    if A.shape[1] > MAX_N:
        raise ValueError(f"A.shape = {tuple(A.shape)}: n = {A.shape[1]} is outside the Triton kernel's range "
                         f"1..{MAX_N}; use impl='torch' or selective_scan_chunked")
    return _SSMTriton.apply(u, delta, A, B, C, D, _blocks)


# ----------------------------------------------------------------------------- benchmarks


def selective_scan_inputs(b: int, l: int, d: int, n: int, *, dtype=torch.float32, device="cpu", seed: int = 0):
    """Random, well-conditioned inputs ``(u, Δ, A, B, C, D)`` (``A``, ``D`` in float32)."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(b, l, d, generator=g)
    delta = torch.nn.functional.softplus(torch.randn(b, l, d, generator=g) - 2)
    A = -torch.exp(torch.randn(d, n, generator=g) * 0.5)
    B = torch.randn(b, l, n, generator=g)
    C = torch.randn(b, l, n, generator=g)
    D = torch.randn(d, generator=g)
    cast = lambda x: x.to(device, dtype)  # noqa: E731
    return cast(u), cast(delta), A.to(device), cast(B), cast(C), D.to(device)


def selective_scan_error(b: int, l: int, d: int, n: int, *, impl: str = "triton", device="cpu",
                         seed: int = 0) -> tuple[float, float]:
    """The kernel against the float64 reference on one random ``(b, l, d, n)`` input
    (:func:`selective_scan_inputs`, float32): ``(output error, worst gradient error)``, each
    ``max |x − x₆₄| / max |x₆₄|`` (:func:`dynbook.measure.fits.relative_error`), the gradients
    of all six inputs for one random output cotangent drawn from ``seed``."""
    from dynbook.measure.fits import relative_error

    xs = selective_scan_inputs(b, l, d, n, device=device, seed=seed)
    leaves = [x.clone().requires_grad_() for x in xs]
    y = selective_scan(*leaves, impl=impl)
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed + 1)).to(y.device, y.dtype)
    grads = torch.autograd.grad(y, leaves, gy)
    leaves64 = [x.double().requires_grad_() for x in xs]
    y64 = selective_scan_reference(*leaves64)
    grads64 = torch.autograd.grad(y64, leaves64, gy.double())
    return relative_error(y, y64), max(relative_error(a, b_) for a, b_ in zip(grads, grads64))


def bench_selective_scan(b: int, l: int, d: int, n: int, *, dtype=torch.float32, device: str = "cuda",
                         impls=("triton", "parallel", "torch"), min_run_time: float = 0.5,
                         seed: int = 0) -> dict:
    """Median forward seconds of each implementation on one input, its error against the
    sequential reference, and the Triton kernel's achieved bandwidth (bytes it must move
    once, :func:`selective_scan_bytes`, over its time). Ratios are taken within one run."""
    from dynbook.measure.timing import time_it

    args = selective_scan_inputs(b, l, d, n, dtype=dtype, device=device, seed=seed)
    run = {"triton": lambda: selective_scan(*args, impl="triton"),
           "parallel": lambda: selective_scan_parallel(*args),
           "torch": lambda: selective_scan_reference(*args)}
    out = {"shape": {"b": b, "l": l, "d": d, "n": n}, "dtype": str(dtype).removeprefix("torch."),
           "device": device, "seconds": {}, "max_rel_err": {}}
    with torch.no_grad():
        ref = selective_scan_reference(*args).float()
        scale = ref.abs().max().item()
        for impl in impls:
            y = run[impl]().float()
            out["max_rel_err"][impl] = (y - ref).abs().max().item() / scale
            del y
            out["seconds"][impl] = time_it(run[impl], device=device, min_run_time=min_run_time)
            if device == "cuda":
                torch.cuda.empty_cache()
    itemsize = torch.empty((), dtype=dtype).element_size()
    out["bytes"] = selective_scan_bytes(b, l, d, n, itemsize)
    out["flops"] = selective_scan_flops(b, l, d, n)
    return _with_speedups(out)


def _with_speedups(out: dict) -> dict:
    """Add the Triton kernel's bandwidth (bytes it must move / its time) and its speed-ups
    over the other implementations that were timed."""
    if "triton" in out["seconds"]:
        t = out["seconds"]["triton"]
        out["bandwidth_Bps"] = out["bytes"] / t
        for other in ("parallel", "torch"):
            if other in out["seconds"]:
                out[f"speedup_vs_{other}"] = out["seconds"][other] / t
    return out


def bench_linear_scan(rows: int, l: int, *, dtype=torch.float32, device: str = "cuda",
                      impls=("triton", "parallel", "torch"), min_run_time: float = 0.5, seed: int = 0) -> dict:
    """As :func:`bench_selective_scan`, for ``linear_scan`` on ``(rows, l)`` inputs."""
    from dynbook.measure.timing import time_it

    g = torch.Generator().manual_seed(seed)
    a = torch.rand(rows, l, generator=g).to(device, dtype)
    x = torch.randn(rows, l, generator=g).to(device, dtype)
    run = {"triton": lambda: linear_scan(a, x, impl="triton"),
           "parallel": lambda: linear_scan_parallel(a, x),
           "torch": lambda: linear_scan_reference(a, x)}
    out = {"shape": {"rows": rows, "l": l}, "dtype": str(dtype).removeprefix("torch."), "device": device,
           "seconds": {}, "max_rel_err": {}}
    with torch.no_grad():
        ref = linear_scan_reference(a, x).float()
        scale = ref.abs().max().item()
        for impl in impls:
            out["max_rel_err"][impl] = (run[impl]().float() - ref).abs().max().item() / scale
            out["seconds"][impl] = time_it(run[impl], device=device, min_run_time=min_run_time)
    out["bytes"] = linear_scan_bytes(rows * l, a.element_size())
    return _with_speedups(out)


# ----------------------------------------------------------------------------- static evidence


def selective_scan_launches(dtype: str = "fp32", ns=(16, 64)) -> list:
    """The redesigned forward at every autotuner configuration and the fused backward at every
    configuration :func:`ssm_backward_config` returns, for ``n`` in ``ns``, as
    :class:`dynbook.kernels.static.Launch` (per-element counts per trip of the loop over ``n``:
    ``BLOCK_L·BLOCK_D / threads`` state elements per thread)."""
    from dynbook.kernels.static import Launch

    acc = tl.float64 if dtype == "fp64" else tl.float32
    a = "fp64" if dtype == "fp64" else "fp32"
    io, f = f"*{dtype}", f"*{a}"
    ints = {"L": "i32", "DIM": "i32", "N": "i32", "N_CHUNKS": "i32"}
    out = []
    for n in ns:
        bn = max(2, _pow2(n))
        fwd = {"U": io, "DELTA": io, "A2": f, "B": io, "C": io, "D": f, "Y": io, "HS": f, "SCR": f, **ints,
               **{k: "constexpr" for k in ("HAS_D", "STORE_STATES", "BLOCK_L", "BLOCK_D", "BLOCK_N", "RUN", "ACC")}}
        bwd = {"U": io, "DELTA": io, "A2": f, "B": io, "C": io, "D": f, "GY": io, "HS": f, "DU": f, "DDELTA": f,
               "DA_PART": f, "DB": f, "DC": f, "DD_PART": f, **ints,
               **{k: "constexpr" for k in ("HAS_D", "BLOCK_L", "BLOCK_D", "BLOCK_N", "RUN", "ACC")}}
        for bl, bd, w in dict.fromkeys(SSM_FWD_CONFIGS + SSM_FWD_CONFIGS_SMALL):
            cfg = {"BLOCK_L": bl, "BLOCK_D": bd, "n": n}
            out.append(Launch("_ssm_fwd_kernel", "scan", cfg, fwd,
                              {"HAS_D": True, "STORE_STATES": False, "BLOCK_L": bl, "BLOCK_D": bd, "BLOCK_N": bn,
                               "RUN": min(SSM_RUN, bl), "ACC": acc}, w, elements=bl * bd / (32 * w), dtype=dtype))
        for bl, bd, w in (SSM_BWD_CONFIGS if n <= SSM_BWD_MAX_N else ()):
            cfg = {"BLOCK_L": bl, "BLOCK_D": bd, "n": n}
            out.append(Launch("_ssm_fwd_kernel", "scan", {**cfg, "STORE_STATES": True}, fwd,
                              {"HAS_D": True, "STORE_STATES": True, "BLOCK_L": bl, "BLOCK_D": bd, "BLOCK_N": bn,
                               "RUN": min(SSM_RUN, bl), "ACC": acc}, w, elements=bl * bd / (32 * w), dtype=dtype))
            out.append(Launch("_ssm_bwd_kernel", "scan", cfg, bwd,
                              {"HAS_D": True, "BLOCK_L": bl, "BLOCK_D": bd, "BLOCK_N": bn, "RUN": min(SSM_RUN, bl),
                               "ACC": acc}, w,
                              elements=bl * bd / (32 * w), dtype=dtype))
    return out
