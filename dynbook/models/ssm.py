"""State-space sequence models: S4D (time-invariant, continuous time) and the selective
(Mamba, S6) SSM, with the attention baseline they are compared against.

Glossary (code → paper):

===============  ===========================================================================
``d_model``      ``H``: channels of the layer (each channel is an independent SSM)
``d_state``      ``N``: state size per channel (S4D: ``N/2`` complex-conjugate pairs)
``step``         ``Δ``: discretisation step, ``exp(log_step)``; rescaling it resamples time
``A``            diagonal continuous-time state matrix, ``Re A < 0`` (stable)
``dA, dB``       ``Ā = exp(Δ A)``, ``B̄ = (Ā − 1) A⁻¹ B``: zero-order hold (ZOH)
``kernel``       ``K_l = C Ā^l B̄``: the SSM as one long causal convolution
``dt_rank``      rank of Mamba's ``Δ`` projection, ``⌈d_model / 16⌉`` (of the block's
                 ``d_model``, not of ``d_inner = expand · d_model``)
===============  ===========================================================================

S6 (the selective SSM) discretises ``A`` by ZOH, ``Ā = exp(Δ A)``, but its input term by
Euler, ``B̄ u = Δ B u`` (Mamba's simplification, Gu & Dao 2023 §3.5.2): S4D above uses the
exact ZOH ``B̄ = (Ā − 1) A⁻¹ B``.

S4D (Gu, Gupta, Goel & Ré 2022; "S4D-Lin" initialisation ``A_n = −½ + iπn``) computed three
ways that must agree: ``mode="recurrence"`` (one step per token), ``"conv"`` (FFT convolution
with ``K``) and ``"scan"`` (a parallel scan over the recurrence). ``SSMBlock`` is a Mamba block
(Gu & Dao 2023, Fig. 3) whose SSM is either selective (``Δ, B, C`` computed from the input)
or the time-invariant S4D, so the two differ in nothing else.

Chapter 5's experiments are one call each (:func:`three_computations`,
:func:`resampling_experiment`, :func:`copying_experiment`, :func:`scaling_sweep` with
:func:`sweep_analysis`, :func:`energy_per_token`, :func:`kernel_experiment`), each returning a
dict with the measured quantities and the ``"records"`` the chapter stores; the chapter
decides its claims (``dynbook/declared/state_space_models.yaml``) and draws the figures
(:func:`plot_scaling`, :func:`plot_resampling`).
"""

from __future__ import annotations

import math
import time
import zlib
from dataclasses import dataclass
from functools import partial
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dynbook._checks import positive_int
from dynbook.measure.timing import peak_bytes
from dynbook.measure.fits import loglog_fit
from dynbook.book.stats import Estimate
from dynbook.kernels.scan import (linear_scan_parallel, linear_scan_reference, selective_scan,
                           selective_scan_chunked, selective_scan_parallel)

MODES = ("recurrence", "conv", "scan")


def stream_seed(seed: int, stream: str) -> int:
    """An independent 63-bit seed for the named random ``stream`` of run ``seed`` (training
    data, evaluation data, ...): different streams of one run never share a generator state,
    and the same (seed, stream) always gives the same numbers."""
    state = np.random.SeedSequence([int(seed), zlib.crc32(stream.encode())]).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


# ----------------------------------------------------------------------------- S4D


class S4D(nn.Module):
    """Diagonal SSM layer, ``H = d_model`` independent channels, ``u: (b, l, H) → y: (b, l, H)``.

    Continuous time: ``x'(t) = A x(t) + B u(t)``, ``y(t) = 2 Re(C x(t)) + D u(t)`` per channel,
    ``A = −exp(log_A_real) + i·A_imag`` (``N/2`` modes), ``B = 1`` (folded into ``C``).
    """

    def __init__(self, d_model: int, d_state: int = 64, *, step_min: float = 1e-3,
                 step_max: float = 1e-1):
        super().__init__()
        if d_state < 2 or d_state % 2:
            raise ValueError(f"d_state = {d_state!r} is not allowed: expected an even integer >= 2 "
                             "(N/2 complex-conjugate pairs)")
        if not 0 < step_min <= step_max:
            raise ValueError(f"step_min = {step_min!r}, step_max = {step_max!r}: expected 0 < step_min <= step_max")
        H, half = d_model, d_state // 2
        self.log_step = nn.Parameter(torch.rand(H) * math.log(step_max / step_min) + math.log(step_min))
        self.log_A_real = nn.Parameter(torch.full((H, half), math.log(0.5)))
        self.A_imag = nn.Parameter(math.pi * torch.arange(half, dtype=torch.float32).expand(H, half).clone())
        self.C = nn.Parameter(torch.view_as_real(torch.randn(H, half, dtype=torch.cfloat) * math.sqrt(0.5)))
        self.D = nn.Parameter(torch.randn(H))

    def discretize(self, step_scale: float = 1.0):
        """ZOH: ``(Ā, C B̄, Δ A)``, each ``(H, N/2)`` complex; ``step_scale`` multiplies ``Δ``
        (sampling twice as densely → ``step_scale = 0.5``)."""
        step = torch.exp(self.log_step) * step_scale
        A = -torch.exp(self.log_A_real) + 1j * self.A_imag
        dtA = A * step[:, None]
        dA = torch.exp(dtA)
        CdB = torch.view_as_complex(self.C) * (dA - 1.0) / A
        return dA, CdB, dtA

    def kernel(self, length: int, step_scale: float = 1.0) -> torch.Tensor:
        """``K: (H, length)`` real, ``K_l = 2 Re Σ_n C_n B̄_n Ā_n^l`` (a Vandermonde product)."""
        _, CdB, dtA = self.discretize(step_scale)
        powers = torch.exp(dtA[..., None] * torch.arange(length, device=dtA.device))
        return 2 * torch.einsum("hn,hnl->hl", CdB, powers).real

    def forward(self, u: torch.Tensor, *, mode: str = "conv", step_scale: float = 1.0) -> torch.Tensor:
        if mode not in MODES:
            raise ValueError(f"mode = {mode!r} is not allowed: expected one of {', '.join(map(repr, MODES))}")
        b, l, H = u.shape
        x = u.transpose(1, 2)  # (b, H, l)
        if mode == "conv":
            K = self.kernel(l, step_scale).to(x.dtype)
            n = 2 * l  # zero-pad so the circular FFT convolution is the causal linear one
            y = torch.fft.irfft(torch.fft.rfft(x, n=n) * torch.fft.rfft(K, n=n), n=n)[..., :l]
        else:
            dA, CdB, _ = self.discretize(step_scale)
            cdtype = torch.complex128 if x.dtype == torch.float64 else torch.complex64
            a = dA.to(cdtype)[None, :, :, None]  # (1, H, N/2, 1): the same Ā at every step
            drive = x.to(cdtype)[:, :, None, :].expand(b, H, dA.shape[1], l)  # B = 1
            scan = linear_scan_reference if mode == "recurrence" else linear_scan_parallel
            h = scan(a, drive)  # (b, H, N/2, l): state without the B̄ factor, folded into C
            y = 2 * torch.einsum("hn,bhnl->bhl", CdB.to(cdtype), h).real
        y = y + self.D.to(x.dtype)[:, None] * x
        return y.transpose(1, 2).to(u.dtype)


# ----------------------------------------------------------------------------- selective SSM


