"""Echo state networks (reservoir computing) for Chapter 8: hand-written, batched, numpy float64.

Glossary (code ↔ maths), after Jaeger (2001) and Lukoševičius (2012):

================  =========================================================================
``W``             reservoir matrix (N × N), Gaussian scaled to spectral radius ``rho`` = ρ
``W_in``, ``b``   input weights and bias, uniform in ±``input_scaling`` and ±``bias_scale``
``leak``          leak rate a: r ← (1 − a) r + a tanh(W r + W_in u + b)
``W_out``         linear readout on the features [1, r, r²], one ridge solve
``mc``            memory capacity Σ_k r²(u_{t−k}, ŷ_k) (Jaeger 2002)
================  =========================================================================

Reservoirs are batched ``(B, N, N)`` (one per (ρ, seed) pair) and run ``M`` input streams side
by side, so a ρ sweep over seeds is one loop over time. :func:`reservoirpy_states` runs the same
reservoir through reservoirpy, the check that the hand-written update is the standard one.
Lyapunov exponents use :func:`dynbook.models.chaos.benettin` (imported lazily: ``chaos`` imports
this module).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from dynbook import _checks


def _benettin(*args, **kwargs):
    from dynbook.models.chaos import benettin

    return benettin(*args, **kwargs)


@dataclass
class Reservoir:
    """``B`` independent leaky tanh reservoirs (numpy float64): ``W (B, N, N)``,
    ``W_in (B, N, D)``, ``b (B, N)``; ``W_out (B, 2N + 1, D_out)`` once trained (features
    ``[1, r, r²]``). States are ``(B, M, N)``: ``M`` runs of every reservoir side by side."""

    W: np.ndarray
    W_in: np.ndarray
    b: np.ndarray
    leak: float = 1.0
    W_out: np.ndarray | None = None

    @property
    def size(self) -> int:
        return self.W.shape[-1]

    def select(self, i: int) -> "Reservoir":
        """Reservoir ``i`` alone (a batch of one)."""
        sl = slice(i, i + 1)
        return Reservoir(self.W[sl], self.W_in[sl], self.b[sl], self.leak,
                         None if self.W_out is None else self.W_out[sl])


def make_reservoirs(n: int, d_in: int, *, rho: Sequence[float] | float, seeds: Sequence[int],
                    input_scaling: float = 0.1, bias_scale: float = 0.1, leak: float = 1.0) -> Reservoir:
    """One reservoir per ``(ρ, seed)`` pair (ρ-major): dense Gaussian ``W`` scaled to spectral
    radius ρ (one matrix per seed, the same at every ρ), ``W_in`` and ``b`` uniform in
    ±``input_scaling`` and ±``bias_scale``."""
    _checks.positive_int("n", n)
    _checks.positive_int("d_in", d_in)
    _checks.positive("input_scaling", input_scaling, allow_zero=True)
    _checks.positive("bias_scale", bias_scale, allow_zero=True)
    _checks.in_range("leak", leak, 0.0, 1.0)
    if not leak > 0:
        raise ValueError(f"leak={leak!r} is not allowed: expected a number in (0, 1]")
    rhos = [float(rho)] if np.isscalar(rho) else [float(r) for r in rho]
    for r in rhos:
        _checks.positive("rho", r)
    if len(seeds) == 0:
        raise ValueError("seeds=[] is not allowed: expected at least one seed")
    Ws, Wins, bs = [], [], []
    for s in seeds:
        g = np.random.default_rng([int(s), 8])
        W = g.standard_normal((n, n))
        Ws.append(W / np.max(np.abs(np.linalg.eigvals(W))))
        Wins.append(g.uniform(-input_scaling, input_scaling, (n, d_in)))
        bs.append(g.uniform(-bias_scale, bias_scale, n))
    return Reservoir(np.stack([r * W for r in rhos for W in Ws]), np.stack([w for _ in rhos for w in Wins]),
                     np.stack([v for _ in rhos for v in bs]), float(leak))


def reservoir_step(res: Reservoir, R: np.ndarray, U: np.ndarray) -> np.ndarray:
    """``r ← (1 − a) r + a tanh(W r + W_in u + b)``; ``R (B, M, N)``, ``U (B or 1, M, D)``."""
    pre = R @ res.W.transpose(0, 2, 1) + U @ res.W_in.transpose(0, 2, 1) + res.b[:, None, :]
    return np.tanh(pre) if res.leak == 1.0 else (1 - res.leak) * R + res.leak * np.tanh(pre)


def _runs(u) -> np.ndarray:
    u = np.asarray(u, dtype=float)
    if u.ndim == 1:
        u = u[:, None]
    return u[None] if u.ndim == 2 else u  # (M, T, D)


def harvest(res: Reservoir, u, R0=None) -> np.ndarray:
    """States ``(B, M, T, N)`` driven by ``u: (T,)``, ``(T, D)`` or ``(M, T, D)`` (shared
    by every reservoir); ``r_t`` has seen ``u_0 … u_t``."""
    u = _runs(u)
    B, N = res.W.shape[0], res.size
    M, T = u.shape[:2]
    drive = np.einsum("mtd,bnd->bmtn", u, res.W_in) + res.b[:, None, None, :]
    R = np.zeros((B, M, N)) if R0 is None else R0
    out = np.empty((B, M, T, N))
    WT = res.W.transpose(0, 2, 1)
    for t in range(T):
        pre = R @ WT + drive[:, :, t]
        R = np.tanh(pre) if res.leak == 1.0 else (1 - res.leak) * R + res.leak * np.tanh(pre)
        out[:, :, t] = R
    return out


def features(states: np.ndarray) -> np.ndarray:
    """Readout features ``[1, r, r²]`` (the squares break tanh's odd symmetry, which a
    linear readout of an odd reservoir cannot, Pathak et al. 2017)."""
    return np.concatenate([np.ones_like(states[..., :1]), states, states ** 2], axis=-1)


def ridge(X: np.ndarray, Y: np.ndarray, reg: float) -> np.ndarray:
    """Batched ridge regression ``argmin ‖X W − Y‖² + reg ‖W‖²``: ``X (B, T, F)``,
    ``Y (B, T, O)`` → ``(B, F, O)`` (one solve of the normal equations)."""
    _checks.positive("reg", reg)
    G = X.transpose(0, 2, 1) @ X + reg * np.eye(X.shape[-1])
    return np.linalg.solve(G, X.transpose(0, 2, 1) @ Y)


def train_readout(res: Reservoir, u, target, *, washout: int, reg: float = 1e-6) -> Reservoir:
    """Fit ``W_out`` (one ridge solve per reservoir) on the states driven by ``u (T, D)``,
    after ``washout`` steps, to ``target (T, D_out)``; returns ``res`` with ``W_out`` set."""
    _checks.positive_int("washout", washout, minimum=0)
    S = harvest(res, u)[:, 0, washout:]
    Y = np.asarray(target, dtype=float)[washout:]
    res.W_out = ridge(features(S), np.broadcast_to(Y, (S.shape[0],) + Y.shape), reg)
    return res


def _readout(res: Reservoir, R: np.ndarray) -> np.ndarray:
    return features(R) @ res.W_out


def esn_forecast(res: Reservoir, warmup, n_steps: int) -> np.ndarray:
    """Closed-loop forecast: drive with the true past ``warmup (M, W, D)``, then feed back
    the readout's prediction for ``n_steps``; returns ``(B, M, n_steps, D)``."""
    if res.W_out is None:
        raise ValueError("res.W_out is None: train the readout first (train_readout)")
    _checks.positive_int("n_steps", n_steps)
    R = harvest(res, warmup)[:, :, -1]
    y = _readout(res, R)
    out = np.empty(R.shape[:2] + (n_steps, y.shape[-1]))
    for t in range(n_steps):
        out[:, :, t] = y
        R = reservoir_step(res, R, y)
        y = _readout(res, R)
    return out


