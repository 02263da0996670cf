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

Gradients: ``linear_scan``'s backward is itself a reversed linear scan,
``λ_t = g_t + a_{t+1} λ_{t+1}``, ``∂L/∂b_t = λ_t``, ``∂L/∂a_t = λ_t h_{t−1}``, computed by the
same Triton kernel run in reverse (fused with the ``λ h_{t−1}`` product). ``selective_scan``'s
Triton backward *recomputes* the forward through the pure-PyTorch parallel scan in float32 and
differentiates that with autograd: correct, but it materialises ``(b, l, d, n)`` tensors; a
fused backward kernel (as in Mamba's CUDA code) is future work.
"""

from __future__ import annotations

import math

import torch

from . import resolve_impl
from ._interpret import KernelSet

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
    "copy_bandwidth", "selective_scan_inputs", "bench_selective_scan", "bench_linear_scan",
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
    for t in range(l):
        dA = torch.exp(dt[:, t, :, None] * A_)  # (b, d, n)
        h = dA * h + (dt[:, t] * u_[:, t])[:, :, None] * B_[:, t, None, :]
        ys.append(torch.einsum("bdn,bn->bd", h, C_[:, t]))
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
        edge = 0 if REVERSE else BLOCK_L - 1  # the chunk's last step in scan order
        for i in range(0, n_chunks):
            c = n_chunks - 1 - i if REVERSE else i
            cols = c * BLOCK_L + local
            offs = rows[:, None].to(tl.int64) * L + cols[None, :]
            ok = row_ok[:, None] & (cols[None, :] < L)
            # padding is the identity step (a = 1, b = 0); the backward reads a one step ahead
            ok_a = row_ok[:, None] & (cols[None, :] + shift < L)
            a = tl.load(A + offs + shift, mask=ok_a, other=1.0).to(ACC)
            x = tl.load(X + offs, mask=ok, other=0.0).to(ACC)
            a_cum, x_cum = tl.associative_scan((a, x), 1, _combine, reverse=REVERSE)
            h = a_cum * carry[:, None] + x_cum
            tl.store(H + offs, h.to(H.dtype.element_ty), mask=ok)
            if REVERSE:
                ok_prev = ok & (cols[None, :] >= 1)
                h_prev = tl.load(HPREV + offs - 1, mask=ok_prev, other=0.0).to(ACC)
                tl.store(DA + offs, (h * h_prev).to(DA.dtype.element_ty), mask=ok)
            carry = _sum(tl.where(local[None, :] == edge, h, 0.0), 1)

    @triton.jit
    def _selective_scan_fwd_kernel(U, DELTA, A, B, C, D, Y, L, DIM, N, HAS_D: tl.constexpr,
                                   BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr,
                                   BLOCK_N: tl.constexpr, ACC: tl.constexpr):
        """One program per (batch, block of BLOCK_D channels); loops over chunks of BLOCK_L
        tokens carrying the state ``h: (BLOCK_D, BLOCK_N)`` in registers. Contiguous
        ``u, Δ, y: (b, L, DIM)``, ``B, C: (b, L, N)``, ``A: (DIM, N)``, ``D: (DIM,)``."""
        pid_b = tl.program_id(0)
        pid_d = tl.program_id(1)
        ds = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
        ns = tl.arange(0, BLOCK_N)
        local = tl.arange(0, BLOCK_L)
        d_ok = ds < DIM
        n_ok = ns < N
        # padded channels/states get A = 0 and B = 0, so their state stays exactly 0
        A_dn = tl.load(A + ds[:, None] * N + ns[None, :], mask=d_ok[:, None] & n_ok[None, :],
                       other=0.0).to(ACC)
        if HAS_D:
            D_d = tl.load(D + ds, mask=d_ok, other=0.0).to(ACC)
        h = tl.full([BLOCK_D, BLOCK_N], 0.0, ACC)
        base = pid_b.to(tl.int64) * L
        for c in range(0, (L + BLOCK_L - 1) // BLOCK_L):
            ts = c * BLOCK_L + local
            t_ok = ts < L
            tok = (base + ts)[:, None]
            m_ld = t_ok[:, None] & d_ok[None, :]
            m_ln = t_ok[:, None] & n_ok[None, :]
            u = tl.load(U + tok * DIM + ds[None, :], mask=m_ld, other=0.0).to(ACC)
            dt = tl.load(DELTA + tok * DIM + ds[None, :], mask=m_ld, other=0.0).to(ACC)
            Bt = tl.load(B + tok * N + ns[None, :], mask=m_ln, other=0.0).to(ACC)
            Ct = tl.load(C + tok * N + ns[None, :], mask=m_ln, other=0.0).to(ACC)
            # padded tokens: Δ = 0 → Ā = 1 and B̄u = 0, the identity step
            dA = tl.exp(dt[:, :, None] * A_dn[None, :, :])  # (BLOCK_L, BLOCK_D, BLOCK_N)
            dBu = (dt * u)[:, :, None] * Bt[:, None, :]
            a_cum, b_cum = tl.associative_scan((dA, dBu), 0, _combine)
            hs = a_cum * h[None, :, :] + b_cum
            y = _sum(hs * Ct[:, None, :], 2)
            if HAS_D:
                y += D_d[None, :] * u
            tl.store(Y + tok * DIM + ds[None, :], y.to(Y.dtype.element_ty), mask=m_ld)
            h = _sum(tl.where(local[:, None, None] == BLOCK_L - 1, hs, 0.0), 0)

    def _cuda_configs(pairs):
        return [triton.Config(kw, num_warps=w) for kw, w in pairs]

    # On a GPU the tile sizes are tuned per shape; the interpreter uses fixed small tiles.
    _linear_scan_tuned = triton.autotune(
        configs=_cuda_configs([({"BLOCK_R": r, "BLOCK_L": bl}, w)
                               for r, bl, w in [(1, 1024, 4), (2, 1024, 4), (4, 512, 4), (8, 256, 4),
                                                (4, 1024, 8), (16, 256, 8), (32, 128, 4),
                                                (2, 2048, 8)]]),
        key=["R", "L", "REVERSE"],
    )(_linear_scan_kernel)
    _selective_scan_tuned = triton.autotune(
        configs=_cuda_configs([({"BLOCK_L": bl, "BLOCK_D": bd}, w)
                               for bl, bd, w in [(16, 16, 4), (32, 16, 4), (32, 8, 4), (64, 8, 4),
                                                 (16, 32, 4), (32, 32, 8), (64, 16, 8), (128, 8, 8),
                                                 (64, 4, 4), (128, 4, 4)]]),
        key=["L", "DIM", "N"],
    )(_selective_scan_fwd_kernel)


_JIT_NAMES = ("_combine", "_add", "_sum", "_linear_scan_kernel", "_selective_scan_fwd_kernel")
_KERNELS = KernelSet(globals(), _JIT_NAMES)


def _kernel(name: str, device: torch.device):
    """The Triton kernel ``name`` for tensors on ``device`` (interpreted on a CPU)."""
    return _KERNELS.get(name, device)


def _pow2(x: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(1, x))))


def _tl_acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _launch_linear(a2, x2, *, reverse=False, h_prev=None, block_l=None):
    """``a2, x2: (R, L)`` contiguous → ``h`` (and ``da`` when ``reverse``)."""
    R, L = x2.shape
    h = torch.empty_like(x2)
    da = torch.empty_like(a2) if reverse else h
    h_prev = h_prev if reverse else h  # unused pointers still need a tensor
    acc = _tl_acc(x2.dtype)
    if x2.is_cuda and block_l is None:
        grid = lambda meta: (triton.cdiv(R, meta["BLOCK_R"]),)  # noqa: E731
        _linear_scan_tuned[grid](a2, x2, h, h_prev, da, R, L, REVERSE=reverse, ACC=acc)
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
                _block_l: int | None = None) -> torch.Tensor:
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


def _launch_selective(u, delta, A, B, C, D, *, blocks=None):
    bsz, L, d = u.shape
    n = A.shape[1]
    u, delta, B, C = (x.contiguous() for x in (u, delta, B, C))
    A = A.contiguous()
    y = torch.empty_like(u)
    has_d = D is not None
    D_arg = D.contiguous() if has_d else A  # any tensor: HAS_D=False never reads it
    bn = max(2, _pow2(n))
    acc = _tl_acc(u.dtype)
    if u.is_cuda and blocks is None:
        grid = lambda meta: (bsz, triton.cdiv(d, meta["BLOCK_D"]))  # noqa: E731
        _selective_scan_tuned[grid](u, delta, A, B, C, D_arg, y, L, d, n, HAS_D=has_d,
                                    BLOCK_N=bn, ACC=acc)
    else:
        bl, bd = blocks or (16, min(_pow2(d), 16))
        _kernel("_selective_scan_fwd_kernel", u.device)[(bsz, triton.cdiv(d, bd))](
            u, delta, A, B, C, D_arg, y, L, d, n, HAS_D=has_d, BLOCK_L=bl, BLOCK_D=bd,
            BLOCK_N=bn, ACC=acc)
    return y


class _SelectiveScanTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, blocks):
        ctx.save_for_backward(u, delta, A, B, C, D)
        return _launch_selective(u, delta, A, B, C, D, blocks=blocks)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y):
        # Recompute through the differentiable parallel scan (float32 at least) and let
        # autograd differentiate it: exact, but it materialises (b, l, d, n) tensors.
        saved = ctx.saved_tensors
        needs = ctx.needs_input_grad[:6]
        with torch.enable_grad():
            leaves = [None if x is None else x.detach().to(_acc_dtype(x.dtype)).requires_grad_(bool(need))
                      for x, need in zip(saved, needs)]
            y = selective_scan_parallel(*leaves)
            wrt = [x for x, need in zip(leaves, needs) if x is not None and need]
            grads = iter(torch.autograd.grad(y, wrt, grad_y.to(y.dtype)) if wrt else ())
        out = [next(grads).to(x.dtype) if (x is not None and need) else None for x, need in zip(saved, needs)]
        return (*out, None)


def selective_scan(u, delta, A, B, C, D=None, *, impl: str = "auto", _blocks=None) -> torch.Tensor:
    """Mamba's selective scan: ``u, delta: (b, l, d)``, ``A: (d, n)``, ``B, C: (b, l, n)``,
    ``D: (d,)`` or None → ``y: (b, l, d)`` in ``u``'s dtype, with

    ``h_t = exp(Δ_t A) ⊙ h_{t−1} + Δ_t B_t u_t``,  ``y_t = C_t · h_t + D ⊙ u_t``, ``h_{−1} = 0``.

    ``impl``: ``"triton"`` (one fused pass: reads ``u, Δ, B, C`` once, writes ``y`` once, the
    ``(d, n)`` state stays in registers), ``"torch"`` (sequential reference) or ``"auto"``.
    Float32 accumulation for half-precision inputs. Differentiable for every ``impl``.
    """
    impl = resolve_impl(impl, u if isinstance(u, torch.Tensor) else torch.empty(0))
    if impl == "torch":
        return selective_scan_reference(u, delta, A, B, C, D)
    _check_selective(u, delta, A, B, C, D)
    _triton_ready(u)
    if u.numel() == 0 or A.shape[1] == 0:
        return selective_scan_reference(u, delta, A, B, C, D)
    return _SelectiveScanTriton.apply(u, delta, A, B, C, D, _blocks)


# ----------------------------------------------------------------------------- benchmarks


def copy_bandwidth(*, nbytes: int = 1 << 30, device: str = "cuda", min_run_time: float = 0.5) -> float:
    """The device's measured copy bandwidth in bytes/s: ``y.copy_(x)`` of ``nbytes``, counted
    as ``2·nbytes`` moved (read + write). The roofline that a scan kernel is held to."""
    from ..measure import time_it

    x = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    y = torch.empty_like(x)
    seconds = time_it(lambda: y.copy_(x), device=device, min_run_time=min_run_time)
    return 2 * x.numel() * 4 / seconds


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


def bench_selective_scan(b: int, l: int, d: int, n: int, *, dtype=torch.float32, device: str = "cuda",
                         impls=("triton", "parallel", "torch"), min_run_time: float = 0.5,
                         seed: int = 0) -> dict:
    """Median forward seconds of each implementation on one input, its error against the
    sequential reference, and the Triton kernel's achieved bandwidth (bytes it must move
    once, :func:`selective_scan_bytes`, over its time). Ratios are taken within one run."""
    from ..measure import time_it

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
    from ..measure import time_it

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
