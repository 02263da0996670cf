"""Residual networks as ODE integrators: Euler and RK4 ResNets, reference flows and their
validation, orders of convergence, depth resampling (ensembles trained in one pass), stable
(antisymmetric, Hamiltonian) blocks, exponential growth rates per unit time, the Euler
stability condition on and off the equilibrium, and Lyapunov exponents; and, at the end, the
experiments of chapter 2, each one call returning a dataclass (``depth_convergence``,
``resampling_study``, ``stability_study`` with ``equilibrium_stable_steps``,
``frozen_criterion_study``, ``edge_of_chaos_study``) with a ``plot_*`` for its figure.

Glossary (code name → symbol):

=====================  ==========================================================
``field``              the vector field f(t, y) of dy/dt = f(t, y), a ``KnotField``
``T``                  final time; a ResNet of ``n_layers`` = L has step h = T / L
``knot_times``         times t_k at which a ``KnotField`` stores its weights θ_k;
                       θ(t) is the piecewise-linear interpolation between them
``K``, ``b``           weight matrix and bias of a tied block y ↦ y + h σ(K y + b)
``gamma``              γ ≥ 0, the damping of K = ½(W − Wᵀ) − γ I
``step_size``          h of a tied (time-invariant) residual network
``n_models``           S, the number of independent fields stacked in one ensemble
``blocks``             the matrices K_l of a network whose weights change with depth
=====================  ==========================================================

Everything here is plain PyTorch: it runs on any device and dtype the inputs have; the
chapter computes orders of convergence in float64 so rounding does not flatten them.

How this module and :mod:`dynbook.models.neural_ode` split the work (they share no code on
purpose): ``ode`` is Chapter 2's *discretisation* study — time-dependent fields
(``KnotField``) in float64, ResNets as Euler/RK4 integrators of any Butcher tableau, orders,
stability; ``neural_ode`` is Chapter 3's *learning* study — one autonomous MLP field in the
fused kernel's weight layout, counted evaluations, classifiers, the adjoint's memory,
adaptive solvers and the kernel's baselines.
"""

from __future__ import annotations

import bisect
import functools
import math
from dataclasses import dataclass
from functools import partial
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from dynbook._checks import one_of, positive, positive_int

__all__ = [
    "KnotField", "layer_times", "resnet_euler", "resnet_rk4", "resnet", "SCHEMES", "ode_flow", "rms", "depth_errors",
    "richardson", "cauchy_differences", "convergence_order", "train_field", "twist",
    "antisymmetric", "TiedResNet", "KINDS", "perturbation_growth", "gradient_growth", "exponential_rate",
    "euler_stable_step", "antisymmetric_stable_step", "euler_growth_rate", "growth_rate", "measured_stable_step",
    "finite_growth_rate", "frozen_stable_step",
    "tanh_lyapunov", "mean_field_chi", "critical_weight_scale", "sign_changes",
    # the chapter's experiments: one call each, a dataclass back, a plot_* for its figure
    "DepthConvergence", "depth_convergence", "plot_convergence",
    "Resampling", "resampling_study", "plot_resampling",
    "Stability", "stability_study", "plot_stability", "equilibrium_stable_steps",
    "FrozenCriterion", "frozen_criterion_study", "plot_frozen_criterion",
    "EdgeOfChaos", "edge_of_chaos_study", "plot_edge_of_chaos",
]

Field = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# ----------------------------------------------------------------------------- vector fields


class KnotField(nn.Module):
    """A time-dependent MLP vector field f(t, y) = A(t) tanh(B(t) y + c(t)) + a(t).

    Each weight θ ∈ {A, a, B, c} is stored at ``knot_times`` t_0 < … < t_{K-1} and linearly
    interpolated in between (held constant outside), so θ(t) is continuous and piecewise
    linear: a few knots make a *smooth-in-depth* network; one knot per layer at
    :func:`layer_times` makes an ordinary untied ResNet. Call as ``f(t, y)`` with
    ``y: (..., dim)`` (torchdiffeq's convention); returns ``(..., dim)``.

    ``n_models`` = S stacks S independent fields (an ensemble trained in one pass: the
    per-model losses add, so each model's gradient is its own). Then every weight has a
    leading axis of size S, ``y: (S, n, dim)``, and ``generator`` may be a sequence of S
    generators: model i draws its weights from generator i exactly as a single field would.
    """

    def __init__(self, dim: int, width: int, knot_times: Sequence[float], *, weight_scale: float = 1.0,
                 generator=None, dtype=torch.float64, device=None, n_models: int | None = None):
        super().__init__()
        positive_int("dim", dim)
        positive_int("width", width)
        positive("weight_scale", weight_scale, allow_zero=True)
        if n_models is not None:
            positive_int("n_models", n_models)
        times = [float(t) for t in knot_times]
        if not times or any(b <= a for a, b in zip(times, times[1:])) or not all(map(math.isfinite, times)):
            raise ValueError(f"knot_times={knot_times!r} is not allowed: expected a non-empty, strictly "
                             "increasing sequence of finite times")
        self.knots = tuple(times)  # a Python tuple: locating t needs no device sync
        self.n_models = n_models
        n = len(times)
        lead = () if n_models is None else (n_models,)
        if n_models is None or generator is None or isinstance(generator, torch.Generator):
            def draws(*shape, fan_in):
                w = torch.randn(*lead, *shape, generator=generator, dtype=dtype)
                return w * (weight_scale / math.sqrt(fan_in))

            w_in, b_in, w_out = draws(n, width, dim, fan_in=dim), draws(n, width, fan_in=1), draws(n, dim, width, fan_in=width)
        else:  # one generator per model, drawn in the order a single field draws them
            gens = list(generator)
            if len(gens) != n_models:
                raise ValueError(f"generator: {len(gens)} generators are not allowed for n_models={n_models}: "
                                 "expected one per model")
            parts = [KnotField(dim, width, times, weight_scale=weight_scale, generator=g, dtype=dtype) for g in gens]
            w_in, b_in, w_out = (torch.stack([getattr(m, k).detach() for m in parts]) for k in ("w_in", "b_in", "w_out"))
        self.w_in = nn.Parameter(w_in.to(device))
        self.b_in = nn.Parameter(b_in.to(device))
        self.w_out = nn.Parameter(w_out.to(device))
        self.b_out = nn.Parameter(torch.zeros(*lead, n, dim, dtype=dtype, device=device))
        self._axis = 0 if n_models is None else 1  # the knot axis of every weight

    def interval(self, t: float) -> tuple[int, float]:
        """(k, w): θ(t) = (1 − w) θ_k + w θ_{k+1}."""
        if len(self.knots) == 1:
            return 0, 0.0
        k = min(max(bisect.bisect_right(self.knots, t) - 1, 0), len(self.knots) - 2)
        t0, t1 = self.knots[k], self.knots[k + 1]
        return k, min(max((t - t0) / (t1 - t0), 0.0), 1.0)

    def weights(self, t) -> tuple[torch.Tensor, ...]:
        """(B, c, A, a) at time ``t``: shapes (width, dim), (width,), (dim, width), (dim,), each
        with a leading (S,) for an ensemble."""
        k, w = self.interval(float(t))
        params = (self.w_in, self.b_in, self.w_out, self.b_out)
        ax = self._axis
        if w == 0.0:
            return tuple(p.select(ax, k) for p in params)
        return tuple(torch.lerp(p.select(ax, k), p.select(ax, k + 1), w) for p in params)

    def tabulate(self, times: Sequence[float]) -> Callable[[float, torch.Tensor], torch.Tensor]:
        """The field at a fixed set of ``times``, its weights interpolated once, in a few
        batched operations, instead of at every call: what a ResNet's forward pass needs
        (the same values as :meth:`forward` at those times; any other time is an error)."""
        times = list(dict.fromkeys(float(t) for t in times))
        k, w = zip(*(self.interval(t) for t in times))
        k0 = torch.tensor(k, device=self.w_in.device)
        k1 = torch.tensor([min(i + 1, len(self.knots) - 1) for i in k], device=self.w_in.device)
        ax = self._axis
        tables = []
        for p in (self.w_in, self.b_in, self.w_out, self.b_out):
            wt = torch.tensor(w, dtype=p.dtype, device=p.device).reshape((-1,) + (1,) * (p.ndim - 1 - ax))
            tables.append(torch.lerp(p.index_select(ax, k0), p.index_select(ax, k1), wt).unbind(ax))
        index = {t: i for i, t in enumerate(times)}
        ensemble = self.n_models is not None

        def field(t, y):
            i = index[float(t)]
            w_in, b_in, w_out, b_out = (tab[i] for tab in tables)
            if ensemble:
                hidden = torch.tanh(torch.baddbmm(b_in.unsqueeze(-2), y, w_in.mT))
                return torch.baddbmm(b_out.unsqueeze(-2), hidden, w_out.mT)
            return nn.functional.linear(torch.tanh(nn.functional.linear(y, w_in, b_in)), w_out, b_out)

        return field

    def forward(self, t, y: torch.Tensor) -> torch.Tensor:
        w_in, b_in, w_out, b_out = self.weights(t)
        if self.n_models is not None:  # (S, n, dim) @ (S, dim, width); biases broadcast over n
            b_in, b_out = b_in.unsqueeze(-2), b_out.unsqueeze(-2)
        return torch.tanh(y @ w_in.mT + b_in) @ w_out.mT + b_out


def layer_times(T: float, n_layers: int) -> list[float]:
    """The times t_l = l T / L, l = 0 … L−1, at which an L-layer Euler ResNet reads its weights."""
    positive("T", T)
    positive_int("n_layers", n_layers)
    return [l * T / n_layers for l in range(n_layers)]


# ----------------------------------------------------------------------------- ResNets = integrators


