"""Deep linear networks and Saxe et al.'s exact learning dynamics.

Glossary (code name → symbol):

===================  ========================================================================
``teacher``          M = U diag(s) Vᵀ, the input–output correlation Σ_yx of whitened inputs
``weights``          [W_1, …, W_D], the network computes W_D ⋯ W_1 x
``mode_strengths``   u_α = u_αᵀ (W_D ⋯ W_1) v_α, the network's strength on teacher mode α
``saxe_mode``        the closed form u(t) = s e^{2st/τ} / (e^{2st/τ} − 1 + s/u_0) (depth 2)
``tau``              τ = 1/η: one step of gradient descent is η units of time
===================  ========================================================================

With whitened inputs the loss is L = ½‖M − W_D ⋯ W_1‖²_F. From the *decoupled* balanced start
W_1 = a R Vᵀ, W_2 = a U Rᵀ (R any orthogonal hidden rotation, a² = u_0) each mode strength
obeys τ u̇ = 2u(s − u) exactly (Saxe et al. 2014, eq. 7); deeper balanced networks obey
τ u̇ = D u^{2−2/D}(s − u) (:func:`mode_rhs`).
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
    """u_α = u_αᵀ (W_D ⋯ W_1) v_α for each teacher mode: (k,)."""
    return torch.einsum("ia,ij,ja->a", tch["U"], product(weights), tch["V"])


def train(weights, M: torch.Tensor, *, lr: float, n_steps: int, every: int = 1,
          tch: dict | None = None, stop_loss: float | None = None) -> dict:
    """Full-batch gradient descent on L = ½‖M − W_D ⋯ W_1‖²_F (whitened inputs).

    Returns {"t": times k·η at the recorded steps, "loss": (T,), "u": (T, k) mode strengths
    when ``tch`` is given, "steps": steps taken}; stops early once L ≤ ``stop_loss``."""
    _checks.positive("lr", lr)
    _checks.positive_int("n_steps", n_steps, minimum=0)
    _checks.positive_int("every", every)
    ws = [w.clone().requires_grad_() for w in weights]
    times, losses, us = [], [], []
    k = 0
    for k in range(n_steps + 1):
        loss = 0.5 * (M - product(ws)).pow(2).sum()
        if k % every == 0 or k == n_steps:
            times.append(k * lr)
            losses.append(loss.item())
            if tch is not None:
                us.append(mode_strengths([w.detach() for w in ws], tch))
        if (stop_loss is not None and loss.item() <= stop_loss) or k == n_steps:
            break
        grads = torch.autograd.grad(loss, ws)
        with torch.no_grad():
            for w, g in zip(ws, grads):
                w -= lr * g
    out = {"t": torch.tensor(times, dtype=torch.float64),
           "loss": torch.tensor(losses, dtype=torch.float64), "steps": k}
    if tch is not None:
        out["u"] = torch.stack(us)
    return out


def mode_study(n: int, singular_values, *, u0: float, lr: float, t_end: float,
               control_scale: float, seeds, every: int = 10) -> dict:
    """Depth-2 networks trained by GD against Saxe's closed form, per seed (each seed: its own
    teacher vectors and hidden rotation). ``error``: max over modes and recorded times of
    |u_sim − u_closed|/s_α from the decoupled start u_0; ``control``: the same from a Gaussian
    start of scale ``control_scale`` (closed form started at the measured u_α(0), clipped at
    10⁻³ s_α); ``t_half``: simulated times to u = s/2 (seeds × modes) and ``t_half_theory``."""
    _checks.positive("u0", u0)
    n_steps = round(t_end / lr)
    s = torch.as_tensor(singular_values, dtype=torch.float64)
    err, ctrl, t_half, traj = [], [], [], None
    for seed in seeds:
        g = torch.Generator().manual_seed(int(seed))
        tch = teacher(n, s, generator=g)
        run = train(init_weights("decoupled", n, 2, scale=u0, tch=tch, generator=g), tch["M"],
                    lr=lr, n_steps=n_steps, every=every, tch=tch)
        closed = saxe_mode(run["t"][:, None], s, u0)
        err.append(((run["u"] - closed).abs() / s).max().item())
        idx = (run["u"] >= s / 2).double().argmax(dim=0)
        t_half.append(run["t"][idx])
        big = train(init_weights("gaussian", n, 2, scale=control_scale, generator=g), tch["M"],
                    lr=lr, n_steps=n_steps, every=every, tch=tch)
        start = torch.maximum(big["u"][0], 1e-3 * s)
        ctrl.append(((big["u"] - saxe_mode(big["t"][:, None], s, start)).abs() / s).max().item())
        if traj is None:
            traj = {"t": run["t"], "u": run["u"], "closed": closed, "control": big["u"],
                    "control_closed": saxe_mode(big["t"][:, None], s, start)}
    return {"error": err, "control": ctrl, "t_half": torch.stack(t_half), "s": s,
            "t_half_theory": learning_time(s, u0), "trajectory": traj}


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


__all__ = ["INITS", "saxe_mode", "learning_time", "mode_rhs", "teacher", "haar", "init_weights",
           "product", "mode_strengths", "train", "mode_study", "depth_study"]
