"""Neural Energy Descent (NED, seed 004): training as the evolution equation of the parameters
whose steady state minimises a variational energy, reconstructed from the abstract (the paper's
equations and examples are lost; ``../shared/seeds/NOTES.md``).

The energy is the Ritz energy of Poisson's equation with the boundary condition built into the
trial function (u_θ = B N_θ, :mod:`dynbook.models.pinn`), E(u) = ∫_Ω ½|∇u|² − f u. Its L²
gradient flow is ∂_t u = −δE/δu = Δu + f. Asking u_θ(t) to follow it as closely as the network
can (least squares over Ω at each t) gives

    M(θ) θ̇ = F(θ),   M = ∫_Ω ∇_θu ∇_θuᵀ dx,   F = ∫_Ω ∇_θu (Δu + f) dx = −∇_θ E(θ)

(the last equality integrates by parts; u_θ = 0 on ∂Ω). Then dE/dt = ∇_θE·θ̇ = −θ̇ᵀMθ̇ ≤ 0:
the energy is a Lyapunov function of the exact flow, and its steady states are critical points
of E. Both integrals are estimated on fresh uniform points at each step (the "random sampling"
of the abstract), M is regularised to M + ε (tr M / P) I (P parameters; relative ε, so the
shift follows the scale of M) and solved by Cholesky, and θ is integrated by forward Euler in
pseudo-time, its step halved until the sampled energy does not rise (:func:`euler_step`).

Glossary: ``mass_matrix`` M (P, P); ``force`` F (P,); ``regularisation`` ε; ``dt`` the Euler step.
"""

from __future__ import annotations

import time

import torch
from torch.func import jacrev

from dynbook import _checks
from dynbook.models import pinn


def mass_matrix(net: pinn.TanhMLP, theta: torch.Tensor, problem: pinn.Poisson, x: torch.Tensor) -> torch.Tensor:
    """M = |Ω| mean_k ∇_θu_θ(x_k) ∇_θu_θ(x_k)ᵀ, (P, P); the Jacobian by ``torch.func.jacrev``."""
    jac = jacrev(lambda t: pinn.trial(net, t, problem, x))(theta.detach())
    return problem.volume * jac.T @ jac / x.shape[0]


def force(net: pinn.TanhMLP, theta: torch.Tensor, problem: pinn.Poisson, x: torch.Tensor) -> torch.Tensor:
    """F = −∇_θ E(θ) with E estimated on x, (P,)."""
    t = theta.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(pinn.energy(net, t, problem, x), t)
    return -g


def velocity(net: pinn.TanhMLP, theta: torch.Tensor, problem: pinn.Poisson, x: torch.Tensor, *,
             regularisation: float) -> torch.Tensor:
    """θ̇ solving (M + ε tr(M)/P I) θ̇ = F in least squares, (P,)."""
    m = mass_matrix(net, theta, problem, x)
    shift = regularisation * torch.diagonal(m).mean()
    m = m + shift * torch.eye(m.shape[0], dtype=m.dtype)
    return torch.cholesky_solve(force(net, theta, problem, x)[:, None], torch.linalg.cholesky(m))[:, 0]


def euler_step(net: pinn.TanhMLP, theta: torch.Tensor, problem: pinn.Poisson, x: torch.Tensor, *,
               dt: float, regularisation: float, halvings: int = 8) -> tuple[torch.Tensor, float]:
    """One forward-Euler step θ + dt θ̇, dt halved (at most ``halvings`` times) until the
    energy on the step's own points x does not rise: explicit Euler on a stiff flow (the
    projected Laplacian's largest rates grow as ε shrinks) needs a step the flow itself
    sets. Returns the new θ and the dt used."""
    v = velocity(net, theta, problem, x, regularisation=regularisation)
    with torch.no_grad():
        e0 = pinn.energy(net, theta, problem, x)
        for _ in range(halvings):
            new = theta + dt * v
            if pinn.energy(net, new, problem, x) <= e0:
                return new, dt
            dt /= 2
    return theta + dt * v, dt