def resnet_euler(field: Field, y0: torch.Tensor, T: float, n_layers: int, *,
                 return_states: bool = False):
    """An L-layer residual network y_{l+1} = y_l + h f(t_l, y_l), h = T / L: forward Euler.

    ``y0: (..., dim)`` → y_L of the same shape, or all states ``(L + 1, ..., dim)``.
    """
    positive("T", T)
    positive_int("n_layers", n_layers)
    h = T / n_layers
    if hasattr(field, "tabulate"):
        field = field.tabulate([l * h for l in range(n_layers)])
    y, states = y0, [y0]
    for l in range(n_layers):
        y = y + h * field(l * h, y)
        if return_states:
            states.append(y)
    return torch.stack(states) if return_states else y


# Butcher tableaux of the two classical four-stage, fourth-order methods; "3/8" is what
# torchdiffeq's fixed-grid "rk4" uses, so the tests can compare the two exactly.
_RK4_RULES = {
    "classic": ((), (0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)),
    "3/8": ((), (1 / 3,), (-1 / 3, 1.0), (1.0, -1.0, 1.0)),
}
_RK4_WEIGHTS = {"classic": (1 / 6, 1 / 3, 1 / 3, 1 / 6), "3/8": (1 / 8, 3 / 8, 3 / 8, 1 / 8)}
_RK4_NODES = {"classic": (0.0, 0.5, 0.5, 1.0), "3/8": (0.0, 1 / 3, 2 / 3, 1.0)}


def resnet_rk4(field: Field, y0: torch.Tensor, T: float, n_layers: int, *, rule: str = "classic"):
    """An L-block network whose residual block is one explicit fourth-order Runge–Kutta step
    (four evaluations of f per block). ``rule``: "classic" or "3/8". ``y0: (..., dim)``."""
    one_of("rule", rule, _RK4_RULES)
    positive("T", T)
    positive_int("n_layers", n_layers)
    h = T / n_layers
    a, bw, c = _RK4_RULES[rule], _RK4_WEIGHTS[rule], _RK4_NODES[rule]
    if hasattr(field, "tabulate"):
        field = field.tabulate([l * h + ci * h for l in range(n_layers) for ci in c])
    y = y0
    for l in range(n_layers):
        t = l * h
        ks = []
        for i in range(4):
            yi = y
            for aij, kj in zip(a[i], ks):
                if aij:
                    yi = yi + (h * aij) * kj
            ks.append(field(t + c[i] * h, yi))  # the same float expression as the table's keys
        y = y + h * sum(w * k for w, k in zip(bw, ks))
    return y


# The residual blocks by name (as torchdiffeq's SOLVERS): each maps (field, y0, T, L) → y_L.
# The RK4 block is written here rather than taken from torchdiffeq: torchdiffeq's fixed-grid
# "rk4" is the 3/8 rule, and the chapter's RK4 network is the classical rule evaluated on a
# field whose weights are interpolated once per forward pass (the tests compare the two).
SCHEMES: dict[str, Callable[..., torch.Tensor]] = {"euler": resnet_euler, "rk4": resnet_rk4}


def resnet(field: Field, y0: torch.Tensor, T: float, n_layers: int, *, scheme: str = "euler") -> torch.Tensor:
    """The L-block ResNet of ``field`` with the blocks ``SCHEMES[scheme]`` (Euler or classical RK4)."""
    return SCHEMES[one_of("scheme", scheme, SCHEMES)](field, y0, T, n_layers)


def ode_flow(field: Field, y0: torch.Tensor, T: float, *, rtol: float = 1e-10, atol: float = 1e-12,
             method: str = "dopri5") -> torch.Tensor:
    """The ODE solution y(T) by torchdiffeq's adaptive solver (the depth → ∞ limit).

    The knots of a :class:`KnotField` are passed as ``jump_t`` so the solver restarts at the
    kinks of θ(t) instead of rejecting steps across them.
    """
    from torchdiffeq import odeint

    positive("T", T)
    options = {}
    knots = getattr(field, "knots", ())
    inner = [t for t in knots if 0.0 < t < T]
    if inner and method in ("dopri5", "dopri8", "bosh3", "adaptive_heun", "fehlberg2"):
        options["jump_t"] = torch.tensor(inner, dtype=torch.float64)
    t = torch.tensor([0.0, T], dtype=y0.dtype, device=y0.device)
    return odeint(field, y0, t, rtol=rtol, atol=atol, method=method, options=options)[-1]


def rms(a: torch.Tensor, b: torch.Tensor) -> float:
    """Root-mean-square difference over all entries."""
    return float((a - b).pow(2).mean().sqrt())


def depth_errors(field: Field, y0: torch.Tensor, T: float, depths: Sequence[int], reference: torch.Tensor,
                 *, scheme: str = "euler") -> list[float]:
    """RMS error ‖y_L − y(T)‖ of the Euler (``scheme="euler"``) or RK4 (``"rk4"``) ResNet at
    each depth L in ``depths``, against ``reference`` = y(T)."""
    with torch.no_grad():
        return [rms(resnet(field, y0, T, positive_int("depth", L), scheme=scheme), reference) for L in depths]


def convergence_order(depths: Sequence[int], errors: Sequence[float], *, floor: float = 0.0,
                      min_depth: int = 1) -> tuple[float, list[int]]:
    """Order p of error ∝ L^(−p): minus the log-log slope over the depths with
    L ≥ ``min_depth`` and error > ``floor`` (the reference's own error, times a margin).
    Returns (p, depths used)."""
    from dynbook.measure.fits import loglog_fit

    used = [(L, e) for L, e in zip(depths, errors) if L >= min_depth and e > floor]
    if len(used) < 2:
        raise ValueError(f"convergence_order needs two depths >= {min_depth} with error > {floor:g}; "
                         f"got errors {list(errors)}")
    slope, _ = loglog_fit([L for L, _ in used], [e for _, e in used])
    return -slope, [L for L, _ in used]


