"""Networks as dynamical systems in function space: NTK-parametrized MLPs, their empirical
neural tangent kernel (``torch.func``), and heavy-ball training with its continuous limit.

Glossary (code name → symbol):

=================  ==========================================================================
``params``         θ, a dict of tensors (one network) or of stacked tensors (an ensemble, (B, …))
``mlp``            f(θ, x): the network output, x: (N, d_in) → (N,)
``empirical_ntk``  Θ(x, x') = ∇_θ f(x) · ∇_θ f(x'), (N1, N2)
``lr``             η, learning rate;  ``momentum``: μ;  ``friction``: γ (γ = (1 − μ)/√η)
``mass``           c, the coefficient of θ̈: 1 (leading order) or (1 + μ)/2 (next order)
=================  ==========================================================================

The networks use the NTK parametrization (as *neural-tangents*, which the source used): all
weights and biases are drawn from N(0, 1) and the forward pass multiplies them by
``weight_std/√fan_in`` and ``bias_std``. Then Θ has a finite, width-independent limit, and
``weight_std`` ("init std") is a forward-pass scale that can differ across an ensemble.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Callable

import torch
from torch.func import grad, grad_and_value, jacrev, jvp, vjp, vmap

ACTIVATIONS: dict[str, Callable] = {"relu": torch.relu, "erf": torch.erf}
NTK_METHODS = ("jacobian", "ntk_vp")


def _positive_int(name, value, lo=1):
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ValueError(f"{name}={value!r} is not allowed: expected an integer >= {lo}")


def _positive_float(name, value, allow_zero=False):
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not allow_zero):
        allowed = "a finite number >= 0" if allow_zero else "a finite number > 0"
        raise ValueError(f"{name}={value!r} is not allowed: expected {allowed}")


@dataclass(frozen=True)
class MLPConfig:
    """A fully connected network: ``depth`` hidden layers of ``width`` units, one output."""

    width: int
    depth: int
    activation: str = "relu"
    weight_std: float = 1.0
    bias_std: float = 0.1
    d_in: int = 1

    def __post_init__(self):
        _positive_int("width", self.width)
        _positive_int("depth", self.depth, lo=0)
        _positive_int("d_in", self.d_in)
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation={self.activation!r} is not allowed: expected one of "
                             + ", ".join(map(repr, ACTIVATIONS)))
        _positive_float("weight_std", self.weight_std)
        _positive_float("bias_std", self.bias_std, allow_zero=True)

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        fan = [self.d_in] + [self.width] * self.depth
        out = [self.width] * self.depth + [1]
        shapes = {}
        for layer, (i, o) in enumerate(zip(fan, out)):
            shapes[f"W{layer}"] = (o, i)
            shapes[f"b{layer}"] = (o,)
        return shapes

    @property
    def n_params(self) -> int:
        return sum(math.prod(s) for s in self.shapes.values())


def experiment_generator(seed: int, offset: int) -> torch.Generator:
    """A CPU generator for one experiment of a chapter, seeded with ``1000 seed + offset``, so
    each experiment's networks depend only on the run's seed and not on what ran before."""
    _positive_int("seed", seed, lo=0)
    _positive_int("offset", offset, lo=0)
    return torch.Generator().manual_seed(1000 * seed + offset)


def init_params(config: MLPConfig, n_models: int | None = None, *, generator=None,
                dtype=torch.float64, device="cpu") -> dict[str, torch.Tensor]:
    """Standard-normal weights and biases; with ``n_models`` every tensor gets a leading
    ensemble axis (B, …) for :func:`torch.func.vmap`. Drawn on the CPU (a CPU ``generator``)
    and then moved, so a seed gives the same networks on every device."""
    lead = () if n_models is None else (n_models,)
    if n_models is not None:
        _positive_int("n_models", n_models)
    return {name: torch.randn(lead + shape, generator=generator, dtype=dtype).to(device)
            for name, shape in config.shapes.items()}


def mlp(params: dict, x: torch.Tensor, *, activation: str = "relu", weight_std=1.0,
        bias_std=0.1) -> torch.Tensor:
    """f(θ, x) in the NTK parametrization; x: (N, d_in) → (N,).

    ``weight_std`` and ``bias_std`` may be 0-d tensors, so an ensemble can vary them under vmap.
    """
    act = ACTIVATIONS[activation]
    depth = len(params) // 2 - 1
    h = x
    for layer in range(depth + 1):
        w, b = params[f"W{layer}"], params[f"b{layer}"]
        h = weight_std / math.sqrt(w.shape[-1]) * h @ w.T + bias_std * b
        if layer < depth:
            h = act(h)
    return h[:, 0]


def network(config: MLPConfig) -> Callable:
    """``fn(params, x)`` for :func:`empirical_ntk`, with the config's activation and scales."""
    return partial(mlp, activation=config.activation, weight_std=config.weight_std,
                   bias_std=config.bias_std)