def esn_lyapunov(res: Reservoir, warmup, *, dt: float, n_steps: int, seed: int = 0) -> np.ndarray:
    """λ_max (1/time) of each trained reservoir run closed loop, ``r ↦ step(r, W_out f(r))``,
    an autonomous map on its states, started after the true ``warmup (M, W, D)``.
    Returns ``(B, M)``."""
    R0 = harvest(res, warmup)[:, :, -1]
    B, M, N = R0.shape

    def step(X, k):
        R = X.reshape(2, B, M, N).transpose(1, 0, 2, 3).reshape(B, 2 * M, N)
        R = reservoir_step(res, R, _readout(res, R))
        return R.reshape(B, 2, M, N).transpose(1, 0, 2, 3).reshape(2 * B * M, N)
    lam = _benettin(step, R0.reshape(B * M, N), dt=dt, n_steps=n_steps, d0=1e-8,
                   n_discard=n_steps // 10, seed=seed)
    return lam.reshape(B, M)


def driven_lyapunov(res: Reservoir, u, *, washout: int = 200, seed: int = 0) -> np.ndarray:
    """λ_max per step of each reservoir driven by ``u: (T,)`` or ``(T, D)`` with no readout
    feedback (the conditional Lyapunov exponent): < 0 means the echo-state property (the
    states forget where they started), > 0 chaos. Returns ``(B,)``."""
    u = _runs(u)[0]
    R0 = harvest(res, u[:washout])[:, 0, -1]
    B, N = R0.shape
    drive = np.einsum("td,bnd->btn", u[washout:], res.W_in) + res.b[:, None, :]
    WT = res.W.transpose(0, 2, 1)

    def step(X, k):
        R = X.reshape(2, B, N).transpose(1, 0, 2)  # (B, 2, N)
        pre = R @ WT + drive[:, None, k]
        R = np.tanh(pre) if res.leak == 1.0 else (1 - res.leak) * R + res.leak * np.tanh(pre)
        return R.transpose(1, 0, 2).reshape(2 * B, N)
    return _benettin(step, R0, dt=1.0, n_steps=u.shape[0] - washout, d0=1e-8, seed=seed)


def reservoirpy_states(W: np.ndarray, W_in: np.ndarray, b: np.ndarray, u: np.ndarray, *, leak: float = 1.0) -> np.ndarray:
    """States of the same reservoir run by reservoirpy's ``Reservoir`` node (a check on
    :func:`harvest`): ``u (T, D)`` → ``(T, N)``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from reservoirpy.nodes import Reservoir as RPReservoir
    node = RPReservoir(W=np.asarray(W), Win=np.asarray(W_in), bias=np.asarray(b).reshape(-1),
                       lr=leak, activation="tanh", input_dim=W_in.shape[1])
    return np.asarray(node.run(np.asarray(u, dtype=float)))


def memory_capacity(states: np.ndarray, u: np.ndarray, *, max_delay: int, washout: int,
                    reg: float = 1e-8, split: float = 0.5) -> np.ndarray:
    """Delayed-recall capacities ``MC_k = r²(u_{t−k}, ŷ_k)``, ``k = 1 … max_delay``, of
    states ``(T, N)`` driven by a scalar ``u: (T,)``: a linear readout (with bias) is fit on
    the first ``split`` of the series and scored on the rest (squared correlation)."""
    _checks.positive_int("max_delay", max_delay)
    S = np.asarray(states, dtype=float)
    u = np.asarray(u, dtype=float).reshape(-1)
    T = S.shape[0]
    if u.size != T or washout + max_delay + 10 >= T:
        raise ValueError(f"states ({T} steps), u ({u.size}), washout={washout}, max_delay={max_delay}: "
                         "expected one length, longer than washout + max_delay + 10")
    t0 = washout + max_delay
    X = np.column_stack([np.ones(T - t0), S[t0:]])
    cut = int(split * (T - t0))
    G = X[:cut].T @ X[:cut] + reg * np.eye(X.shape[1])
    Y = np.column_stack([u[t0 - k:T - k] for k in range(1, max_delay + 1)])  # (T - t0, K)
    pred = X[cut:] @ np.linalg.solve(G, X[:cut].T @ Y[:cut])
    pc, yc = pred - pred.mean(0), Y[cut:] - Y[cut:].mean(0)
    den = np.sqrt((pc ** 2).sum(0) * (yc ** 2).sum(0))
    r = np.divide((pc * yc).sum(0), den, out=np.zeros(max_delay), where=den > 0)
    return r ** 2


def linear_memory_capacity(W: np.ndarray, w_in: np.ndarray, *, max_delay: int, n_terms: int = 2000) -> np.ndarray:
    """Closed-form ``MC_k`` of the linear reservoir ``x_t = W x_{t−1} + w_in u_t`` with i.i.d.
    zero-mean input: ``MC_k = (W^k w)ᵀ C⁻¹ (W^k w)``, ``C = Σ_j W^j w wᵀ W^jᵀ`` (needs
    ρ(W) < 1; the input variance cancels)."""
    W = np.asarray(W, dtype=float)
    w = np.asarray(w_in, dtype=float).reshape(-1)
    if np.max(np.abs(np.linalg.eigvals(W))) >= 1:
        raise ValueError("W has spectral radius >= 1: the linear reservoir's state variance is infinite")
    C = np.zeros((w.size, w.size))
    v = w.copy()
    vs = []
    for j in range(n_terms):
        C += np.outer(v, v)
        if j <= max_delay:
            vs.append(v.copy())
        v = W @ v
    Ci = np.linalg.pinv(C)
    return np.array([vs[k] @ Ci @ vs[k] for k in range(1, max_delay + 1)])


def first_crossing(x: Sequence[float], y: Sequence[float]) -> float:
    """The first x where y crosses 0 upward (linear interpolation); ``nan`` if it never does,
    ``x[0]`` if y starts ≥ 0."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if y[0] >= 0:
        return float(x[0])
    for i in range(1, len(x)):
        if y[i] >= 0:
            return float(x[i - 1] + (x[i] - x[i - 1]) * (-y[i - 1]) / (y[i] - y[i - 1]))
    return float("nan")


def autonomous_lyapunov(res: Reservoir, *, n_steps: int = 1000, washout: int = 200, seed: int = 0) -> np.ndarray:
    """λ_max per step of each reservoir with no input, ``r ↦ tanh(W r + b)``, from a random
    start (seeded) after ``washout`` steps: < 0 below the transition to chaos (the states fall
    onto a fixed point), ≥ 0 above it. Returns ``(B,)``."""
    B, N = res.W.shape[0], res.size
    R0 = np.random.default_rng([seed, 82]).uniform(-1, 1, (B, 1, N))
    zero = np.zeros((washout + n_steps, res.W_in.shape[-1]))
    R0 = harvest(res, zero[:washout], R0=R0)[:, 0, -1]
    WT = res.W.transpose(0, 2, 1)

    def step(X, k):
        R = X.reshape(2, B, N).transpose(1, 0, 2)
        pre = R @ WT + res.b[:, None, :]
        R = np.tanh(pre) if res.leak == 1.0 else (1 - res.leak) * R + res.leak * np.tanh(pre)
        return R.transpose(1, 0, 2).reshape(2 * B, N)
    return _benettin(step, R0, dt=1.0, n_steps=n_steps, d0=1e-8, n_discard=n_steps // 5, seed=seed)


def _memoryless_r2(states: np.ndarray, target: np.ndarray, *, washout: int, reg: float = 1e-8) -> float:
    """Test r² of a linear readout of ``states (T, N)`` for ``target (T,)`` at delay 0."""
    X = np.column_stack([np.ones(len(target) - washout), states[washout:]])
    y = target[washout:]
    cut = len(y) // 2
    w = np.linalg.solve(X[:cut].T @ X[:cut] + reg * np.eye(X.shape[1]), X[:cut].T @ y[:cut])
    c = np.corrcoef(X[cut:] @ w, y[cut:])[0, 1]
    return 0.0 if not np.isfinite(c) else float(c * c)


def reservoirpy_gap(res: Reservoir, u) -> float:
    """Largest |state difference| between :func:`harvest` and reservoirpy on reservoir 0."""
    u = _runs(u)[0]
    ours = harvest(res.select(0), u)[0, 0]
    theirs = reservoirpy_states(res.W[0], res.W_in[0], res.b[0], u, leak=res.leak)
    return float(np.max(np.abs(ours - theirs)))