def train_field(field: KnotField, x: torch.Tensor, target: torch.Tensor, T: float, n_layers: int, *,
                steps: int, lr: float = 1e-2, scheme: str = "euler") -> list:
    """Fit the L-block Euler (``scheme="euler"``) or RK4 (``"rk4"``) ResNet of ``field`` to
    ``target`` (mean squared error, Adam, full batch). ``x, target: (n, dim)``, or
    ``(S, n, dim)`` for an ensemble of S fields (``n_models=S``): the S mean losses are added,
    so each model follows its own gradient (Adam is elementwise).
    Returns the loss of every step (a float, or a list of S floats for an ensemble)."""
    one_of("scheme", scheme, SCHEMES)
    positive_int("steps", steps)
    ensemble = getattr(field, "n_models", None) is not None
    opt = torch.optim.Adam(field.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        sq = (resnet(field, x, T, n_layers, scheme=scheme) - target).pow(2)
        if ensemble:
            per_model = sq.flatten(1).mean(1)
            per_model.sum().backward()
            losses.append(per_model.tolist())
        else:
            loss = sq.mean()
            loss.backward()
            losses.append(loss.item())
        opt.step()
    return losses


def richardson(fine: torch.Tensor, coarse: torch.Tensor, order: int) -> torch.Tensor:
    """Richardson extrapolation of a method of order p from steps h/2 (``fine``) and h
    (``coarse``): (2^p y_{h/2} − y_h) / (2^p − 1), which cancels the leading error term."""
    positive_int("order", order)
    q = 2.0**order
    return (q * fine - coarse) / (q - 1)


def cauchy_differences(outputs: Sequence[torch.Tensor]) -> list[float]:
    """RMS differences ‖y_{L_i} − y_{L_{i+1}}‖ between the outputs of successive depths.
    For depths that double, a method of order p gives differences ∝ L^(−p) whatever its
    limit is, so :func:`convergence_order` of these measures the order without a reference."""
    if len(outputs) < 2:
        raise ValueError(f"cauchy_differences needs at least two outputs, got {len(outputs)}")
    return [rms(a, b) for a, b in zip(outputs, outputs[1:])]


def twist(x: torch.Tensor) -> torch.Tensor:
    """The resampling task's target map: rotate each point of the plane by the angle
    (π/2) exp(−2|x|²), which decays with the radius. ``x: (..., 2)`` → ``(..., 2)``."""
    if x.shape[-1] != 2:
        raise ValueError(f"x of shape {tuple(x.shape)} is not allowed: expected points of the plane (..., 2)")
    angle = (math.pi / 2) * torch.exp(-2 * (x**2).sum(-1, keepdim=True))
    c, s = angle.cos(), angle.sin()
    return torch.cat([c * x[..., :1] - s * x[..., 1:], s * x[..., :1] + c * x[..., 1:]], dim=-1)


# ----------------------------------------------------------------------------- stable blocks


def antisymmetric(W: torch.Tensor, gamma: float) -> torch.Tensor:
    """K = ½(W − Wᵀ) − γ I: eigenvalues −γ ± iω (Haber & Ruthotto's stable choice).
    ``W: (..., d, d)``, a matrix or a stack of them."""
    positive("gamma", gamma, allow_zero=True)
    eye = torch.eye(W.shape[-1], dtype=W.dtype, device=W.device)
    return 0.5 * (W - W.mT) - gamma * eye


KINDS = ("plain", "antisymmetric", "hamiltonian")
# "linear" (y ← y + h (W y + b)) is the plain block without its nonlinearity: the linear system
# Haber & Ruthotto's eigenvalue analysis describes, which grows at the rate max Re λ(W).
_ALL_KINDS = KINDS + ("linear",)


class TiedResNet(nn.Module):
    """A residual network with the same weights in every layer (a time-invariant ODE).

    * ``plain``:          y ← y + h tanh(W y + b)
    * ``antisymmetric``:  y ← y + h tanh(K y + b), K = ½(W − Wᵀ) − γ I
    * ``linear``:         y ← y + h (W y + b)   (the plain block's linearisation, no saturation)
    * ``hamiltonian``:    state x = (y, z); z ← z − h tanh(Wᵀ y + b); y ← y + h tanh(W z + b)
      (leapfrog / Verlet for ẏ = tanh(W z + b), ż = −tanh(Wᵀ y + b)): each half-step is a
      shear, so the map is exactly invertible and volume preserving.

    ``W: (d, d)``, ``b: (d,)`` and states ``(batch, d)`` — or ``(d, 2d)``-wide states
    ``(batch, 2d)`` for hamiltonian. A stack of independent networks, ``W: (n, d, d)``,
    ``b: (n, d)``, acts on states ``(n, batch, d | 2d)``.
    """

    def __init__(self, kind: str, W: torch.Tensor, b: torch.Tensor, step_size: float, *, gamma: float = 0.0):
        super().__init__()
        one_of("kind", kind, _ALL_KINDS)
        if W.ndim not in (2, 3) or W.shape[-1] != W.shape[-2] or b.shape != W.shape[:-1]:
            raise ValueError(f"W (shape {tuple(W.shape)}) and b (shape {tuple(b.shape)}) are not allowed: "
                             "expected W (d, d) with b (d,), or W (n, d, d) with b (n, d)")
        self.kind = kind
        self.step_size = positive("step_size", step_size)
        self.gamma = positive("gamma", gamma, allow_zero=True)
        self.W = nn.Parameter(W.clone())
        self.b = nn.Parameter(b.clone())

    @property
    def K(self) -> torch.Tensor:
        return antisymmetric(self.W, self.gamma) if self.kind == "antisymmetric" else self.W

    def _bias(self) -> torch.Tensor:
        return self.b if self.b.ndim == 1 else self.b.unsqueeze(-2)  # (n, d) → (n, 1, d)

    def vector_field(self, x: torch.Tensor) -> torch.Tensor:
        """The ODE right-hand side: σ(K y + b), or (σ(W z + b), −σ(Wᵀ y + b)) for hamiltonian."""
        b = self._bias()
        if self.kind == "linear":
            return x @ self.W.mT + b
        if self.kind != "hamiltonian":
            return torch.tanh(x @ self.K.mT + b)
        y, z = x.chunk(2, dim=-1)
        return torch.cat([torch.tanh(z @ self.W.mT + b), -torch.tanh(y @ self.W + b)], dim=-1)

    def step(self, x: torch.Tensor) -> torch.Tensor:
        """One layer."""
        h, b = self.step_size, self._bias()
        if self.kind == "linear":
            return x + h * (x @ self.W.mT + b)
        if self.kind != "hamiltonian":
            return x + h * torch.tanh(x @ self.K.mT + b)
        y, z = x.chunk(2, dim=-1)
        z = z - h * torch.tanh(y @ self.W + b)
        y = y + h * torch.tanh(z @ self.W.mT + b)
        return torch.cat([y, z], dim=-1)

    def tangent_step(self, x: torch.Tensor, dx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One layer and its Jacobian applied to ``dx`` (forward-mode derivative, written out
        because ``torch.func.jvp`` costs more than the layer itself at these sizes; the tests
        compare the two)."""
        h, b = self.step_size, self._bias()
        if self.kind == "linear":
            return x + h * (x @ self.W.mT + b), dx + h * (dx @ self.W.mT)
        if self.kind != "hamiltonian":
            K = self.K
            s = torch.tanh(x @ K.mT + b)
            return x + h * s, dx + h * (1 - s * s) * (dx @ K.mT)
        y, z = x.chunk(2, dim=-1)
        dy, dz = dx.chunk(2, dim=-1)
        s = torch.tanh(y @ self.W + b)
        z, dz = z - h * s, dz - h * (1 - s * s) * (dy @ self.W)
        s = torch.tanh(z @ self.W.mT + b)
        y, dy = y + h * s, dy + h * (1 - s * s) * (dz @ self.W.mT)
        return torch.cat([y, z], dim=-1), torch.cat([dy, dz], dim=-1)

    def inverse_step(self, x: torch.Tensor) -> torch.Tensor:
        """The exact inverse of :meth:`step` (hamiltonian only: the others have none in closed form)."""
        if self.kind != "hamiltonian":
            raise ValueError(f"inverse_step needs kind='hamiltonian', not {self.kind!r}")
        h, b = self.step_size, self._bias()
        y, z = x.chunk(2, dim=-1)
        y = y - h * torch.tanh(z @ self.W.mT + b)
        z = z + h * torch.tanh(y @ self.W + b)
        return torch.cat([y, z], dim=-1)

    def forward(self, x: torch.Tensor, n_layers: int) -> torch.Tensor:
        positive_int("n_layers", n_layers)
        for _ in range(n_layers):
            x = self.step(x)
        return x

    def inverse(self, x: torch.Tensor, n_layers: int) -> torch.Tensor:
        positive_int("n_layers", n_layers)
        for _ in range(n_layers):
            x = self.inverse_step(x)
        return x


def _log_ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """Mean over the batch (and networks) of log(‖num‖ / ‖den‖), norms over the last dim."""
    return (num.norm(dim=-1).log() - den.norm(dim=-1).log()).mean()


def perturbation_growth(net: TiedResNet, x0: torch.Tensor, n_layers: int, v: torch.Tensor, *,
                        per_network: bool = False):
    """‖δx_l‖ / ‖δx_0‖ for l = 0 … L: an infinitesimal input perturbation ``v`` pushed
    through the layers by forward-mode differentiation (:meth:`TiedResNet.tangent_step`).
    ``x0, v``: states as :class:`TiedResNet` takes them; the growth is the geometric mean over
    the batch (and the stack of networks): a list of L + 1 floats. With ``per_network``, the
    log-growth of each network of a stack instead, a tensor (L + 1, n)."""
    positive_int("n_layers", n_layers)
    x, dx = x0.detach(), v.detach()
    ref = v.norm(dim=-1).log()
    logs = [torch.zeros(ref.shape[:-1] if per_network else (), dtype=torch.float64, device=x0.device)]
    with torch.no_grad():
        for _ in range(n_layers):
            x, dx = net.tangent_step(x, dx)
            lr = dx.norm(dim=-1).log() - ref
            logs.append((lr.mean(-1) if per_network else lr.mean()).double())
    out = torch.stack(logs)
    return out if per_network else out.exp().tolist()


def gradient_growth(net: TiedResNet, x0: torch.Tensor, depths: Sequence[int], c: torch.Tensor) -> list[float]:
    """‖∂ℓ/∂x_0‖ / ‖∂ℓ/∂x_L‖ for ℓ = ⟨c, x_L⟩ at each depth L (ordinary backpropagation):
    how the gradient signal grows or fades on its way back to the first layer."""
    out = []
    for L in depths:
        x = x0.detach().clone().requires_grad_(True)
        (grad,) = torch.autograd.grad((net(x, positive_int("depth", L)) * c).sum(), x)
        out.append(_log_ratio(grad, c))
    return torch.stack(out).exp().tolist()


def exponential_rate(times, log_growth, *, start: float = 0.125) -> tuple[float, float]:
    """Separate exponential from polynomial growth: least squares of
    log g(t) = r t + p log t + c over the times t ≥ ``start`` × max t. Returns (r, p): r is the
    exponential rate per unit time (0 for any power law t^p), p the power."""
    t = np.asarray(times, dtype=float)
    y = np.asarray(log_growth, dtype=float)
    if t.shape != y.shape or t.ndim != 1:
        raise ValueError(f"times {t.shape} and log_growth {y.shape} are not allowed: expected two equal 1-d arrays")
    keep = (t >= start * t.max()) & (t > 0) & np.isfinite(y)
    if keep.sum() < 4:
        raise ValueError(f"exponential_rate needs at least 4 points with t >= {start} max t, got {int(keep.sum())}")
    A = np.stack([t[keep], np.log(t[keep]), np.ones(int(keep.sum()))], axis=1)
    (r, p, _), *_ = np.linalg.lstsq(A, y[keep], rcond=None)
    return float(r), float(p)


def euler_stable_step(eigenvalues: torch.Tensor) -> float:
    """The largest h with |1 + h λ| ≤ 1 for every eigenvalue λ of the linearised block:
    min over λ of −2 Re λ / |λ|², and 0 if some Re λ ≥ 0 (no forward-Euler step is stable)."""
    lam = torch.as_tensor(eigenvalues).to(torch.complex128).flatten()
    lam = lam[lam.abs() > 0]
    if (lam.real >= 0).any():
        return 0.0
    return float((-2 * lam.real / lam.abs() ** 2).min())


def growth_rate(net: TiedResNet, x_star: torch.Tensor, *, eps: float = 1e-7, n_layers: int = 2000,
                every: int = 50) -> float:
    """Per-layer growth rate of the worst small perturbation of the equilibrium ``x_star`` (a
    state vector) through the nonlinear network.

    The network runs on the batch x* + D with D = ε I (every basis direction, ε = ``eps``
    max(‖x*‖, 1)); the amplification of the worst perturbation is the spectral norm ‖D‖₂.
    Every ``every`` layers, or sooner if D has grown a thousandfold, the deviations are
    rescaled back to ‖D‖₂ = ε (Benettin's renormalisation: they neither sink below rounding
    nor reach the nonlinearity's saturation) and the log-factors add up. The rate counts the
    second half of ``n_layers`` only, so transient growth (non-normal K) does not count."""
    positive_int("n_layers", n_layers, minimum=2)
    positive_int("every", every)
    if x_star.ndim != 1:
        raise ValueError(f"x_star of shape {tuple(x_star.shape)} is not allowed: expected one state vector")
    n = x_star.shape[0]
    size = eps * max(float(x_star.norm()), 1.0)
    guard = 1e3 * size * math.sqrt(n)  # ‖D‖_F ≤ √n ‖D‖₂: a cheap test for fast growth
    start, log_growth, since = n_layers // 2, 0.0, 0
    with torch.no_grad():
        D = size * torch.eye(n, dtype=x_star.dtype, device=x_star.device)
        for l in range(1, n_layers + 1):
            D = net.step(x_star + D) - x_star
            since += 1
            if since == every or l == n_layers or l == start or float(D.norm()) > guard:
                factor = float(torch.linalg.matrix_norm(D, ord=2)) / size
                if l > start:
                    log_growth += math.log(factor)
                D, since = D / factor, 0
    return log_growth / (n_layers - start)


def measured_stable_step(net_at: Callable[[float], TiedResNet], x_star: torch.Tensor, *, h_max: float,
                         n_layers: int = 2000, eps: float = 1e-7, tol: float = 1e-3) -> float:
    """The largest step size h in [0, ``h_max``] at which no small perturbation of the
    equilibrium ``x_star`` grows through ``net_at(h)`` (bisection on the sign of
    :func:`growth_rate`, to ``tol`` × ``h_max``)."""
    rate = lambda h: growth_rate(net_at(h), x_star, eps=eps, n_layers=n_layers)  # noqa: E731
    lo, hi = 0.0, float(h_max)
    if rate(hi) <= 0:
        return hi
    while hi - lo > tol * h_max:
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if rate(mid) <= 0 else (lo, mid)
    return 0.5 * (lo + hi)


def finite_growth_rate(blocks: Sequence[torch.Tensor], b: torch.Tensor, step_size, x0: torch.Tensor, *,
                       eps: float = 0.05, every: int = 1, skip: float = 0.0) -> torch.Tensor:
    """Growth rate per unit time of *finite* perturbations through L layers
    y ← y + h tanh(K_l y + b) whose weights may change from layer to layer: ``blocks[l]`` is
    K_l, shape (n, d, d) for a stack of n networks (L = ``len(blocks)``); ``b: (n, d)``;
    ``x0: (n, d)`` the unperturbed inputs; ``step_size`` a number or one step per network (n,).

    Each network runs x0 and x0 + D with D = ε I (every basis direction at once); every
    ``every`` layers the deviations are rescaled back to ‖D‖₂ = ε (Benettin's renormalisation
    at a finite size ε, so the nonlinearity acts on them) and the log-factors add up. The
    rate counts the layers after the first fraction ``skip`` of them (0: the whole network,
    transients included), divided by their duration in time: returns (n,)."""
    n_layers = len(blocks)
    if n_layers < 2:
        raise ValueError(f"blocks: {n_layers} layers are not allowed: expected at least 2")
    positive_int("every", every)
    positive("eps", eps)
    if not 0.0 <= skip < 1.0:
        raise ValueError(f"skip={skip!r} is not allowed: expected a fraction in [0, 1)")
    if x0.ndim != 2 or b.shape != x0.shape:
        raise ValueError(f"x0 of shape {tuple(x0.shape)} and b of shape {tuple(b.shape)} are not allowed: "
                         "expected both (n, d)")
    n, d = x0.shape
    h = torch.as_tensor(step_size, dtype=x0.dtype).to(x0.device).expand(n)
    if not bool(torch.isfinite(h).all()) or bool((h <= 0).any()):
        raise ValueError(f"step_size={step_size!r} is not allowed: expected finite numbers > 0")
    start = int(skip * n_layers)
    with torch.no_grad():
        hh = h[:, None, None]
        x = x0.unsqueeze(-2)  # (n, 1, d): one trajectory per network
        D = eps * torch.eye(d, dtype=x0.dtype, device=x0.device).expand(n, d, d)
        bias = b.unsqueeze(-2)
        total = torch.zeros(n, dtype=torch.float64, device=x0.device)
        since = 0
        for l in range(n_layers):
            K = blocks[l]
            x_next = x + hh * torch.tanh(x @ K.mT + bias)
            xp = x + D
            D = xp + hh * torch.tanh(xp @ K.mT + bias) - x_next
            x, since = x_next, since + 1
            if since == every or l == n_layers - 1 or l == start - 1:
                factor = torch.linalg.matrix_norm(D, ord=2) / eps
                if l >= start:
                    total += factor.log().double()
                D, since = D / factor[:, None, None], 0
    return total / ((n_layers - start) * h.double())


def frozen_stable_step(blocks) -> torch.Tensor:
    """The step the frozen-eigenvalue criterion allows a network whose layers have the blocks
    ``blocks`` (L, n, d, d) (or a sequence of (n, d, d)): the smallest over its layers of
    :func:`euler_stable_step`, for each of the n networks → (n,)."""
    K = torch.stack(list(blocks)) if not torch.is_tensor(blocks) else blocks
    lam = torch.linalg.eigvals(K).to(torch.complex128)  # (L, n, d)
    mag2 = lam.abs() ** 2
    step = torch.where(mag2 > 0, -2 * lam.real / torch.where(mag2 > 0, mag2, 1.0), torch.inf)
    unstable = ((lam.real >= 0) & (mag2 > 0)).any(-1)  # (L, n)
    per_layer = torch.where(unstable, 0.0, step.min(-1).values)
    return per_layer.min(0).values.double()


def antisymmetric_stable_step(W: torch.Tensor, gamma: float) -> float:
    """h_max of forward Euler for the antisymmetric blocks K = ½(W − Wᵀ) − γI of a stack of
    networks ``W: (n, d, d)``: the smallest :func:`euler_stable_step` over the stack."""
    return float(frozen_stable_step(antisymmetric(W, gamma)[None]).min())


def euler_growth_rate(eigenvalues: torch.Tensor, step_size: float) -> float:
    """Growth rate per unit time of forward Euler on the linear system with these
    eigenvalues: max over λ of log|1 + hλ| / h (the linearised prediction)."""
    h = positive("step_size", step_size)
    lam = torch.as_tensor(eigenvalues).to(torch.complex128).flatten()
    return float((1 + h * lam).abs().log().max()) / h


# ----------------------------------------------------------------------------- edge of chaos


def tanh_lyapunov(weight_scale: float, *, width: int, depth: int, bias_scale: float = 0.0,
                  burn_in: int = 0, n_inputs: int = 8, generator: torch.Generator | None = None,
                  dtype=torch.float32, device="cpu", activation: str = "tanh") -> float:
    """Largest Lyapunov exponent (per layer) of a random deep tanh network
    x_{l+1} = tanh(W_l x_l + b_l), W_l ~ N(0, σ_w²/N), b_l ~ N(0, σ_b²), fresh weights each layer.

    A tangent vector v is pushed through the layer Jacobians J_l = diag(1 − x_{l+1}²) W_l and
    renormalised every layer; λ = mean of log ‖J_l v‖ over the layers after ``burn_in``, and over
    ``n_inputs`` random inputs. λ > 0: nearby inputs separate (chaos); λ < 0: they merge (order).
    The weights are drawn on ``device`` (a ``generator`` must live there too).
    ``activation="linear"``: the same random layers without tanh, x_{l+1} = W_l x_l + b_l
    (J_l = W_l, λ = log σ_w + O(1/N)): a family whose edge sits at σ_w ≈ 1 whatever σ_b is."""
    positive("weight_scale", weight_scale, allow_zero=True)
    one_of("activation", activation, ("tanh", "linear"))
    positive_int("width", width)
    positive_int("depth", depth)
    positive_int("burn_in", burn_in, minimum=0)
    if burn_in >= depth:
        raise ValueError(f"burn_in={burn_in} is not allowed: expected fewer than depth={depth} layers")
    g = generator
    x = torch.randn(n_inputs, width, generator=g, dtype=dtype, device=device)
    v = torch.randn(n_inputs, width, generator=g, dtype=dtype, device=device)
    v = v / v.norm(dim=-1, keepdim=True)
    total = torch.zeros(n_inputs, dtype=torch.float64, device=device)
    for l in range(depth):
        W = torch.randn(width, width, generator=g, dtype=dtype, device=device) * (weight_scale / math.sqrt(width))
        b = torch.randn(width, generator=g, dtype=dtype, device=device) * bias_scale
        if activation == "tanh":
            x = torch.tanh(x @ W.T + b)
            v = (1 - x * x) * (v @ W.T)
        else:  # the state itself would overflow and does not enter the Jacobian
            v = v @ W.T
        norm = v.norm(dim=-1, keepdim=True)
        v = v / norm
        if l >= burn_in:
            total += norm.squeeze(-1).double().log()
    return float(total.mean()) / (depth - burn_in)


@functools.lru_cache(maxsize=8)
def _gauss_hermite(n_quad: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes z and weights w (summing to 1) of Gauss–Hermite quadrature for E over N(0, 1),
    computed once per ``n_quad``: the eigenproblem costs more than the fixed-point iteration."""
    z, w = np.polynomial.hermite_e.hermegauss(positive_int("n_quad", n_quad, minimum=2))
    z.flags.writeable = False
    w = w / w.sum()
    w.flags.writeable = False
    return z, w


def mean_field_chi(weight_scale: float, bias_scale: float = 0.0, *, n_quad: int = 101) -> tuple[float, float]:
    """Infinite-width prediction (Poole et al. 2016): the fixed point q* of
    q = σ_w² E[tanh(√q z)²] + σ_b² and χ = σ_w² E[tanh'(√q* z)²], z ~ N(0, 1), by Gauss–Hermite
    quadrature. The per-layer Lyapunov exponent is ½ log χ; χ = 1 is the edge of chaos."""
    z, w = _gauss_hermite(n_quad)
    q = 1.0
    for _ in range(2000):
        q_new = weight_scale**2 * float(w @ np.tanh(math.sqrt(q) * z) ** 2) + bias_scale**2
        if abs(q_new - q) < 1e-13:
            q = q_new
            break
        q = q_new
    chi = weight_scale**2 * float(w @ (1 - np.tanh(math.sqrt(q) * z) ** 2) ** 2)
    return q, chi


def critical_weight_scale(bias_scale: float = 0.0, *, lo: float = 0.5, hi: float = 4.0) -> float:
    """σ_w with χ(σ_w, σ_b) = 1 (mean-field order-to-chaos transition), by bisection."""
    f = lambda s: mean_field_chi(s, bias_scale)[1] - 1.0  # noqa: E731
    if f(lo) > 0 or f(hi) < 0:
        raise ValueError(f"no transition for bias_scale={bias_scale} in weight scales [{lo}, {hi}]")
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if f(mid) < 0 else (lo, mid)
    return 0.5 * (lo + hi)


def sign_changes(xs: Sequence[float], ys: Sequence[float]) -> list[float]:
    """Where ``ys`` changes sign along the increasing grid ``xs``: one x per change, located by
    linear interpolation between the two grid points that bracket it."""
    if len(xs) != len(ys) or len(xs) < 2:
        raise ValueError(f"sign_changes needs two equal sequences of at least 2 points, got {len(xs)} and {len(ys)}")
    out = []
    for (x0, y0), (x1, y1) in zip(zip(xs, ys), zip(xs[1:], ys[1:])):
        if (y0 < 0) != (y1 < 0):
            out.append(float(x0 - y0 * (x1 - x0) / (y1 - y0)))
    return out


# ----------------------------------------------------------------------------- the chapter's experiments
#
# Each experiment of chapter 2 is one call that returns a dataclass: the measured values, the
# metrics it records (``metrics()``: name → value, unit and labels), the rows of its table
# and the evidence of its verdicts. The chapter records, decides, plots and tells.

F64 = torch.float64


def _metric(value, unit: str = "", **labels) -> dict:
    return {"value": value, "unit": unit, "labels": labels or None}


def _range(values) -> str:
    return f"{np.mean(values):+.3f} [{min(values):+.3f}, {max(values):+.3f}]"


@dataclass
class DepthConvergence:
    """Orders of convergence with depth (claim C1 and checks K1–K3): ``smooth_orders`` and
    ``untied_orders`` are the reference-free orders of ‖y_L − y_2L‖ per field seed; the first
    field's Euler and RK4 errors are measured against a dopri8 flow validated by Richardson."""

    depths: list[int]
    field_seeds: list[int]
    smooth_orders: list[float]
    untied_orders: list[float]
    smooth_diffs: list[list[float]]
    untied_diffs: list[list[float]]
    euler_errors: list[float]
    rk4_errors: list[float]  # at depths[:-1]
    reference_gap: float
    flow_displacement: float
    fit_floor: float
    p_euler: float
    used_euler: list[int]
    p_rk4: float
    used_rk4: list[int]

    @property
    def rk4_depths(self) -> list[int]:
        return self.depths[:-1]

    @property
    def rk4_smallest_fitted_error(self) -> float:
        return min(e for L, e in zip(self.rk4_depths, self.rk4_errors) if L in self.used_rk4)

    def metrics(self) -> dict:
        return {
            "n_fields": _metric(len(self.field_seeds)),
            "flow_displacement": _metric(self.flow_displacement, "rms"),
            "reference_gap": _metric(self.reference_gap, "rms", between="dopri8 rtol 1e-13 and "
                                     "Richardson-extrapolated RK4 at L = 1024, 2048"),
            "fit_floor": _metric(self.fit_floor, "rms"),
            "euler_errors": _metric(self.euler_errors, "rms", depths=self.depths),
            "rk4_errors": _metric(self.rk4_errors, "rms", depths=self.rk4_depths),
            "euler_error_deepest": _metric(self.euler_errors[-1], "rms", depth=self.depths[-1]),
            "max_depth": _metric(self.depths[-1], "layers"),
            "depth_convergence_order": _metric(self.p_euler, depths=self.used_euler),
            "rk4_convergence_order": _metric(self.p_rk4, depths=self.used_rk4),
            "rk4_fit_deepest": _metric(self.used_rk4[-1], "layers"),
            "rk4_smallest_fitted_error": _metric(self.rk4_smallest_fitted_error, "rms"),
            "self_convergence_orders_smooth": _metric(self.smooth_orders, field_seeds=self.field_seeds),
            "self_convergence_orders_untied": _metric(self.untied_orders, field_seeds=self.field_seeds),
        }

    def table(self) -> tuple[list, list]:
        def cell(values, i, fmt=".3e"):
            return format(values[i], fmt) if i < len(values) else ""

        return (["L", "Euler error", "RK4 error", "‖y_L − y_2L‖ smooth", "‖y_L − y_2L‖ untied"],
                [(L, f"{e:.3e}", cell(self.rk4_errors, i), cell(self.smooth_diffs[0], i),
                  cell(self.untied_diffs[0], i)) for i, (L, e) in enumerate(zip(self.depths, self.euler_errors))])

    def evidence(self) -> str:
        return (f"orders of ‖y_L − y_2L‖ over L = 16…{self.depths[-2]}: smooth "
                + ", ".join(f"{p:.3f}" for p in self.smooth_orders) + "; untied "
                + ", ".join(f"{p:.3f}" for p in self.untied_orders))


def depth_convergence(field_seeds: Sequence[int], *, width: int, n_points: int, dim: int = 4, T: float = 1.0,
                      depths: Sequence[int] = tuple(2**k for k in range(1, 12)),
                      knot_times: Sequence[float] = (0.0, 0.5, 1.0), min_depth: int = 16,
                      device=None) -> DepthConvergence:
    """For each seed, a random smooth :class:`KnotField` (weights at ``knot_times``) and the
    same number of untied ResNets drawn afresh at every depth, run at ``depths`` (doubling) on
    ``n_points`` inputs ``(n_points, dim)``: orders of ‖y_L − y_2L‖ over L ≥ ``min_depth``.
    On the first field, Euler and RK4 errors against a dopri8 flow (rtol 1e-13), validated by
    Richardson extrapolation of RK4 at the two deepest depths; orders fitted over errors above
    ten times that validated floor. Everything in float64."""
    depths = [positive_int("depth", L) for L in depths]
    if len(depths) < 4:
        raise ValueError(f"depths={depths!r} is not allowed: expected at least 4 doubling depths")
    positive_int("n_points", n_points)
    smooth_orders, untied_orders, smooth_diffs, untied_diffs = [], [], [], []
    with torch.no_grad():
        for i, fs in enumerate(field_seeds):
            g = torch.Generator().manual_seed(fs)
            field = KnotField(dim, width, knot_times, weight_scale=1.0, generator=g, device=device)
            y0 = torch.randn(n_points, dim, generator=g, dtype=F64).to(device)
            euler_out = [resnet_euler(field, y0, T, L) for L in depths]
            diffs = cauchy_differences(euler_out)
            smooth_orders.append(convergence_order(depths[:-1], diffs, min_depth=min_depth)[0])
            smooth_diffs.append(diffs)
            gu = torch.Generator().manual_seed(fs + 500)  # untied: new independent layers at every depth
            untied_out = [resnet_euler(KnotField(dim, width, layer_times(T, L), generator=gu, device=device),
                                       y0, T, L) for L in depths]
            diffs_u = cauchy_differences(untied_out)
            untied_orders.append(convergence_order(depths[:-1], diffs_u, min_depth=min_depth)[0])
            untied_diffs.append(diffs_u)
            if i == 0:  # the identities, on the first field: orders against a validated reference
                flow = ode_flow(field, y0, T, rtol=1e-13, atol=1e-15, method="dopri8")
                rk4_coarse, rk4_fine = resnet_rk4(field, y0, T, depths[-2]), resnet_rk4(field, y0, T, depths[-1])
                reference_gap = rms(flow, richardson(rk4_fine, rk4_coarse, order=4))
                euler_errors = [rms(out, flow) for out in euler_out]
                rk4_errors = depth_errors(field, y0, T, depths[:-2], flow, scheme="rk4") + [rms(rk4_coarse, flow)]
                flow_displacement = rms(flow, y0)
    fit_floor = 10 * reference_gap
    p_euler, used_euler = convergence_order(depths, euler_errors, floor=fit_floor, min_depth=min_depth)
    p_rk4, used_rk4 = convergence_order(depths[:-1], rk4_errors, floor=fit_floor, min_depth=min_depth)
    return DepthConvergence(depths, list(field_seeds), smooth_orders, untied_orders, smooth_diffs, untied_diffs,
                            euler_errors, rk4_errors, reference_gap, flow_displacement, fit_floor,
                            p_euler, used_euler, p_rk4, used_rk4)


def plot_convergence(axes, result: DepthConvergence) -> None:
    """Left: error against the reference flow for Euler and RK4 blocks, slopes −1 and −4 and
    ten times the validated floor; right: ‖y_L − y_2L‖ for smooth and untied networks."""
    r = result
    L_arr = np.array(r.depths, dtype=float)
    ax = axes[0]
    ax.loglog(L_arr, r.euler_errors, "o-", label=f"Euler ResNet (order {r.p_euler:.2f})")
    ax.loglog(L_arr[:-1], r.rk4_errors, "s-", label=f"RK4 ResNet (order {r.p_rk4:.2f})")
    ax.loglog(L_arr, r.euler_errors[-1] * (L_arr / L_arr[-1]) ** -1, "k:", lw=1)
    j = r.depths.index(r.used_rk4[-1])
    ax.loglog(L_arr, r.rk4_errors[j] * (L_arr / L_arr[j]) ** -4, "k:", lw=1)
    ax.axhline(r.fit_floor, color="grey", lw=0.8, ls="--", label="10 × validated floor")
    ax.set(xlabel="depth L (layers)", ylabel="RMS error vs ODE flow", ylim=(1e-16, 10))
    ax.legend()
    ax = axes[1]
    for k in range(len(r.smooth_diffs)):
        ax.loglog(L_arr[:-1], r.smooth_diffs[k], "o-", color="C0", label="smooth weights" if k == 0 else None)
        ax.loglog(L_arr[:-1], r.untied_diffs[k], "s-", color="C3",
                  label="untied, fresh per depth" if k == 0 else None)
    ax.loglog(L_arr[:-1], r.smooth_diffs[0][-1] * (L_arr[:-1] / L_arr[-2]) ** -1, "k:", lw=1)
    ax.loglog(L_arr[:-1], r.untied_diffs[0][-1] * (L_arr[:-1] / L_arr[-2]) ** -0.5, "k:", lw=1)
    ax.set(xlabel="depth L (layers)", ylabel="‖y_L − y_2L‖ (RMS)")
    ax.legend()


@dataclass
class Resampling:
    """Networks trained at ``L_train`` blocks, evaluated at ``eval_depths`` (claims C2, C3).
    ``designs[name]`` holds, per training seed and evaluation depth, the output's relative
    ``change`` from the trained depth, its relative distance ``to_flow`` (its own ODE flow) and
    the test ``loss``; and per seed ``max_change``, ``train_loss`` and the ``params`` count."""

    L_train: int
    eval_depths: list[int]
    train_seeds: list[int]
    designs: dict[str, dict]

    @property
    def log_change(self) -> dict[str, list[float]]:
        """log10 of each seed's largest change: the quantity of C2 and C3."""
        return {n: [math.log10(v) for v in r["max_change"]] for n, r in self.designs.items()}

    @property
    def order_smooth_euler(self) -> float:
        """Mean order at which the smooth Euler network approaches its own flow with depth."""
        return float(np.mean([convergence_order(self.eval_depths, tf)[0]
                              for tf in self.designs["smooth_euler"]["to_flow"]]))

    def metrics(self) -> dict:
        i_train, out = self.eval_depths.index(self.L_train), {}
        for name, r in self.designs.items():
            out[f"resample_change_max_{name}"] = _metric(float(np.mean(r["max_change"])), "relative",
                                                         per_seed=r["max_change"], seeds=self.train_seeds)
            out[f"resample_changes_{name}"] = _metric(r["change"], "relative", depths=self.eval_depths)
            out[f"resample_to_flow_{name}"] = _metric(r["to_flow"], "relative", depths=self.eval_depths)
            out[f"resample_flow_gap_trained_{name}"] = _metric(
                float(np.mean([tf[i_train] for tf in r["to_flow"]])), "relative")
            out[f"resample_loss_ratio_{name}"] = _metric(
                float(np.mean([lo[-1] / lo[i_train] for lo in r["loss"]])),
                between=f"L = {self.eval_depths[-1]} and L = {self.L_train}")
            out[f"resample_train_loss_{name}"] = _metric(float(np.mean(r["train_loss"])), "mse")
            out[f"resample_params_{name}"] = _metric(r["params"], "parameters")
        out["resample_order_smooth_euler"] = _metric(self.order_smooth_euler)
        out["n_training_seeds"] = _metric(len(self.train_seeds))
        return out

    def table(self) -> tuple[list, list]:
        return (["L′"] + [f"{n}: change" for n in self.designs],
                [(Lp, *(f"{np.mean([c[i] for c in r['change']]):.3f}" for r in self.designs.values()))
                 for i, Lp in enumerate(self.eval_depths)])

    def evidence(self, smooth: str, untied: str, fmt: str = ".3f") -> str:
        """The largest changes per seed of two designs, e.g. ("smooth_euler", "untied_euler")."""
        def name(n):
            return n.replace("_euler", " Euler").replace("_rk4", " RK4")

        return (f"largest changes per seed: {name(smooth)} "
                + ", ".join(format(v, fmt) for v in self.designs[smooth]["max_change"])
                + f"; {name(untied)} " + ", ".join(f"{v:.3f}" for v in self.designs[untied]["max_change"]))


def resampling_study(train_seeds: Sequence[int], *, n_train: int, steps: int, n_test: int = 256,
                     width: int = 32, L_train: int = 16, eval_depths: Sequence[int] = (8, 16, 32, 64, 128, 256),
                     n_knots: int = 5, T: float = 1.0, lr: float = 1e-2, flow_rtol: float = 1e-8,
                     flow_atol: float = 1e-10, device=None) -> Resampling:
    """Train four designs with ``L_train`` blocks to reproduce :func:`twist` on ``n_train``
    points of [−1, 1]² (Adam, full batch, ``steps`` steps; the seeds of one design as one
    ensemble) and evaluate them at ``eval_depths`` on ``n_test`` held-out points: smooth
    weights at ``n_knots`` knots or untied weights at :func:`layer_times`, with Euler or RK4
    blocks. The data of seed s come from generator s + 1, the initial weights from s + 2.
    Each network's own ODE flow (``to_flow``) is solved by dopri5 at ``flow_rtol``, ``flow_atol``."""
    positive_int("n_train", n_train)
    positive_int("steps", steps)
    one_of("L_train", L_train, eval_depths)
    S = len(train_seeds)
    gx = [torch.Generator().manual_seed(s + 1) for s in train_seeds]
    x_train = torch.stack([2 * torch.rand(n_train, 2, generator=g, dtype=F64) - 1 for g in gx]).to(device)
    x_test = torch.stack([2 * torch.rand(n_test, 2, generator=g, dtype=F64) - 1 for g in gx]).to(device)
    y_train, y_test = twist(x_train), twist(x_test)
    smooth_knots = [T * k / (n_knots - 1) for k in range(n_knots)]
    untied = layer_times(T, L_train)
    designs = {"smooth_euler": (smooth_knots, "euler"), "smooth_rk4": (smooth_knots, "rk4"),
               "untied_euler": (untied, "euler"), "untied_rk4": (untied, "rk4")}
    results = {}
    for name, (times, scheme) in designs.items():
        net = KnotField(2, width, times, generator=[torch.Generator().manual_seed(s + 2) for s in train_seeds],
                        n_models=S, device=device)
        losses = train_field(net, x_train, y_train, T, L_train, steps=steps, lr=lr, scheme=scheme)
        with torch.no_grad():
            outs = {Lp: resnet(net, x_test, T, Lp, scheme=scheme) for Lp in eval_depths}
            flow_net = ode_flow(net, x_test, T, rtol=flow_rtol, atol=flow_atol)
        trained = outs[L_train]
        # relative to the displacement of the trained map, not to the output itself
        change = [[rms(outs[Lp][k], trained[k]) / rms(trained[k], x_test[k]) for Lp in eval_depths]
                  for k in range(S)]
        to_flow = [[rms(outs[Lp][k], flow_net[k]) / rms(flow_net[k], x_test[k]) for Lp in eval_depths]
                   for k in range(S)]
        loss = [[float((outs[Lp][k] - y_test[k]).pow(2).mean()) for Lp in eval_depths] for k in range(S)]
        results[name] = {"change": change, "to_flow": to_flow, "loss": loss,
                         "max_change": [max(c) for c in change], "train_loss": losses[-1],
                         "params": sum(p[0].numel() for p in net.parameters())}
    return Resampling(L_train, list(eval_depths), list(train_seeds), results)


def plot_resampling(axes, result: Resampling) -> None:
    """Left: distance of each resampled network to its own ODE flow; right: change of the
    output from the trained depth, with the claims' threshold 0.1 (one line per seed)."""
    for (name, r), color in zip(result.designs.items(), ("C0", "C1", "C3", "C4")):
        for k in range(len(r["change"])):
            label = name.replace("_", ", ") if k == 0 else None
            axes[0].loglog(result.eval_depths, [max(v, 1e-16) for v in r["to_flow"][k]], "o-", color=color,
                           label=label, ms=3)
            axes[1].semilogx(result.eval_depths, r["change"][k], "o-", color=color, label=label, ms=3)
    for ax in axes:
        ax.axvline(result.L_train, color="grey", lw=0.8, ls="--")
        ax.set_xlabel("blocks L′ at evaluation")
    axes[1].axhline(0.1, color="k", lw=0.8, ls=":")
    axes[0].set_ylabel("relative distance to own ODE flow")
    axes[1].set_ylabel("relative change of the output")
    axes[0].legend(fontsize=8)


@dataclass
class Stability:
    """Tied networks of every kind with the same step (claims C4, C4b, check K4): per kind the
    fitted exponential ``rates`` per unit time (one per network), the mean ``log_growth`` at
    every layer and the ``grad_growth`` at ``grad_depths``; the antisymmetric design's rates
    across dampings ``gammas``; the networks' ``W``, ``b`` (reused by the boundary check)."""

    W: torch.Tensor
    b: torch.Tensor
    gamma: float
    step_size: float
    depth: int
    grad_depths: list[int]
    rates: dict[str, list[float]]
    log_growth: dict[str, list[float]]
    grad_growth: dict[str, list[float]]
    reversal: float
    predicted_anti: float
    predicted_linear: float
    gammas: list[float]
    gamma_rates: list[list[float]]
    gamma_predicted: list[float]

    @property
    def kinds(self) -> tuple[str, ...]:
        return KINDS + ("linear",)

    @property
    def times(self) -> list[float]:
        return [self.step_size * l for l in range(self.depth + 1)]

    @property
    def stable_worst(self) -> list[float]:
        """Per network, the larger |rate| of the antisymmetric and Hamiltonian designs (C4)."""
        return [max(abs(a), abs(m)) for a, m in zip(self.rates["antisymmetric"], self.rates["hamiltonian"])]

    def metrics(self) -> dict:
        out, h, L = {}, self.step_size, self.depth
        for kind in self.kinds:
            out[f"rate_{kind}"] = _metric(float(np.mean(self.rates[kind])), "per unit time",
                                          per_network=self.rates[kind])
            out[f"forward_growth_{kind}_deepest"] = _metric(math.exp(self.log_growth[kind][-1]), depth=L,
                                                            mean="geometric over networks and inputs")
            if kind in self.grad_growth:
                out[f"gradient_growth_{kind}"] = _metric(self.grad_growth[kind], depths=self.grad_depths)
        out.update({
            "stability_step": _metric(h),
            "stability_depth": _metric(L, "layers"),
            "stability_time": _metric(h * L, meaning="T = h L of the deepest network"),
            "stability_gamma": _metric(self.gamma),
            "n_stability_nets": _metric(self.W.shape[0]),
            "rate_antisymmetric_linearised": _metric(self.predicted_anti, "per unit time",
                                                     meaning="max log|1 + hλ(K)|/h, mean over networks"),
            "rate_linear_predicted": _metric(self.predicted_linear, "per unit time"),
            "leapfrog_reversal_error": _metric(self.reversal, "max abs"),
            "gamma_curve_gammas": _metric(self.gammas),
            "gamma_curve_rates": _metric([float(np.mean(r)) for r in self.gamma_rates], "per unit time"),
            "gamma_curve_predicted": _metric(self.gamma_predicted, "per unit time"),
        })
        return out

    def table(self) -> tuple[list, list]:
        nan = [float("nan")] * len(self.grad_depths)
        return (["design", "rate r per unit time (mean [min, max] over networks)", f"growth at L = {self.depth}"]
                + [f"gradient growth, L = {L}" for L in self.grad_depths],
                [(k, f"{np.mean(r):+.4f} [{min(r):+.4f}, {max(r):+.4f}]", f"{math.exp(self.log_growth[k][-1]):.3g}",
                  *(f"{g:.3g}" for g in self.grad_growth.get(k, nan))) for k, r in self.rates.items()])

    def evidence(self) -> str:
        return (f"{self.W.shape[0]} networks, h = {self.step_size:.4g}, γ = {self.gamma}, "
                f"T = {self.step_size * self.depth:.1f}; "
                + "; ".join(f"{k}: {np.mean(self.rates[k]):+.4f}" for k in self.kinds))


def stability_study(seed: int, *, width: int, depth: int, gamma: float, n_nets: int = 8, batch: int = 4,
                    gammas: Sequence[float] = (0.02, 0.05, 0.1, 0.2, 0.4), device=None) -> Stability:
    """``n_nets`` tied networks per kind (``W ~ N(0, 1/d)``, ``b ~ N(0, 0.01)``, d = ``width``)
    at one step, half the antisymmetric design's h_max(γ): a random infinitesimal input
    perturbation pushed through ``depth`` layers, its log-growth fitted by
    :func:`exponential_rate`; gradients by backpropagation at depth/32, /8, /2; the leapfrog
    network run back; and the antisymmetric rate at each damping in ``gammas``, each at its
    own h_max/2 for the same duration. All draws from one generator seeded ``seed``."""
    d, L_max = positive_int("width", width), positive_int("depth", depth, minimum=64)
    positive("gamma", gamma)
    gs = torch.Generator().manual_seed(seed)
    W = (torch.randn(n_nets, d, d, generator=gs, dtype=F64) / math.sqrt(d)).to(device)
    b = (0.1 * torch.randn(n_nets, d, generator=gs, dtype=F64)).to(device)
    h = 0.5 * antisymmetric_stable_step(W, gamma)
    times = [h * l for l in range(L_max + 1)]
    grad_depths = [L_max // 32, L_max // 8, L_max // 2]
    rates, log_growth, grad_growth = {}, {}, {}
    for kind in KINDS + ("linear",):
        net = TiedResNet(kind, W, b, h, gamma=gamma)
        state = 2 * d if kind == "hamiltonian" else d
        x0 = torch.randn(n_nets, batch, d, generator=gs, dtype=F64).to(device)
        if kind == "hamiltonian":  # Haber & Ruthotto start the auxiliary variable at zero
            x0 = torch.cat([x0, torch.zeros_like(x0)], dim=-1)
        v = torch.randn(n_nets, batch, state, generator=gs, dtype=F64).to(device)
        logs = perturbation_growth(net, x0, L_max, v, per_network=True).cpu()
        log_growth[kind] = logs.mean(1).tolist()
        rates[kind] = [exponential_rate(times, logs[:, i].tolist())[0] for i in range(n_nets)]
        if kind != "linear":
            c = torch.randn(n_nets, batch, state, generator=gs, dtype=F64).to(device)
            grad_growth[kind] = gradient_growth(net, x0, grad_depths, c)
        if kind == "hamiltonian":
            with torch.no_grad():
                reversal = float((net.inverse(net(x0, L_max), L_max) - x0).abs().max())
    eig_anti = torch.linalg.eigvals(antisymmetric(W, gamma)).cpu()
    predicted_anti = float(np.mean([euler_growth_rate(e, h) for e in eig_anti]))
    predicted_linear = float(np.mean([euler_growth_rate(e, h) for e in torch.linalg.eigvals(W).cpu()]))
    gamma_rates, gamma_predicted = [], []
    for g_ in gammas:
        h_g = 0.5 * antisymmetric_stable_step(W, g_)
        L_g = max(64, int(round(h * L_max / h_g)))  # the same duration T as the main run
        net = TiedResNet("antisymmetric", W, b, h_g, gamma=g_)
        x0 = torch.randn(n_nets, batch, d, generator=gs, dtype=F64).to(device)
        v = torch.randn(n_nets, batch, d, generator=gs, dtype=F64).to(device)
        logs = perturbation_growth(net, x0, L_g, v, per_network=True).cpu()
        t_g = [h_g * l for l in range(L_g + 1)]
        gamma_rates.append([exponential_rate(t_g, logs[:, i].tolist())[0] for i in range(n_nets)])
        gamma_predicted.append(float(np.mean([euler_growth_rate(e, h_g)
                                              for e in torch.linalg.eigvals(antisymmetric(W, g_)).cpu()])))
    return Stability(W, b, gamma, h, L_max, grad_depths, rates, log_growth, grad_growth, reversal,
                     predicted_anti, predicted_linear, list(gammas), gamma_rates, gamma_predicted)


def plot_stability(axes, result: Stability, *, rate_max: float) -> None:
    """Left: log-growth of a perturbation against time per kind (clipped at 12); right: the
    antisymmetric rate against the damping γ, measured and linearised, the band |r| ≤ ``rate_max``."""
    r = result
    ax = axes[0]
    for kind in r.kinds:
        ax.plot(r.times, np.minimum(r.log_growth[kind], 12), label=kind, lw=1.2,
                ls="--" if kind == "linear" else "-")
    ax.axhline(0, color="k", lw=0.6)
    ax.set(xlabel="time t = h l", ylabel="log ‖δ_l‖ / ‖δ_0‖", ylim=(None, 12.5))
    ax.legend(fontsize=8)
    ax = axes[1]
    means = [np.mean(g) for g in r.gamma_rates]
    ax.errorbar(r.gammas, means, yerr=[[m - min(g) for m, g in zip(means, r.gamma_rates)],
                                       [max(g) - m for m, g in zip(means, r.gamma_rates)]], fmt="o", label="measured")
    ax.plot(r.gammas, r.gamma_predicted, "-", label="linearised, at equilibrium")
    ax.axhspan(-rate_max, rate_max, color="grey", alpha=0.15)
    ax.axvline(r.gamma, color="grey", ls="--", lw=0.8)
    ax.set(xscale="log", xlabel="damping γ", ylabel="rate r per unit time", title="antisymmetric")
    ax.set_xticks(r.gammas, labels=[f"{g_:g}" for g_ in r.gammas])
    ax.set_xticks([], minor=True)
    ax.legend(fontsize=8)


def equilibrium_stable_steps(W: torch.Tensor, b: torch.Tensor, gamma: float, *, n_layers: int = 600,
                             tol: float = 2e-3) -> dict[str, tuple[float, float]]:
    """At the equilibrium y* = −K⁻¹b, where the Jacobian is K, the step the frozen-eigenvalue
    criterion predicts and the one bisected by :func:`measured_stable_step`, for the
    antisymmetric block of ``W: (d, d)`` and for the plain block shifted until every eigenvalue
    has real part ≤ −0.1: name → (predicted, measured)."""
    eye = torch.eye(W.shape[-1], dtype=W.dtype, device=W.device)
    shift = float(torch.linalg.eigvals(W).real.max()) + 0.1
    cases = {"antisymmetric": ("antisymmetric", W, antisymmetric(W, gamma), gamma),
             "shifted plain": ("plain", W - shift * eye, W - shift * eye, 0.0)}
    boundary = {}
    for name, (kind, W_case, K_case, g_case) in cases.items():
        h_pred = euler_stable_step(torch.linalg.eigvals(K_case).cpu())
        y_star = torch.linalg.solve(K_case, -b)
        h_meas = measured_stable_step(partial(TiedResNet, kind, W_case, b, gamma=g_case), y_star,
                                      h_max=2 * h_pred, n_layers=n_layers, tol=tol)
        boundary[name] = (h_pred, h_meas)
    return boundary


@dataclass
class FrozenCriterion:
    """Finite-perturbation growth rates at steps ``fractions`` × h_pred (claim C5): ``rate_slow``
    for slowly varying weights far from equilibrium, ``rate_switch`` for K, Kᵀ alternating from
    the common equilibrium; one list per fraction, one rate per network."""

    n_nets: int
    n_layers: int
    fractions: list[float]
    rate_slow: list[list[float]]
    rate_switch: list[list[float]]
    at: float = 0.9

    @property
    def slow(self) -> list[float]:
        return self.rate_slow[self.fractions.index(self.at)]

    @property
    def switch(self) -> list[float]:
        return self.rate_switch[self.fractions.index(self.at)]

    def metrics(self) -> dict:
        at = f"h = {self.at:g} h_pred"
        return {
            "n_c5_nets": _metric(self.n_nets),
            "c5_layers": _metric(self.n_layers, "layers"),
            "c5_rate_slow": _metric(float(np.mean(self.slow)), "per unit time", per_network=self.slow, at=at),
            "c5_rate_switch": _metric(float(np.mean(self.switch)), "per unit time", per_network=self.switch, at=at),
            "c5_rates_slow": _metric([float(np.mean(r)) for r in self.rate_slow], **{"h/h_pred": self.fractions}),
            "c5_rates_switch": _metric([float(np.mean(r)) for r in self.rate_switch],
                                       **{"h/h_pred": self.fractions}),
        }

    def table(self) -> tuple[list, list]:
        return (["h / h_pred", "slow weights: rate (mean [min, max])", "switching K, Kᵀ: rate (mean [min, max])"],
                [(f, _range(rs), _range(rw)) for f, rs, rw in zip(self.fractions, self.rate_slow, self.rate_switch)])

    def evidence(self) -> str:
        return (f"{self.n_nets} networks of {self.n_layers} layers at h = {self.at:g} h_pred; slow: "
                + ", ".join(f"{r:+.3f}" for r in self.slow) + "; switching: "
                + ", ".join(f"{r:+.3f}" for r in self.switch))


def frozen_criterion_study(seed: int, *, width: int, n_nets: int = 8, n_layers: int = 256,
                           fractions: Sequence[float] = (0.25, 0.5, 0.75, 0.9, 1.1, 1.5), eps: float = 0.3,
                           device=None) -> FrozenCriterion:
    """Does the frozen-eigenvalue step keep finite perturbations from growing off the
    equilibrium? ``n_nets`` networks of ``n_layers`` blocks K_l = W(u_l) − s I interpolating
    linearly between two random matrices (u_l = l/(L−1)), shifted so that every layer's
    eigenvalues have real part ≤ −0.1, run from y0 ~ N(0, 9I) with perturbations of size
    ``eps``; the control alternates K, Kᵀ (same eigenvalues, b = 0, from y = 0). Rates by
    :func:`finite_growth_rate` at ``fractions`` of :func:`frozen_stable_step`."""
    d, L5 = positive_int("width", width), positive_int("n_layers", n_layers, minimum=2)
    g5 = torch.Generator().manual_seed(seed)
    W5 = (torch.randn(2, n_nets, d, d, generator=g5, dtype=F64) / math.sqrt(d)).to(device)
    b5 = (0.1 * torch.randn(n_nets, d, generator=g5, dtype=F64)).to(device)
    x5 = (3 * torch.randn(n_nets, d, generator=g5, dtype=F64)).to(device)
    eye = torch.eye(d, dtype=F64, device=device)
    u = torch.linspace(0, 1, L5, dtype=F64, device=device)[:, None, None, None]
    W_path = torch.lerp(W5[0].expand(L5, -1, -1, -1), W5[1].expand(L5, -1, -1, -1), u)  # (L, n, d, d)
    s5 = torch.linalg.eigvals(W_path).real.amax(dim=(0, 2)) + 0.1  # per network, over all layers
    slow_blocks = W_path - s5[:, None, None] * eye
    K0 = W5[0] - (torch.linalg.eigvals(W5[0]).real.amax(-1) + 0.1)[:, None, None] * eye
    switch_blocks = torch.stack([K0 if l % 2 == 0 else K0.mT for l in range(L5)])
    h_slow, h_switch = frozen_stable_step(slow_blocks), frozen_stable_step(switch_blocks)
    rate_slow = [finite_growth_rate(slow_blocks, b5, f * h_slow, x5, eps=eps).tolist() for f in fractions]
    rate_switch = [finite_growth_rate(switch_blocks, torch.zeros_like(b5), f * h_switch, torch.zeros_like(x5),
                                      eps=eps).tolist() for f in fractions]
    return FrozenCriterion(n_nets, L5, list(fractions), rate_slow, rate_switch)


def plot_frozen_criterion(ax, result: FrozenCriterion) -> None:
    """Growth rate against h / h_pred (mean and range over networks), slow and switching."""
    for rs, label in ((result.rate_slow, "slowly varying weights"),
                      (result.rate_switch, "K, Kᵀ alternating (control)")):
        m = [np.mean(r) for r in rs]
        spread = [[a - min(r) for a, r in zip(m, rs)], [max(r) - a for a, r in zip(m, rs)]]
        ax.errorbar(result.fractions, m, yerr=spread, fmt="o-", label=label)
    ax.axhline(0, color="k", lw=0.6)
    ax.axvline(result.at, color="grey", ls="--", lw=0.8)
    ax.set(xlabel="step h / h_pred", ylabel="growth rate per unit time")
    ax.legend()


@dataclass
class EdgeOfChaos:
    """Lyapunov sweeps over the weight ``scales`` (claim C6): per seed the exponents with tanh
    (``lyap``) and without (``lyap_linear``), their sign changes (``edges``), and the mean-field
    curve and edge."""

    scales: list[float]
    seeds: list[int]
    width: int
    depth: int
    bias_scale: float
    lyap: list[list[float]]
    lyap_linear: list[list[float]]
    edges: list[list[float]]
    edges_linear: list[list[float]]
    lyap_mf: list[float]
    edge_mf: float

    @property
    def single(self) -> bool:
        """Every sweep changes sign exactly once (else the edge is not defined)."""
        return all(len(e) == 1 for e in self.edges) and all(len(e) == 1 for e in self.edges_linear)

    @property
    def gaps(self) -> list[float] | None:
        return [e[0] - self.edge_mf for e in self.edges] if self.single else None

    @property
    def gaps_linear(self) -> list[float] | None:
        return [e[0] - self.edge_mf for e in self.edges_linear] if self.single else None

    def metrics(self) -> dict:
        one = self.single
        return {
            "n_lyapunov_seeds": _metric(len(self.seeds)),
            "lyapunov_exponents": _metric(self.lyap, "per layer", scales=self.scales),
            "lyapunov_exponents_linear": _metric(self.lyap_linear, "per layer"),
            "lyapunov_exponents_mean_field": _metric(self.lyap_mf, "per layer"),
            "lyapunov_at_smallest_scale": _metric(float(np.mean([lam[0] for lam in self.lyap])), "per layer",
                                                  sigma_w=self.scales[0]),
            "lyapunov_at_largest_scale": _metric(float(np.mean([lam[-1] for lam in self.lyap])), "per layer",
                                                 sigma_w=self.scales[-1]),
            "lyapunov_sign_changes": _metric([len(e) for e in self.edges]),
            "lyapunov_bias_scale": _metric(self.bias_scale),
            "edge_of_chaos_scale": _metric(float(np.mean([e[0] for e in self.edges])) if one else None,
                                           per_seed=self.edges, sigma_b=self.bias_scale, width=self.width,
                                           depth=self.depth),
            "edge_of_chaos_scale_linear": _metric(float(np.mean([e[0] for e in self.edges_linear])) if one
                                                  else None, per_seed=self.edges_linear),
            "edge_of_chaos_scale_mean_field": _metric(self.edge_mf, sigma_b=self.bias_scale),
            "lyapunov_mean_field_gap": _metric(float(max(abs(a - m) for lam in self.lyap
                                                         for a, m in zip(lam, self.lyap_mf))), "per layer"),
        }

    def evidence(self) -> str:
        if self.single:
            return (f"edges per seed: tanh {[round(e[0], 4) for e in self.edges]}, linear "
                    f"{[round(e[0], 4) for e in self.edges_linear]}; mean field {self.edge_mf:.4f} "
                    f"(σ_b = {self.bias_scale}, N = {self.width}, {self.depth} layers)")
        return (f"not one sign change per sweep on σ_w ∈ [{self.scales[0]}, {self.scales[-1]}]: tanh "
                f"{[len(e) for e in self.edges]}, linear {[len(e) for e in self.edges_linear]}")


def edge_of_chaos_study(seeds: Sequence[int], *, n_scales: int, width: int, depth: int, bias_scale: float,
                        lo: float = 0.5, hi: float = 2.5, device=None) -> EdgeOfChaos:
    """Largest Lyapunov exponent (:func:`tanh_lyapunov`, float32, first quarter of the layers
    discarded) on ``n_scales`` weight scales in [``lo``, ``hi``], with tanh and without (the
    same generator continues), per seed; the edges by :func:`sign_changes`, against the
    mean-field curve ½ log χ and edge :func:`critical_weight_scale`."""
    scales = np.linspace(lo, hi, positive_int("n_scales", n_scales, minimum=2))
    edge_mf = critical_weight_scale(bias_scale, lo=0.05, hi=8.0)
    lyap, lyap_linear, edges, edges_linear = [], [], [], []
    for seed in seeds:
        gl = torch.Generator(device=device).manual_seed(seed)
        sweep = partial(tanh_lyapunov, width=width, depth=depth, bias_scale=bias_scale, burn_in=depth // 4,
                        generator=gl, device=device)
        lyap.append([sweep(float(s)) for s in scales])
        lyap_linear.append([sweep(float(s), activation="linear") for s in scales])
        edges.append(sign_changes(scales.tolist(), lyap[-1]))
        edges_linear.append(sign_changes(scales.tolist(), lyap_linear[-1]))
    lyap_mf = [0.5 * math.log(mean_field_chi(float(s), bias_scale)[1]) for s in scales]
    return EdgeOfChaos(scales.tolist(), list(seeds), width, depth, bias_scale, lyap, lyap_linear, edges,
                       edges_linear, lyap_mf, edge_mf)


def plot_edge_of_chaos(ax, result: EdgeOfChaos) -> None:
    """Lyapunov exponents against σ_w per seed (tanh: circles, linear: crosses), the mean-field
    curve and its edge (dashed)."""
    r = result
    ax.plot(r.scales, r.lyap_mf, "-", color="k", lw=1, label="mean field ½ log χ (tanh)")
    for k in range(len(r.seeds)):
        ax.plot(r.scales, r.lyap[k], "o", color=f"C{k}", ms=4,
                label=f"tanh, N = {r.width}, {r.depth} layers" if k == 0 else None)
        ax.plot(r.scales, r.lyap_linear[k], "x", color=f"C{k}", ms=4, label="linear (control)" if k == 0 else None)
    ax.axhline(0, color="k", lw=0.6)
    ax.axvline(r.edge_mf, color="grey", ls="--", lw=0.8)
    ax.set(xlabel="weight scale σ_w", ylabel="Lyapunov exponent per layer", ylim=(-1.5, 1.2))
    ax.legend(fontsize=8)