class SelectiveSSM(nn.Module):
    """S6 (Gu & Dao 2023, Alg. 2): ``Δ, B, C`` are functions of the input token.

    ``x: (b, l, d) → y: (b, l, d)``; ``A = −exp(A_log)`` real diagonal (S4D-Real init
    ``A_n = −(n+1)``), ``Δ = softplus(W_Δ x + b_Δ)`` through a rank-``dt_rank`` projection,
    ``B = W_B x``, ``C = W_C x``; ``h_t = exp(Δ_t A) h_{t−1} + Δ_t B_t x_t`` (ZOH for ``A``,
    Euler for the input term). ``dt_rank`` defaults to ``⌈d_inner / 16⌉``; :class:`SSMBlock`
    passes Mamba's ``⌈d_model / 16⌉``.
    """

    def __init__(self, d_inner: int, d_state: int = 16, *, step_min: float = 1e-3,
                 step_max: float = 1e-1, dt_rank: int | None = None, impl: str = "auto"):
        super().__init__()
        self.d_state, self.impl = d_state, impl
        self.dt_rank = dt_rank or max(1, math.ceil(d_inner / 16))
        self.x_proj = nn.Linear(d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, d_inner)
        step = torch.exp(torch.rand(d_inner) * math.log(step_max / step_min) + math.log(step_min))
        with torch.no_grad():  # bias = softplus⁻¹(step): Δ starts in [step_min, step_max]
            self.dt_proj.bias.copy_(step + torch.log(-torch.expm1(-step)))
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(d_inner, 1))
        self.D = nn.Parameter(torch.ones(d_inner))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dt_in, B, C = self.x_proj(x).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = F.softplus(self.dt_proj(dt_in))
        scan = {"parallel": selective_scan_parallel, "chunked": selective_scan_chunked}.get(
            self.impl, partial(selective_scan, impl=self.impl))
        return scan(x, delta, -torch.exp(self.A_log), B, C, self.D)


