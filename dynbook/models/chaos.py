"""Learning chaotic dynamics: attractors, Lyapunov exponents, forecast horizons and the four
forecasters of Chapter 8 (reservoir, Neural ODE, SSM, MLP one-step map).

Glossary (code ↔ maths):

================  =========================================================================
``lam``           λ_max, the largest Lyapunov exponent (1/time); 1/λ is the Lyapunov time
``dt``            sampling interval of a series; ``h`` the RK4 integration step (``dt/substeps``)
``vpt``           valid prediction time: first t with ‖x̂(t) − x(t)‖/σ_attractor > ε
``rho``           spectral radius ρ of the reservoir matrix W (:mod:`dynbook.models.reservoir`)
================  =========================================================================

Attractors and their published properties come from dysts (Gilpin 2021): its right-hand sides
(``rhs``, vectorised over a batch of states) and its metadata (``maximum_lyapunov_estimated``,
``correlation_dimension``, ``period``). dysts' own ``make_trajectory`` (Radau at 1e-12) takes
tens of seconds per system without numba, so :func:`integrate` is a batched classical RK4 on
the same right-hand sides, at a step ``period/(pts_per_period · substeps)``.

:func:`benettin` measures λ_max of any batched step map (a flow's RK4 step, a map, a learned
model) by the two-trajectory method with renormalisation (Benettin et al. 1980).

The echo state network lives in :mod:`dynbook.models.reservoir`; this module trains and
compares the four forecasters (:func:`esn_study`, :func:`backprop_study`), measures the
learned systems' exponents (:func:`learned_lyapunov`) and runs the chapter's sweeps
(:func:`rho_sweep`, :func:`cross_system`) and cost counts.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from dynbook import _checks
from dynbook.measure.timing import single_threaded  # noqa: F401 - the chapter's `ch.single_threaded()`
from dynbook.models.reservoir import (_memoryless_r2, _readout, autonomous_lyapunov, esn_forecast, esn_lyapunov,
                                      first_crossing, harvest, make_reservoirs, memory_capacity, train_readout)

# ----------------------------------------------------------------------------- attractors


def _dysts_flows():
    with warnings.catch_warnings():  # "numba is not installed": dysts falls back to numpy
        warnings.simplefilter("ignore")
        import dysts.flows as flows
    return flows


def system(name: str):
    """The dysts flow ``name`` (default parameters), e.g. ``system("Lorenz")``."""
    flows = _dysts_flows()
    cls = getattr(flows, str(name), None)
    if cls is None or not isinstance(cls, type):
        raise ValueError(f"name={name!r} is not allowed: expected a dysts flow such as 'Lorenz'")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cls()


def published(name: str) -> dict:
    """dysts' metadata for ``name``: ``lyapunov`` (λ_max, 1/time), ``correlation_dimension``,
    ``kaplan_yorke``, ``period`` (dominant period, time), ``dim``."""
    s = system(name)
    return {"lyapunov": float(s.maximum_lyapunov_estimated),
            "correlation_dimension": float(s.correlation_dimension or float("nan")),
            "kaplan_yorke": float(getattr(s, "kaplan_yorke_dimension", None) or float("nan")),
            "period": float(s.period), "dim": int(len(s.ic))}


def rhs_of(name: str) -> Callable[[np.ndarray], np.ndarray]:
    """``f(X)`` for a batch ``X: (B, D)`` → ``(B, D)``, the system's vector field."""
    s = system(name)
    return lambda X: np.asarray(s.rhs(X, 0.0)).T


def rk4_step(f: Callable, X, h: float):
    """One classical RK4 step of ``x' = f(x)`` for a batch ``X`` (numpy or torch)."""
    k1 = f(X)
    k2 = f(X + 0.5 * h * k1)
    k3 = f(X + 0.5 * h * k2)
    k4 = f(X + h * k3)
    return X + h / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)


def integrate(f: Callable, x0, *, h: float, n_samples: int, every: int = 1) -> np.ndarray:
    """RK4 with step ``h`` from ``x0: (B, D)``; returns ``(n_samples, B, D)`` sampled every
    ``every`` steps, the first sample being ``x0``."""
    _checks.positive("h", h)
    _checks.positive_int("n_samples", n_samples)
    _checks.positive_int("every", every)
    X = np.array(x0, dtype=float, ndmin=2)
    out = np.empty((n_samples,) + X.shape)
    out[0] = X
    with np.errstate(over="ignore", invalid="ignore"):  # a divergence is checked by the caller
        for i in range(1, n_samples):
            for _ in range(every):
                X = rk4_step(f, X, h)
            out[i] = X
    return out