# ----------------------------------------------------------------------------- the NTK


def empirical_ntk(fn: Callable, params: dict, x1: torch.Tensor, x2: torch.Tensor | None = None,
                  *, method: str = "jacobian") -> torch.Tensor:
    """Θ(x1, x2) = Σ_p ∂f(x1)/∂θ_p ∂f(x2)/∂θ_p, shape (N1, N2).

    ``fn(params, x)`` maps x: (N, d_in) to (N,). ``jacobian`` builds both Jacobians with
    ``jacrev`` (memory N·P); ``ntk_vp`` never forms a Jacobian: each column of Θ is a
    vector-Jacobian product followed by a Jacobian-vector product, vmapped over the N2 unit
    vectors (memory ~ N2·P for the pulled-back vectors, but no (N1 + N2)·P Jacobians).
    """
    if method not in NTK_METHODS:
        raise ValueError(f"method={method!r} is not allowed: expected one of "
                         + ", ".join(map(repr, NTK_METHODS)))
    if x1.ndim != 2 or (x2 is not None and x2.ndim != 2):
        raise ValueError(f"x1, x2 must be (N, d_in) tensors, got shapes {tuple(x1.shape)}"
                         + ("" if x2 is None else f", {tuple(x2.shape)}"))
    same = x2 is None
    x2 = x1 if same else x2
    if method == "jacobian":
        j1 = jacrev(fn)(params, x1)
        j2 = j1 if same else jacrev(fn)(params, x2)
        return sum(a.flatten(1) @ b.flatten(1).T for a, b in zip(j1.values(), j2.values()))

    f2 = lambda p: fn(p, x2)  # noqa: E731
    f1 = lambda p: fn(p, x1)  # noqa: E731
    _, pullback = vjp(f2, params)

    def column(unit):
        (cotangent,) = pullback(unit)
        return jvp(f1, (params,), (cotangent,))[1]

    eye = torch.eye(x2.shape[0], dtype=x1.dtype, device=x1.device)
    return vmap(column)(eye).T


def ensemble_ntk(config: MLPConfig, params: dict, x: torch.Tensor, *, weight_std=None,
                 method: str = "jacobian", chunk_size: int | None = None) -> torch.Tensor:
    """Θ_0 of every member of an ensemble (params stacked (B, …)), vmapped over members:
    x: (N, d_in) → (B, N, N). ``weight_std``: (B,) per-member scales (default: the config's);
    ``chunk_size`` members at a time bounds the memory (B·N·P for the Jacobians otherwise)."""
    b = params["b0"].shape[0]
    s = (torch.full((b,), config.weight_std, dtype=x.dtype, device=x.device)
         if weight_std is None else torch.as_tensor(weight_std, dtype=x.dtype, device=x.device))

    def one(p, scale):
        fn = partial(mlp, activation=config.activation, weight_std=scale, bias_std=config.bias_std)
        return empirical_ntk(fn, p, x, method=method)

    return vmap(one, chunk_size=chunk_size)(params, s)


PARAMETRIZATIONS = ("ntk", "standard")


