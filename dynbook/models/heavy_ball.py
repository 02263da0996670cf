"""Heavy-ball training (gradient descent with momentum) and its continuous limit.

Glossary (code name → symbol):

==============  ==============================================================================
``lr``          η, the learning rate;  ``momentum``: μ;  ``friction``: γ = (1 − μ)/√η
``mass``        c, the coefficient of θ̈: 1 (leading order) or (1 + μ)/2 (next order)
``convention``  which continuum equation a step maps onto (:func:`continuum`)
==============  ==============================================================================

The update θ_{k+1} = θ_k − η ∇L(θ_k) + μ (θ_k − θ_{k−1}), started at rest (θ_{−1} = θ_0, as
``torch.optim.SGD(momentum=μ)``), is at fixed γ a discretisation of c θ̈ + γ θ̇ + ∇L = 0 with
error O(√η) at leading order and O(η) at next order. :func:`heavy_ball` trains a vmapped
ensemble of the networks of :mod:`dynbook.models.ntk`; :func:`continuum_gap` measures the
distance to the limit on one flat parameter vector.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch.func import grad, grad_and_value, vmap

from dynbook import _checks
from dynbook.models.ntk import MLPConfig, ensemble_ntk, init_params, mlp, network

CONVENTIONS = ("leading", "next")


def continuum(momentum, convention: str = "leading"):
    """How step k of the heavy ball maps onto c θ̈ + γ θ̇ + ∇L = 0: returns (c, offset) with
    θ_k ≈ θ((k + offset) √η), the ODE started at rest from θ_0 at t = 0.

    ``leading``: c = 1, offset 0 (error O(√η) at fixed γ). ``next``: c = (1 + μ)/2 and
    offset ½, because the at-rest start sets the backward difference (θ_0 − θ_{−1})/√η, a
    velocity at t = −√η/2, to zero (error O(η)).
    """
    _checks.one_of("convention", convention, CONVENTIONS)
    if convention == "leading":
        return 1.0, 0.0
    return (1 + momentum) / 2, 0.5


def check_lr_momentum(lr, momentum):
    """Learning rates > 0 and momenta in [0, 1) (numbers or tensors), else ``ValueError``."""
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
    _checks.positive_int("n_steps", n_steps, minimum=0)
    check_lr_momentum(lr, momentum)
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


def sgd_outputs(config: MLPConfig, params: dict, x: torch.Tensor, target, *, lr: float,
                momentum: float, power: int, n_steps: int) -> torch.Tensor:
    """The reference for :func:`heavy_ball`: ONE network trained with ``torch.optim.SGD``
    on L = mean_i (f(x_i) − y)^n; returns its outputs at steps 0 … K, (K + 1, N)."""
    _checks.positive_int("n_steps", n_steps, minimum=0)
    member = {k: v.clone().requires_grad_() for k, v in params.items()}
    opt = torch.optim.SGD(member.values(), lr=lr, momentum=momentum)
    outputs = []
    for _ in range(n_steps + 1):
        opt.zero_grad()
        out = mlp(member, x, activation=config.activation, weight_std=config.weight_std,
                  bias_std=config.bias_std)
        outputs.append(out.detach())
        ((out - torch.as_tensor(target).to(out)) ** power).mean().backward()
        opt.step()
    return torch.stack(outputs)


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
    check_lr_momentum(eta, mu)
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
    next order. ``loss`` maps a flat θ to a scalar.
    """
    from torchdiffeq import odeint

    _checks.positive("mass", mass)
    _checks.positive("friction", friction, allow_zero=True)
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
    _checks.positive_int("n_steps", n_steps, minimum=0)
    check_lr_momentum(lr, momentum)
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
        _checks.positive("ode_friction", ode_friction, allow_zero=True)
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


def limit_study(config: MLPConfig, params: dict, x, *, target_shift: float, power: int,
                friction: float, t_end: float, lrs, rtol: float = 1e-8,
                atol: float = 1e-10) -> dict:
    """The continuum gap of one network's loss (on the inputs x: (N, d_in), or one point x
    given as a number) under both conventions and, as a negative
    control, against the leading-order ODE with twice the friction; with the fitted order of
    each gap in η (:func:`dynbook.measure.fits.loglog_slope`).

    Returns {"lrs": sorted largest first, "gaps": {name: (len(lrs),)}, "order": {name:
    Estimate}} with names "leading", "next", "wrong friction"."""
    from dynbook.measure import fits

    lrs = sorted(lrs, reverse=True)
    if not torch.is_tensor(x):  # one input point
        x = torch.full((1, config.d_in), float(x), dtype=torch.float64)
    theta0, loss = flat_output_loss(config, params, x, target_shift=target_shift, power=power)
    tol = {"rtol": rtol, "atol": atol}  # of the ODE solver
    gaps = {conv: continuum_gap(loss, theta0, friction=friction, t_end=t_end, lrs=lrs,
                                convention=conv, **tol) for conv in CONVENTIONS}
    gaps["wrong friction"] = continuum_gap(loss, theta0, friction=friction, t_end=t_end, lrs=lrs,
                                           ode_friction=2 * friction, **tol)
    order = {name: fits.loglog_slope(lrs, g.numpy()) for name, g in gaps.items()}
    return {"lrs": lrs, "gaps": gaps, "order": order, "n_params": config.n_params}


__all__ = [
    "CONVENTIONS", "continuum", "check_lr_momentum", "heavy_ball", "sgd_outputs", "output_loss",
    "train_ensemble", "flatten", "flat_output_loss", "heavy_ball_ode", "heavy_ball_flat",
    "continuum_gap", "limit_study",
]
