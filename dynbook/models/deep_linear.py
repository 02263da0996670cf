"""Deep linear networks and Saxe et al.'s exact learning dynamics.

Glossary (code name → symbol):

===================  ========================================================================
``teacher``          M = U diag(s) Vᵀ, the input–output correlation Σ_yx of whitened inputs
``weights``          [W_1, …, W_D], the network computes W_D ⋯ W_1 x
``mode_strengths``   u_α = u_αᵀ (W_D ⋯ W_1) v_α, the network's strength on teacher mode α
``saxe_mode``        the closed form u(t) = s e^{2st/τ} / (e^{2st/τ} − 1 + s/u_0) (depth 2)
``mode_time``        the closed-form time t(u) to reach strength u (depths 2 and 3)
``deep_mode``        u(t) of depth 2 or 3, by inverting ``mode_time`` (bisection, float64)
``tau``              τ = 1/η: one step of gradient descent is η units of time
===================  ========================================================================

With whitened inputs the loss is L = ½‖M − W_D ⋯ W_1‖²_F. From the *decoupled* balanced start
W_1 = a R Vᵀ, W_2 = a U Rᵀ (R any orthogonal hidden rotation, a² = u_0) each mode strength
obeys τ u̇ = 2u(s − u) exactly (Saxe et al. 2014, eq. 7). In a depth-D network from the
decoupled balanced start every layer carries the mode with the same factor a (u = a^D), gradient
flow on L keeps them equal, and τ ȧ = a^{D−1}(s − a^D); hence τ u̇ = D u^{2−2/D}(s − u)
(:func:`mode_rhs`). For D = 3, with a = u^{1/3} and c = s^{1/3}, partial fractions give the
implicit solution t(u) = τ[G(a) − G(a_0)],

    G(a) = −1/(s a) + [½ ln(a² + ca + c²) − ln|c − a| − √3 arctan((2a + c)/(√3 c))]/(3 s c)

(:func:`mode_time`); :func:`deep_mode` inverts it.
"""

from __future__ import annotations

import math

import torch

from dynbook import _checks

INITS = ("decoupled", "orthogonal", "gaussian")


def saxe_mode(t, s, u0, tau: float = 1.0) -> torch.Tensor:
    """Saxe's closed-form mode strength of a depth-2 linear network under gradient flow:
    u(t) = s e^{2st/τ} / (e^{2st/τ} − 1 + s/u_0); t, s, u0 broadcast (float64)."""
    _checks.positive("tau", tau)
    t, s, u0 = (torch.as_tensor(v, dtype=torch.float64) for v in (t, s, u0))
    if torch.any(s <= 0) or torch.any(u0 <= 0):
        raise ValueError(f"s={s.tolist()!r} and u0={u0.tolist()!r} are not allowed: "
                         "expected singular values and initial strengths > 0")
    e = torch.exp(-2 * s * t / tau)  # written with e^{−2st/τ} so large t does not overflow
    return s / (1 + (s / u0 - 1) * e)


def learning_time(s, u0, tau: float = 1.0, fraction: float = 0.5) -> torch.Tensor:
    """Time for the depth-2 closed form to reach u = fraction·s:
    t = τ/(2s) ln[(s/u_0 − 1) f/(1 − f)], ∝ 1/s up to the logarithm."""
    _checks.in_range("fraction", fraction, 0.0, 1.0, closed=False)
    s, u0 = (torch.as_tensor(v, dtype=torch.float64) for v in (s, u0))
    return tau / (2 * s) * torch.log((s / u0 - 1) * fraction / (1 - fraction))


def _g3(a, s):
    """G(a) of the depth-3 implicit solution (module docstring): dG/da = 1/(a²(s − a³))."""
    c, r3 = s ** (1 / 3), math.sqrt(3)
    bracket = (0.5 * torch.log(a * a + c * a + c * c) - torch.log((c - a).abs())
               - r3 * torch.atan((2 * a + c) / (r3 * c)))
    return -1 / (s * a) + bracket / (3 * s * c)


def _mode_args(s, u0, depth):
    _checks.one_of("depth", depth, (2, 3))
    s, u0 = (torch.as_tensor(v, dtype=torch.float64) for v in (s, u0))
    if torch.any(s <= 0) or torch.any(u0 <= 0):
        raise ValueError(f"s={s.tolist()!r} and u0={u0.tolist()!r} are not allowed: "
                         "expected singular values and initial strengths > 0")
    return s, u0


