"""Physics-informed neural networks for Poisson's equation −Δu = f, u = 0 on ∂Ω, with known
solutions, the sampled-dimension Laplacian of stochastic dimension gradient descent, and the
finite-difference baseline.

Glossary (code name → symbol):

====================  ======================================================================
``theta``             θ, all weights and biases of the network in one flat float64 vector
``TanhMLP``           N_θ(x): ``depth`` tanh layers of ``width`` units, one output
``Poisson``           a problem: Ω (unit cube or unit ball), f, the exact u* and B(x) = 0 on ∂Ω
``trial``             u_θ(x) = B(x) N_θ(x): the boundary condition holds exactly (hard constraint)
``laplacian``         Δu_θ(x), or its estimate (d/|S|) Σ_{i∈S} ∂²u_θ/∂x_i² on a random subset S
``residual``          r(x) = −Δu_θ(x) − f(x)
``energy``            E(u_θ) = |Ω| mean_x [½|∇u_θ|² − f u_θ] (the Ritz energy, minimised by u*)
``fd_poisson``        the 2nd-order finite-difference solution on an (n+1)-interval grid
====================  ======================================================================

Derivatives in x are propagated in closed form through the tanh layers (:func:`derivatives`:
forward mode, one tangent per coordinate, order two), and θ-gradients by autograd through that
computation. The reference is ``torch.func`` (``vmap`` of ``jvp`` of ``grad``,
:func:`laplacian_torch_func`); the tests and the chapter assert the two agree in float64. Why
not torch.func or autograd's ``create_graph`` in training: for networks of a few hundred to a
few thousand parameters on a CPU they spend their time in per-call dispatch. One residual loss
and its backward on 64 points, one thread (measured while writing this module, 2-core Xeon):
d = 1, width 16: closed form 2.0 ms, autograd 3.0 ms, torch.func 13 ms; d = 20, width 32:
7.2 ms, 43 ms and 23 ms. All three evaluate |S| coordinates for the sampled Laplacian, so its
cost grows with |S|, not d.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from functools import partial
from typing import Callable

import torch
from torch.func import grad, jvp, vmap

from dynbook import _checks
from dynbook.measure import fits

DTYPE = torch.float64


@dataclass(frozen=True)
class TanhMLP:
    """N_θ: R^in_dim → R, ``depth`` hidden tanh layers of ``width`` units; θ is flat."""

    in_dim: int
    width: int
    depth: int = 2

    def __post_init__(self):
        _checks.positive_int("in_dim", self.in_dim)
        _checks.positive_int("width", self.width)
        _checks.positive_int("depth", self.depth)

    @property
    def shapes(self) -> list[tuple[int, int]]:
        """(fan_out, fan_in) of each layer."""
        fan = [self.in_dim] + [self.width] * self.depth
        return list(zip([self.width] * self.depth + [1], fan))

    @property
    def n_params(self) -> int:
        return sum(o * i + o for o, i in self.shapes)

    def init(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """θ with Glorot-normal weights and zero biases, float64, shape (n_params,)."""
        parts = []
        for o, i in self.shapes:
            std = math.sqrt(2.0 / (o + i))
            parts += [torch.randn(o * i, generator=generator, dtype=DTYPE) * std, torch.zeros(o, dtype=DTYPE)]
        return torch.cat(parts)

    def __call__(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """x: (n, in_dim) → (n,)."""
        h, at = x, 0
        for layer, (o, i) in enumerate(self.shapes):
            w = theta[at:at + o * i].reshape(o, i)
            b = theta[at + o * i:at + o * i + o]
            at += o * i + o
            h = h @ w.T + b
            if layer < self.depth:
                h = torch.tanh(h)
        return h[..., 0]


# ----------------------------------------------------------------------------- problems


@dataclass(frozen=True)
class Poisson:
    """−Δu = f in Ω, u = 0 on ∂Ω, with exact solution ``solution``; Ω is the unit cube [0, 1]^d
    or the unit ball. ``boundary_factor`` B vanishes on ∂Ω and is positive inside."""

    name: str
    dim: int
    domain: str
    solution: Callable[[torch.Tensor], torch.Tensor]  # (n, d) → (n,)
    source: Callable[[torch.Tensor], torch.Tensor]

    def __post_init__(self):
        _checks.positive_int("dim", self.dim)
        _checks.one_of("domain", self.domain, DOMAINS)

    @property
    def volume(self) -> float:
        if self.domain == "cube":
            return 1.0
        return math.pi ** (self.dim / 2) / math.gamma(self.dim / 2 + 1)

    def boundary_factor(self, x: torch.Tensor) -> torch.Tensor:
        if self.domain == "cube":
            return (4 * x * (1 - x)).prod(-1)
        return 1 - (x * x).sum(-1)

    def boundary_derivatives(self, x: torch.Tensor, dims: torch.Tensor):
        """B, ∂B/∂x_i and ∂²B/∂x_i² for i in dims: (n,), (n, s), (n, s)."""
        bb = self.boundary_factor(x)
        xi = x[:, dims]
        if self.domain == "cube":
            rest = bb[:, None] / (4 * xi * (1 - xi))  # Π_{j≠i} b_j (points are interior)
            return bb, 4 * (1 - 2 * xi) * rest, -8 * rest
        return bb, -2 * xi, torch.full_like(xi, -2.0)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n points, each uniform in Ω, (n, d) float64; on the cube a Latin hypercube sample
        (every coordinate hits each of n equal cells once), which keeps means unbiased and
        cuts the variance of the sampled integrals."""
        _checks.positive_int("n", n)
        if self.domain == "cube":  # Latin hypercube: each coordinate stratified into n cells
            cells = torch.stack([torch.randperm(n, generator=generator) for _ in range(self.dim)], 1)
            return (cells + torch.rand(n, self.dim, generator=generator, dtype=DTYPE)) / n
        g = torch.randn(n, self.dim, generator=generator, dtype=DTYPE)
        r = torch.rand(n, 1, generator=generator, dtype=DTYPE) ** (1 / self.dim)
        return g / g.norm(dim=1, keepdim=True) * r


