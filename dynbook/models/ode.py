"""Residual networks as ODE integrators: Euler and RK4 ResNets, reference flows and their
validation, orders of convergence, depth resampling (ensembles trained in one pass), stable
(antisymmetric, Hamiltonian) blocks, exponential growth rates per unit time, the Euler
stability condition on and off the equilibrium, and Lyapunov exponents.

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
"""

from __future__ import annotations

import bisect
import math
import numbers
from typing import Callable, Sequence

import torch
from torch import nn

__all__ = [
    "KnotField", "layer_times", "resnet_euler", "resnet_rk4", "resnet", "SCHEMES", "ode_flow", "rms", "depth_errors",
    "richardson", "cauchy_differences", "convergence_order", "train_field", "twist",
    "antisymmetric", "TiedResNet", "KINDS", "perturbation_growth", "gradient_growth", "exponential_rate",
    "euler_stable_step", "antisymmetric_stable_step", "euler_growth_rate", "growth_rate", "measured_stable_step",
    "finite_growth_rate", "frozen_stable_step",
    "tanh_lyapunov", "mean_field_chi", "critical_weight_scale", "sign_changes",
]

Field = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _positive_int(name: str, value, lo: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < lo:
        raise ValueError(f"{name}={value!r} is not allowed: expected an integer >= {lo}")
    return int(value)


def _positive_float(name: str, value, *, allow_zero: bool = False) -> float:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name}={value!r} is not allowed: expected a finite number {bound}")
    return float(value)


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
        _positive_int("dim", dim)
        _positive_int("width", width)
        _positive_float("weight_scale", weight_scale, allow_zero=True)
        if n_models is not None:
            _positive_int("n_models", n_models)
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
    _positive_float("T", T)
    _positive_int("n_layers", n_layers)
    return [l * T / n_layers for l in range(n_layers)]


# ----------------------------------------------------------------------------- ResNets = integrators


def resnet_euler(field: Field, y0: torch.Tensor, T: float, n_layers: int, *,
                 return_states: bool = False):
    """An L-layer residual network y_{l+1} = y_l + h f(t_l, y_l), h = T / L: forward Euler.

    ``y0: (..., dim)`` → y_L of the same shape, or all states ``(L + 1, ..., dim)``.
    """
    _positive_float("T", T)
    _positive_int("n_layers", n_layers)
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
    if rule not in _RK4_RULES:
        raise ValueError(f"rule={rule!r} is not allowed: expected one of {', '.join(map(repr, _RK4_RULES))}")
    _positive_float("T", T)
    _positive_int("n_layers", n_layers)
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


SCHEMES = ("euler", "rk4")


def resnet(field: Field, y0: torch.Tensor, T: float, n_layers: int, *, scheme: str = "euler") -> torch.Tensor:
    """The L-block ResNet of ``field`` with Euler (``scheme="euler"``) or classical RK4 blocks."""
    if scheme not in SCHEMES:
        raise ValueError(f"scheme={scheme!r} is not allowed: expected one of {', '.join(map(repr, SCHEMES))}")
    return (resnet_euler if scheme == "euler" else resnet_rk4)(field, y0, T, n_layers)


def ode_flow(field: Field, y0: torch.Tensor, T: float, *, rtol: float = 1e-10, atol: float = 1e-12,
             method: str = "dopri5") -> torch.Tensor:
    """The ODE solution y(T) by torchdiffeq's adaptive solver (the depth → ∞ limit).

    The knots of a :class:`KnotField` are passed as ``jump_t`` so the solver restarts at the
    kinks of θ(t) instead of rejecting steps across them.
    """
    from torchdiffeq import odeint

    _positive_float("T", T)
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
        return [rms(resnet(field, y0, T, _positive_int("depth", L), scheme=scheme), reference) for L in depths]


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
    if scheme not in SCHEMES:
        raise ValueError(f"scheme={scheme!r} is not allowed: expected one of {', '.join(map(repr, SCHEMES))}")
    _positive_int("steps", steps)
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
    _positive_int("order", order)
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
    _positive_float("gamma", gamma, allow_zero=True)
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
        if kind not in _ALL_KINDS:
            raise ValueError(f"kind={kind!r} is not allowed: expected one of {', '.join(map(repr, _ALL_KINDS))}")
        if W.ndim not in (2, 3) or W.shape[-1] != W.shape[-2] or b.shape != W.shape[:-1]:
            raise ValueError(f"W (shape {tuple(W.shape)}) and b (shape {tuple(b.shape)}) are not allowed: "
                             "expected W (d, d) with b (d,), or W (n, d, d) with b (n, d)")
        self.kind = kind
        self.step_size = _positive_float("step_size", step_size)
        self.gamma = _positive_float("gamma", gamma, allow_zero=True)
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
        _positive_int("n_layers", n_layers)
        for _ in range(n_layers):
            x = self.step(x)
        return x

    def inverse(self, x: torch.Tensor, n_layers: int) -> torch.Tensor:
        _positive_int("n_layers", n_layers)
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
    _positive_int("n_layers", n_layers)
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
        (grad,) = torch.autograd.grad((net(x, _positive_int("depth", L)) * c).sum(), x)
        out.append(_log_ratio(grad, c))
    return torch.stack(out).exp().tolist()


def exponential_rate(times, log_growth, *, start: float = 0.125) -> tuple[float, float]:
    """Separate exponential from polynomial growth: least squares of
    log g(t) = r t + p log t + c over the times t ≥ ``start`` × max t. Returns (r, p): r is the
    exponential rate per unit time (0 for any power law t^p), p the power."""
    import numpy as np

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
    _positive_int("n_layers", n_layers, lo=2)
    _positive_int("every", every)
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
    _positive_int("every", every)
    _positive_float("eps", eps)
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
    h = _positive_float("step_size", step_size)
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
    _positive_float("weight_scale", weight_scale, allow_zero=True)
    if activation not in ("tanh", "linear"):
        raise ValueError(f"activation={activation!r} is not allowed: expected 'tanh' or 'linear'")
    _positive_int("width", width)
    _positive_int("depth", depth)
    _positive_int("burn_in", burn_in, lo=0)
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


def mean_field_chi(weight_scale: float, bias_scale: float = 0.0, *, n_quad: int = 101) -> tuple[float, float]:
    """Infinite-width prediction (Poole et al. 2016): the fixed point q* of
    q = σ_w² E[tanh(√q z)²] + σ_b² and χ = σ_w² E[tanh'(√q* z)²], z ~ N(0, 1), by Gauss–Hermite
    quadrature. The per-layer Lyapunov exponent is ½ log χ; χ = 1 is the edge of chaos."""
    import numpy as np

    z, w = np.polynomial.hermite_e.hermegauss(n_quad)
    w = w / w.sum()
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