@dataclass
class Series:
    """Sampled trajectories of a system: ``x: (T, B, D)`` at interval ``dt``."""

    name: str
    x: np.ndarray
    dt: float
    lam: float  # published λ_max, 1/time
    period: float

    @property
    def lyapunov_time(self) -> float:
        return 1.0 / self.lam


def trajectories(name: str, *, n_traj: int, n_samples: int, pts_per_period: int = 30,
                 substeps: int = 4, transient_periods: float = 20.0, seed: int = 0) -> Series:
    """``n_traj`` trajectories of ``name`` on its attractor, from the default initial
    condition perturbed by 1 % (seeded), after ``transient_periods`` periods of transient."""
    _checks.positive_int("n_traj", n_traj)
    _checks.positive_int("pts_per_period", pts_per_period, minimum=2)
    _checks.positive_int("substeps", substeps)
    s = system(name)
    f = rhs_of(name)
    dt = float(s.period) / pts_per_period
    h = dt / substeps
    rng = np.random.default_rng(seed)
    ic = np.asarray(s.ic, dtype=float)
    x0 = ic * (1 + 0.01 * rng.standard_normal((n_traj, ic.size)))
    n_trans = max(2, int(transient_periods * pts_per_period))
    x0 = integrate(f, x0, h=h, n_samples=n_trans, every=substeps)[-1]
    x = integrate(f, x0, h=h, n_samples=n_samples, every=substeps)
    if not np.all(np.isfinite(x)) or np.abs(x).max() > 1e12:
        raise FloatingPointError(f"{name}: RK4 at h = {h:.3g} diverged; use more substeps")
    return Series(name, x, dt, float(s.maximum_lyapunov_estimated), float(s.period))


# ----------------------------------------------------------------------------- Lyapunov


def _norm(v):
    return torch.linalg.vector_norm(v, dim=-1) if isinstance(v, torch.Tensor) else np.linalg.norm(v, axis=-1)


def _log(v):
    return torch.log(v) if isinstance(v, torch.Tensor) else np.log(v)


def benettin(step: Callable, x0, *, dt: float, n_steps: int, renorm_every: int = 1,
             d0: float = 1e-8, n_discard: int = 0, seed: int = 0) -> np.ndarray:
    """Largest Lyapunov exponent by two trajectories with renormalisation, per trajectory.

    ``step(X, k)`` advances a batch of states ``X: (B, D)`` (numpy or torch) by one step of
    length ``dt`` (``k`` is the step index, for driven systems). A copy displaced by ``d0`` in
    a random direction is advanced beside each state and pulled back to distance ``d0`` every
    ``renorm_every`` steps; λ = Σ ln(d/d0) / (time after the first ``n_discard`` steps).
    ``d0`` is absolute: the states must stay bounded (an attractor) or ``d0`` is lost in
    their rounding.
    Returns ``(B,)`` exponents (1/time)."""
    _checks.positive("dt", dt)
    _checks.positive_int("n_steps", n_steps)
    _checks.positive_int("renorm_every", renorm_every)
    _checks.positive("d0", d0)
    if not 0 <= n_discard < n_steps or n_discard % renorm_every:
        raise ValueError(f"n_discard={n_discard!r} is not allowed: expected a multiple of "
                         f"renorm_every={renorm_every} in [0, n_steps={n_steps})")
    X = x0
    rng = np.random.default_rng(seed)
    v = rng.standard_normal(tuple(X.shape))
    if isinstance(X, torch.Tensor):
        v = torch.as_tensor(v, dtype=X.dtype)
    v = v / _norm(v)[:, None]
    Y = X + d0 * v
    B = X.shape[0]
    total = np.zeros(B)
    for k in range(n_steps):
        both = step(torch.cat([X, Y]) if isinstance(X, torch.Tensor) else np.concatenate([X, Y]), k)
        X, Y = both[:B], both[B:]
        if (k + 1) % renorm_every == 0 or k == n_steps - 1:
            d = _norm(Y - X)
            if k >= n_discard:
                total += np.asarray(_log(d / d0), dtype=float).reshape(B)
            Y = X + (Y - X) * (d0 / d)[:, None]
    t = (n_steps - n_discard) * dt
    return total / t