def ensemble_ntk0_parts(config: MLPConfig, params: dict, x0: torch.Tensor) -> dict:
    """Θ_0(x_0) of every member split by parameter tensor: {name: (B,)} with
    Θ_0 = Σ_name ‖∂f(x_0)/∂θ_name‖², in the NTK parametrization of ``params``."""
    if x0.shape != (1, config.d_in):
        raise ValueError(f"x0 must be one input of shape (1, {config.d_in}), got {tuple(x0.shape)}")
    fn = network(config)

    def one(p):
        jac = jacrev(fn)(p, x0)
        return {name: j.pow(2).sum() for name, j in jac.items()}

    return vmap(one)(params)


def standard_ntk0(config: MLPConfig, parts: dict) -> torch.Tensor:
    """Θ_0 of the same networks in the standard parametrization, from the NTK-parametrized
    parts of :func:`ensemble_ntk0_parts`: there the trainable weights are W_std = σ_w W/√fan_in
    and b_std = σ_b b, so ∂f/∂W_std = (√fan_in/σ_w) ∂f/∂W and ∂f/∂b_std = ∂f/∂b/σ_b, and
    Θ_0 = Σ_l (fan_in_l/σ_w²) ‖∂f/∂W_l‖² + ‖∂f/∂b_l‖²/σ_b². It grows with the width."""
    if config.bias_std <= 0:
        raise ValueError("standard_ntk0 needs bias_std > 0 (the biases' scale divides their part)")
    total = 0
    for name, part in parts.items():
        if name.startswith("W"):
            fan_in = config.shapes[name][1]
            total = total + part * fan_in / config.weight_std ** 2
        else:
            total = total + part / config.bias_std ** 2
    return total


def ntk_grid(widths, depths, activations, weight_stds, n_seeds: int, *, x0: float = 1.0,
             bias_std: float = 0.1, generator=None, device="cpu",
             parametrization: str = "ntk"):
    """Θ_0 = ‖∇_θ f(x_0)‖² over a hyperparameter grid, one vmapped ensemble of ``n_seeds``
    networks per setting: returns (len(activations), len(depths), len(widths),
    len(weight_stds), n_seeds), on the CPU.

    ``parametrization="ntk"`` (the networks' own), ``"standard"`` (the same networks'
    Θ_0 with W ~ N(0, σ_w²/fan_in) trained directly, :func:`standard_ntk0`), or ``"both"``:
    a dict {"ntk": grid, "standard": grid} from the same draws."""
    _positive_int("n_seeds", n_seeds)
    if parametrization not in PARAMETRIZATIONS + ("both",):
        raise ValueError(f"parametrization={parametrization!r} is not allowed: expected 'ntk', "
                         "'standard' or 'both'")
    x = torch.full((1, 1), float(x0), dtype=torch.float64, device=device)
    shape = (len(activations), len(depths), len(widths), len(weight_stds), n_seeds)
    out = {name: torch.empty(shape, dtype=torch.float64) for name in PARAMETRIZATIONS}
    for i, act in enumerate(activations):
        for j, depth in enumerate(depths):
            for k, width in enumerate(widths):
                for m, std in enumerate(weight_stds):
                    cfg = MLPConfig(width=width, depth=depth, activation=act, weight_std=std,
                                    bias_std=bias_std)
                    params = init_params(cfg, n_seeds, generator=generator, device=device)
                    parts = ensemble_ntk0_parts(cfg, params, x)
                    out["ntk"][i, j, k, m] = sum(parts.values()).cpu()
                    if parametrization != "ntk":
                        out["standard"][i, j, k, m] = standard_ntk0(cfg, parts).cpu()
    return out if parametrization == "both" else out[parametrization]


def factor_effects(values: torch.Tensor, factors) -> dict:
    """How much each factor of a grid moves a positive quantity: for factor axis a, the ratio
    max/min over its levels of the seed-averaged value (last axis = seeds), taken at every
    setting of the other factors; returns {factor: (median ratio, all ratios)}.

    The answer depends on the levels chosen for each factor (a wider range moves the
    quantity more): compare factors only over stated ranges."""
    mean = values.mean(dim=-1)
    if mean.ndim != len(factors):
        raise ValueError(f"factors={factors!r} must name the {mean.ndim} non-seed axes")
    out = {}
    for axis, name in enumerate(factors):
        ratio = mean.amax(dim=axis) / mean.amin(dim=axis)
        out[name] = (ratio.median().item(), ratio.flatten())
    return out