def mode_time(u, s, u0, depth: int, tau: float = 1.0) -> torch.Tensor:
    """The gradient-flow time for one mode of a balanced depth-2 or depth-3 linear network to
    go from u0 to u (u between u0 and s; broadcast, float64):
    D = 2: t = τ/(2s) ln[u(s − u_0)/(u_0(s − u))]; D = 3: t = τ[G(u^{1/3}) − G(u_0^{1/3})]."""
    _checks.positive("tau", tau)
    s, u0 = _mode_args(s, u0, depth)
    u = torch.as_tensor(u, dtype=torch.float64)
    if depth == 2:
        return tau / (2 * s) * torch.log(u * (s - u0) / (u0 * (s - u)))
    return tau * (_g3(u ** (1 / 3), s) - _g3(u0 ** (1 / 3), s))


def deep_mode(t, s, u0, depth: int, tau: float = 1.0, *, n_iter: int = 80) -> torch.Tensor:
    """u(t) of one mode of a balanced depth-D linear network under gradient flow, D = 2 (Saxe's
    sigmoid, :func:`saxe_mode`) or D = 3 (the implicit solution of :func:`mode_time` inverted by
    ``n_iter`` bisection steps on the path from u_0 to s, along which t(u) increases)."""
    _checks.positive("tau", tau)
    _checks.positive_int("n_iter", n_iter)
    s, u0 = _mode_args(s, u0, depth)
    if depth == 2:
        return saxe_mode(t, s, u0, tau)
    t = torch.as_tensor(t, dtype=torch.float64)
    t, s, u0 = torch.broadcast_tensors(t, s, u0)
    a0, c = u0 ** (1 / 3), s ** (1 / 3)
    target = _g3(a0, s) + t / tau
    lo, hi = torch.zeros_like(t), torch.ones_like(t)  # the fraction of the way from a_0 to c
    for _ in range(n_iter):
        mid = (lo + hi) / 2
        late = _g3(a0 + mid * (c - a0), s) > target  # G rises along the path either way
        hi, lo = torch.where(late, mid, hi), torch.where(late, lo, mid)
    return (a0 + (lo + hi) / 2 * (c - a0)) ** 3


def mode_rhs(u, s, depth: int, tau: float = 1.0):
    """du/dt of one mode of a balanced depth-D network: D u^{2−2/D} (s − u)/τ."""
    _checks.positive_int("depth", depth, minimum=2)
    return depth * u.abs() ** (2 - 2 / depth) * torch.sign(u) * (s - u) / tau


def teacher(n: int, singular_values, *, generator=None) -> dict:
    """M = U diag(s) Vᵀ, n × n, with Haar-random U and V: {"M", "U", "V", "s"} (float64)."""
    _checks.positive_int("n", n)
    s = torch.as_tensor(singular_values, dtype=torch.float64)
    if s.ndim != 1 or s.numel() > n or torch.any(s <= 0):
        raise ValueError(f"singular_values={singular_values!r} is not allowed: expected at "
                         f"most n={n} positive values")
    u, v = haar(n, generator), haar(n, generator)
    k = s.numel()
    return {"M": u[:, :k] @ torch.diag(s) @ v[:, :k].T, "U": u[:, :k], "V": v[:, :k], "s": s}


def haar(n: int, generator=None) -> torch.Tensor:
    """A Haar-random orthogonal n × n matrix (QR of a Gaussian, signs fixed)."""
    q, r = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


def init_weights(kind: str, n: int, depth: int, *, scale: float, tch: dict | None = None,
                 generator=None) -> list[torch.Tensor]:
    """[W_1, …, W_D], each n × n.

    ``decoupled``: Saxe's special start, every layer a^{…} aligned with the teacher through
    random hidden rotations, so each mode strength starts at ``scale`` (needs ``tch``);
    ``orthogonal``: each layer ``scale`` × a Haar-random orthogonal matrix (balanced);
    ``gaussian``: entries N(0, scale²/n)."""
    _checks.one_of("kind", kind, INITS)
    _checks.positive_int("depth", depth, minimum=1)
    _checks.positive("scale", scale)
    if kind == "gaussian":
        return [scale / math.sqrt(n) * torch.randn(n, n, generator=generator,
                                                   dtype=torch.float64) for _ in range(depth)]
    if kind == "orthogonal":
        return [scale * haar(n, generator) for _ in range(depth)]
    if tch is None:
        raise ValueError("tch=None is not allowed for kind='decoupled': pass the teacher")
    k = tch["s"].numel()
    a = scale ** (1 / depth)
    rots = [haar(n, generator)[:, :k] for _ in range(depth - 1)]
    frames = [tch["V"]] + rots + [tch["U"]]  # layer l maps frame l to frame l + 1
    return [a * frames[i + 1] @ frames[i].T for i in range(depth)]


