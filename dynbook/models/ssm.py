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
"""

from __future__ import annotations

import math
import time
import zlib
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

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


def max_rel_dev(x: torch.Tensor, ref: torch.Tensor) -> float:
    """``max |x − ref| / max |ref|``: a deviation relative to the largest output."""
    x, ref = x.detach(), ref.detach()
    return float((x - ref).abs().max() / ref.abs().max())


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
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, config.steps)
    losses = []
    for _ in range(config.steps):
        tokens, targets = selective_copying(config.batch, n_tokens=config.n_tokens, length=config.length,
                                            vocab=config.vocab, generator=g)
        logits = model(tokens.to(device))[:, config.length:]
        loss = F.cross_entropy(logits.reshape(-1, config.vocab_size), targets.to(device).reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    return model, losses


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
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    losses = []
    for i in range(steps):
        u, y, mask = (x.to(device) for x in task.sample(batch, step, seed=stream_seed(seed, f"delay/train/{i}")))
        loss = ((model(u) - y)[:, mask] ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    return model, losses


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


# ----------------------------------------------------------------------------- kernel speed, energy


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


def energy_per_token(meter, fns: dict, *, tokens: int, readings: int = 3, min_seconds: float = 1.0,
                     device: str = "cpu") -> dict:
    """``{name: [picojoules per token, net of idle power] × readings}`` from ``meter``
    (:class:`dynbook.measure.energy.EnergyMeter`), the callables interleaved; each reading runs a
    callable back to back for ≥ ``min_seconds`` (energy counters tick in ms or coarser).
    ``None`` entries where the meter gave no net reading."""
    if readings < 1 or tokens < 1:
        raise ValueError(f"readings = {readings!r}, tokens = {tokens!r}: expected both >= 1")
    calls = {}
    for name, fn in fns.items():
        fn()
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        calls[name] = max(1, math.ceil(min_seconds / max(time.perf_counter() - t0, 1e-9)))
    out = {name: [] for name in fns}
    for r in range(readings):
        names = list(fns)
        names = names[r % len(names):] + names[:r % len(names)]
        for name in names:
            with meter:
                for _ in range(calls[name]):
                    fns[name]()
            out[name].append(meter.reading.per(calls[name] * tokens))
    return out
