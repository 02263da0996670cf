"""Fused classical RK4 for a one-hidden-layer MLP vector field (the Neural-ODE inner loop).

Integrates ``dy/dt = f(y) = tanh(y @ w1 + b1) @ w2 + b2`` from ``t = 0`` to ``t1`` with
``n_steps`` classical Runge–Kutta (RK4) steps and returns ``y(t1)``.

Glossary (code ↔ maths): ``y0`` = z(0), shape ``(batch, d)``; ``w1 (d, h)``, ``b1 (h,)``,
``w2 (h, d)``, ``b2 (d,)`` = θ; ``dt = t1 / n_steps``; ``k1..k4`` = the RK4 stages.

Three things live here, as in every kernel module of the book:

* :func:`rk4_mlp_reference` — the PyTorch loop (the reference; differentiable by autograd);
* ``_rk4_mlp_fwd_kernel`` / ``_rk4_mlp_bwd_kernel`` — Triton kernels: one program integrates
  ``rows`` rows through *all* steps with the weights held in registers, so one launch does the
  whole solve; the backward kernel is the exact discrete adjoint of the same RK4 steps;
* :func:`rk4_mlp` — the public function, ``impl="auto" | "triton" | "torch"``.

Beside them, what the chapter, the tests and the benchmark share: :func:`rk4_mlp_inputs` (one
random, well-scaled problem), :func:`float64_error`, :func:`kernel_vs_float64` and
:func:`check_kernel` (the one kernel-vs-float64 comparison, forward and gradients), and
:func:`compiled_launches` (what the compiler reported for a problem's launches, from the
stored static table).

Supported by the Triton path: ``1 <= d <= 16``, ``1 <= h <= 256``, float32 tensors. Outside
that range ``impl="auto"`` falls back to the reference and ``impl="triton"`` raises
``ValueError`` naming the parameter. On a CPU tensor ``impl="triton"`` runs Triton's
interpreter (slow; for tests), whatever ``TRITON_INTERPRET`` says.

Note: torchdiffeq's ``method="rk4"`` is Kutta's 3/8 rule, not the classical tableau used
here: both are 4th order, so they agree to O(dt⁴), not to round-off.
"""

from __future__ import annotations

import math

import torch

from dynbook.kernels import resolve_impl
from dynbook.kernels._interpret import KernelSet

#: The Triton kernel's range (powers of two are padded up and masked).
MAX_D = 16
MAX_H = 256
#: Launch configurations the tests sweep: every value :func:`pick_config` can return.
ROWS_CHOICES = (1, 2, 4, 8, 16)
#: Elements of the (rows, BLOCK_D, BLOCK_H) product a program may hold in registers.
_TILE_BUDGET = 4096


# ----------------------------------------------------------------------------- reference


def mlp_field(y, w1, b1, w2, b2):
    """f(y) = tanh(y W1 + b1) W2 + b2 for ``y (batch, d)`` → ``(batch, d)``."""
    return torch.tanh(y @ w1 + b1) @ w2 + b2