DOMAINS = ("cube", "ball")


def sine_poisson(dim: int, frequency: int = 1) -> Poisson:
    """u* = Π_i sin(kπ x_i) on the unit cube, f = d k²π² u* (k = ``frequency``)."""
    _checks.positive_int("frequency", frequency)
    k = frequency * math.pi

    def u(x):
        return torch.sin(k * x).prod(-1)

    return Poisson(f"sine_d{dim}_k{frequency}", dim, "cube", u, lambda x: dim * k * k * u(x))


def ball_poisson(dim: int) -> Poisson:
    """u* = (1 − |x|²) Σ_i sin(x_i) on the unit ball (every dimension matters, none alone),
    f = −Δu* = (2d + 1 − |x|²) Σ sin x_i + 4 Σ x_i cos x_i."""

    def u(x):
        return (1 - (x * x).sum(-1)) * torch.sin(x).sum(-1)

    def f(x):
        return (2 * dim + 1 - (x * x).sum(-1)) * torch.sin(x).sum(-1) + 4 * (x * torch.cos(x)).sum(-1)

    return Poisson(f"ball_d{dim}", dim, "ball", u, f)


# ----------------------------------------------------------------------------- u_θ and its derivatives


def trial(net: TanhMLP, theta: torch.Tensor, problem: Poisson, x: torch.Tensor) -> torch.Tensor:
    """u_θ(x) = B(x) N_θ(x), x: (n, d) → (n,)."""
    return problem.boundary_factor(x) * net(theta, x)


def _point(net, theta, problem):
    return lambda xp: trial(net, theta, problem, xp[None])[0]


def _coordinates(problem: Poisson, x: torch.Tensor, dims) -> torch.Tensor:
    d = problem.dim
    dims = torch.arange(d) if dims is None else torch.as_tensor(dims)
    if dims.ndim != 1 or dims.numel() == 0 or dims.min() < 0 or dims.max() >= d \
            or dims.unique().numel() != dims.numel():
        raise ValueError(f"dims={dims.tolist()!r} is not allowed: expected distinct coordinates in [0, {d - 1}]")
    if x.ndim != 2 or x.shape[1] != d:
        raise ValueError(f"x has shape {tuple(x.shape)}: expected (n, {d})")
    return dims