def product(weights) -> torch.Tensor:
    out = weights[0]
    for w in weights[1:]:
        out = w @ out
    return out


def mode_strengths(weights, tch: dict) -> torch.Tensor:
    """u_α = u_αᵀ (W_D ⋯ W_1) v_α for each teacher mode: (…, k) (a leading batch of networks
    and teachers broadcasts)."""
    return torch.einsum("...ia,...ij,...ja->...a", tch["U"], product(weights), tch["V"])


def train(weights, M: torch.Tensor, *, lr: float, n_steps: int, every: int = 1,
          tch: dict | None = None, stop_loss: float | None = None) -> dict:
    """Full-batch gradient descent on L = ½‖M − W_D ⋯ W_1‖²_F (whitened inputs).

    Weights (…, n, n) and M may carry a leading batch of independent networks (the loss is
    then the sum of theirs, so each follows its own gradient). Returns {"t": times k·η at the
    recorded steps, "loss": (T,) summed, "u": (T, …, k) mode strengths when ``tch`` is given,
    "steps": steps taken}; stops early once L ≤ ``stop_loss``."""
    _checks.positive("lr", lr)
    _checks.positive_int("n_steps", n_steps, minimum=0)
    _checks.positive_int("every", every)
    ws = [w.clone() for w in weights]
    eye = torch.eye(ws[0].shape[-1], dtype=ws[0].dtype).expand_as(ws[0])
    times, losses, us = [], [], []
    k = 0
    for k in range(n_steps + 1):
        prefix = [eye]  # W_l ⋯ W_1 for l = 0 … D
        for w in ws:
            prefix.append(w @ prefix[-1])
        resid = M - prefix[-1]
        record = k % every == 0 or k == n_steps
        if record or stop_loss is not None:
            loss = 0.5 * resid.pow(2).sum().item()
        if record:
            times.append(k * lr)
            losses.append(loss)
            if tch is not None:
                us.append(mode_strengths(ws, tch))
        if (stop_loss is not None and loss <= stop_loss) or k == n_steps:
            break
        # ∂L/∂W_l = −(W_D ⋯ W_{l+1})ᵀ (M − W_D ⋯ W_1) (W_{l−1} ⋯ W_1)ᵀ, by hand: autograd's
        # bookkeeping costs more than these small matrix products
        back = resid
        for i in range(len(ws) - 1, -1, -1):
            grad_w = back @ prefix[i].transpose(-1, -2)
            back = ws[i].transpose(-1, -2) @ back
            ws[i] = ws[i] + lr * grad_w
    out = {"t": torch.tensor(times, dtype=torch.float64),
           "loss": torch.tensor(losses, dtype=torch.float64), "steps": k}
    if tch is not None:
        out["u"] = torch.stack(us)
    return out