def rk4_mlp_reference(y0, w1, b1, w2, b2, *, t1: float = 1.0, n_steps: int):
    """Classical RK4 in plain PyTorch: ``n_steps`` steps of size ``t1 / n_steps``.

    Cost per step and row: 4 field evaluations of ``4·d·h`` matmul FLOPs (+ ``h`` tanh,
    ``h + d`` bias adds) and ``~10·d`` FLOPs to combine stages. Memory traffic of this
    reference: every one of the ~30 kernels per step reads and writes a ``(batch, h)`` or
    ``(batch, d)`` tensor (≈ ``4·batch·(4·h·2 + 12·d)`` bytes per step in fp32) and re-reads the
    weights, where the fused kernel reads ``y0`` and the weights once and writes ``y(t1)`` once.
    """
    dt = float(t1) / n_steps
    y = y0
    for _ in range(n_steps):
        k1 = mlp_field(y, w1, b1, w2, b2)
        k2 = mlp_field(y + (0.5 * dt) * k1, w1, b1, w2, b2)
        k3 = mlp_field(y + (0.5 * dt) * k2, w1, b1, w2, b2)
        k4 = mlp_field(y + dt * k3, w1, b1, w2, b2)
        y = y + (dt / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
    return y


def rk4_mlp_flops(batch: int, d: int, h: int, n_steps: int) -> int:
    """FLOPs of the solve, counting the two matmuls of each field evaluation (``4·d·h`` per
    row), as GEMM FLOP/s are usually counted; tanh, bias and stage arithmetic are left out."""
    return 4 * n_steps * batch * 4 * d * h


# ----------------------------------------------------------------------------- Triton

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - the torch path works without Triton
    triton = None

if triton is not None:

    @triton.jit
    def _sum(x, axis: tl.constexpr):
        # tl.sum, spelled with the builtin reduce so Triton's interpreter can run a copy of
        # this module compiled without TRITON_INTERPRET (tl.sum itself is then a JITFunction)
        return tl.reduce(x, axis, tl.standard._sum_combine)

    @triton.jit
    def _tanh(x):
        # exp of a non-positive argument never overflows; sign restored afterwards
        e = tl.exp(-2.0 * tl.abs(x))
        t = (1.0 - e) / (1.0 + e)
        return tl.where(x < 0, -t, t)

    @triton.jit
    def _field(y, w1, b1, w2t, b2):
        # y (R, BD); w1, w2t (BD, BH). Both products use one (R, BD, BH) layout, so no layout
        # conversion between them; padded lanes of y, w1, w2t, b1, b2 are zero and stay zero.
        z = _sum(y[:, :, None] * w1[None, :, :], axis=1) + b1[None, :]
        a = _tanh(z)
        return _sum(a[:, None, :] * w2t[None, :, :], axis=2) + b2[None, :]

    @triton.jit
    def _vjp(u, g, w1, b1, w2t, acc_w1, acc_b1, acc_w2t, acc_b2):
        """Pull ``g = dL/df(u)`` back through f: returns dL/du and the weight-gradient
        accumulators with this stage's terms added (summed over the block's rows)."""
        a = _tanh(_sum(u[:, :, None] * w1[None, :, :], axis=1) + b1[None, :])   # (R, BH)
        ga = _sum(g[:, :, None] * w2t[None, :, :], axis=1)                       # (R, BH)
        gz = ga * (1.0 - a * a)
        gu = _sum(gz[:, None, :] * w1[None, :, :], axis=2)                       # (R, BD)
        acc_w1 += _sum(u[:, :, None] * gz[:, None, :], axis=0)                   # (BD, BH)
        acc_w2t += _sum(g[:, :, None] * a[:, None, :], axis=0)                   # (BD, BH)
        acc_b1 += _sum(gz, axis=0)
        acc_b2 += _sum(g, axis=0)
        return gu, acc_w1, acc_b1, acc_w2t, acc_b2

    @triton.jit
    def _load_weights(w1_ptr, b1_ptr, w2_ptr, b2_ptr, d, h, BLOCK_D: tl.constexpr,
                      BLOCK_H: tl.constexpr):
        cd = tl.arange(0, BLOCK_D)
        ch = tl.arange(0, BLOCK_H)
        m = (cd[:, None] < d) & (ch[None, :] < h)
        w1 = tl.load(w1_ptr + cd[:, None] * h + ch[None, :], mask=m, other=0.0).to(tl.float32)
        w2t = tl.load(w2_ptr + ch[None, :] * d + cd[:, None], mask=m, other=0.0).to(tl.float32)
        b1 = tl.load(b1_ptr + ch, mask=ch < h, other=0.0).to(tl.float32)
        b2 = tl.load(b2_ptr + cd, mask=cd < d, other=0.0).to(tl.float32)
        return w1, b1, w2t, b2

    @triton.jit
    def _rk4_mlp_fwd_kernel(y0_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, out_ptr, traj_ptr,
                            batch, d, h, n_steps, dt,
                            ROWS: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_H: tl.constexpr,
                            STORE_TRAJ: tl.constexpr):
        pid = tl.program_id(0)
        rows = pid * ROWS + tl.arange(0, ROWS)
        cd = tl.arange(0, BLOCK_D)
        # the row mask matters whenever batch is not a multiple of ROWS (the last program)
        mask = (rows[:, None] < batch) & (cd[None, :] < d)
        offs = rows[:, None].to(tl.int64) * d + cd[None, :]
        w1, b1, w2t, b2 = _load_weights(w1_ptr, b1_ptr, w2_ptr, b2_ptr, d, h, BLOCK_D, BLOCK_H)
        y = tl.load(y0_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        half = 0.5 * dt
        sixth = dt / 6.0
        # pointers advance by one (batch, d) plane per step: 64-bit pointer arithmetic, no
        # int32 product n_steps·batch·d (integer arguments may even arrive as constexpr 1)
        plane = batch * d
        traj_ptrs = traj_ptr + offs
        for step in range(n_steps):
            if STORE_TRAJ:  # y at the start of every step, for the backward kernel
                tl.store(traj_ptrs, y, mask=mask)
                traj_ptrs += plane
            k1 = _field(y, w1, b1, w2t, b2)
            k2 = _field(y + half * k1, w1, b1, w2t, b2)
            k3 = _field(y + half * k2, w1, b1, w2t, b2)
            k4 = _field(y + dt * k3, w1, b1, w2t, b2)
            y = y + sixth * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
        tl.store(out_ptr + offs, y, mask=mask)

    @triton.jit
    def _rk4_mlp_bwd_kernel(traj_ptr, gout_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr,
                            gy0_ptr, gw1_ptr, gb1_ptr, gw2t_ptr, gb2_ptr,
                            batch, d, h, n_steps, dt, n_blocks,
                            ROWS: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_H: tl.constexpr):
        """Discrete adjoint of the forward kernel's RK4 steps, walked from the last step back.

        Program ``pid`` takes row blocks pid, pid + P, pid + 2P, ... (P programs) and writes
        its partial weight gradients to slot ``pid``; the host sums the P slots, so memory is
        bounded and the result does not depend on scheduling."""
        pid = tl.program_id(0)
        cd = tl.arange(0, BLOCK_D)
        ch = tl.arange(0, BLOCK_H)
        w1, b1, w2t, b2 = _load_weights(w1_ptr, b1_ptr, w2_ptr, b2_ptr, d, h, BLOCK_D, BLOCK_H)
        acc_w1 = tl.full((BLOCK_D, BLOCK_H), 0.0, tl.float32)
        acc_w2t = tl.full((BLOCK_D, BLOCK_H), 0.0, tl.float32)
        acc_b1 = tl.full((BLOCK_H,), 0.0, tl.float32)
        acc_b2 = tl.full((BLOCK_D,), 0.0, tl.float32)
        half = 0.5 * dt
        sixth = dt / 6.0
        plane = batch * d
        for blk in range(pid, n_blocks, tl.num_programs(0)):
            rows = blk * ROWS + tl.arange(0, ROWS)
            mask = (rows[:, None] < batch) & (cd[None, :] < d)
            offs = rows[:, None].to(tl.int64) * d + cd[None, :]
            # padded rows load lam = 0, so they add nothing to the weight gradients
            lam = tl.load(gout_ptr + offs, mask=mask, other=0.0).to(tl.float32)  # dL/dy(t1)
            traj_ptrs = traj_ptr + ((offs * 0 + (n_steps - 1)) * plane + offs)  # int64 offsets
            for i in range(n_steps):
                y = tl.load(traj_ptrs, mask=mask, other=0.0)
                traj_ptrs -= plane
                # recompute the stage inputs u1 = y, u2, u3, u4 of this step
                k1 = _field(y, w1, b1, w2t, b2)
                u2 = y + half * k1
                k2 = _field(u2, w1, b1, w2t, b2)
                u3 = y + half * k2
                u4 = y + dt * _field(u3, w1, b1, w2t, b2)
                # y_next = y + dt/6 (k1 + 2 k2 + 2 k3 + k4): walk the stages in reverse;
                # g_i = dL/dk_i, and each stage input u_i feeds k_i and y
                g3 = (2.0 * sixth) * lam
                g2 = (2.0 * sixth) * lam
                g1 = sixth * lam
                gu, acc_w1, acc_b1, acc_w2t, acc_b2 = _vjp(u4, sixth * lam, w1, b1, w2t,
                                                           acc_w1, acc_b1, acc_w2t, acc_b2)
                gy = lam + gu
                g3 += dt * gu
                gu, acc_w1, acc_b1, acc_w2t, acc_b2 = _vjp(u3, g3, w1, b1, w2t,
                                                           acc_w1, acc_b1, acc_w2t, acc_b2)
                gy += gu
                g2 += half * gu
                gu, acc_w1, acc_b1, acc_w2t, acc_b2 = _vjp(u2, g2, w1, b1, w2t,
                                                           acc_w1, acc_b1, acc_w2t, acc_b2)
                gy += gu
                g1 += half * gu
                gu, acc_w1, acc_b1, acc_w2t, acc_b2 = _vjp(y, g1, w1, b1, w2t,
                                                           acc_w1, acc_b1, acc_w2t, acc_b2)
                lam = gy + gu
            tl.store(gy0_ptr + offs, lam, mask=mask)
        tile = pid * (BLOCK_D * BLOCK_H) + cd[:, None] * BLOCK_H + ch[None, :]
        tl.store(gw1_ptr + tile, acc_w1)
        tl.store(gw2t_ptr + tile, acc_w2t)
        tl.store(gb1_ptr + pid * BLOCK_H + ch, acc_b1)
        tl.store(gb2_ptr + pid * BLOCK_D + cd, acc_b2)


def _next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def pick_config(batch: int, d: int, h: int, *, n_sm: int = 132) -> dict:
    """The launch configuration :func:`rk4_mlp` uses: ``rows`` per program, ``block_d``,
    ``block_h`` (powers of two ≥ d, h, masked) and ``num_warps``.

    Rows per program: as many as fit the register budget, then fewer until there are at
    least two programs per SM (a small batch must still spread over the GPU)."""
    block_d = max(2, _next_pow2(d))
    block_h = max(16, _next_pow2(h))
    rows = max(1, min(ROWS_CHOICES[-1], _TILE_BUDGET // (block_d * block_h)))
    rows = 1 << (rows.bit_length() - 1)
    while rows > 1 and math.ceil(batch / rows) < 2 * n_sm:
        rows //= 2
    tile = rows * block_d * block_h
    num_warps = min(8, max(1, _next_pow2(tile // 512)))
    if (rows, block_d, block_h) in _FWD_FOUR_WARPS:
        num_warps = 4
    return {"rows": rows, "block_d": block_d, "block_h": block_h, "num_warps": num_warps}


def backward_config(config: dict) -> dict:
    """The backward kernel's configuration for a forward launched at ``config``.

    The backward holds about three times the forward's live tiles (the stage inputs, the
    adjoint and four weight-gradient accumulators). At the forward's warps it runs out of
    registers and spills (rows = 16, 4 warps: 255 registers and 52 B spilled, as the issue
    found). Compiled for sm_90 over every tile it can be given (``dynbook.kernels.static``;
    rows × BLOCK_D × BLOCK_H up to 4096, at 2, 4 and 8 warps), 8 warps still spill 12–48 B at
    4096 elements; at ≤ ``_BWD_TILE_BUDGET`` = 2048 they fit except for the few tiles in
    ``_BWD_FOUR_WARPS``, where ptxas spills 4–8 B at 8 warps and none at 4. So the backward
    takes at most 2048 elements per program, at 8 warps or, for those tiles, 4."""
    rows = config["rows"]
    while rows > 1 and rows * config["block_d"] * config["block_h"] > _BWD_TILE_BUDGET:
        rows //= 2
    warps = 4 if (rows, config["block_d"], config["block_h"]) in _BWD_FOUR_WARPS else 8
    return {**config, "rows": rows, "num_warps": warps}


#: Elements of the (rows, BLOCK_D, BLOCK_H) product one backward program may hold.
_BWD_TILE_BUDGET = 2048
#: (rows, BLOCK_D, BLOCK_H) tiles whose backward spills at 8 warps but not at 4 (sm_90, ptxas
#: of Triton 3.x; measured by compiling every tile, see ``backward_config``).
_BWD_FOUR_WARPS = frozenset({(1, 8, 256), (2, 2, 256), (2, 8, 128), (2, 16, 64), (4, 8, 16)})
#: Forward tiles that spill at the 8 warps their size asks for (8 B without the trajectory
#: store, sm_90) and fit at 4 warps (128 registers, no spill).
_FWD_FOUR_WARPS = frozenset({(2, 8, 256)})


def _kernel(name: str, device: torch.device):
    """The Triton kernel ``name`` for tensors on ``device`` (interpreted on a CPU)."""
    return _KERNELS.get(name, device)


def _on(device: torch.device):
    """Launch on the tensors' GPU (Triton launches on the current CUDA device)."""
    import contextlib

    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


_JIT_NAMES = ("_sum", "_tanh", "_field", "_vjp", "_load_weights", "_rk4_mlp_fwd_kernel",
              "_rk4_mlp_bwd_kernel")
_KERNELS = KernelSet(globals(), _JIT_NAMES)


def _launch_forward(y0, w1, b1, w2, b2, dt: float, n_steps: int, config: dict,
                    store_traj: bool = False):
    """Run the forward kernel with an explicit ``config`` (see :func:`pick_config`).
    Returns ``(y(t1), trajectory or None)``; trajectory ``(n_steps, batch, d)``."""
    batch, d = y0.shape
    h = w1.shape[1]
    if batch * d >= 2**31:
        raise ValueError(f"batch·d = {batch}·{d} is outside the Triton kernel's range (< 2**31)")
    out = torch.empty_like(y0)
    traj = (torch.empty((n_steps, batch, d), device=y0.device, dtype=torch.float32)
            if store_traj else out)  # a dummy pointer when not stored
    grid = (triton.cdiv(batch, config["rows"]),)
    with _on(y0.device):
        _kernel("_rk4_mlp_fwd_kernel", y0.device)[grid](
            y0, w1, b1, w2, b2, out, traj, batch, d, h, n_steps, dt,
            ROWS=config["rows"], BLOCK_D=config["block_d"], BLOCK_H=config["block_h"],
            STORE_TRAJ=store_traj, num_warps=config["num_warps"])
    return out, (traj if store_traj else None)


def _launch_backward(traj, gout, w1, b1, w2, b2, dt: float, n_steps: int, config: dict):
    """Run the backward kernel; returns gradients for ``y0, w1, b1, w2, b2``."""
    batch, d = gout.shape
    h = w1.shape[1]
    config = backward_config(config)
    rows, bd, bh = config["rows"], config["block_d"], config["block_h"]
    n_blocks = triton.cdiv(batch, rows)
    # enough programs to fill the GPU; each loops over several row blocks, so the partial
    # weight gradients take at most _MAX_BWD_PROGRAMS tiles of memory
    n_prog = min(n_blocks, _MAX_BWD_PROGRAMS)
    dev = gout.device
    gy0 = torch.empty_like(gout)
    gw1 = torch.empty((n_prog, bd, bh), device=dev, dtype=torch.float32)
    gw2t = torch.empty((n_prog, bd, bh), device=dev, dtype=torch.float32)
    gb1 = torch.empty((n_prog, bh), device=dev, dtype=torch.float32)
    gb2 = torch.empty((n_prog, bd), device=dev, dtype=torch.float32)
    with _on(dev):
        _kernel("_rk4_mlp_bwd_kernel", dev)[(n_prog,)](
            traj, gout, w1, b1, w2, b2, gy0, gw1, gb1, gw2t, gb2, batch, d, h, n_steps, dt,
            n_blocks, ROWS=rows, BLOCK_D=bd, BLOCK_H=bh, num_warps=config["num_warps"])
    return (gy0, gw1.sum(0)[:d, :h], gb1.sum(0)[:h], gw2t.sum(0)[:d, :h].t().contiguous(),
            gb2.sum(0)[:d])


#: Programs of the backward kernel (a grid-stride loop covers the rest of the row blocks).
_MAX_BWD_PROGRAMS = 1024


class _RK4MLPTriton(torch.autograd.Function):
    """Fused forward; fused backward (exact discrete adjoint, trajectory kept in memory:
    ``4·n_steps·batch·d`` bytes). Not twice differentiable."""

    @staticmethod
    def forward(ctx, y0, w1, b1, w2, b2, dt, n_steps, config):
        need = any(ctx.needs_input_grad[:5])
        out, traj = _launch_forward(y0, w1, b1, w2, b2, dt, n_steps, config, store_traj=need)
        if need:
            ctx.save_for_backward(traj, w1, b1, w2, b2)
        ctx.dt, ctx.n_steps, ctx.config = dt, n_steps, config
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gout):
        traj, w1, b1, w2, b2 = ctx.saved_tensors
        grads = _launch_backward(traj, gout.contiguous(), w1, b1, w2, b2, ctx.dt, ctx.n_steps,
                                 ctx.config)
        return (*grads, None, None, None)


# ----------------------------------------------------------------------------- public


def _check(y0, w1, b1, w2, b2, t1, n_steps) -> tuple[int, int, int]:
    tensors = {"y0": y0, "w1": w1, "b1": b1, "w2": w2, "b2": b2}
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if y0.dim() != 2:
        raise ValueError(f"y0 must have shape (batch, d), got shape {tuple(y0.shape)}")
    batch, d = y0.shape
    if d < 1:
        raise ValueError(f"y0 has d={d} columns: expected d >= 1")
    if w1.dim() != 2 or w1.shape[0] != d or w1.shape[1] < 1:
        raise ValueError(f"w1 must have shape (d, h) = ({d}, h >= 1), got {tuple(w1.shape)}")
    h = w1.shape[1]
    expected = {"b1": (h,), "w2": (h, d), "b2": (d,)}
    for name, shape in expected.items():
        if tuple(tensors[name].shape) != shape:
            raise ValueError(f"{name} must have shape {shape} (d={d}, h={h}), got "
                             f"{tuple(tensors[name].shape)}")
    for name, t in tensors.items():
        if t.device != y0.device or t.dtype != y0.dtype:
            raise ValueError(f"{name} is {t.dtype} on {t.device}, y0 is {y0.dtype} on {y0.device}: "
                             "expected every tensor on one device with one dtype")
    if not y0.is_floating_point():
        raise ValueError(f"y0 has dtype {y0.dtype}: expected a floating-point dtype")
    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 1:
        raise ValueError(f"n_steps={n_steps!r} is not allowed: expected an integer >= 1")
    if isinstance(t1, bool) or not isinstance(t1, (int, float)) or not math.isfinite(t1):
        raise ValueError(f"t1={t1!r} is not allowed: expected a finite number")
    return batch, d, h


def triton_unsupported(y0, w1) -> str:
    """Why the Triton path cannot take these inputs ('' when it can)."""
    d, h = y0.shape[1], w1.shape[1]
    if d > MAX_D:
        return f"d={d} is outside the Triton kernel's range 1..{MAX_D}"
    if h > MAX_H:
        return f"h={h} is outside the Triton kernel's range 1..{MAX_H}"
    if y0.dtype != torch.float32:
        return f"dtype={y0.dtype} is not allowed by the Triton kernel: expected torch.float32"
    return ""


def rk4_mlp(y0, w1, b1, w2, b2, *, t1: float = 1.0, n_steps: int, impl: str = "auto",
            config: dict | None = None):
    """``y(t1)`` of ``dy/dt = tanh(y @ w1 + b1) @ w2 + b2``, ``y(0) = y0``, by ``n_steps``
    classical RK4 steps.

    Shapes: ``y0 (batch, d)``, ``w1 (d, h)``, ``b1 (h,)``, ``w2 (h, d)``, ``b2 (d,)`` →
    ``(batch, d)``. ``impl``: ``"triton"`` (one launch for all steps; d ≤ 16, h ≤ 256,
    float32), ``"torch"`` (reference), ``"auto"`` (Triton for CUDA tensors in range, else
    torch). Differentiable in ``y0`` and every weight for every impl. ``config`` overrides
    :func:`pick_config` (tests and benchmarks sweep it).
    """
    batch, d, h = _check(y0, w1, b1, w2, b2, t1, n_steps)
    impl = resolve_impl(impl, y0)
    why = triton_unsupported(y0, w1)
    if impl == "triton" and why:
        raise ValueError(f"impl='triton': {why}; use impl='torch' or 'auto'")
    if impl == "torch" or (why and impl != "triton"):
        return rk4_mlp_reference(y0, w1, b1, w2, b2, t1=t1, n_steps=n_steps)
    if batch == 0:
        return y0.clone()
    if config is None:
        n_sm = (torch.cuda.get_device_properties(y0.device).multi_processor_count
                if y0.is_cuda else 132)
        config = pick_config(batch, d, h, n_sm=n_sm)
    else:
        config = _check_config(config, d, h)
    args = [t.contiguous() for t in (y0, w1, b1, w2, b2)]
    return _RK4MLPTriton.apply(*args, float(t1) / n_steps, n_steps, config)


def _check_config(config: dict, d: int, h: int) -> dict:
    allowed = {"rows", "block_d", "block_h", "num_warps"}
    if set(config) - allowed:
        raise ValueError(f"config has unknown keys {sorted(set(config) - allowed)}: expected {sorted(allowed)}")
    cfg = {**pick_config(1, d, h), **config}
    for key in ("rows", "block_d", "block_h", "num_warps"):
        v = cfg[key]
        if not isinstance(v, int) or v < 1 or v & (v - 1):
            raise ValueError(f"config[{key!r}]={v!r} is not allowed: expected a power of two >= 1")
    if cfg["block_d"] < d or cfg["block_h"] < h:
        raise ValueError(f"config block_d={cfg['block_d']}, block_h={cfg['block_h']} must cover "
                         f"d={d}, h={h}")
    return cfg


# ----------------------------------------------------------------------------- static evidence


def choosable_configs() -> list[dict]:
    """Every launch configuration :func:`pick_config` can return for the Triton range
    (1 ≤ d ≤ 16, 1 ≤ h ≤ 256, any batch, any SM count): compiled by ``dynbook.kernels.static``."""
    seen = {}
    for d in (2, 4, 8, 16):
        for h in (16, 32, 64, 128, 256):
            for batch in (1 << k for k in range(0, 24)):
                cfg = pick_config(batch, d, h)
                seen[tuple(sorted(cfg.items()))] = cfg
    return list(seen.values())


def static_launches(config: dict) -> list:
    """The forward (with and without the trajectory store) and backward kernels at ``config``,
    as :class:`dynbook.kernels.static.Launch` (instruction counts per trip of the step loop)."""
    from dynbook.kernels.static import Launch

    cc = {"ROWS": config["rows"], "BLOCK_D": config["block_d"], "BLOCK_H": config["block_h"]}
    ptrs = lambda *names: {k: "*fp32" for k in names}  # noqa: E731
    ints = {"batch": "i32", "d": "i32", "h": "i32", "n_steps": "i32", "dt": "fp32"}
    const = {k: "constexpr" for k in ("ROWS", "BLOCK_D", "BLOCK_H")}
    fwd_sig = {**ptrs("y0_ptr", "w1_ptr", "b1_ptr", "w2_ptr", "b2_ptr", "out_ptr", "traj_ptr"), **ints, **const,
               "STORE_TRAJ": "constexpr"}
    bwd_sig = {**ptrs("traj_ptr", "gout_ptr", "w1_ptr", "b1_ptr", "w2_ptr", "b2_ptr", "gy0_ptr", "gw1_ptr",
                      "gb1_ptr", "gw2t_ptr", "gb2_ptr"), **ints, "n_blocks": "i32", **const}
    bcfg = backward_config(config)
    bcc = {"ROWS": bcfg["rows"], "BLOCK_D": bcfg["block_d"], "BLOCK_H": bcfg["block_h"]}
    out = [Launch("_rk4_mlp_fwd_kernel", "rk4", {**cc, "STORE_TRAJ": st}, fwd_sig, {**cc, "STORE_TRAJ": st},
                  config["num_warps"], elements=1, meta={"per": "step"}) for st in (False, True)]
    out.append(Launch("_rk4_mlp_bwd_kernel", "rk4", dict(bcc), bwd_sig, dict(bcc), bcfg["num_warps"], elements=1,
                      meta={"per": "step", "forward_config": dict(config)}))
    return out


# ----------------------------------------------------------------------------- shared checks
# One problem builder and one kernel-vs-float64 comparison for the chapter, the tests and
# the benchmark (each used to build its own).

_WEIGHT_NAMES = ("y0", "w1", "b1", "w2", "b2")


def rk4_mlp_inputs(batch: int, d: int, h: int, *, generator: torch.Generator | None = None,
                   seed: int = 0, bias: float = 0.1, dtype=torch.float32, device="cpu") -> list:
    """A random, well-scaled problem ``[y0, w1, b1, w2, b2]`` for :func:`rk4_mlp`.

    ``y0 ~ N(0, 1) (batch, d)``, ``w1 ~ N(0, 1/d) (d, h)``, ``b1 ~ N(0, bias²) (h,)``,
    ``w2 ~ N(0, 1/h) (h, d)``, ``b2 ~ N(0, bias²) (d,)``, drawn in that order on the CPU from
    ``generator`` (or a fresh one seeded with ``seed``): |f| = O(1), so the flow neither
    explodes nor stalls over unit time."""
    from dynbook import _checks

    _checks.positive_int("batch", batch, minimum=0)
    _checks.positive_int("d", d)
    _checks.positive_int("h", h)
    _checks.positive("bias", bias, allow_zero=True)
    g = torch.Generator().manual_seed(seed) if generator is None else generator
    ts = (torch.randn(batch, d, generator=g), torch.randn(d, h, generator=g) / math.sqrt(d),
          bias * torch.randn(h, generator=g), torch.randn(h, d, generator=g) / math.sqrt(h),
          bias * torch.randn(d, generator=g))
    return [t.to(device=device, dtype=dtype) for t in ts]


def float64_error(result, args, *, n_steps: int, t1: float = 1.0) -> float:
    """Largest |result − y(t1)| ÷ largest |y(t1)|, ``y(t1)`` from :func:`rk4_mlp_reference` on
    ``args`` promoted to float64: how far any solver's output is from exact classical RK4."""
    from dynbook.measure.fits import relative_error

    with torch.no_grad():
        ref = rk4_mlp_reference(*[a.detach().double() for a in args], t1=t1, n_steps=n_steps)
    return relative_error(result, ref)


def kernel_vs_float64(args, *, n_steps: int, t1: float = 1.0, impl: str = "triton",
                      config: dict | None = None, gradients: bool = True, gout=None) -> dict:
    """:func:`rk4_mlp` on ``args`` against the float64 reference, forward and (with
    ``gradients``) backward for the output cotangent ``gout`` (default: standard normal,
    seeded), each as a relative max error.

    Returns ``{"y": error of y(t1), "grads": {name: error} for y0, w1, b1, w2, b2,
    "grad": the largest of them (0.0 without gradients)}``."""
    from dynbook.measure.fits import relative_error

    leaves = [a.detach().clone().requires_grad_(gradients) for a in args]
    out = rk4_mlp(*leaves, t1=t1, n_steps=n_steps, impl=impl, config=config)
    result = {"y": float64_error(out, args, n_steps=n_steps, t1=t1), "grads": {}, "grad": 0.0}
    if not gradients:
        return result
    if gout is None:
        gout = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out)
    grads = torch.autograd.grad(out, leaves, gout)
    leaves64 = [a.detach().double().requires_grad_() for a in args]
    ref = rk4_mlp_reference(*leaves64, t1=t1, n_steps=n_steps)
    grads64 = torch.autograd.grad(ref, leaves64, gout.double())
    result["grads"] = {n: relative_error(a, b) for n, a, b in zip(_WEIGHT_NAMES, grads, grads64)}
    result["grad"] = max(result["grads"].values())
    return result


def check_cases(batch: int, n_steps: int, device) -> list[tuple]:
    """The ``(batch, n_steps, config)`` cases :func:`check_kernel` runs by default: on a GPU
    the problem itself at :func:`pick_config`'s choice and at every rows-per-program choice
    with ``batch + rows − 1`` rows (the last program masked); elsewhere Triton's interpreter
    runs the kernel program by program in NumPy, so three small cases of 3 steps, with rows
    1, 4 and 16 and a batch that is not a multiple of them."""
    if torch.device(device).type == "cuda":
        return [(batch, n_steps, None)] + [(batch + r - 1, n_steps, {"rows": r}) for r in ROWS_CHOICES]
    return [(5 + r, 3, {"rows": r}) for r in (1, 4, 16)]


def check_kernel(*, d: int, h: int, batch: int = 1024, n_steps: int = 100, cases=None,
                 seed: int = 0, device="cpu", impl: str = "triton") -> dict:
    """:func:`kernel_vs_float64` on each of ``cases`` — ``(batch, n_steps, config)`` triples,
    config ``None`` for :func:`pick_config`'s; default :func:`check_cases` for ``batch`` and
    ``n_steps`` on ``device`` — with a fresh problem per case (:func:`rk4_mlp_inputs`, seeds
    ``seed``, ``seed + 1``, …). Returns the worst forward and gradient errors and what ran:
    ``{"y", "grad", "cases", "where"}``."""
    cases = check_cases(batch, n_steps, device) if cases is None else list(cases)
    worst = {"y": 0.0, "grad": 0.0, "cases": 0,
             "where": "GPU" if torch.device(device).type == "cuda" else "Triton interpreter"}
    for i, (b, n, config) in enumerate(cases):
        args = rk4_mlp_inputs(b, d, h, seed=seed + i, device=device)
        err = kernel_vs_float64(args, n_steps=n, impl=impl, config=config)
        worst.update(y=max(worst["y"], err["y"]), grad=max(worst["grad"], err["grad"]),
                     cases=worst["cases"] + 1)
    return worst


def compiled_launches(batch: int, d: int, h: int, *, n_sm: int = 132, table: dict | None = None) -> dict:
    """What the compiler says about the launches :func:`rk4_mlp` makes for ``(batch, d, h)``,
    read from the stored static table (``results/static/kernels.json``; compiled for sm_90,
    sm_80 and sm_75 without a GPU, never timed).

    Returns ``{"config", "launches": rows of summary_rows for this configuration's forward
    (with and without the trajectory store) and backward kernels, "all": every compiled
    ``_rk4`` row, "max_spill_bytes": the most any of them spills (``None`` without rows),
    "roofline": the roofline rows of this kernel (floor µs per GPU)}``; empty lists when the
    table is absent."""
    from dynbook.kernels import static

    table = static.load_table() if table is None else table
    config = pick_config(batch, d, h, n_sm=n_sm)
    keys = {launch.key() for launch in static_launches(config)}
    rows = static.summary_rows("_rk4", table)
    roof = [r for r in table.get("roofline", []) if r.get("kernel") == "rk4_mlp"]
    spills = [r["spill_bytes"] for r in rows if r.get("spill_bytes") is not None]
    return {"config": config, "launches": [r for r in rows if r["launch"] in keys], "all": rows,
            "max_spill_bytes": max(spills, default=None), "roofline": roof}