def derivatives(net: TanhMLP, theta: torch.Tensor, problem: Poisson, x: torch.Tensor,
                dims: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """u_θ, ∂u_θ/∂x_i and ∂²u_θ/∂x_i² for i in ``dims`` (all by default): (n,), (n, s), (n, s).

    Forward mode written out (Taylor mode of order 2 along each coordinate): through
    z = W h + b and h' = tanh z, ∂h' = σ' ∂z and ∂²h' = σ'' (∂z)² + σ' ∂²z, with σ' = 1 − tanh²,
    σ'' = −2 tanh σ'; then the product rule with B. Cost ∝ s = |dims|, not d. Equal to
    torch.func's jvp-of-grad (:func:`laplacian_torch_func`, the reference) to rounding."""
    return _derivatives(net, theta, problem, x, _coordinates(problem, x, dims))


def _derivatives(net, theta, problem, x, dims):
    """:func:`derivatives` for checked ``dims``; a coordinate may appear more than once (two
    sampled subsets stacked into one pass by :func:`residual_loss`)."""
    n, s = x.shape[0], dims.numel()
    h = x
    dh = torch.eye(problem.dim, dtype=x.dtype)[dims].expand(n, s, problem.dim)
    d2h = None
    at = 0
    for layer, (o, i) in enumerate(net.shapes):
        w = theta[at:at + o * i].reshape(o, i)
        b = theta[at + o * i:at + o * i + o]
        at += o * i + o
        z, dz = h @ w.T + b, dh @ w.T
        d2z = None if d2h is None else d2h @ w.T
        if layer == net.depth:
            h, dh, d2h = z, dz, d2z
            break
        t = torch.tanh(z)
        s1 = (1 - t * t)[:, None, :]
        h, dh = t, s1 * dz
        d2h = -2 * t[:, None, :] * s1 * dz * dz + (0 if d2z is None else s1 * d2z)
    nn, dn, d2n = h[:, 0], dh[..., 0], d2h[..., 0]
    bb, db, d2b = problem.boundary_derivatives(x, dims)
    return bb * nn, db * nn[:, None] + bb[:, None] * dn, d2b * nn[:, None] + 2 * db * dn + bb[:, None] * d2n


def gradient_x(net: TanhMLP, theta: torch.Tensor, problem: Poisson, x: torch.Tensor) -> torch.Tensor:
    """∇_x u_θ at each point, (n, d)."""
    return derivatives(net, theta, problem, x)[1]


def laplacian(net: TanhMLP, theta: torch.Tensor, problem: Poisson, x: torch.Tensor,
              dims: torch.Tensor | None = None, rescale: bool = True) -> torch.Tensor:
    """Δu_θ at each point of x (n, d) → (n,). With ``dims`` (a 1-D tensor of distinct
    coordinates S), the estimate (d/|S|) Σ_{i∈S} ∂²u_θ/∂x_i²: unbiased when S is a uniformly
    random subset of a fixed size, and |S| second derivatives instead of d. ``rescale=False``
    drops the factor d/|S| (a biased estimate: the chapter's negative control)."""
    d2u = derivatives(net, theta, problem, x, dims)[2]
    return d2u.sum(-1) * (problem.dim / d2u.shape[1] if rescale else 1.0)


def laplacian_torch_func(net: TanhMLP, theta: torch.Tensor, problem: Poisson, x: torch.Tensor,
                         dims: torch.Tensor | None = None) -> torch.Tensor:
    """The reference for :func:`laplacian`: ``vmap`` over points of ``vmap`` over e_i of
    ``jvp(grad u, e_i)·e_i`` (forward-over-reverse). Same numbers, about ten times the time
    for networks this small on a CPU (dispatch, not arithmetic)."""
    dims = _coordinates(problem, x, dims)
    basis = torch.eye(problem.dim, dtype=x.dtype)[dims]
    du = grad(_point(net, theta, problem))

    def hessian_diagonal(xp):
        return vmap(lambda v: (jvp(du, (xp,), (v,))[1] * v).sum())(basis)

    return vmap(hessian_diagonal)(x).sum(-1) * (problem.dim / dims.numel())


def random_dims(dim: int, size: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """A uniformly random subset of ``size`` of the ``dim`` coordinates."""
    _checks.positive_int("size", size)
    if size > dim:
        raise ValueError(f"size={size!r} is not allowed: expected at most dim={dim}")
    return torch.randperm(dim, generator=generator)[:size]


def residual(net: TanhMLP, theta: torch.Tensor, problem: Poisson, x: torch.Tensor,
             dims: torch.Tensor | None = None, rescale: bool = True) -> torch.Tensor:
    """r = −Δu_θ − f at each point (n,), with the exact or the sampled Laplacian."""
    return -laplacian(net, theta, problem, x, dims, rescale) - problem.source(x)


def energy(net: TanhMLP, theta: torch.Tensor, problem: Poisson, x: torch.Tensor) -> torch.Tensor:
    """The Ritz energy E(u_θ) = ∫_Ω ½|∇u_θ|² − f u_θ, estimated as |Ω| × the mean over x.
    With u = 0 on ∂Ω, E(u) − E(u*) = ½∫|∇(u − u*)|² ≥ 0: u* is the unique minimiser."""
    g = gradient_x(net, theta, problem, x)
    return problem.volume * (0.5 * (g * g).sum(-1) - problem.source(x) * trial(net, theta, problem, x)).mean()


def exact_energy(problem: Poisson, x: torch.Tensor) -> torch.Tensor:
    """E(u*) = −½∫ f u* (integrate ½|∇u*|² by parts), estimated on x like :func:`energy`."""
    return -0.5 * problem.volume * (problem.source(x) * problem.solution(x)).mean()


def relative_error(net: TanhMLP, theta: torch.Tensor, problem: Poisson, x: torch.Tensor) -> float:
    """‖u_θ − u*‖₂ / ‖u*‖₂ on the test points x."""
    with torch.no_grad():
        u = trial(net, theta, problem, x)
        ref = problem.solution(x)
    return fits.relative_error(u, ref, norm="fro")


# ----------------------------------------------------------------------------- training


def residual_loss(net, theta, problem, x, dims_per_step=None, generator=None, rescale=True):
    """mean r² (exact Laplacian), or mean r_a r_b with two independent random dimension subsets
    a and b (the product is unbiased for r², where a squared single estimate is not)."""
    if dims_per_step is None:
        r = residual(net, theta, problem, x)
        return (r * r).mean()
    a = random_dims(problem.dim, dims_per_step, generator)
    b = random_dims(problem.dim, dims_per_step, generator)
    # both estimates from one pass through the network (the subsets may share coordinates):
    # the same numbers as two calls of :func:`residual`, at little more than the cost of one
    d2u = _derivatives(net, theta, problem, x, torch.cat([a, b]))[2]
    scale = problem.dim / dims_per_step if rescale else 1.0
    f = problem.source(x)
    ra = -d2u[:, :dims_per_step].sum(-1) * scale - f
    rb = -d2u[:, dims_per_step:].sum(-1) * scale - f
    return (ra * rb).mean()


LOSSES = {
    "residual": residual_loss,
    "residual_unscaled": partial(residual_loss, rescale=False),  # the biased control
    "energy": lambda net, theta, problem, x, dims_per_step=None, generator=None: energy(net, theta, problem, x),
}
OPTIMIZERS = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD}


@dataclass
class Trained:
    """A trained θ with its error history: ``errors[j]`` after ``steps[j]`` steps and
    ``seconds[j]`` of training: CPU time of the training thread (evaluation excluded; on a shared
    machine other processes do not count)."""

    theta: torch.Tensor
    steps: list
    seconds: list
    errors: list

    @property
    def error(self) -> float:
        return self.errors[-1]


def train(net: TanhMLP, problem: Poisson, *, steps: int, lr: float, n_points: int, seed: int,
          loss: str = "residual", optimizer: str = "adam", dims_per_step: int | None = None,
          n_test: int = 1024, log_every: int | None = None, theta: torch.Tensor | None = None) -> Trained:
    """Train u_θ with ``optimizer`` on ``loss`` ("residual": the PINN loss, "energy": the Ritz
    energy), fresh uniform points each step (``n_points``), the sampled Laplacian when
    ``dims_per_step`` is given. Errors against u* on ``n_test`` fixed points of seed + 1."""
    _checks.positive_int("steps", steps, minimum=0)
    _checks.positive("lr", lr)
    _checks.one_of("loss", loss, LOSSES)
    _checks.one_of("optimizer", optimizer, OPTIMIZERS)
    gen = torch.Generator().manual_seed(seed)
    x_test = problem.sample(n_test, torch.Generator().manual_seed(seed + 1))
    theta = (net.init(gen) if theta is None else theta.clone()).requires_grad_(True)
    opt = OPTIMIZERS[optimizer]([theta], lr=lr)
    log_every = log_every or max(steps, 1)
    out = Trained(theta, [0], [0.0], [relative_error(net, theta, problem, x_test)])
    clock = 0.0
    for step in range(1, steps + 1):
        t0 = time.thread_time()
        x = problem.sample(n_points, gen)
        value = LOSSES[loss](net, theta, problem, x, dims_per_step, gen)
        opt.zero_grad()
        value.backward()
        opt.step()
        clock += time.thread_time() - t0
        if step % log_every == 0 or step == steps:
            out.steps.append(step)
            out.seconds.append(clock)
            out.errors.append(relative_error(net, theta, problem, x_test))
    out.theta = theta.detach()
    return out


def one_step(net: TanhMLP, problem: Poisson, *, n_points: int, seed: int, lr: float, loss: str = "residual",
             optimizer: str = "adam", dims_per_step: int | None = None):
    """A callable doing one training step of :func:`train` (fresh points, loss, backward,
    update) from θ₀ of ``seed``: what a step costs, to time methods against each other."""
    _checks.one_of("loss", loss, LOSSES)
    _checks.one_of("optimizer", optimizer, OPTIMIZERS)
    gen = torch.Generator().manual_seed(seed)
    theta = net.init(gen).requires_grad_(True)
    opt = OPTIMIZERS[optimizer]([theta], lr=lr)

    def step():
        opt.zero_grad()
        LOSSES[loss](net, theta, problem, problem.sample(n_points, gen), dims_per_step, gen).backward()
        opt.step()
    return step


# ----------------------------------------------------------------------------- the classical baseline


def fd_poisson(problem: Poisson, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The second-order finite-difference solution on the unit cube (d = 1 or 2), grid spacing
    h = 1/n: returns the (n − 1)^d interior points (m, d) and the solution there (m,). The
    d-dimensional Laplacian is the Kronecker sum of the 1-D [1, −2, 1]/h² matrix."""
    import numpy as np
    from scipy.sparse import diags, identity, kron
    from scipy.sparse.linalg import spsolve

    _checks.positive_int("n", n, minimum=2)
    if problem.domain != "cube" or problem.dim > 2:
        raise ValueError(f"problem={problem.name!r} is not allowed: fd_poisson needs the unit cube with dim 1 or 2")
    h = 1.0 / n
    m = n - 1
    t = diags([-np.ones(m - 1), 2 * np.ones(m), -np.ones(m - 1)], [-1, 0, 1]) / h**2
    a = t if problem.dim == 1 else kron(t, identity(m)) + kron(identity(m), t)
    grid = torch.arange(1, n, dtype=DTYPE) * h
    x = grid[:, None] if problem.dim == 1 else torch.cartesian_prod(grid, grid)
    u = spsolve(a.tocsr(), problem.source(x).numpy())
    return x, torch.as_tensor(np.atleast_1d(u), dtype=DTYPE)


def fd_error(problem: Poisson, n: int) -> float:
    """‖u_h − u*‖₂ / ‖u*‖₂ at the grid points (the discrete L² relative error)."""
    x, u = fd_poisson(problem, n)
    ref = problem.solution(x)
    return float((u - ref).norm() / ref.norm())


def fd_grid_for(problem: Poisson, error: float, n_max: int = 4096) -> int:
    """The smallest n = 2^j (j ≥ 2) whose finite-difference error is at most ``error``
    (``n_max`` if none up to it is): the grid that matches a given accuracy."""
    _checks.positive("error", error)
    n = 4
    while n < n_max and fd_error(problem, n) > error:
        n *= 2
    return n


# ----------------------------------------------------------------------------- the chapter's experiments


def against_finite_differences(dims, *, width: int, seeds, steps: int, lr: float, n_points: int,
                               optimizer: str = "adam") -> dict:
    """For each d in ``dims`` (1, 2) and each seed: train a PINN on :func:`sine_poisson`, then
    time (thread CPU time) the finite-difference solve on the coarsest grid 2^j that is at
    least as accurate. Returns ``{d: {"error", "untrained", "pinn_seconds", "grid",
    "fd_seconds"}}``, each a list over seeds. Run under ``timing.num_threads(1)``."""
    from dynbook.measure import timing

    out = {}
    for d in dims:
        problem = sine_poisson(d)
        runs = [train(TanhMLP(d, width), problem, steps=steps, lr=lr, n_points=n_points, seed=s,
                      optimizer=optimizer) for s in seeds]
        grids = [fd_grid_for(problem, r.error) for r in runs]
        fd = [timing.time_it(lambda n=n: fd_poisson(problem, n), min_run_time=0.05, clock="thread") for n in grids]
        out[d] = {"error": [r.error for r in runs], "untrained": [r.errors[0] for r in runs],
                  "pinn_seconds": [r.seconds[-1] for r in runs], "grid": grids, "fd_seconds": fd}
    return out


def spectral_bias(frequencies, *, width: int, seeds, steps: int, lr: float, n_points: int,
                  optimizer: str = "adam", known: dict | None = None) -> dict:
    """``{"pinn": {k: [error per seed]}}`` of the 1-D PINN on u* = sin(kπx), one budget for
    every k (``known`` supplies k already trained with these settings), and under "fd"
    ``{k: error}`` of finite differences with 8 points per wavelength (n = 8k)."""
    known = dict(known or {})
    errors = {k: known[k] if k in known else [
        train(TanhMLP(1, width), sine_poisson(1, k), steps=steps, lr=lr, n_points=n_points, seed=s,
              optimizer=optimizer).error for s in seeds] for k in frequencies}
    return {"pinn": errors, "fd": {k: fd_error(sine_poisson(1, k), 8 * k) for k in frequencies}}


def dimension_scaling(dims, *, width: int, sampled_dims: int, seeds, steps: int, lr: float, n_points: int,
                      optimizer: str = "adam", repeats: int = 5, cost_points: int | None = None) -> dict:
    """Stochastic dimension gradient descent on :func:`ball_poisson` against the full Laplacian.

    ``step_seconds[(d, m)]``: thread CPU seconds of one training step, ``repeats`` interleaved
    readings, m = ``sampled_dims`` or ``None`` (full). ``errors[(d, m)]``: error per seed after
    ``steps`` sampled steps, or after the full Laplacian's steps in the same time (``steps`` ×
    the ratio of least step times at that d); ``errors[(d, "unscaled")]`` at the smallest and
    largest d: the sampled estimate without its factor d/|S|. ``cost_seconds``: the same step timing with
    ``cost_points`` points, enough that arithmetic, not per-call overhead, sets the cost (what
    grows with d). Run under ``timing.num_threads(1)``."""
    from dynbook.measure import timing

    methods = (sampled_dims, None)
    fit = dict(lr=lr, n_points=n_points, optimizer=optimizer)
    steppers = {(d, m): one_step(TanhMLP(d, width), ball_poisson(d), seed=seeds[0], dims_per_step=m, **fit)
                for d in dims for m in methods}
    times = timing.interleaved_times(steppers, device="cpu", min_run_time=0.02, repeats=repeats, clock="thread")
    ratio = {d: min(times[(d, sampled_dims)]) / min(times[(d, None)]) for d in dims}
    big = dict(fit, n_points=cost_points or n_points)
    cost = timing.interleaved_times({(d, m): one_step(TanhMLP(d, width), ball_poisson(d), seed=seeds[0],
                                                      dims_per_step=m, **big) for d in dims for m in methods},
                                    device="cpu", min_run_time=0.02, repeats=repeats, clock="thread")
    errors = {(d, m): [train(TanhMLP(d, width), ball_poisson(d), seed=s, dims_per_step=m,
                             steps=steps if m else max(1, round(steps * ratio[d])), **fit).error for s in seeds]
              for d in dims for m in methods}
    for d in (dims[0], dims[-1]):  # the control: the sampled estimate without its factor d/|S|
        errors[(d, "unscaled")] = [train(TanhMLP(d, width), ball_poisson(d), seed=s, dims_per_step=sampled_dims,
                                         steps=steps, loss="residual_unscaled", **fit).error for s in seeds]
    return {"step_seconds": times, "cost_seconds": cost, "equal_time_steps": {d: max(1, round(steps * ratio[d])) for d in dims},
            "errors": errors}