def train(net: pinn.TanhMLP, problem: pinn.Poisson, *, steps: int, dt: float, regularisation: float,
          n_points: int, seed: int, n_test: int = 1024, log_every: int | None = None,
          points: torch.Tensor | None = None, halvings: int = 8) -> tuple[pinn.Trained, list]:
    """NED from θ₀ = ``net.init`` of ``seed`` (the same θ₀ as :func:`pinn.train`): ``steps``
    :func:`euler_step`s on fresh points each step, or on the fixed ``points`` (then the flow is
    deterministic; with ``halvings=0`` it is plain forward Euler with step ``dt``). Each step
    starts from twice the last accepted dt, at most ``dt``. Returns the error history (as
    :func:`pinn.train`) and the energy at each logged step, on the test points (on ``points``
    when they are given)."""
    _checks.positive_int("steps", steps, minimum=0)
    _checks.positive("dt", dt)
    _checks.positive("regularisation", regularisation)
    gen = torch.Generator().manual_seed(seed)
    x_test = problem.sample(n_test, torch.Generator().manual_seed(seed + 1))
    x_energy = x_test if points is None else points
    theta = net.init(gen)
    log_every = log_every or max(steps, 1)
    out = pinn.Trained(theta, [0], [0.0], [pinn.relative_error(net, theta, problem, x_test)])
    energies = [float(pinn.energy(net, theta, problem, x_energy))]
    clock, step_size = 0.0, dt
    for step in range(1, steps + 1):
        t0 = time.thread_time()
        x = problem.sample(n_points, gen) if points is None else points
        theta, used = euler_step(net, theta, problem, x, dt=min(2 * step_size, dt),
                                 regularisation=regularisation, halvings=halvings)
        step_size = used
        clock += time.thread_time() - t0
        if step % log_every == 0 or step == steps:
            out.steps.append(step)
            out.seconds.append(clock)
            out.errors.append(pinn.relative_error(net, theta, problem, x_test))
            energies.append(float(pinn.energy(net, theta, problem, x_energy)))
    out.theta = theta
    return out, energies


def one_step(method: str, net: pinn.TanhMLP, problem: pinn.Poisson, *, n_points: int, seed: int,
             dt: float, regularisation: float, lr: float):
    """A callable doing one step of ``method`` (a key of :data:`METHODS`) on the same network
    and the same number of points: to time every method's step."""
    _checks.one_of("method", method, METHODS)
    if method != "NED":
        optimizer, loss = METHODS[method]
        return pinn.one_step(net, problem, n_points=n_points, seed=seed, lr=lr, loss=loss, optimizer=optimizer)
    gen = torch.Generator().manual_seed(seed)
    theta = net.init(gen)
    return lambda: euler_step(net, theta, problem, problem.sample(n_points, gen), dt=dt,
                              regularisation=regularisation)


METHODS = {"NED": None, "SGD (energy)": ("sgd", "energy"), "Adam (energy)": ("adam", "energy"),
           "Adam (residual)": ("adam", "residual")}


def compare(net: pinn.TanhMLP, problem: pinn.Poisson, wrong: pinn.Poisson, *, seeds, steps: int, n_points: int,
            dt: float, regularisation: float, lr: float, repeats: int = 3) -> dict:
    """NED against :data:`METHODS` at equal network, points and time: one step of each is timed
    (thread CPU seconds, ``repeats`` interleaved readings), each baseline gets the steps that fit
    in ``steps`` NED steps, and every method runs from each seed's θ₀. ``runs[(method, seed)]``
    holds the histories; ``runs[("control", seed)]`` is NED on ``wrong`` (a wrong source, errors
    against ``wrong.solution``, which the caller sets to the true one). Run under
    ``timing.num_threads(1)``."""
    from dynbook.measure import timing

    nd = dict(n_points=n_points, dt=dt, regularisation=regularisation)
    times = timing.interleaved_times({m: one_step(m, net, problem, seed=seeds[0], lr=lr, **nd) for m in METHODS},
                                     device="cpu", min_run_time=0.02, repeats=repeats, clock="thread")
    budget = {m: max(1, round(steps * min(times["NED"]) / min(times[m]))) for m in METHODS}
    runs = {}
    for s in seeds:
        runs[("NED", s)] = train(net, problem, steps=steps, seed=s, log_every=1, **nd)[0]
        runs[("control", s)] = train(net, wrong, steps=steps, seed=s, **nd)[0]
        for m, (optimizer, loss) in list(METHODS.items())[1:]:
            runs[(m, s)] = pinn.train(net, problem, steps=budget[m], lr=lr, n_points=n_points, seed=s, loss=loss,
                                      optimizer=optimizer, log_every=max(1, budget[m] // 40))
    return {"step_seconds": times, "steps": budget, "runs": runs}


def step_cost_by_width(widths, problem: pinn.Poisson, *, n_points: int, dt: float, regularisation: float,
                       lr: float, seed: int = 0, repeats: int = 3) -> dict:
    """``{width: (n_params, NED step seconds, Adam step seconds)}``, least of ``repeats``
    interleaved thread-time readings. Run under ``timing.num_threads(1)``."""
    from dynbook.measure import timing

    nd = dict(n_points=n_points, dt=dt, regularisation=regularisation, lr=lr, seed=seed)
    fns = {(w, m): one_step(m, pinn.TanhMLP(problem.dim, w), problem, **nd) for w in widths
           for m in ("NED", "Adam (energy)")}
    t = timing.interleaved_times(fns, device="cpu", min_run_time=0.02, repeats=repeats, clock="thread")
    return {w: (pinn.TanhMLP(problem.dim, w).n_params, min(t[(w, "NED")]), min(t[(w, "Adam (energy)")]))
            for w in widths}
