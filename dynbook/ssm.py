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
===============  ===========================================================================

S4D (Gu, Gupta, Goel & Ré 2022; "S4D-Lin" initialisation ``A_n = −½ + iπn``) computed three
ways that must agree: ``mode="recurrence"`` (one step per token), ``"conv"`` (FFT convolution
with ``K``) and ``"scan"`` (a parallel scan over the recurrence). ``SSMBlock`` is a Mamba block
(Gu & Dao 2023, Fig. 3) whose SSM is either selective (``Δ, B, C`` computed from the input)
or the time-invariant S4D, so the two differ in nothing else.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from .measure import least_median_seconds, peak_bytes
from .kernels.scan import (linear_scan_parallel, linear_scan_reference, selective_scan,
                           selective_scan_chunked, selective_scan_parallel)

MODES = ("recurrence", "conv", "scan")


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
    ``A_n = −(n+1)``), ``Δ = softplus(W_Δ x + b_Δ)``, ``B = W_B x``, ``C = W_C x``.
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
        self.ssm = (SelectiveSSM(d_inner, d_state, impl=impl) if selective
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

    Cross-entropy on the ``n_tokens`` answer positions only; AdamW with a cosine schedule."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed + 1)
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
    """Fraction of answer tokens right on ``eval_batch`` fresh sequences (chance: ``1/vocab``)."""
    g = torch.Generator().manual_seed(seed)
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
        u, y, mask = (x.to(device) for x in task.sample(batch, step, seed=seed * 100_003 + i + 1))
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
    """Coefficient of determination ``R² = 1 − SSE/SST`` on fresh signals sampled at ``step``."""
    device = next(model.parameters()).device
    u, y, mask = (x.to(device) for x in task.sample(batch, step, seed=seed))
    err = (model(u, step_scale=step_scale) - y)[:, mask]
    target = y[:, mask]
    return 1.0 - (err ** 2).sum().item() / ((target - target.mean()) ** 2).sum().item()


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


def scaling_sweep(lengths, *, d_model: int, d_state: int, device: str, dtype=torch.float32,
                  ssm_impl: str = "auto", min_run_time: float = 0.1, repeats: int = 3,
                  math_bytes_limit: float = 2**28):
    """Time (s) and peak memory (bytes) per sequence of causal attention
    (``scaled_dot_product_attention``; and written out, while its ``(heads, L, L)`` float32
    scores fit in ``math_bytes_limit``) and of the selective scan, at each length.

    Time is the least of ``repeats`` medians (``time_it``), the methods interleaved: load from
    other processes only ever adds time, so the least is the most faithful reading. The
    projections are left out of both (the same ``O(L d²)`` GEMMs in each): this is the part
    that differs, token mixing. Returns a dict of lists, NaN where a method was not run (too
    large) or ran out of memory."""
    res = {k: [] for k in ("length", "attention_s", "attention_math_s", "ssm_s",
                           "attention_bytes", "attention_math_bytes", "ssm_bytes")}
    nan = float("nan")
    names = ("attention", "attention_math", "ssm")
    for length in lengths:
        res["length"].append(length)
        q = attention_inputs(length, d_model, device=device, dtype=dtype)
        s = ssm_inputs(length, d_model, d_state=d_state, device=device, dtype=dtype)
        runs = {"attention": lambda: causal_attention(*q), "ssm": lambda: ssm_scan(s, impl=ssm_impl)}
        if (d_model // 64) * length * length * 4 <= math_bytes_limit:
            runs["attention_math"] = lambda: causal_attention_math(*q)
        memory = {}
        with torch.no_grad():
            for name in list(runs):
                try:
                    runs[name]()  # warm-up: compiling and autotuning stay out of the measurement
                    memory[name] = peak_bytes(runs[name], device=device)
                except torch.OutOfMemoryError:
                    del runs[name]
            seconds = least_median_seconds(runs, device=device, min_run_time=min_run_time, repeats=repeats)
        for name in names:
            res[f"{name}_s"].append(seconds[name] if name in runs else nan)
            res[f"{name}_bytes"].append(memory[name] if name in runs else nan)
        del q, s, runs
        if device == "cuda":
            torch.cuda.empty_cache()
    return res


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
    """Where two power laws ``exp(c) L^s`` from :func:`dynbook.measure.loglog_fit` meet."""
    (sa, ca), (sb, cb) = fit_a, fit_b
    if sa == sb:
        return None
    return float(math.exp((cb - ca) / (sa - sb)))