class SSMBlock(nn.Module):
    """Pre-norm residual Mamba block: ``x + out(SSM(silu(conv(in_x))) · silu(in_z))``.

    ``selective=True`` uses :class:`SelectiveSSM`, ``False`` the time-invariant :class:`S4D`
    (with ``d_state`` complex modes); everything else is identical. ``x: (b, l, d_model)``.
    """

    def __init__(self, d_model: int, d_state: int = 16, *, selective: bool = True,
                 expand: int = 2, d_conv: int = 4, impl: str = "auto"):
        super().__init__()
        d_inner = expand * d_model
        self.norm = nn.LayerNorm(d_model)
        self.in_proj = nn.Linear(d_model, 2 * d_inner)
        self.conv = nn.Conv1d(d_inner, d_inner, d_conv, groups=d_inner, padding=d_conv - 1)
        self.ssm = (SelectiveSSM(d_inner, d_state, impl=impl, dt_rank=math.ceil(d_model / 16)) if selective
                    else S4D(d_inner, 2 * d_state))
        self.out_proj = nn.Linear(d_inner, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        l = x.shape[1]
        xs, z = self.in_proj(self.norm(x)).chunk(2, dim=-1)
        xs = F.silu(self.conv(xs.transpose(1, 2))[..., :l].transpose(1, 2))  # causal: drop the tail
        return x + self.out_proj(self.ssm(xs) * F.silu(z))


class SequenceModel(nn.Module):
    """Token embedding → ``n_layers`` :class:`SSMBlock` → norm → logits, ``(b, l) → (b, l, vocab)``."""

    def __init__(self, vocab: int, d_model: int, d_state: int, n_layers: int, *, selective: bool,
                 d_conv: int = 4, impl: str = "auto"):
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        self.blocks = nn.ModuleList(SSMBlock(d_model, d_state, selective=selective, d_conv=d_conv, impl=impl)
                                    for _ in range(n_layers))
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


def n_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------- selective copying


def selective_copying(batch: int, *, n_tokens: int, length: int, vocab: int,
                      generator: torch.Generator | None = None):
    """The selective-copying task (Gu & Dao 2023, §4.1.1): ``n_tokens`` data tokens (values
    ``1..vocab``) at random, sorted positions among ``length`` noise tokens (``0``), then
    ``n_tokens`` markers (``vocab + 1``); the model must emit the data tokens, in order, at
    the markers. Returns ``tokens: (batch, length + n_tokens)`` and ``targets: (batch, n_tokens)``.

    The spacing varies from sequence to sequence, so no fixed convolution kernel can pick the
    tokens out: the model must decide per token what to keep, which is what selectivity adds.
    """
    if not 1 <= n_tokens <= length:
        raise ValueError(f"n_tokens = {n_tokens!r} is not allowed: expected 1 <= n_tokens <= length = {length}")
    positions = torch.rand(batch, length, generator=generator).argsort(-1)[:, :n_tokens].sort(-1).values
    targets = torch.randint(1, vocab + 1, (batch, n_tokens), generator=generator)
    tokens = torch.zeros(batch, length + n_tokens, dtype=torch.long)
    tokens.scatter_(1, positions, targets)
    tokens[:, length:] = vocab + 1
    return tokens, targets


@dataclass
class CopyingConfig:
    """A small selective-copying run; ``vocab_size`` (noise + data + marker) is derived."""

    n_tokens: int = 4
    length: int = 16
    vocab: int = 4
    d_model: int = 16
    d_state: int = 8
    n_layers: int = 2
    d_conv: int = 4
    batch: int = 64
    steps: int = 400
    lr: float = 3e-3
    eval_batch: int = 1024

    @property
    def vocab_size(self) -> int:
        return self.vocab + 2


def train_copying(config: CopyingConfig, *, selective: bool, seed: int = 0, device: str = "cpu",
                  impl: str = "auto"):
    """Train a :class:`SequenceModel` on selective copying; return ``(model, losses)``.

    Cross-entropy on the ``n_tokens`` answer positions only; AdamW with a cosine schedule.
    ``seed`` sets the initialisation and the training stream (``stream_seed(seed, "copy/train")``),
    which never shares a generator with :func:`copying_accuracy`'s evaluation stream."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(stream_seed(seed, "copy/train"))
    model = SequenceModel(config.vocab_size, config.d_model, config.d_state, config.n_layers,
                          selective=selective, d_conv=config.d_conv, impl=impl).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.0)

    def loss_at(_):
        tokens, targets = selective_copying(config.batch, n_tokens=config.n_tokens, length=config.length,
                                            vocab=config.vocab, generator=g)
        logits = model(tokens.to(device))[:, config.length:]
        return F.cross_entropy(logits.reshape(-1, config.vocab_size), targets.to(device).reshape(-1))

    return model, _fit(opt, config.steps, loss_at)


def _fit(opt: torch.optim.Optimizer, steps: int, loss_at: Callable[[int], torch.Tensor]) -> list[float]:
    """``steps`` steps of ``opt`` on ``loss_at(i)`` under a cosine learning-rate schedule; the losses."""
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    losses = []
    for i in range(steps):
        loss = loss_at(i)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    return losses


@torch.no_grad()
def copying_accuracy(model: nn.Module, config: CopyingConfig, *, seed: int, device: str = "cpu") -> float:
    """Fraction of answer tokens right on ``eval_batch`` fresh sequences (chance: ``1/vocab``),
    drawn from the evaluation stream ``stream_seed(seed, "copy/eval")``, independent of the
    training stream of the same ``seed``."""
    g = torch.Generator().manual_seed(stream_seed(seed, "copy/eval"))
    tokens, targets = selective_copying(config.eval_batch, n_tokens=config.n_tokens, length=config.length,
                                        vocab=config.vocab, generator=g)
    pred = model(tokens.to(device))[:, config.length:].argmax(-1).cpu()
    return (pred == targets).float().mean().item()


# ----------------------------------------------------------------------------- continuous time


@dataclass
class DelayTask:
    """Band-limited signals on ``[0, duration)``: ``u(t) = Σ_k α_k sin(2π f_k t + φ_k)`` with
    ``f_k < max_freq`` (cycles per time unit), target ``y(t) = u(t − delay)``, scored where
    ``t ≥ delay`` (earlier, the needed past lies before the sequence starts).

    The signals are continuous, so the same draw can be sampled at any step: that is what
    lets a model trained at one step be tested at another.
    """

    duration: float = 8.0
    delay: float = 1.0
    n_waves: int = 3
    max_freq: float = 1.0

    def sample(self, batch: int, step: float, *, seed: int):
        """``u, y: (batch, l, 1)`` at times ``t_j = j·step``, and ``mask: (l,)``; the same
        ``seed`` gives the same continuous signals at every ``step``."""
        if not 0 < step <= self.duration:
            raise ValueError(f"step = {step!r} is not allowed: expected 0 < step <= duration = {self.duration}")
        g = torch.Generator().manual_seed(seed)
        freq = torch.rand(batch, self.n_waves, 1, generator=g) * self.max_freq
        phase = torch.rand(batch, self.n_waves, 1, generator=g) * 2 * math.pi
        amp = torch.randn(batch, self.n_waves, 1, generator=g) / math.sqrt(self.n_waves)
        t = torch.arange(round(self.duration / step), dtype=torch.float32) * step

        def wave(time):
            return (amp * torch.sin(2 * math.pi * freq * time + phase)).sum(1)[..., None]

        return wave(t), wave(t - self.delay), t >= self.delay


class DelayNet(nn.Module):
    """``u: (b, l, 1) → y: (b, l, 1)``: a linear encoder, one :class:`S4D` layer, GELU and a
    linear decoder. Only the SSM knows about time; ``step_scale`` rescales its ``Δ``."""

    def __init__(self, d_model: int = 8, d_state: int = 32, *, step_min: float = 1e-2, step_max: float = 1e-1):
        super().__init__()
        self.encoder = nn.Linear(1, d_model)
        self.ssm = S4D(d_model, d_state, step_min=step_min, step_max=step_max)
        self.decoder = nn.Linear(d_model, 1)

    def forward(self, u: torch.Tensor, *, step_scale: float = 1.0, mode: str = "conv") -> torch.Tensor:
        return self.decoder(F.gelu(self.ssm(self.encoder(u), step_scale=step_scale, mode=mode)))


def train_delay(task: DelayTask, *, step: float, steps: int, batch: int = 32, lr: float = 1e-2,
                d_model: int = 8, d_state: int = 32, seed: int = 0, device: str = "cpu"):
    """Fit a :class:`DelayNet` at sampling ``step`` (masked MSE, Adam); ``(model, losses)``."""
    torch.manual_seed(seed)
    model = DelayNet(d_model, d_state).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)

    def loss_at(i):
        u, y, mask = (x.to(device) for x in task.sample(batch, step, seed=stream_seed(seed, f"delay/train/{i}")))
        return ((model(u) - y)[:, mask] ** 2).mean()

    return model, _fit(opt, steps, loss_at)


@torch.no_grad()
def delay_r2(model: DelayNet, task: DelayTask, *, step: float, step_scale: float, seed: int,
             batch: int = 256) -> float:
    """Coefficient of determination ``R² = 1 − SSE/SST`` on fresh signals sampled at ``step``
    (the evaluation stream ``stream_seed(seed, "delay/eval")``: the same continuous signals at
    every ``step``, none of them a training signal)."""
    device = next(model.parameters()).device
    u, y, mask = (x.to(device) for x in task.sample(batch, step, seed=stream_seed(seed, "delay/eval")))
    err = (model(u, step_scale=step_scale) - y)[:, mask]
    target = y[:, mask]
    return 1.0 - (err ** 2).sum().item() / ((target - target.mean()) ** 2).sum().item()


RESAMPLINGS = (("fine", 0.5), ("coarse", 2.0))


@torch.no_grad()
def resampling_r2(model: DelayNet, task: DelayTask, *, step: float, seed: int, resamplings=RESAMPLINGS) -> dict:
    """``R²`` of a model trained at ``step`` on the evaluation signals of ``seed``: at ``step``
    ("train"), and for each ``(name, factor)`` at ``factor · step`` with ``Δ`` rescaled by the
    same factor ("<name>_rescaled") and with ``Δ`` as trained ("<name>_naive")."""
    r2 = {"train": delay_r2(model, task, step=step, step_scale=1.0, seed=seed)}
    for name, factor in resamplings:
        r2[f"{name}_rescaled"] = delay_r2(model, task, step=step * factor, step_scale=factor, seed=seed)
        r2[f"{name}_naive"] = delay_r2(model, task, step=step * factor, step_scale=1.0, seed=seed)
    return r2


def worst_r2_change(r2: dict, *, rescaled: bool = True, resamplings=RESAMPLINGS) -> float:
    """``min`` over the resamplings of ``R²(resampled) − R²(trained step)``, with ``Δ`` rescaled
    (the claim) or kept as trained (its negative control)."""
    kind = "rescaled" if rescaled else "naive"
    return min(r2[f"{name}_{kind}"] - r2["train"] for name, _ in resamplings)


# ----------------------------------------------------------------------------- attention vs SSM


def attention_inputs(length: int, d_model: int, *, head_dim: int = 64, device="cpu",
                     dtype=torch.float32, seed: int = 0):
    """``q, k, v: (1, d_model/head_dim, length, head_dim)`` for one sequence."""
    if d_model % head_dim:
        raise ValueError(f"d_model = {d_model!r} is not allowed: expected a multiple of head_dim = {head_dim}")
    g = torch.Generator().manual_seed(seed)
    shape = (1, d_model // head_dim, length, head_dim)
    return tuple(torch.randn(shape, generator=g).to(device, dtype) for _ in range(3))


def causal_attention(q, k, v):
    """``softmax(q kᵀ/√d + causal mask) v`` by ``scaled_dot_product_attention`` (PyTorch picks
    the kernel: flash / memory-efficient where available, which never stores the L×L scores)."""
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def causal_attention_math(q, k, v):
    """The same attention written out: the ``(L, L)`` score matrix is materialised."""
    l = q.shape[-2]
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    mask = torch.ones(l, l, dtype=torch.bool, device=q.device).triu(1)
    return scores.masked_fill(mask, float("-inf")).softmax(-1) @ v


def ssm_inputs(length: int, d_model: int, *, d_state: int = 16, device="cpu", dtype=torch.float32,
               seed: int = 0):
    """Inputs of one selective-scan layer for one sequence: ``u, Δ: (1, L, d)``, ``A: (d, n)``,
    ``B, C: (1, L, n)``, ``D: (d,)`` (A, D in float32)."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(1, length, d_model, generator=g)
    delta = F.softplus(torch.randn(1, length, d_model, generator=g) - 3)
    A = -torch.arange(1, d_state + 1, dtype=torch.float32).repeat(d_model, 1)
    B = torch.randn(1, length, d_state, generator=g)
    C = torch.randn(1, length, d_state, generator=g)
    D = torch.ones(d_model)
    return (u.to(device, dtype), delta.to(device, dtype), A.to(device), B.to(device, dtype),
            C.to(device, dtype), D.to(device))


def ssm_scan(inputs, *, impl: str = "auto"):
    """The selective scan of :func:`ssm_inputs`. ``impl``: ``"chunked"`` (PyTorch, parallel
    within chunks of 256 tokens, state carried across: the fast choice on a CPU),
    ``"parallel"`` (PyTorch parallel scan over the whole sequence), or as in
    :func:`selective_scan` (``"auto"``, ``"triton"``, ``"torch"``)."""
    if impl == "chunked":
        return selective_scan_chunked(*inputs)
    if impl == "parallel":
        return selective_scan_parallel(*inputs)
    return selective_scan(*inputs, impl=impl)


def sdpa_backend(q, k, v) -> str:
    """The kernel ``scaled_dot_product_attention`` picks for these inputs with a causal mask
    ("flash", "efficient", "math", ...): flash and memory-efficient never store the
    ``(L, L)`` scores; "math" writes them out like :func:`causal_attention_math`."""
    try:
        choice = torch._fused_sdp_choice(q, k, v, is_causal=True)
        return torch.nn.attention.SDPBackend(choice).name.lower().removesuffix("_attention")
    except (AttributeError, RuntimeError, ValueError):  # private API: report, never fail
        return "unknown"


# ----------------------------------------------------------------------------- timing and fits


def timing_clock(device: str, threads: int):
    """The clock that times a computation: on a CPU with one intra-op thread, the CPU time of
    the calling thread (``time.thread_time``: PyTorch then runs every operator on it, and
    time the thread spends descheduled by other processes is not counted, so a loaded machine
    does not inflate the reading); otherwise wall time (``time.perf_counter``), which counts
    all threads and the GPU."""
    return time.thread_time if device == "cpu" and threads == 1 else time.perf_counter


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def interleaved_seconds(fns: dict, *, repeats: int, device: str = "cpu", min_time: float = 0.005,
                        clock=time.perf_counter) -> dict:
    """``{name: [seconds per call, one per repeat]}`` for each callable in ``fns``.

    Each reading times ``⌈min_time / t₀⌉`` back-to-back calls (``t₀``: one call after a
    warm-up), so short calls are not lost in the clock's resolution. The readings are
    interleaved: every repeat times every callable once, in an order rotated from repeat to
    repeat, so a burst of load from other processes spreads over all of them instead of one.
    Load only ever adds time: the least reading is the most faithful, and the spread of the
    readings is what the intervals built on them report."""
    if repeats < 1 or min_time <= 0:
        raise ValueError(f"repeats = {repeats!r}, min_time = {min_time!r}: expected repeats >= 1 and min_time > 0")
    from dynbook.measure.timing import steady_allocator

    steady_allocator()  # the scans allocate large temporaries: keep the allocator out of the readings
    names = list(fns)
    calls = {}
    for name in names:
        fns[name]()  # warm-up: lazy initialisation, compilation and autotuning stay out
        _sync(device)
        t0 = clock()
        fns[name]()
        _sync(device)
        calls[name] = max(1, math.ceil(min_time / max(clock() - t0, 1e-9)))
    out = {name: [] for name in names}
    for r in range(repeats):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            fn, n = fns[name], calls[name]
            _sync(device)
            t0 = clock()
            for _ in range(n):
                fn()
            _sync(device)
            out[name].append((clock() - t0) / n)
    return out


def cost_spread(seconds: dict, *, seed: int = 0):
    """Slowest ÷ fastest of several computations from interleaved readings (``seconds[name]``:
    seconds per repeat): ``(Estimate, slowest, fastest)``, the two picked by their least
    reading, the ratio by :func:`dynbook.book.stats.timing_ratio` (bootstrap of least readings). Applied to two copies of one computation it
    measures only the timing noise (≈ 1)."""
    if len(seconds) < 2:
        raise ValueError(f"cost_spread needs at least two computations, got {list(seconds)}")
    least = {k: min(v) for k, v in seconds.items()}
    slowest, fastest = max(least, key=least.get), min(least, key=least.get)
    if slowest == fastest:
        slowest, fastest = list(seconds)[:2]
    from dynbook.book.stats import timing_ratio

    return timing_ratio(seconds[slowest], seconds[fastest], seed=seed, bootstrap="least"), slowest, fastest


def fit_points(n: int, *, min_points: int = 3) -> list[int]:
    """Indices of the longer half of a sweep of ``n`` lengths (at least ``min_points``, or all
    of them): where fixed per-call overheads no longer hide the growth with length."""
    return list(range(max(0, min(n // 2, n - min_points)), n))


def _finite_points(lengths, values):
    return [(float(L), float(v)) for L, v in zip(lengths, values) if np.isfinite(v) and v > 0]


def upper_fit(lengths, values) -> tuple[float, float] | None:
    """Power-law fit ``log v = s log L + c`` over the longer half (:func:`fit_points`) of the
    finite, positive values: ``(s, c)``, or None with fewer than two such points."""
    pts = _finite_points(lengths, values)
    pts = [pts[i] for i in fit_points(len(pts))]
    return loglog_fit(*zip(*pts)) if len(pts) >= 2 else None


def _slope(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least-squares slopes of the rows of ``y`` against ``x`` (log–log already applied)."""
    xc = x - x.mean()
    return ((y - y.mean(-1, keepdims=True)) * xc).sum(-1) / (xc ** 2).sum()


def time_exponent(lengths, samples, *, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> Estimate | None:
    """Exponent ``s`` of ``time ∝ L^s`` from interleaved repeats, over the longer half of the
    lengths that ran (``samples[i]``: the seconds of each repeat at ``lengths[i]``; an empty
    list or NaNs: not run).

    Value: the least-squares slope through the least reading at each length (load from other
    processes only adds time, so the least reading is the faithful one). Interval: percentile
    bootstrap of that slope, the repeats resampled at each length independently (widened to
    contain the value): it is as wide as the least readings are unstable, so a loaded machine
    gives a wide interval. None with fewer than two lengths or two repeats."""
    rows = [(L, np.asarray(s, dtype=float)) for L, s in zip(lengths, samples)
            if len(s) and np.all(np.isfinite(s)) and np.all(np.asarray(s) > 0)]
    rows = [rows[i] for i in fit_points(len(rows))]
    if len(rows) < 2 or min(r.size for _, r in rows) < 2:
        return None
    x = np.log([L for L, _ in rows])
    value = float(_slope(x, np.log([r.min() for _, r in rows])))
    rng = np.random.default_rng(seed)
    boot = np.stack([r[rng.integers(0, r.size, size=(n_boot, r.size))].min(axis=1) for _, r in rows], -1)
    slopes = _slope(x, np.log(boot))
    q = (1 - level) / 2
    lo, hi = (float(np.quantile(slopes, a)) for a in (q, 1 - q))
    return Estimate(value, min(lo, value), max(hi, value),
                    f"log-log slope of least times over L = {int(rows[0][0])}…{int(rows[-1][0])}, bootstrap over "
                    f"{min(r.size for _, r in rows)} interleaved repeats", len(rows), (), level)


def memory_exponent(lengths, values) -> Estimate | None:
    """Exponent ``s`` of ``bytes ∝ L^s`` for deterministic byte counts, over the longer half of
    the finite values: the least-squares slope, with the interval ``[min, max]`` of the local
    slopes between successive lengths there (how far the counts are from one power law: the
    count has no sampling noise, only this misfit). None with fewer than two points."""
    pts = _finite_points(lengths, values)
    pts = [pts[i] for i in fit_points(len(pts))]
    if len(pts) < 2:
        return None
    x, y = np.log(np.array(pts)).T
    value = float(_slope(x, y))
    local = np.diff(y) / np.diff(x)
    return Estimate(value, min(value, float(local.min())), max(value, float(local.max())),
                    f"log-log slope of exact byte counts over L = {int(pts[0][0])}…{int(pts[-1][0])}; "
                    "interval: range of the local slopes", len(pts))


def crossover_length(lengths, quadratic, linear):
    """The first length from which the cost ``quadratic`` (attention) stays above ``linear``
    (the SSM scan) for the rest of the sweep, or None if it never does."""
    lengths = list(lengths)
    above = [q > s for q, s in zip(quadratic, linear)]
    for i in range(len(lengths)):
        if all(above[i:]):
            return lengths[i]
    return None


def fitted_crossover(fit_a: tuple[float, float], fit_b: tuple[float, float]) -> float | None:
    """Where two power laws ``exp(c) L^s`` from :func:`dynbook.measure.timing.loglog_fit` meet."""
    (sa, ca), (sb, cb) = fit_a, fit_b
    if sa == sb:
        return None
    return float(math.exp((cb - ca) / (sa - sb)))


def crossover(lengths, attention, scan, *, seed: int = 0) -> dict:
    """Where the scan becomes faster than attention, from interleaved repeats (``attention[i]``,
    ``scan[i]``: seconds of each repeat at ``lengths[i]``; lengths where either did not run
    are skipped).

    ``ratio_longest`` / ``ratio_shortest``: attention ÷ scan time at the longest / shortest
    length (:func:`dynbook.book.stats.timing_ratio`, an interval over the repeats); a crossover is
    *measured* when the first is above 1 and the second below. ``measured``: the first length
    from which attention's least time stays above the scan's (None if none). ``fitted``: where
    the power laws fitted to the longer half meet: an extrapolation, reported, never decisive.
    ``text``: one sentence for the prose."""
    from dynbook.book.stats import timing_ratio

    rows = [(L, a, s) for L, a, s in zip(lengths, attention, scan) if len(a) >= 2 and len(s) >= 2
            and np.all(np.isfinite(a)) and np.all(np.isfinite(s))]
    if len(rows) < 2:
        raise ValueError(f"crossover needs both methods at two lengths or more with ≥ 2 repeats, got {len(rows)}")
    L = [r[0] for r in rows]
    least_a = [min(r[1]) for r in rows]
    least_s = [min(r[2]) for r in rows]
    measured = crossover_length(L, least_a, least_s)
    fa, fs = upper_fit(L, least_a), upper_fit(L, least_s)
    fitted = fitted_crossover(fa, fs) if fa and fs else None
    if measured is not None:
        text = f"from L = {measured} on (measured)"
    elif fitted is not None and fa[0] > fs[0] and fitted > L[-1]:
        text = (f"nowhere within the sweep (L ≤ {L[-1]}); the fitted power laws would cross at L ≈ {fitted:.3g}, "
                "an extrapolation that decides nothing")
    else:
        text = f"nowhere within the sweep (L ≤ {L[-1]})"
    return {"lengths": L, "measured": measured, "fitted": fitted, "text": text,
            "ratio_longest": timing_ratio(rows[-1][1], rows[-1][2], seed=seed),
            "ratio_shortest": timing_ratio(rows[0][1], rows[0][2], seed=seed)}


# ----------------------------------------------------------------------------- attention vs SSM sweep

SWEEP_METHODS = ("attention", "attention_math", "ssm")


def scaling_sweep(lengths, *, d_model: int, d_state: int, device: str, dtype=torch.float32,
                  ssm_impl: str = "auto", repeats: int = 5, min_time: float = 0.005,
                  math_bytes_limit: float = 2**28, clock=time.perf_counter):
    """Seconds and peak memory per sequence of causal attention, fused
    (``scaled_dot_product_attention``: "attention") and written out with its ``(heads, L, L)``
    scores ("attention_math", only while the float32 scores fit in ``math_bytes_limit``), and
    of the selective scan ("ssm"), at each length.

    Time: :func:`interleaved_seconds` over every (method, length) at once, ``repeats``
    readings each, read from ``clock`` (see :func:`timing_clock`). Memory: :func:`dynbook.measure.timing.peak_bytes`, once (the CUDA allocator's
    peak on a GPU; on a CPU the tensors ATen operators materialise, blind to a fused
    kernel's internal scratch). The projections are left out of both (the same ``O(L d²)``
    GEMMs in each): this is the part that differs, token mixing. Returns ``{"length": [...],
    "seconds": {method: [[s per repeat] per length]}, "bytes": {method: [bytes per length]},
    "sdpa_backend": [...]}``, with ``[]`` / NaN where a method was not run (too large, or out
    of memory)."""
    nan = float("nan")
    res = {"length": list(lengths), "seconds": {m: [] for m in SWEEP_METHODS},
           "bytes": {m: [] for m in SWEEP_METHODS}, "sdpa_backend": []}
    runs = {}
    for length in lengths:
        q = attention_inputs(length, d_model, device=device, dtype=dtype)
        s = ssm_inputs(length, d_model, d_state=d_state, device=device, dtype=dtype)
        res["sdpa_backend"].append(sdpa_backend(*q))
        fns = {"attention": partial(causal_attention, *q), "ssm": partial(ssm_scan, s, impl=ssm_impl)}
        if (d_model // 64) * length * length * 4 <= math_bytes_limit:
            fns["attention_math"] = partial(causal_attention_math, *q)
        with torch.no_grad():
            for m in SWEEP_METHODS:
                try:
                    if m in fns:
                        fns[m]()  # warm-up: compiling and autotuning stay out of the count
                        res["bytes"][m].append(float(peak_bytes(fns[m], device=device)))
                        runs[(m, length)] = fns[m]
                        continue
                except torch.OutOfMemoryError:
                    pass
                res["bytes"][m].append(nan)
        if device == "cuda":
            torch.cuda.empty_cache()
    with torch.no_grad():
        seconds = interleaved_seconds(runs, repeats=repeats, device=device, min_time=min_time, clock=clock)
    for m in SWEEP_METHODS:
        res["seconds"][m] = [seconds.get((m, L), []) for L in lengths]
    return res


# ----------------------------------------------------------------------------- kernel speed


def scan_speed(b: int, l: int, d: int, n: int, *, device: str = "cuda", dtype=torch.float32,
               impls=("triton", "parallel", "torch"), repeats: int = 5, min_time: float = 0.05,
               seed: int = 0) -> dict:
    """Interleaved seconds per call (:func:`interleaved_seconds`) of the selective scan on one
    ``(b, l, d, n)`` input as the Triton kernel ("triton"), the PyTorch parallel scan
    ("parallel") and the sequential PyTorch loop ("torch"), and of a device copy that reads
    and writes the bytes the scan must move once ("copy": ``bytes / 2`` copied). ``bytes``:
    :func:`dynbook.kernels.scan.selective_scan_bytes`. ``"triton_again"`` in ``impls`` times
    the kernel a second time, as if it were another implementation (the negative control of a
    speed-up: the ratio of two copies of one computation is ≈ 1)."""
    from dynbook.kernels import scan as _scan

    args = _scan.selective_scan_inputs(b, l, d, n, dtype=dtype, device=device, seed=seed)
    nbytes = _scan.selective_scan_bytes(b, l, d, n, torch.empty((), dtype=dtype).element_size())
    src = torch.empty(max(1, nbytes // 8), dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    every = {"triton": partial(selective_scan, *args, impl="triton"),
             "parallel": partial(selective_scan_parallel, *args),
             "torch": partial(_scan.selective_scan_reference, *args),
             "copy": partial(dst.copy_, src)}
    every["triton_again"] = partial(selective_scan, *args, impl="triton")  # a second copy: timing noise only
    unknown = set(impls) - set(every)
    if unknown:
        raise ValueError(f"impls {sorted(unknown)} are not allowed: expected some of {sorted(every)}")
    with torch.no_grad():
        seconds = interleaved_seconds({k: every[k] for k in (*impls, "copy")}, repeats=repeats, device=device,
                                      min_time=min_time)
    return {"seconds": seconds, "bytes": nbytes, "copy_bytes": 2 * src.numel() * 4,
            "shape": {"b": b, "l": l, "d": d, "n": n}, "dtype": str(dtype).removeprefix("torch.")}


# ----------------------------------------------------------------------------- the chapter's experiments
# Each returns what a run measured, with ``"records"``: ``{name: {"value", "unit", "labels",
# "claim"}}``, the keyword arguments of ``dynbook.record`` (the names the chapter's prose
# glues); the chapter records them, checks, decides its claims and plots.


def _metric(value, claim: str, unit: str = "", labels: dict | None = None) -> dict:
    return {"value": value, "unit": unit, "labels": labels, "claim": claim}


def check_lengths(name: str, lengths) -> list[int]:
    """``lengths`` unchanged if strictly increasing, else a ParameterError naming ``name``."""
    from dynbook.book.params import ParameterError

    if lengths is not None and any(b <= a for a, b in zip(lengths, lengths[1:])):
        raise ParameterError(f"parameter {name!r} = {lengths!r} is not allowed: expected strictly "
                             "increasing lengths")
    return lengths


def three_computations(width: int, d_state: int, lengths, *, repeats: int, device: str = "cpu",
                       threads: int | None = None, clock=time.perf_counter, seed: int = 0,
                       check_length: int = 777, min_time: float = 0.03) -> dict:
    """One :class:`S4D` layer (``H = width``, ``N = d_state``, initialised from ``seed``)
    computed as a recurrence, an FFT convolution and a parallel scan (:data:`MODES`).

    Agreement: the largest deviation of "conv" and "scan" from "recurrence", relative to the
    largest output (:func:`dynbook.measure.fits.relative_error`), in float64 on a batch of two
    irregular sequences of ``check_length`` (``"dev64"``) and in float32 at the longest length
    (``"dev32"``). Cost: :func:`interleaved_seconds` of every (mode, length) on ``threads``
    intra-op threads, plus a second copy of the scan at the longest length (``"scan again"``:
    the negative control). ``"spread"``/``"control"``: :func:`cost_spread` of the three modes
    and of the scan against its copy, at the longest length; ``"seconds"``: least reading per
    mode and length."""
    import copy

    from dynbook.measure.fits import relative_error
    from dynbook.measure.timing import num_threads

    lengths = [positive_int(f"lengths[{i}]", L) for i, L in enumerate(lengths)]
    positive_int("repeats", repeats)
    dev = torch.device(device)
    torch.manual_seed(seed)
    model = S4D(width, d_state).to(dev)
    model64 = copy.deepcopy(model).double()
    g = torch.Generator().manual_seed(seed)
    u64 = torch.randn(2, check_length, width, generator=g, dtype=torch.float64).to(dev)
    with torch.no_grad():
        y64 = {m: model64(u64, mode=m) for m in MODES}
        dev64 = max(relative_error(y64[m], y64["recurrence"]) for m in ("conv", "scan"))
        u32 = torch.randn(1, lengths[-1], width, generator=g).to(dev)
        y32 = {m: model(u32, mode=m) for m in MODES}
        dev32 = max(relative_error(y32[m], y32["recurrence"]) for m in ("conv", "scan"))
    inputs = {L: torch.randn(1, L, width, generator=g).to(dev) for L in lengths}
    longest = lengths[-1]
    runs = {(m, L): partial(model, inputs[L], mode=m) for L in lengths for m in MODES}
    runs[("scan again", longest)] = partial(model, inputs[longest], mode="scan")
    with torch.no_grad(), num_threads(threads or torch.get_num_threads()):
        readings = interleaved_seconds(runs, repeats=repeats, device=device, min_time=min_time, clock=clock)
    spread, slowest, fastest = cost_spread({m: readings[(m, longest)] for m in MODES}, seed=seed)
    control, _, _ = cost_spread({m: readings[(m, longest)] for m in ("scan", "scan again")}, seed=seed)
    seconds = {m: [min(readings[(m, L)]) for L in lengths] for m in MODES}
    shape = {"lengths": lengths, "H": width, "N": d_state, "batch": 1, "device": device}
    rec = {"s4d_width": _metric(width, "C1"), "s4d_state": _metric(d_state, "C1"),
           "s4d_max_rel_dev_float64": _metric(dev64, "C1", labels={"length": check_length}),
           "s4d_max_rel_dev_float32": _metric(dev32, "C1", labels={"length": longest})}
    for m in MODES:
        rec[f"s4d_seconds_{m}"] = _metric(seconds[m], "C1", "s (least of the interleaved readings)", shape)
        rec[f"s4d_ms_{m}_longest"] = _metric(seconds[m][-1] * 1e3, "C1", "ms")
    rec.update({"s4d_longest_length": _metric(longest, "C1"), "s4d_fastest": _metric(fastest, "C1"),
                "s4d_slowest": _metric(slowest, "C1"),
                "s4d_cost_ratio": _metric(spread.value, "C1", "slowest / fastest at the longest length"),
                "s4d_cost_ratio_control": _metric(control.value, "C1", "scan / scan again")})
    return {"lengths": lengths, "width": width, "d_state": d_state, "model": model,
            "dev64": dev64, "dev32": dev32, "check_length": check_length, "readings": readings,
            "seconds": seconds, "spread": spread, "control": control, "slowest": slowest,
            "fastest": fastest, "records": rec}


def resampling_experiment(task: DelayTask, *, samples: int, steps: int, seeds, device: str = "cpu",
                          threads: int | None = None) -> dict:
    """C2: one :class:`DelayNet` per seed trained with ``samples`` samples per sequence
    (:func:`train_delay`, ``steps`` Adam steps, ``threads`` intra-op threads) and scored by
    :func:`resampling_r2`. ``"per_seed"``: the R² dicts; ``"r2"``: their means;
    ``"change"``/``"control"``: the worst change of R² over the seeds with ``Δ`` rescaled /
    kept as trained (:func:`worst_r2_change`, :func:`dynbook.book.stats.over_seeds`);
    ``"model"``: the first seed's model."""
    from dynbook.book.stats import over_seeds
    from dynbook.measure.timing import num_threads

    positive_int("samples", samples)
    positive_int("steps", steps)
    seeds = list(seeds)
    if not seeds:
        raise ValueError("seeds=[] is not allowed: expected at least one seed")
    step = task.duration / samples
    per_seed, first = [], None
    with num_threads(threads or torch.get_num_threads()):
        for s in seeds:
            model, _ = train_delay(task, step=step, steps=steps, seed=s, device=device)
            per_seed.append(resampling_r2(model, task, step=step, seed=s))
            first = model if first is None else first
    r2 = {k: float(np.mean([r[k] for r in per_seed])) for k in per_seed[0]}
    rec = {"delay_train_samples": _metric(samples, "C2"),
           "delay_train_step": _metric(step, "C2", "time units"),
           "delay_steps": _metric(steps, "C2")}
    for k, v in r2.items():
        rec[f"delay_r2_{k}"] = _metric(v, "C2", f"R², mean over {len(seeds)} seeds",
                                       {"per_seed": [r[k] for r in per_seed]})
    return {"step": step, "samples": samples, "steps": steps, "seeds": seeds, "per_seed": per_seed,
            "r2": r2, "change": over_seeds([worst_r2_change(r) for r in per_seed]),
            "control": over_seeds([worst_r2_change(r, rescaled=False) for r in per_seed]),
            "model": first, "records": rec}


COPYING_MODELS = {"selective": True, "time_invariant": False}  # name → selective SSM?


def _copying_run(config: CopyingConfig, selective: bool, seed: int, device: str, impl: str,
                 threads: int | None) -> tuple[float, int, list]:
    """One training and scoring of :func:`copying_experiment`: ``(accuracy, parameters, losses)``
    (a module-level function, so a worker process can run it)."""
    from dynbook.measure.timing import num_threads

    with num_threads(threads or torch.get_num_threads()):
        model, losses = train_copying(config, selective=selective, seed=seed, device=device, impl=impl)
        return copying_accuracy(model, config, seed=seed, device=device), n_parameters(model), losses


def copying_experiment(config: CopyingConfig, *, seeds, device: str = "cpu", impl: str = "auto",
                       threads: int | None = None, workers: int = 1) -> dict:
    """C3: a selective and a time-invariant :class:`SequenceModel` (:data:`COPYING_MODELS`),
    trained alike once per seed (:func:`train_copying`, on ``threads`` intra-op threads) and
    scored on held-out sequences (:func:`copying_accuracy`). ``"accuracy"``: ``{model:
    [fraction per seed]}``; ``"parameters"``: ``{model: count}``; ``"losses"``: the first
    seed's training losses.

    ``workers > 1`` (CPU only) runs the trainings in that many spawned processes: each is
    seeded by its own ``seed`` and runs single-threaded as in one process, so the results are
    the same, only sooner on a machine with idle cores."""
    seeds = list(seeds)
    if not seeds:
        raise ValueError("seeds=[] is not allowed: expected at least one seed")
    positive_int("workers", workers)
    if workers > 1 and device != "cpu":
        raise ValueError(f"workers={workers!r} is not allowed on device {device!r}: expected 1 (CPU only)")
    jobs = [(config, selective, s, device, impl, threads) for s in seeds for selective in COPYING_MODELS.values()]
    if workers > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            runs = list(pool.map(_copying_run, *zip(*jobs)))
    else:
        runs = [_copying_run(*job) for job in jobs]
    acc = {name: [] for name in COPYING_MODELS}
    losses, n_params = {}, {}
    for (_, selective, _, _, _, _), (accuracy, count, trace) in zip(jobs, runs):
        name = next(k for k, v in COPYING_MODELS.items() if v == selective)
        acc[name].append(accuracy)
        n_params[name] = count
        losses.setdefault(name, trace)
    rec = {f"copy_{k}": _metric(getattr(config, k), "C3")
           for k in ("length", "n_tokens", "vocab", "d_model", "d_state", "n_layers", "steps", "batch")}
    for name in acc:
        rec[f"copy_accuracy_{name}"] = _metric(float(np.mean(acc[name])), "C3",
                                               f"fraction of answer tokens, mean over {len(seeds)} seeds",
                                               {"per_seed": acc[name]})
        rec[f"copy_parameters_{name}"] = _metric(n_params[name], "C3")
    rec["copy_chance"] = _metric(1 / config.vocab, "C3")
    return {"accuracy": acc, "parameters": n_params, "losses": losses, "seeds": seeds,
            "chance": 1 / config.vocab, "records": rec}


SWEEP_NAMES = {"attention": "attention", "attention_math": "attention_written_out", "ssm": "ssm"}


def sweep_analysis(sweep: dict, *, where: str, width: int, d_state: int, seed: int = 0) -> dict:
    """Exponents and crossover of one :func:`scaling_sweep` on device ``where`` (``"cpu"``,
    ``"cuda"``): ``"exponents"``: ``{method: {"time": Estimate | None, "memory": Estimate |
    None}}`` (:func:`time_exponent`, :func:`memory_exponent`); ``"crossover"``: the
    :func:`crossover` of fused attention and the scan; ``"backends"``: the kernels fused
    attention ran as; ``"records"``: each method's exponents, least seconds and bytes per
    length (named by :data:`SWEEP_NAMES`), and the crossover, prefixed by ``where``."""
    L = sweep["length"]
    exps = {m: {"time": time_exponent(L, sweep["seconds"][m], seed=seed),
                "memory": memory_exponent(L, sweep["bytes"][m])} for m in SWEEP_METHODS}
    cross = crossover(L, sweep["seconds"]["attention"], sweep["seconds"]["ssm"], seed=seed)
    backends = ", ".join(sorted(set(sweep["sdpa_backend"])))
    shape = {"lengths": L, "d": width, "n": d_state}
    rec = {}
    for m, name in SWEEP_NAMES.items():
        for kind, est in exps[m].items():
            rec[f"{where}_exponent_{name}_{kind}"] = _metric(
                None if est is None else est.value, "C4a" if kind == "time" else "C5a", "d log / d log L",
                None if est is None else {"interval": [est.lo, est.hi], "method": est.method})
        rec[f"{where}_seconds_{name}"] = _metric([min(r) if r else None for r in sweep["seconds"][m]], "C4a",
                                                 "s (least reading)", shape)
        rec[f"{where}_bytes_{name}"] = _metric([None if math.isnan(b) else b for b in sweep["bytes"][m]],
                                               "C5a", "bytes", shape)
    rec[f"{where}_crossover_length"] = _metric(cross["measured"], "C4c", "tokens (measured)")
    rec[f"{where}_crossover_fitted"] = _metric(cross["fitted"], "C4c", "tokens (extrapolated; decides nothing)")
    rec[f"{where}_crossover_text"] = _metric(cross["text"], "C4c")
    rec[f"{where}_sdpa_kernel"] = _metric(backends, "C5c")
    return {"exponents": exps, "crossover": cross, "backends": backends, "records": rec}


def sweep_rows(sweep: dict) -> list[list]:
    """Table rows of a :func:`scaling_sweep`: length, then ms (least reading) of fused attention,
    attention written out and the scan, then MiB of each."""
    ms = [[min(r) * 1e3 if r else float("nan") for r in sweep["seconds"][m]] for m in SWEEP_METHODS]
    mib = [[b / 2**20 for b in sweep["bytes"][m]] for m in SWEEP_METHODS]
    return [[L, *(c[i] for c in ms), *(c[i] for c in mib)] for i, L in enumerate(sweep["length"])]


def energy_per_token(meter, lengths, *, d_model: int, d_state: int, device: str = "cpu",
                     dtype=torch.float32, ssm_impl: str = "auto", readings: int = 3,
                     min_seconds: float = 1.0) -> dict:
    """Fused causal attention and the selective scan on one sequence of each length (shortest
    and longest first and last), metered per token by :func:`dynbook.measure.metered.metered`
    (time, and net energy where ``meter`` reads; nothing runs when it cannot).

    ``"metered"``: ``{L: {"attention": Metered, "ssm": Metered}}``; ``"ratio"``: ``{L: scan ÷
    attention energy per token}`` (:func:`dynbook.measure.metered.ratio`), None where a
    reading is missing or not positive (idle power not separable); ``"longest"``,
    ``"shortest"``: those ratios at the ends; ``"reason"`` (why they are None, else ""),
    ``"evidence"`` and ``"status"`` (one line for the prose)."""
    from dynbook.measure import metered as _metered

    positive_int("d_model", d_model)
    positive_int("d_state", d_state)
    lengths = [positive_int(f"lengths[{i}]", L) for i, L in enumerate(lengths)]
    out, ratio = {}, {}
    rec = {"energy_length": _metric(lengths[-1], "C6", "tokens")}
    if not meter.available:
        rec["energy_status"] = _metric(f"not measured: {meter.reason}", "C6")
        return {"metered": out, "ratio": ratio, "longest": None, "shortest": None, "records": rec,
                "reason": f"no energy counter on this machine ({meter.reason})", "evidence": ""}
    with torch.no_grad():
        for L in lengths:
            q = attention_inputs(L, d_model, device=device, dtype=dtype)
            s = ssm_inputs(L, d_model, d_state=d_state, device=device, dtype=dtype)
            fns = {"attention": partial(causal_attention, *q), "ssm": partial(ssm_scan, s, impl=ssm_impl)}
            out[L] = _metered.metered(fns, units=L, meter=meter, device=device, readings=readings,
                                      min_seconds=min_seconds)
            readable = all(v is not None and v > 0 for m in out[L].values() for v in (m.picojoules or [None]))
            ratio[L] = _metered.ratio(out[L]["ssm"], out[L]["attention"], what="energy") if readable else None
    for L, r in out.items():
        for name, m in r.items():
            rec[f"energy_pj_per_token_{name}_L{L}"] = _metric(m.picojoules, "C6", "pJ/token (net of idle), per reading",
                                                              {"device": device, "source": meter.source})
    longest, shortest = ratio[lengths[-1]], ratio[lengths[0]]
    if longest is None or shortest is None:
        reason, evidence = f"{meter.source} gave no positive net energy reading", ""
        status = f"{meter.source}: no positive net reading (idle power not separable)"
    else:
        reason, evidence = "", f"{meter.source}, net of idle power"
        status = (f"{meter.source}: scan ÷ attention energy per token {longest.value:.3g} at "
                  f"L = {lengths[-1]}, {shortest.value:.3g} at L = {lengths[0]}")
    rec["energy_status"] = _metric(status, "C6")
    return {"metered": out, "ratio": ratio, "longest": longest, "shortest": shortest, "records": rec,
            "reason": reason, "evidence": evidence}


def kernel_speedups(speed: dict, *, seed: int = 0) -> dict:
    """From :func:`scan_speed` (with ``"triton_again"``): each quantity of the kernel's targets
    as ``(estimate, negative control)``: ``"over_loop"`` (sequential loop ÷ kernel, control:
    kernel ÷ its copy), ``"over_parallel"`` (parallel scan ÷ kernel, same control),
    ``"copy_fraction"`` (fraction of copy bandwidth; control: the parallel scan's), with
    ``"evidence"`` per quantity, ``"text"`` (one line for the prose) and ``"records"`` (least
    ms per implementation)."""
    from dynbook.book.stats import timing_ratio

    sec = speed["seconds"]
    to_fraction = partial(float.__mul__, speed["bytes"] / speed["copy_bytes"])  # t_copy/t → bandwidth
    again = timing_ratio(sec["triton_again"], sec["triton"], seed=seed)
    least = {k: min(v) for k, v in sec.items()}
    text = (f"{least['torch'] / least['triton']:.3g}× the sequential loop, "
            f"{least['parallel'] / least['triton']:.3g}× the parallel scan, "
            f"{to_fraction(least['copy'] / least['triton']):.0%} of copy bandwidth")
    rec = {f"kernel_ms_{impl}": _metric(t * 1e3, "C7a", "ms (least reading)", speed["shape"])
           for impl, t in least.items()}
    return {"over_loop": (timing_ratio(sec["torch"], sec["triton"], seed=seed), again),
            "over_parallel": (timing_ratio(sec["parallel"], sec["triton"], seed=seed), again),
            "copy_fraction": (timing_ratio(sec["copy"], sec["triton"], seed=seed).map(to_fraction),
                              timing_ratio(sec["copy"], sec["parallel"], seed=seed).map(to_fraction)),
            "evidence": {"over_loop": "", "over_parallel": "",
                         "copy_fraction": f"{speed['bytes'] / 2**20:.0f} MiB moved at least; copy of "
                                          f"{speed['copy_bytes'] / 2**20:.0f} MiB in {least['copy'] * 1e3:.3g} ms"},
            "text": text, "records": rec}


KERNEL_SHAPE = (8, 4096, 1024, 16)  # (b, l, d, n): the shape of the kernel's targets (issue #4)
KERNEL_CHECK_SHAPES = {"cuda": [(2, 1000, 100, 16), (1, 333, 37, 5)],
                       "cpu": [(2, 37, 5, 3), (1, 20, 3, 16)]}  # irregular; small for the interpreter


def kernel_experiment(device: str, *, repeats: int, seed: int = 0) -> dict:
    """The Triton selective scan checked and, on a GPU, timed.

    Check: :func:`dynbook.kernels.scan.selective_scan_error` on each shape of
    :data:`KERNEL_CHECK_SHAPES` (on a CPU in Triton's interpreter): ``"errors"``, the worst
    ``(output, gradient)`` relative errors against float64. Speed (CUDA only):
    :func:`scan_speed` at :data:`KERNEL_SHAPE` with ``repeats`` interleaved readings, as
    :func:`kernel_speedups` in ``"speedups"`` (None on a CPU); ``"text"``: one line for the
    prose; ``"records"``."""
    from dynbook.kernels.scan import selective_scan_error

    positive_int("repeats", repeats)
    on_gpu = device == "cuda"
    shapes = KERNEL_CHECK_SHAPES["cuda" if on_gpu else "cpu"]
    errors = [selective_scan_error(*shape, device=device, seed=seed) for shape in shapes]
    worst = tuple(max(e[i] for e in errors) for i in (0, 1))
    rec = {"kernel_rel_err": _metric(worst[0], "C7a"), "kernel_grad_rel_err": _metric(worst[1], "C7a")}
    speedups, text = None, "not timed (no GPU in this run)"
    if on_gpu:
        speed = scan_speed(*KERNEL_SHAPE, device="cuda", impls=("triton", "triton_again", "parallel", "torch"),
                           repeats=repeats, min_time=0.05, seed=seed)
        speedups = kernel_speedups(speed, seed=seed)
        rec.update(speedups["records"])
        text = speedups["text"]
    rec["kernel_text"] = _metric(text, "C7a")
    return {"shapes": shapes, "errors": worst, "speedups": speedups, "text": text, "records": rec,
            "where": "GPU" if on_gpu else "Triton interpreter"}


def compiled_tables(table: dict | None = None) -> tuple[list, list, list]:
    """The scan kernels "compiled, not timed" (``results/static/kernels.json``, written by
    ``benchmarks/static_kernels.py``; empty where it is absent): ``(launches, rooflines,
    gpus)``. ``launches``: one row per (launch, arch) of the launches compiled for every
    architecture (launch, arch, registers, spilled bytes, exp / shuffles / instructions per
    element); ``rooflines``: one row per design of the selective scan (kernel, design, then
    floor µs and what sets it on each of ``gpus``)."""
    from dynbook.kernels import static

    table = static.load_table() if table is None else table
    rows = static.summary_rows("_ssm", table)
    archs = {}
    for r in rows:
        archs.setdefault(r["launch"], set()).add(r["arch"])
    every = set().union(*archs.values())
    launches = [[r["launch"], r["arch"], r["registers"], r["spill_bytes"], r["exp_per_element"],
                 r["shuffles_per_element"], r["instructions_per_element"]]
                for r in rows if archs[r["launch"]] == every]
    roofs = [r for r in table.get("roofline", []) if r["kernel"].startswith("selective_scan")]
    gpus = list(dict.fromkeys(r["gpu"] for r in roofs))
    designs = {}
    for r in roofs:
        designs.setdefault((r["kernel"], r["from"]), {})[r["gpu"]] = f"{r['floor_us']:.0f} ({r['bound']})"
    return launches, [[k, d, *(v.get(g, "") for g in gpus)] for (k, d), v in designs.items()], gpus


def plot_scaling(ax, bx, sweeps: dict, main: str) -> None:
    """Seconds (``ax``, least reading) and peak memory (``bx``) per sequence against its length
    for fused attention (solid), attention written out (dashed) and the scan, for each device's
    :func:`scaling_sweep` in ``sweeps``; dotted guides of slopes 1 and 2 through the scan's
    first point on device ``main``."""
    colors = {"cpu": ("C0", "C1"), "cuda": ("C2", "C3")}
    for where, sw in sweeps.items():
        L = np.array(sw["length"], dtype=float)
        ca, cs = colors[where]
        least = {m: np.array([min(r) if r else np.nan for r in sw["seconds"][m]]) for m in SWEEP_METHODS}
        for axis, values, unit in ((ax, least, 1e3), (bx, {m: np.array(sw["bytes"][m]) for m in SWEEP_METHODS},
                                                      1 / 2**20)):
            axis.loglog(L, values["attention"] * unit, "o-", color=ca, label=f"attention, fused, {where}")
            axis.loglog(L, values["attention_math"] * unit, "o--", color=ca, alpha=0.6,
                        label=f"attention, written out, {where}")
            axis.loglog(L, values["ssm"] * unit, "s-", color=cs, label=f"scan, {where}")
    sw = sweeps[main]
    L = np.array(sw["length"], dtype=float)
    for axis, y0 in ((ax, min(sw["seconds"]["ssm"][0]) * 1e3), (bx, sw["bytes"]["ssm"][0] / 2**20)):
        axis.loglog(L, y0 * (L / L[0]), "k:", lw=0.8)
        axis.loglog(L, y0 * (L / L[0]) ** 2, "k:", lw=0.8)
    ax.set(xlabel="sequence length L", ylabel="ms per sequence")
    bx.set(xlabel="sequence length L", ylabel="MiB per sequence")
    ax.legend(fontsize=7)


def plot_resampling(ax, bx, result: dict, task: DelayTask, *, seed: int = 0) -> None:
    """C2's figure from :func:`resampling_experiment`: on ``ax`` one held-out signal's delayed
    target and the first seed's model output on samples 2× finer, with ``Δ`` rescaled or kept;
    on ``bx`` the mean R² at each sampling step, with and without rescaling."""
    step, model, r2 = result["step"], result["model"], result["r2"]
    device = next(model.parameters()).device
    u, y, _ = task.sample(1, step / 2, seed=stream_seed(seed, "delay/eval"))
    t = torch.arange(u.shape[1]) * step / 2
    with torch.no_grad():
        y_res = model(u.to(device), step_scale=0.5).cpu()
        y_naive = model(u.to(device), step_scale=1.0).cpu()
    ax.plot(t, y[0, :, 0], color="grey", lw=3, alpha=0.5, label="target u(t − 1)")
    ax.plot(t, y_res[0, :, 0], label="Δ rescaled")
    ax.plot(t, y_naive[0, :, 0], "--", label="Δ as trained")
    ax.axvspan(0, task.delay, color="grey", alpha=0.1)
    ax.set(xlabel="time t", ylabel="output", title="2× finer sampling")
    ax.legend(fontsize=8)
    xs = np.arange(3)
    bx.bar(xs - 0.2, [r2["train"], r2["fine_rescaled"], r2["coarse_rescaled"]], 0.4, label="Δ rescaled")
    bx.bar(xs + 0.2, [r2["train"], r2["fine_naive"], r2["coarse_naive"]], 0.4, label="Δ as trained")
    bx.set(xticks=xs, xticklabels=["trained", "2× finer", "2× coarser"], ylabel="R²",
           ylim=(min(-0.1, min(r2.values()) - 0.1), 1.05))
    bx.axhline(0, color="k", lw=0.8)
    bx.legend(fontsize=8)