def flow_lyapunov(name: str, *, n_traj: int, t_end_lyapunov: float = 100.0, steps_per_period: int = 100,
                  seed: int = 0) -> np.ndarray:
    """λ_max of dysts flow ``name`` by :func:`benettin` on RK4, ``n_traj`` independent start
    points on the attractor, each run for ``t_end_lyapunov`` published Lyapunov times."""
    s = system(name)
    f = rhs_of(name)
    h = float(s.period) / steps_per_period
    x0 = trajectories(name, n_traj=n_traj, n_samples=2, pts_per_period=steps_per_period,
                      substeps=1, seed=seed).x[-1]
    n = int(math.ceil(t_end_lyapunov / float(s.maximum_lyapunov_estimated) / h))
    return benettin(lambda X, k: rk4_step(f, X, h), x0, dt=h, n_steps=n, renorm_every=10,
                    n_discard=10 * (n // 100), seed=seed)


def logistic_map(r: float = 4.0):
    """Step of the logistic map ``x ↦ r x (1 − x)`` for :func:`benettin`."""
    return lambda X, k: r * X * (1 - X)


# ----------------------------------------------------------------------------- forecast skill


def normalised_error(pred, truth, scale: float) -> np.ndarray:
    """``‖pred − truth‖ / scale`` along the last axis (``scale``: the attractor's RMS distance
    from its mean, :func:`attractor_scale`)."""
    _checks.positive("scale", scale)
    pred, truth = np.asarray(pred, dtype=float), np.asarray(truth, dtype=float)
    if pred.shape != truth.shape:
        raise ValueError(f"pred has shape {pred.shape}, truth {truth.shape}: expected one shape")
    return np.linalg.norm(pred - truth, axis=-1) / scale


def attractor_scale(x) -> float:
    """RMS distance of the points ``x: (..., D)`` from their mean."""
    x = np.asarray(x, dtype=float).reshape(-1, np.shape(x)[-1])
    return float(np.sqrt(((x - x.mean(0)) ** 2).sum(1).mean()))


def valid_time(errors, *, dt: float, threshold: float = 0.4) -> np.ndarray:
    """Valid prediction time of normalised errors ``errors: (T, ...)`` (T steps after the
    forecast starts, step ``dt``): ``(first index t with error > threshold) · dt``; a forecast
    that never exceeds it gets ``T · dt`` (censored at the horizon)."""
    _checks.positive("dt", dt)
    _checks.positive("threshold", threshold)
    e = np.asarray(errors, dtype=float)
    if e.ndim == 0 or e.shape[0] == 0:
        raise ValueError(f"errors has shape {e.shape}: expected (T, ...) with T >= 1")
    over = ~(e <= threshold)  # NaN (a diverged forecast) counts as over the threshold
    first = np.where(over.any(0), over.argmax(0), e.shape[0])
    return first * dt


# ----------------------------------------------------------------------------- backprop forecasters


class MLPField(nn.Module):
    """``f_θ(x) = W3 tanh(W2 tanh(W1 x + b1) + b2) + b3``, ``(B, D) → (B, D)``."""

    def __init__(self, d: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
                                 nn.Linear(hidden, d))

    def forward(self, *args):
        return self.net(args[-1])


class NeuralODE(nn.Module):
    """``x' = f_θ(x)`` in standardised units; one sample interval = ``substeps`` RK4 steps of
    torchdiffeq's fixed-grid ``rk4`` (its 3/8-rule variant)."""

    def __init__(self, d: int, hidden: int, *, dt: float, substeps: int = 1):
        super().__init__()
        self.field = MLPField(d, hidden)
        self.dt, self.substeps = float(dt), int(substeps)

    def rollout(self, x0: torch.Tensor, n_steps: int) -> torch.Tensor:
        """``(B, D)`` → ``(B, n_steps, D)``, the states after 1 … n_steps sample intervals."""
        from torchdiffeq import odeint

        t = torch.arange(n_steps + 1, dtype=x0.dtype) * self.dt
        y = odeint(self.field, x0, t, method="rk4", options={"step_size": self.dt / self.substeps})
        return y[1:].transpose(0, 1)

    def step(self, x: torch.Tensor) -> torch.Tensor:
        """One sample interval by the same 3/8-rule RK4 steps as ``rollout`` (without
        torchdiffeq's per-call overhead: :func:`benettin` calls it thousands of times)."""
        h = self.dt / self.substeps
        f = self.field
        for _ in range(self.substeps):
            k1 = f(x)
            k2 = f(x + h * k1 / 3)
            k3 = f(x + h * (k2 - k1 / 3))
            k4 = f(x + h * (k1 - k2 + k3))
            x = x + h * (k1 + 3 * (k2 + k3) + k4) / 8
        return x


class OneStepMLP(nn.Module):
    """``x_{t+1} = x_t + g_θ(x_t)``: a residual MLP map."""

    def __init__(self, d: int, hidden: int):
        super().__init__()
        self.g = MLPField(d, hidden)

    def step(self, x):
        return x + self.g(x)

    def rollout(self, x0, n_steps):
        out, x = [], x0
        for _ in range(n_steps):
            x = self.step(x)
            out.append(x)
        return torch.stack(out, 1)


class SSMForecaster(nn.Module):
    """Encoder → S4D layer (chapter 5's :class:`dynbook.models.ssm.S4D`) → GELU → decoder,
    predicting ``x_{t+1} − x_t`` from ``x_{≤t}``. Trained on windows in convolution mode;
    forecasts step by step through the layer's recurrence (its state is ``(B, H, N/2)``)."""

    def __init__(self, d: int, width: int, d_state: int):
        super().__init__()
        from dynbook.models.ssm import S4D

        self.enc = nn.Linear(d, width)
        self.ssm = S4D(width, d_state, step_min=0.01, step_max=0.5)
        self.dec = nn.Sequential(nn.GELU(), nn.Linear(width, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, L, D)`` → predicted next states ``(B, L, D)`` (convolution mode)."""
        return x + self.dec(self.ssm(self.enc(x), mode="conv"))

    def recurrent(self, h, x):
        """One step: state ``h (B, H, N/2)`` complex, input ``x (B, D)`` → ``(h, x_next)``."""
        dA, CdB, _ = self.ssm.discretize()
        u = self.enc(x)
        h = dA[None] * h + u.to(dA.dtype)[..., None]
        y = 2 * torch.einsum("hn,bhn->bh", CdB, h).real + self.ssm.D * u
        return h, x + self.dec(y)

    def initial_state(self, batch: int):
        H, half = self.ssm.log_A_real.shape
        return torch.zeros(batch, H, half, dtype=torch.complex64)

    def rollout_from(self, history: torch.Tensor, n_steps: int) -> torch.Tensor:
        """Read the true ``history (B, W, D)``, then forecast ``n_steps`` closed loop."""
        h = self.initial_state(history.shape[0])
        for t in range(history.shape[1]):
            h, y = self.recurrent(h, history[:, t])
        out = []
        for _ in range(n_steps):
            out.append(y)
            h, y = self.recurrent(h, y)
        return torch.stack(out, 1)


MODELS = ("neural_ode", "ssm", "mlp")


@dataclass
class TrainConfig:
    """Backprop training: Adam at ``lr`` (cosine decay) for ``steps`` steps of ``batch``
    windows of ``horizon`` sample intervals (the NODE and MLP unroll that many steps; the SSM
    reads windows of ``ssm_window``)."""

    steps: int = 300
    batch: int = 64
    horizon: int = 4
    lr: float = 1e-2
    hidden: int = 32
    ssm_width: int = 16
    ssm_state: int = 16
    ssm_window: int = 48


def make_model(kind: str, d: int, cfg: TrainConfig, *, dt: float) -> nn.Module:
    _checks.one_of("kind", kind, MODELS)
    if kind == "neural_ode":
        return NeuralODE(d, cfg.hidden, dt=dt)
    if kind == "mlp":
        return OneStepMLP(d, cfg.hidden)
    return SSMForecaster(d, cfg.ssm_width, cfg.ssm_state)


def loss_on_batch(model: nn.Module, kind: str, data: torch.Tensor, idx: torch.Tensor, cfg: TrainConfig):
    """Mean squared error of one batch of windows starting at ``idx`` in ``data (T, D)``."""
    if kind == "ssm":
        win = torch.stack([data[i:i + cfg.ssm_window + 1] for i in idx.tolist()])
        return ((model(win[:, :-1]) - win[:, 1:]) ** 2).mean()
    seg = torch.stack([data[i:i + cfg.horizon + 1] for i in idx.tolist()])
    return ((model.rollout(seg[:, 0], cfg.horizon) - seg[:, 1:]) ** 2).mean()


def train_model(kind: str, data, cfg: TrainConfig, *, dt: float, seed: int) -> nn.Module:
    """Train one backprop forecaster on the standardised series ``data (T, D)``."""
    _checks.positive_int("steps", cfg.steps)
    torch.manual_seed(seed)
    data = torch.as_tensor(data, dtype=torch.float32)
    model = make_model(kind, data.shape[1], cfg, dt=dt)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.steps)
    span = cfg.ssm_window if kind == "ssm" else cfg.horizon
    g = torch.Generator().manual_seed(seed)
    for _ in range(cfg.steps):
        idx = torch.randint(0, data.shape[0] - span - 1, (cfg.batch,), generator=g)
        loss = loss_on_batch(model, kind, data, idx, cfg)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return model


@torch.no_grad()
def model_forecast(model: nn.Module, kind: str, history, n_steps: int) -> torch.Tensor:
    """Forecast ``n_steps`` from the true ``history (B, W, D)`` (standardised units)."""
    history = torch.as_tensor(history, dtype=torch.float32)
    if kind == "ssm":
        return model.rollout_from(history, n_steps)
    return model.rollout(history[:, -1], n_steps)


def model_step(model: nn.Module, kind: str) -> Callable:
    """The learned system as a map for :func:`benettin`; the SSM's state is the pair
    (recurrent state, last output), flattened to real numbers."""
    if kind in ("neural_ode", "mlp"):
        return lambda X, k: model.step(X)
    d = model.enc.in_features
    H, half = model.ssm.log_A_real.shape

    def step(Z, k):
        x = Z[:, :d]
        h = torch.view_as_complex(Z[:, d:].reshape(-1, H, half, 2).contiguous())
        h, y = model.recurrent(h, x)
        return torch.cat([y, torch.view_as_real(h).reshape(Z.shape[0], -1)], 1)
    return step


@torch.no_grad()
def model_lyapunov(model: nn.Module, kind: str, history, *, dt: float, n_steps: int, seed: int = 0) -> np.ndarray:
    """λ_max (1/time) of the learned system, started where the true ``history (B, W, D)``
    leaves it, per start."""
    history = torch.as_tensor(history, dtype=torch.float32)
    if kind == "ssm":
        h = model.initial_state(history.shape[0])
        for t in range(history.shape[1] - 1):
            h, _ = model.recurrent(h, history[:, t])
        z0 = torch.cat([history[:, -1], torch.view_as_real(h).reshape(history.shape[0], -1)], 1)
    else:
        z0 = history[:, -1]
    return benettin(model_step(model, kind), z0, dt=dt, n_steps=n_steps, d0=1e-4, renorm_every=2,
                    n_discard=n_steps // 10 // 2 * 2, seed=seed)


def linear_map(data) -> np.ndarray:
    """Least-squares ``x_{t+1} = A x_t + c`` on ``data (T, D)``: returns ``[A | c]`` (D, D+1)."""
    x = np.asarray(data, dtype=float)
    X = np.column_stack([x[:-1], np.ones(len(x) - 1)])
    return np.linalg.lstsq(X, x[1:], rcond=None)[0].T


def linear_lyapunov(Ac: np.ndarray, dt: float) -> float:
    """λ_max (1/time) of the affine map ``x ↦ A x + c``: ln ρ(A) / dt."""
    return float(np.log(np.max(np.abs(np.linalg.eigvals(Ac[:, :-1])))) / dt)


# ----------------------------------------------------------------------------- costs


def esn_training_flops(n: int, d: int, T: int) -> dict:
    """FLOPs of training a reservoir readout: harvesting ``T`` states (two matrix–vector
    products per step) and the ridge solve on ``F = 2N + 1`` features (Gram ``2TF²``,
    right-hand side ``2TFd``, Cholesky ``F³/3``); bytes: the reservoir read once per step."""
    F = 2 * n + 1
    harvest_f = T * (2 * n * n + 2 * n * d + 4 * n)
    solve_f = 2 * T * F * F + 2 * T * F * d + F ** 3 // 3
    return {"flops": harvest_f + solve_f, "harvest": harvest_f, "solve": solve_f,
            "bytes_per_step": 8 * (n * n + n * d + 3 * n)}


def mlp_field_flops(d: int, h: int) -> int:
    """FLOPs of one evaluation of :class:`MLPField` for one state (forward)."""
    return 2 * (d * h + h * h + h * d) + 4 * h


def backprop_step_flops(kind: str, d: int, cfg: TrainConfig) -> int:
    """FLOPs of one training step (forward + backward ≈ 3 × forward) of a batch."""
    _checks.one_of("kind", kind, MODELS)
    if kind == "neural_ode":
        fwd = cfg.horizon * 4 * mlp_field_flops(d, cfg.hidden)
    elif kind == "mlp":
        fwd = cfg.horizon * mlp_field_flops(d, cfg.hidden)
    else:
        L, H, half = cfg.ssm_window, cfg.ssm_width, cfg.ssm_state // 2
        # encoder, decoder, FFT convolution (~ 3 FFTs of 2L per channel) and kernel build
        fwd = L * (4 * d * H + 2 * H) + H * 3 * 5 * 2 * L * math.log2(2 * L) + 8 * H * half * L
    return int(3 * fwd * cfg.batch)


def n_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------- experiments


@dataclass
class ForecastData:
    """A training series and test segments of one system, standardised by the training
    series' mean and deviation: ``train (T, D)``, ``tests (M, warmup + horizon, D)``."""

    name: str
    train: np.ndarray
    tests: np.ndarray
    warmup: int
    dt: float
    lam: float
    period: float
    scale: float

    @property
    def horizon(self) -> int:
        return self.tests.shape[1] - self.warmup

    def vpt(self, pred) -> np.ndarray:
        """Valid prediction times ``(..., M)`` in Lyapunov times of forecasts ``(..., M, H, D)``."""
        e = normalised_error(pred, np.broadcast_to(self.tests[:, self.warmup:], np.shape(pred)), self.scale)
        return valid_time(np.moveaxis(e, -1, 0), dt=self.dt) * self.lam


def forecast_data(name: str, *, n_train: int, n_tests: int, warmup: int, horizon: int,
                  pts_per_period: int, substeps: int, seed: int, lam: float | None = None,
                  transient_periods: float = 20.0) -> ForecastData:
    """Integrate ``1 + n_tests`` trajectories of ``name`` from independent starts; the first
    gives the training series, each other one test segment. ``lam`` overrides the published
    λ_max (the Lyapunov-time unit)."""
    _checks.positive_int("n_tests", n_tests)
    _checks.positive_int("warmup", warmup)
    _checks.positive_int("horizon", horizon)
    n = max(n_train, warmup + horizon)
    S = trajectories(name, n_traj=1 + n_tests, n_samples=n, pts_per_period=pts_per_period,
                     substeps=substeps, transient_periods=transient_periods, seed=seed)
    train = S.x[:n_train, 0]
    mu, sd = train.mean(0), train.std(0)
    z = (S.x - mu) / sd
    return ForecastData(name, z[:n_train, 0], np.ascontiguousarray(z[:warmup + horizon, 1:].transpose(1, 0, 2)),
                        warmup, S.dt, float(lam if lam is not None else S.lam), S.period,
                        attractor_scale(z[:n_train, 0]))


def esn_study(data: ForecastData, seeds: Sequence[int], *, n: int, rho: float, input_scaling: float = 0.1,
              bias_scale: float = 0.1, reg: float = 1e-6, washout: int = 100) -> dict:
    """Train one reservoir per seed on ``data.train`` and forecast every test segment:
    ``{"vpt": (S, M) Lyapunov times, "res": Reservoir, "one_step": (S,) one-step NRMSE}``."""
    res = make_reservoirs(n, data.train.shape[1], rho=rho, seeds=seeds, input_scaling=input_scaling,
                          bias_scale=bias_scale)
    train_readout(res, data.train[:-1], data.train[1:], washout=washout, reg=reg)
    pred = esn_forecast(res, data.tests[:, :data.warmup], data.horizon)
    S = harvest(res, data.train[:-1])[:, 0, washout:]
    fit = _readout(res, S)
    one = np.sqrt(((fit - data.train[1 + washout:]) ** 2).sum(-1).mean(-1)) / data.scale
    return {"vpt": data.vpt(pred), "res": res, "pred": pred, "one_step": one}


def backprop_study(data: ForecastData, kind: str, seeds: Sequence[int], cfg: TrainConfig) -> dict:
    """Train ``kind`` once per seed and forecast every test segment: ``{"vpt": (S, M),
    "pred": (S, M, H, D), "models": [...], "seconds": [...]}`` (training wall seconds)."""
    import time

    out = {"vpt": [], "models": [], "seconds": [], "pred": []}
    for s in seeds:
        t0 = time.perf_counter()
        m = train_model(kind, data.train, cfg, dt=1.0, seed=int(s))  # time in sample intervals
        out["seconds"].append(time.perf_counter() - t0)
        pred = model_forecast(m, kind, data.tests[:, :data.warmup], data.horizon).double().numpy()
        out["vpt"].append(data.vpt(np.nan_to_num(pred, nan=1e6)))
        out["models"].append(m)
        out["pred"].append(pred)
    out["vpt"], out["pred"] = np.array(out["vpt"]), np.array(out["pred"])
    return out


def persistence_vpt(data: ForecastData) -> np.ndarray:
    """VPT ``(M,)`` of the persistence forecast x̂(t) = x(0): the floor any model must beat."""
    last = data.tests[:, data.warmup - 1:data.warmup]
    return data.vpt(np.repeat(last, data.horizon, axis=1))


def learned_lyapunov(data: ForecastData, study: dict, kind: str, *, n_steps: int, n_starts: int = 2,
                     seed: int = 0) -> np.ndarray:
    """λ_max (1/time) of each learned system of ``study`` (one per seed), mean over
    ``n_starts`` starts, each after one true test segment's warm-up."""
    warm = data.tests[:n_starts, :data.warmup]
    if kind == "reservoir":
        return esn_lyapunov(study["res"], warm, dt=data.dt, n_steps=n_steps, seed=seed).mean(1)
    # the models step in sample intervals: dt converts λ to 1/time
    return np.array([model_lyapunov(m, kind, warm, dt=data.dt, n_steps=n_steps, seed=seed).mean()
                     for m in study["models"]])


def histogram_distance(a, b, *, bins: int = 30) -> float:
    """Mean over coordinates of the total-variation distance between the histograms of
    ``a (T, D)`` and ``b (T', D)`` on common bins (0: same invariant density, 1: disjoint)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    out = []
    for j in range(a.shape[1]):
        lo, hi = min(a[:, j].min(), b[:, j].min()), max(a[:, j].max(), b[:, j].max())
        if not np.isfinite([lo, hi]).all() or hi <= lo:
            out.append(1.0)
            continue
        pa, _ = np.histogram(a[:, j], bins=bins, range=(lo, hi))
        pb, _ = np.histogram(b[:, j], bins=bins, range=(lo, hi))
        out.append(0.5 * np.abs(pa / max(pa.sum(), 1) - pb / max(pb.sum(), 1)).sum())
    return float(np.mean(out))


def rho_sweep(rhos: Sequence[float], seeds: Sequence[int], *, n: int, data: ForecastData, mc_steps: int = 1500,
              max_delay: int = 40, mc_input_scaling: float = 0.5, bias_scale: float = 0.1, n_train: int = 1500,
              forecast_tests: int = 4, lyapunov_steps: int = 1000, seed: int = 0) -> dict:
    """The edge-of-chaos sweep over spectral radii, one reservoir matrix per seed scaled to
    each ρ: the input-free reservoir's λ_max (per step), whose first upward zero is the
    seed's transition ρ*; the memory capacity (i.i.d. input u ~ U(−1, 1)); the test r² of the
    memoryless target u_t² (the control); the forecast VPT on ``data`` (Lyapunov times, mean
    over ``forecast_tests`` segments). Arrays are ``(len(rhos), len(seeds))``; ``peak_<skill>``
    is each seed's argmax ρ and ``distance_<skill>`` its distance from ρ*."""
    rhos = [float(r) for r in rhos]
    R, S = len(rhos), len(seeds)
    grid = np.array(rhos)
    rng = np.random.default_rng([seed, 81])
    u = rng.uniform(-1, 1, mc_steps)
    res = make_reservoirs(n, 1, rho=rhos, seeds=seeds, input_scaling=mc_input_scaling, bias_scale=bias_scale)
    lam = autonomous_lyapunov(res, n_steps=lyapunov_steps, seed=seed).reshape(R, S)
    states = harvest(res, u)[:, 0]
    mc = np.array([memory_capacity(st, u, max_delay=max_delay, washout=100).sum() for st in states]).reshape(R, S)
    ctrl = np.array([_memoryless_r2(st, u ** 2, washout=100) for st in states]).reshape(R, S)
    fres = make_reservoirs(n, data.train.shape[1], rho=rhos, seeds=seeds, input_scaling=0.1, bias_scale=bias_scale)
    train_readout(fres, data.train[:n_train - 1], data.train[1:n_train], washout=100)
    pred = esn_forecast(fres, data.tests[:forecast_tests, :data.warmup], data.horizon)
    tests = data.tests[:forecast_tests, data.warmup:]
    e = normalised_error(pred, np.broadcast_to(tests, pred.shape), data.scale)
    vpt = (valid_time(np.moveaxis(e, -1, 0), dt=data.dt) * data.lam).mean(-1).reshape(R, S)
    out = {"rhos": grid, "lam": lam, "mc": mc, "memoryless": ctrl, "vpt": vpt}
    star = np.array([first_crossing(grid, lam[:, j]) for j in range(S)])
    out["rho_star_found"] = np.isfinite(star)
    out["rho_star"] = np.where(np.isfinite(star), star, grid[-1])  # censored at the sweep's end
    for k in ("mc", "memoryless", "vpt"):
        out[f"peak_{k}"] = grid[np.argmax(out[k], axis=0)]
        out[f"distance_{k}"] = np.abs(out[f"peak_{k}"] - out["rho_star"])
    return out


def cross_system(names: Sequence[str], seeds: Sequence[int], *, n: int, rho: float, n_train: int,
                 n_tests: int, warmup: int, horizon: int, pts_per_period: int = 30, substeps: int = 3,
                 transient_periods: float = 10.0, seed: int = 0) -> dict:
    """Reservoir forecasts of each system: VPT in periods and in Lyapunov times (mean over
    seeds and test segments), published λ_max·period and correlation dimension, and the
    one-step NRMSE. Returns arrays over the systems kept (``"names"``), and ``"vpt_interval"``:
    per system, the VPT in Lyapunov times as an :class:`~dynbook.book.stats.Estimate` (t
    interval over the seeds of the per-seed means); a system whose RK4 integration diverges
    is listed in ``"skipped"``."""
    from dynbook.book.stats import over_seeds

    rows = {k: [] for k in ("vpt_periods", "vpt_lyapunov", "lam_period", "corr_dim", "one_step")}
    intervals = []
    kept, skipped = [], []
    for name in names:
        try:
            data = forecast_data(name, n_train=n_train, n_tests=n_tests, warmup=warmup, horizon=horizon,
                                 pts_per_period=pts_per_period, substeps=substeps, seed=seed,
                                 transient_periods=transient_periods)
        except FloatingPointError:  # too stiff for RK4 at this step: say so, do not guess
            skipped.append(name)
            continue
        kept.append(name)
        st = esn_study(data, seeds, n=n, rho=rho)
        v = st["vpt"].mean()
        intervals.append(over_seeds(st["vpt"].mean(1)))
        rows["vpt_lyapunov"].append(v)
        rows["vpt_periods"].append(v / (data.lam * data.period))
        rows["lam_period"].append(data.lam * data.period)
        rows["corr_dim"].append(published(name)["correlation_dimension"])
        rows["one_step"].append(float(st["one_step"].mean()))
    return {"names": kept, "skipped": skipped, "vpt_interval": intervals,
            **{k: np.array(v) for k, v in rows.items()}}


def training_callables(data: ForecastData, cfg: TrainConfig, *, n: int, rho: float, seed: int = 0) -> dict:
    """Callables for :func:`dynbook.measure.metered.metered`: ``"reservoir"`` (and an
    identical ``"reservoir copy"``, the timing control) trains one reservoir end to end
    (harvest and ridge solve); ``"<kind> step"`` takes one Adam step of each backprop model,
    so ``units = 1/cfg.steps`` turns its reading into seconds per full training."""
    def esn():
        res = make_reservoirs(n, data.train.shape[1], rho=rho, seeds=[seed])
        return train_readout(res, data.train[:-1], data.train[1:], washout=100)

    out = {"reservoir": esn, "reservoir copy": esn}
    z = torch.as_tensor(data.train, dtype=torch.float32)
    g = torch.Generator().manual_seed(seed)
    for kind in MODELS:
        torch.manual_seed(seed)
        model = make_model(kind, z.shape[1], cfg, dt=1.0)
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        span = cfg.ssm_window if kind == "ssm" else cfg.horizon

        def step(model=model, opt=opt, kind=kind, span=span):
            idx = torch.randint(0, z.shape[0] - span - 1, (cfg.batch,), generator=g)
            loss = loss_on_batch(model, kind, z, idx, cfg)
            opt.zero_grad()
            loss.backward()
            opt.step()
        out[f"{kind} step"] = step
    return out


# ----------------------------------------------------------------------------- checks


@torch.no_grad()
def node_step_gap(model: NeuralODE, x) -> float:
    """Largest |difference| between :meth:`NeuralODE.step` and torchdiffeq's rk4 over one
    sample interval."""
    x = torch.as_tensor(x, dtype=torch.float32)
    return float((model.step(x) - model.rollout(x, 1)[:, 0]).abs().max())


@torch.no_grad()
def ssm_recurrence_gap(model: SSMForecaster, window) -> float:
    """Largest |difference| between the SSM forecaster's convolution mode and its step-by-step
    recurrence, teacher forced on ``window (B, L, D)``, relative to the output scale."""
    window = torch.as_tensor(window, dtype=torch.float32)
    conv = model(window)
    h = model.initial_state(window.shape[0])
    rec = []
    for t in range(window.shape[1]):
        h, y = model.recurrent(h, window[:, t])
        rec.append(y)
    rec = torch.stack(rec, 1)
    return float((conv - rec).abs().max() / conv.abs().max())