def mode_study(n: int, singular_values, *, u0: float, lr: float, t_end: float,
               control_scale: float, seeds, every: int = 10, depth: int = 2) -> dict:
    """Depth-``depth`` (2 or 3) networks trained by GD against the closed form
    (:func:`deep_mode`), per seed (each seed: its own teacher vectors and hidden rotations;
    the seeds train together as one batch). ``error``: max over modes and recorded times of
    |u_sim − u_closed|/s_α from the decoupled start u_0; ``control``: the same from a Gaussian
    start of scale ``control_scale`` (closed form started at the measured u_α(0), clipped at
    10⁻³ s_α); ``t_half``: simulated times to u = s/2 (seeds × modes) and ``t_half_theory``."""
    _checks.positive("u0", u0)
    _checks.positive("t_end", t_end)  # NaN when u0 is not below the weakest s_α
    _checks.one_of("depth", depth, (2, 3))
    n_steps = round(t_end / lr)
    s = torch.as_tensor(singular_values, dtype=torch.float64)
    tchs, small, big = [], [], []
    for seed in seeds:
        g = torch.Generator().manual_seed(int(seed))
        tchs.append(teacher(n, s, generator=g))
        small.append(init_weights("decoupled", n, depth, scale=u0, tch=tchs[-1], generator=g))
        big.append(init_weights("gaussian", n, depth, scale=control_scale, generator=g))
    tch = {k: torch.stack([t[k] for t in tchs]) for k in ("M", "U", "V")}
    layers = lambda ws: [torch.stack([w[i] for w in ws]) for i in range(depth)]  # noqa: E731
    run = train(layers(small), tch["M"], lr=lr, n_steps=n_steps, every=every, tch=tch)
    closed = deep_mode(run["t"][:, None], s, u0, depth)
    err = ((run["u"] - closed[:, None]).abs() / s).amax(dim=(0, 2))
    idx = (run["u"] >= s / 2).double().argmax(dim=0)
    ctl = train(layers(big), tch["M"], lr=lr, n_steps=n_steps, every=every, tch=tch)
    start = torch.maximum(ctl["u"][0], 1e-3 * s)
    ctl_closed = deep_mode(ctl["t"][:, None, None], s, start, depth)
    ctrl = ((ctl["u"] - ctl_closed).abs() / s).amax(dim=(0, 2))
    traj = {"t": run["t"], "u": run["u"][:, 0], "closed": closed, "control": ctl["u"][:, 0],
            "control_closed": ctl_closed[:, 0]}
    return {"error": err.tolist(), "control": ctrl.tolist(), "t_half": run["t"][idx], "s": s,
            "t_half_theory": mode_time(s / 2, s, u0, depth), "trajectory": traj}


def depth_ratio_threshold(depths) -> float:
    """The decision threshold for "learning time nearly independent of depth", on the log₂
    scale of the learning-time ratio between the deepest and the shallowest network:
    ½ log₂(ln D_max/ln D_min), the midpoint between a depth-independent time (0) and the
    slowest unbounded growth, t ∝ ln D (log₂(ln D_max/ln D_min)). Depths [2, 8]: ½ log₂ 3."""
    lo, hi = min(depths), max(depths)
    _checks.positive_int("min(depths)", lo, minimum=2)
    if hi <= lo:
        raise ValueError(f"depths={list(depths)!r} is not allowed: expected at least two "
                         "different depths ≥ 2")
    return 0.5 * math.log2(math.log(hi) / math.log(lo))


def depth_study(n: int, singular_values, *, depths, lr: float, max_steps: int, seeds,
                scales: dict, tol: float = 1e-2) -> dict:
    """Learning time (k·η until L ≤ tol·L(M), from the random start) against depth for each
    initialisation in ``scales`` {kind: scale} ("orthogonal", "gaussian"): returns
    {kind: (len(depths), len(seeds)) times} and per seed the log₂ ratio of the deepest to the
    shallowest network's time (``log2_ratio``: {kind: [..]}). A run that does not reach the
    tolerance in ``max_steps`` counts ``max_steps``·η (a lower bound)."""
    s = torch.as_tensor(singular_values, dtype=torch.float64)
    times = {kind: torch.zeros(len(depths), len(seeds), dtype=torch.float64) for kind in scales}
    for j, seed in enumerate(seeds):
        g = torch.Generator().manual_seed(int(seed) + 7919)
        tch = teacher(n, s, generator=g)
        stop = tol * 0.5 * tch["M"].pow(2).sum().item()
        for kind, scale in scales.items():
            for i, depth in enumerate(depths):
                w = init_weights(kind, n, depth, scale=scale, generator=g)
                run = train(w, tch["M"], lr=lr, n_steps=max_steps, every=max_steps,
                            stop_loss=stop)
                times[kind][i, j] = run["steps"] * lr
    ratio = {k: torch.log2(v[-1] / v[0]).tolist() for k, v in times.items()}
    return {"depths": list(depths), "times": times, "log2_ratio": ratio}


__all__ = ["INITS", "saxe_mode", "learning_time", "mode_time", "deep_mode", "mode_rhs", "teacher",
           "haar", "init_weights", "product", "mode_strengths", "train", "mode_study",
           "depth_ratio_threshold", "depth_study"]
