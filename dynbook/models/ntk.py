"""Networks as dynamical systems in function space: NTK-parametrized MLPs and their empirical
neural tangent kernel (``torch.func``). Training them with momentum is
:mod:`dynbook.models.heavy_ball`.

Glossary (code name → symbol):

=================  ==========================================================================
``params``         θ, a dict of tensors (one network) or of stacked tensors (an ensemble, (B, …))
``mlp``            f(θ, x): the network output, x: (N, d_in) → (N,)
``empirical_ntk``  Θ(x, x') = ∇_θ f(x) · ∇_θ f(x'), (N1, N2)
``infinite_ntk``   Θ_∞, its width → ∞ limit for one hidden layer: the arc-cosine (ReLU) and
                   arcsine (erf) kernels in closed form
``weight_std``     σ_w, the forward-pass scale of the weights ("init std");  ``bias_std``: σ_b
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
from torch.func import jacrev, jvp, vjp, vmap

from dynbook import _checks

ACTIVATIONS: dict[str, Callable] = {"relu": torch.relu, "erf": torch.erf}
NTK_METHODS = ("jacobian", "ntk_vp")


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
        _checks.positive_int("width", self.width)
        _checks.positive_int("depth", self.depth, minimum=0)
        _checks.positive_int("d_in", self.d_in)
        _checks.one_of("activation", self.activation, ACTIVATIONS)
        _checks.positive("weight_std", self.weight_std)
        _checks.positive("bias_std", self.bias_std, allow_zero=True)

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
    _checks.positive_int("seed", seed, minimum=0)
    _checks.positive_int("offset", offset, minimum=0)
    return torch.Generator().manual_seed(1000 * seed + offset)


def init_params(config: MLPConfig, n_models: int | None = None, *, generator=None,
                dtype=torch.float64, device="cpu") -> dict[str, torch.Tensor]:
    """Standard-normal weights and biases; with ``n_models`` every tensor gets a leading
    ensemble axis (B, …) for :func:`torch.func.vmap`. Drawn on the CPU (a CPU ``generator``)
    and then moved, so a seed gives the same networks on every device."""
    lead = () if n_models is None else (n_models,)
    if n_models is not None:
        _checks.positive_int("n_models", n_models)
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
    _checks.one_of("method", method, NTK_METHODS)
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
    _checks.positive_int("n_seeds", n_seeds)
    _checks.one_of("parametrization", parametrization, PARAMETRIZATIONS + ("both",))
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


def theta0_study(widths, depths, activations, weight_stds, n_seeds: int, *, x0: float,
                 bias_std: float, seed: int, device="cpu", narrow_stds=(0.999, 1.001)) -> dict:
    """Which factor moves Θ_0 = ‖∇_θ f(x_0)‖² most, over a grid of activations × depths ×
    widths × weight_stds with ``n_seeds`` networks each (the source's Figure 1).

    Draws the grid twice from :func:`experiment_generator` (``seed``, offset 2: both
    parametrizations of the same networks; offset 8: the weight stds narrowed to
    ``narrow_stds``). Returns the grids (``ntk``, ``standard``, ``narrow``: (A, D, W, S,
    seeds)), their :func:`factor_effects` (``effects``), and per seed (lists of n_seeds)
    ``std_lead``: log10 of the weight std's effect over the largest other factor's, and
    ``width_lead``: log10 of the width's effect over the smallest other factor's, each for
    the three grids; ``wins``: (D, W, S, seeds) 1.0 where the second activation's Θ_0 is
    the larger."""
    factors = ["activation", "depth", "width", "init_std"]
    kw = dict(x0=x0, bias_std=bias_std, device=device)
    grids = ntk_grid(widths, depths, activations, weight_stds, n_seeds, parametrization="both",
                     generator=experiment_generator(seed, 2), **kw)
    grids["narrow"] = ntk_grid(widths, depths, activations, list(narrow_stds), n_seeds,
                               generator=experiment_generator(seed, 8), **kw)
    effects = {name: factor_effects(g, factors) for name, g in grids.items()}
    per_seed = {name: [factor_effects(g[..., s:s + 1], factors) for s in range(n_seeds)]
                for name, g in grids.items()}
    others = {"init_std": factors[:3], "width": ("activation", "depth", "init_std")}
    std_lead = {name: [math.log10(e["init_std"][0] / max(e[k][0] for k in others["init_std"]))
                       for e in runs] for name, runs in per_seed.items()}
    width_lead = {name: [math.log10(e["width"][0] / min(e[k][0] for k in others["width"]))
                         for e in runs] for name, runs in per_seed.items()}
    return {**grids, "factors": factors, "effects": effects, "std_lead": std_lead,
            "width_lead": width_lead, "wins": (grids["ntk"][1] > grids["ntk"][0]).double(),
            "narrow_stds": list(narrow_stds)}


# ------------------------------------------------------------------------ the infinite-width limit


def gauss_expectations(activation: str, s11, s22, s12):
    """E[φ(u)φ(v)] and E[φ'(u)φ'(v)] for (u, v) ~ N(0, [[s11, s12], [s12, s22]]), closed form:
    the arc-cosine kernels of order 1 and 0 for ReLU, Williams' arcsine kernel for erf."""
    _checks.one_of("activation", activation, ("relu", "erf"))
    if activation == "relu":
        norm = torch.sqrt(s11 * s22)
        cos = torch.clamp(s12 / norm, -1.0, 1.0)
        th = torch.arccos(cos)
        k1 = norm / (2 * math.pi) * (torch.sin(th) + (math.pi - th) * cos)
        return k1, (math.pi - th) / (2 * math.pi)
    k = 2 / math.pi * torch.arcsin(2 * s12 / torch.sqrt((1 + 2 * s11) * (1 + 2 * s22)))
    det = (1 + 2 * s11) * (1 + 2 * s22) - 4 * s12 ** 2
    return k, 4 / math.pi / torch.sqrt(det)


def infinite_ntk(x1: torch.Tensor, x2: torch.Tensor | None = None, *, activation: str = "relu",
                 weight_std: float = 1.0, bias_std: float = 0.1) -> torch.Tensor:
    """Θ_∞(x1, x2) of a one-hidden-layer network in the NTK parametrization of
    :func:`mlp` (depth 1): with Σ = σ_w² x·x'/d + σ_b²,
    Θ_∞ = σ_w² E[φφ] + σ_b² + σ_w² E[φ'φ'] Σ. x: (N, d) → (N1, N2)."""
    x2 = x1 if x2 is None else x2
    d = x1.shape[1]
    sig = lambda a, b: weight_std ** 2 * a @ b.T / d + bias_std ** 2  # noqa: E731
    s12 = sig(x1, x2)
    s11 = torch.diagonal(sig(x1, x1))[:, None].expand_as(s12)
    s22 = torch.diagonal(sig(x2, x2))[None, :].expand_as(s12)
    k, kdot = gauss_expectations(activation, s11, s22, s12)
    return weight_std ** 2 * k + bias_std ** 2 + weight_std ** 2 * kdot * s12


def monte_carlo_expectations(activation: str, s11: float, s22: float, s12: float, *,
                             n: int, generator=None):
    """Monte Carlo estimates of :func:`gauss_expectations` (for the tests)."""
    cov = torch.tensor([[s11, s12], [s12, s22]], dtype=torch.float64)
    z = torch.randn(n, 2, generator=generator, dtype=torch.float64) @ torch.linalg.cholesky(cov).T
    if activation == "relu":
        return (torch.relu(z).prod(1)).mean().item(), ((z > 0).all(1).double()).mean().item()
    dphi = 2 / math.sqrt(math.pi) * torch.exp(-z ** 2)
    return torch.erf(z).prod(1).mean().item(), dphi.prod(1).mean().item()


__all__ = [
    "ACTIVATIONS", "MLPConfig", "experiment_generator", "init_params", "mlp", "network",
    "empirical_ntk", "ensemble_ntk", "ntk_grid", "PARAMETRIZATIONS", "ensemble_ntk0_parts",
    "standard_ntk0", "factor_effects", "theta0_study", "gauss_expectations", "infinite_ntk",
    "monte_carlo_expectations",
]