# ----------------------------------------------------------------------------- heavy ball


CONVENTIONS = ("leading", "next")


def continuum(momentum, convention: str = "leading"):
    """How step k of the heavy ball maps onto c θ̈ + γ θ̇ + ∇L = 0: returns (c, offset) with
    θ_k ≈ θ((k + offset) √η), the ODE started at rest from θ_0 at t = 0.

    ``leading``: c = 1, offset 0 (error O(√η) at fixed γ). ``next``: c = (1 + μ)/2 and
    offset ½, because the at-rest start sets the backward difference (θ_0 − θ_{−1})/√η, a
    velocity at t = −√η/2, to zero (error O(η)).
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"convention={convention!r} is not allowed: expected one of "
                         + ", ".join(map(repr, CONVENTIONS)))
    if convention == "leading":
        return 1.0, 0.0
    return (1 + momentum) / 2, 0.5


def _check_lr_momentum(lr, momentum):
    lr_t = torch.as_tensor(lr, dtype=torch.float64)
    mu_t = torch.as_tensor(momentum, dtype=torch.float64)
    if not torch.all(lr_t > 0) or not torch.all(torch.isfinite(lr_t)):
        raise ValueError(f"lr={lr!r} is not allowed: expected learning rates > 0")
    if not torch.all((mu_t >= 0) & (mu_t < 1)):
        raise ValueError(f"momentum={momentum!r} is not allowed: expected values in [0, 1)")


def heavy_ball(loss_fn: Callable, params: dict, *, lr, momentum, n_steps: int,
               hyper: dict | None = None):
    """Train an ensemble with θ_{k+1} = θ_k − η ∇L(θ_k) + μ (θ_k − θ_{k−1}).

    ``loss_fn(params, hyper) -> (loss, output)`` is written for ONE model; ``params`` and the
    per-model ``hyper`` (a dict of tensors) carry a leading ensemble axis B and are vmapped.
    ``lr`` and ``momentum`` are floats or (B,) tensors. The run starts at rest, θ_{−1} = θ_0,
    as ``torch.optim.SGD(momentum=μ)`` does.

    Returns ``(outputs, params)``: the outputs at θ_0 … θ_K stacked, (K + 1, B, …), and θ_K.
    """
    _positive_int("n_steps", n_steps, lo=0)
    _check_lr_momentum(lr, momentum)
    hyper = hyper or {}
    step = vmap(grad_and_value(loss_fn, has_aux=True))
    first = next(iter(params.values()))
    b, dtype, device = first.shape[0], first.dtype, first.device
    eta = torch.as_tensor(lr, dtype=dtype, device=device).expand(b)
    mu = torch.as_tensor(momentum, dtype=dtype, device=device).expand(b)
    params = {name: p.clone() for name, p in params.items()}
    # The same iteration in the velocity form of torch.optim.SGD, updated in place (the
    # ensemble's weights are the memory traffic of every step): v_{k+1} = μ v_k + ∇L(θ_k),
    # θ_{k+1} = θ_k − η v_{k+1}, v_0 = 0.
    velocity = {name: torch.zeros_like(p) for name, p in params.items()}
    outputs = []
    with torch.no_grad():
        for k in range(n_steps + 1):
            grads, (_, out) = step(params, hyper)
            outputs.append(out)
            if k == n_steps:
                break
            for name, p in params.items():
                shape = (b,) + (1,) * (p.ndim - 1)
                v = velocity[name].mul_(mu.view(shape)).add_(grads[name])
                p.sub_(v * eta.view(shape))
    return torch.stack(outputs), params


def output_loss(config: MLPConfig, x: torch.Tensor) -> Callable:
    """``loss_fn(params, hyper)`` for :func:`heavy_ball`: L = mean_i (f(x_i) − y_i)^n with
    per-model ``hyper = {"weight_std": (), "target": (N,), "power": ()}``; the output is f(x):
    (N,)."""

    def loss_fn(params, hyper):
        f = mlp(params, x, activation=config.activation, weight_std=hyper["weight_std"],
                bias_std=config.bias_std)
        return ((f - hyper["target"]) ** hyper["power"]).mean(), f

    return loss_fn


def train_ensemble(config: MLPConfig, x: torch.Tensor, *, weight_std, lr, momentum, power,
                   target_shift: float, n_steps: int, params: dict | None = None,
                   n_models: int | None = None, generator=None) -> dict:
    """Train B networks on the inputs x: (N, d_in) towards the uniform target
    y_i = mean_j f_0(x_j) + Δ (the loss minimum a distance Δ = ``target_shift`` from where each
    network starts), with the heavy ball, and measure Θ before and after.

    ``weight_std``, ``lr``, ``momentum``, ``power``: floats or (B,) tensors. Returns a dict:
    ``f`` (K + 1, B, N), ``f0`` and ``target`` (B, N), ``ntk0`` and ``ntk_end`` (B, N, N) and the
    per-model hyperparameters as (B,) tensors.
    """
    dtype, device = x.dtype, x.device
    sizes = [torch.as_tensor(v).numel() for v in (weight_std, lr, momentum, power)]
    b = n_models or max(sizes)
    if params is None:
        params = init_params(config, b, generator=generator, dtype=dtype, device=device)
    b = params["b0"].shape[0]

    def per_model(v):
        return torch.as_tensor(v, dtype=dtype, device=device).expand(b).clone()

    scale, eta, mu, n = (per_model(v) for v in (weight_std, lr, momentum, power))
    _check_lr_momentum(eta, mu)
    ntk0 = ensemble_ntk(config, params, x, weight_std=scale)
    f0 = vmap(lambda p, s: mlp(p, x, activation=config.activation, weight_std=s,
                               bias_std=config.bias_std))(params, scale)
    target = (f0.mean(dim=1, keepdim=True) + target_shift).expand_as(f0).clone()
    hyper = {"weight_std": scale, "target": target, "power": n}
    f, params_end = heavy_ball(output_loss(config, x), params, lr=eta, momentum=mu,
                               n_steps=n_steps, hyper=hyper)
    ntk_end = ensemble_ntk(config, params_end, x, weight_std=scale)
    return {"f": f, "f0": f0, "target": target, "ntk0": ntk0, "ntk_end": ntk_end,
            "weight_std": scale, "lr": eta, "momentum": mu, "power": n}


# ----------------------------------------------------------------------------- continuous limit


def flatten(params: dict) -> tuple[torch.Tensor, Callable]:
    """θ as one vector (P,) and the map back to a dict (for the parameter-space ODE)."""
    names = list(params)
    shapes = [params[n].shape for n in names]
    sizes = [math.prod(s) for s in shapes]
    vec = torch.cat([params[n].reshape(-1) for n in names])

    def unflatten(v):
        return {n: c.view(s) for n, c, s in zip(names, torch.split(v, sizes), shapes)}

    return vec, unflatten


def flat_output_loss(config: MLPConfig, params: dict, x: torch.Tensor, *, target_shift: float,
                     power: int) -> tuple[torch.Tensor, Callable]:
    """One network's loss as a function of its flat parameters, for the parameter-space ODE:
    L(θ) = mean_i (f(θ, x_i) − y)^n with y = mean_i f(θ_0, x_i) + Δ. Returns (θ_0: (P,), L)."""
    theta0, unflatten = flatten(params)
    fn = network(config)
    with torch.no_grad():
        target = fn(params, x).mean() + target_shift

    def loss(theta):
        return ((fn(unflatten(theta), x) - target) ** power).mean()

    return theta0, loss


def heavy_ball_ode(loss: Callable[[torch.Tensor], torch.Tensor], theta0: torch.Tensor,
                   t: torch.Tensor, *, friction: float, mass: float = 1.0,
                   velocity0: torch.Tensor | None = None, rtol: float = 1e-10,
                   atol: float = 1e-12) -> torch.Tensor:
    """Solve c θ̈ + γ θ̇ + ∇L(θ) = 0 with torchdiffeq (dopri5); θ: (P,), t: (T,) → (T, P).

    ``mass`` c = 1 is the leading-order continuous limit of the heavy ball, c = (1 + μ)/2 the
    next order (see the chapter). ``loss`` maps a flat θ to a scalar.
    """
    from torchdiffeq import odeint

    _positive_float("mass", mass)
    _positive_float("friction", friction, allow_zero=True)
    gradient = grad(loss)
    v0 = torch.zeros_like(theta0) if velocity0 is None else velocity0

    def rhs(_, state):
        theta, v = state
        return v, -(friction * v + gradient(theta)) / mass

    theta, _ = odeint(rhs, (theta0, v0), t, rtol=rtol, atol=atol, method="dopri5")
    return theta


def heavy_ball_flat(loss: Callable[[torch.Tensor], torch.Tensor], theta0: torch.Tensor, *,
                    lr: float, momentum: float, n_steps: int) -> torch.Tensor:
    """The discrete heavy ball on a flat θ, started at rest (θ_{−1} = θ_0):
    θ_0: (P,) → trajectory (K + 1, P)."""
    _positive_int("n_steps", n_steps, lo=0)
    _check_lr_momentum(lr, momentum)
    gradient = grad(loss)
    prev = theta = theta0
    out = [theta0]
    for _ in range(n_steps):
        theta, prev = theta - lr * gradient(theta) + momentum * (theta - prev), theta
        out.append(theta)
    return torch.stack(out)


def continuum_gap(loss: Callable[[torch.Tensor], torch.Tensor], theta0: torch.Tensor, *,
                  friction: float, t_end: float, lrs, convention: str = "leading",
                  ode_friction: float | None = None, rtol: float = 1e-8,
                  atol: float = 1e-10) -> torch.Tensor:
    """The distance between the heavy ball and its continuous limit, taken at fixed friction:
    for each η in ``lrs``, μ = 1 − γ√η and K = round(t_end/√η) steps from rest at θ_0,
    returns max_k ‖θ_k − θ((k + offset)√η)‖ with c θ̈ + γ θ̇ + ∇L = 0 (c and offset from
    :func:`continuum`): a (len(lrs),) tensor, expected O(√η) ``leading`` and O(η) ``next``.

    ``ode_friction`` solves the ODE with another friction than the heavy ball's γ (a limit
    that is wrong at every η, so its gap does not shrink: a negative control)."""
    if ode_friction is not None:
        _positive_float("ode_friction", ode_friction, allow_zero=True)
    gaps = []
    for lr in lrs:
        h = float(lr) ** 0.5
        momentum = 1 - friction * h
        if not 0 <= momentum < 1:
            raise ValueError(f"lr={lr!r} with friction={friction!r} gives momentum {momentum:.3g}"
                             ", outside [0, 1): use a smaller learning rate or friction")
        n_steps = max(1, round(t_end / h))
        mass, offset = continuum(momentum, convention)
        discrete = heavy_ball_flat(loss, theta0, lr=float(lr), momentum=momentum, n_steps=n_steps)
        t = (torch.arange(n_steps + 1, dtype=theta0.dtype, device=theta0.device) + offset) * h
        if offset:
            t = torch.cat([t.new_zeros(1), t])
        limit = heavy_ball_ode(loss, theta0, t, friction=friction if ode_friction is None
                               else ode_friction, mass=mass, rtol=rtol, atol=atol)
        limit = limit[1:] if offset else limit
        gaps.append((discrete - limit).norm(dim=1).max())
    return torch.stack(gaps)


__all__ = [
    "ACTIVATIONS", "MLPConfig", "experiment_generator", "init_params", "mlp", "network",
    "empirical_ntk", "ensemble_ntk", "ntk_grid", "PARAMETRIZATIONS", "ensemble_ntk0_parts",
    "standard_ntk0", "factor_effects", "CONVENTIONS", "continuum", "heavy_ball", "output_loss",
    "train_ensemble", "flatten", "flat_output_loss", "heavy_ball_ode", "heavy_ball_flat",
    "continuum_gap",
]
