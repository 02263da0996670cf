"""Stochastic differential equations with torchsde: solver orders on an SDE with an exact
solution, a Neural SDE fitted to paths of a known process, and the memory of the stochastic
adjoint.

Glossary (code ↔ maths): ``GBM`` is geometric Brownian motion dX = μX dt + σX dW with
X(T) = X(0) exp((μ − σ²/2)T + σW(T)); ``OU`` is the Ornstein–Uhlenbeck process
dX = θ(μ − X) dt + σ dW; a ``NeuralSDE`` has drift f_θ(x) and diagonal diffusion g_φ(x) > 0
(small MLPs). Strong error: E|X_N(T) − X(T)| on the same Brownian path; weak error:
|E X_N(T) − E X(T)|, estimated with common random numbers (the same paths), so its Monte
Carlo noise is that of the difference, not of X. ``method`` names are torchsde's (``"euler"``
is Euler–Maruyama for Itô SDEs, ``"milstein"``, ``"srk"`` is Rößler's strong-order-1.5 SRK).

Chapter 4's experiments: :func:`gbm_orders` (fitted orders and the check), :func:`fit_experiment`
(the Neural SDE fitted to OU paths, its double-well control) and :func:`memory_experiment`
(peak bytes of the stochastic adjoint against backpropagation), with their figures.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from dynbook import _checks


#: (strong, weak) orders the theory gives for GBM (multiplicative, diagonal noise); SRK's
#: weak order is not used for a check (its weak error sits at the Monte Carlo floor here)
NOMINAL_ORDERS = {"euler": (0.5, 1.0), "milstein": (1.0, 1.0), "srk": (1.5, None)}


# ----------------------------------------------------------------------------- GBM orders


class GBM(nn.Module):
    """dX = μX dt + σX dW (Itô, diagonal noise), for torchsde."""

    noise_type = "diagonal"
    sde_type = "ito"

    def __init__(self, mu: float = 1.0, sigma: float = 1.0):
        super().__init__()
        self.mu, self.sigma = mu, sigma

    def f(self, t, y):
        return self.mu * y

    def g(self, t, y):
        return self.sigma * y

    def exact(self, y0, t, w_t):
        """X(t) on the path with W(t) = ``w_t``."""
        return y0 * torch.exp((self.mu - 0.5 * self.sigma ** 2) * t + self.sigma * w_t)


def gbm_errors(methods=("euler", "milstein", "srk"), steps=(4, 8, 16, 32, 64), *, paths: int = 8000,
               mu: float = 1.0, sigma: float = 1.0, t1: float = 1.0, seed: int = 0) -> dict:
    """Strong and weak errors at X(t1) of each torchsde method at each step count, all on the
    same ``paths`` Brownian paths (one ``BrownianInterval``, with space-time Lévy area for SRK),
    float64. Returns ``{method: {"steps", "strong", "weak"}}``."""
    import torchsde

    sde = GBM(mu, sigma)
    y0 = torch.ones(paths, 1, dtype=torch.float64)
    bm = torchsde.BrownianInterval(0.0, t1, size=(paths, 1), dtype=torch.float64, entropy=seed,
                                   levy_area_approximation="space-time")
    exact = sde.exact(y0, t1, bm(0.0, t1))
    ts = torch.tensor([0.0, t1], dtype=torch.float64)
    out = {}
    with torch.no_grad():
        for m in methods:
            strong, weak = [], []
            for n in steps:
                y = torchsde.sdeint(sde, y0, ts, bm=bm, dt=t1 / n, method=m)[-1]
                strong.append(float((y - exact).abs().mean()))
                weak.append(abs(float((y - exact).mean())))
            out[m] = {"steps": list(steps), "strong": strong, "weak": weak}
    return out


# ----------------------------------------------------------------------------- OU and a Neural SDE


@dataclass(frozen=True)
class OU:
    """dX = θ(μ − X) dt + σ dW; exact Gaussian transitions."""

    theta: float = 1.0
    mu: float = 0.5
    sigma: float = 0.5

    def drift(self, x):
        return self.theta * (self.mu - x)

    def diffusion(self, x):
        return torch.full_like(x, self.sigma)

    def paths(self, x0: torch.Tensor, n_obs: int, dt: float, generator=None) -> torch.Tensor:
        """Exact samples at times 0, dt, …, n_obs·dt: ``(n_obs + 1, *x0.shape)``."""
        a = math.exp(-self.theta * dt)
        sd = self.sigma * math.sqrt((1 - a * a) / (2 * self.theta))
        xs = [x0]
        for _ in range(n_obs):
            z = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)
            xs.append(self.mu + a * (xs[-1] - self.mu) + sd * z)
        return torch.stack(xs)


@dataclass(frozen=True)
class DoubleWell:
    """dX = (X − X³) dt + σ dW, simulated by Euler–Maruyama on a fine grid (the control's data)."""

    sigma: float = 0.5

    def drift(self, x):
        return x - x ** 3

    def diffusion(self, x):
        return torch.full_like(x, self.sigma)

    def paths(self, x0, n_obs, dt, generator=None, substeps: int = 20):
        h = dt / substeps
        xs, x = [x0], x0
        for _ in range(n_obs):
            for _ in range(substeps):
                x = x + self.drift(x) * h + self.sigma * math.sqrt(h) * torch.randn(
                    x.shape, generator=generator, dtype=x.dtype)
            xs.append(x)
        return torch.stack(xs)


class EnsembleMLP(nn.Module):
    """``members`` independent 1-D MLPs x ↦ y, evaluated at once: ``x (members, n, 1)``."""

    def __init__(self, members: int, hidden: int, *, generator=None, out_scale: float = 1.0):
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(members, 1, hidden, generator=generator))
        self.b1 = nn.Parameter(torch.randn(members, 1, hidden, generator=generator))
        self.w2 = nn.Parameter(out_scale * torch.randn(members, hidden, 1, generator=generator) / math.sqrt(hidden))
        self.b2 = nn.Parameter(torch.zeros(members, 1, 1))

    def forward(self, x):
        return torch.baddbmm(self.b2, torch.tanh(torch.baddbmm(self.b1, x, self.w1)), self.w2)


class NeuralSDE(nn.Module):
    """dX = f_θ(X) dt + g_φ(X) dW with g_φ = softplus(·) > 0, ``members`` models side by side:
    the torchsde state ``(members·n, 1)`` holds member i's paths in rows i·n … (i+1)·n − 1."""

    noise_type = "diagonal"
    sde_type = "ito"

    def __init__(self, members: int = 1, hidden: int = 32, *, generator=None):
        super().__init__()
        self.members = members
        self.f_net = EnsembleMLP(members, hidden, generator=generator)
        self.g_net = EnsembleMLP(members, hidden // 2, generator=generator, out_scale=0.1)

    def _split(self, y):
        return y.reshape(self.members, -1, 1)

    def drift(self, x):
        """f_θ at ``x (members, n, 1)``."""
        return self.f_net(x)

    def diffusion(self, x):
        return nn.functional.softplus(self.g_net(x) - 0.5)

    def f(self, t, y):
        return self.drift(self._split(y)).reshape(y.shape)

    def g(self, t, y):
        return self.diffusion(self._split(y)).reshape(y.shape)


def transition_nll(model: NeuralSDE, x0, x1, *, dt: float, substeps: int, replicas: int,
                   adjoint: bool = False, bm_seed: int | None = None,
                   variance_correction: bool = True) -> torch.Tensor:
    """Gaussian negative log-likelihood of observed transitions x0 → x1 ``(members, n, 1)``
    under the model, with the transition's mean and variance estimated from ``replicas``
    torchsde Euler–Maruyama paths of ``substeps`` steps each (gradients through the solver, or
    the stochastic adjoint). Returns the per-member mean NLL ``(members,)``.

    ``variance_correction``: the sample variance s² of R replicas is noisy, and E[1/s²] =
    (R − 1)/((R − 3) σ²) for Gaussian replicas, so minimising the NLL with s² in place of σ²
    would settle on a variance (R − 1)/(R − 3) times too large. Scaling s² by that factor
    makes the expected loss's minimiser the true transition variance (needs R ≥ 4; the mean's
    own noise, σ²/R, adds a term that does not depend on the model's variance)."""
    import torchsde

    if variance_correction and replicas < 4:
        raise ValueError(f"replicas = {replicas}: the variance correction needs replicas ≥ 4")
    m, n, _ = x0.shape
    y0 = x0.repeat_interleave(replicas, dim=1).reshape(-1, 1)
    ts = torch.tensor([0.0, dt], dtype=y0.dtype)
    bm = None
    if bm_seed is not None:
        bm = torchsde.BrownianInterval(0.0, dt, size=y0.shape, dtype=y0.dtype, entropy=bm_seed)
    solve = torchsde.sdeint_adjoint if adjoint else torchsde.sdeint
    kwargs = {"adjoint_method": "euler"} if adjoint else {}
    y1 = solve(model, y0, ts, bm=bm, dt=dt / substeps, method="euler", **kwargs)[-1]
    y1 = y1.reshape(m, n, replicas)
    scale = (replicas - 1) / (replicas - 3) if variance_correction else 1.0
    mean, var = y1.mean(-1, keepdim=True), scale * y1.var(-1, keepdim=True) + 1e-8
    return (0.5 * torch.log(var) + 0.5 * (x1 - mean) ** 2 / var).mean((1, 2))


def em_nll(model: NeuralSDE, x0, x1, *, dt: float) -> torch.Tensor:
    """Negative log-likelihood of observed transitions x0 → x1 ``(members, n, 1)`` under one
    Euler–Maruyama step of the model, N(x0 + f_θ(x0) dt, g_φ(x0)² dt) (the local Gaussian
    pseudo-likelihood, in closed form: what :func:`transition_nll` estimates by simulation at
    ``substeps=1`` as ``replicas`` grows). Returns the per-member mean ``(members,)``."""
    var = model.diffusion(x0) ** 2 * dt
    return (0.5 * torch.log(var) + 0.5 * (x1 - x0 - model.drift(x0) * dt) ** 2 / var).mean((1, 2))


def fit_neural_sde(model: NeuralSDE, paths: torch.Tensor, *, dt: float, iterations: int, batch: int,
                   replicas: int = 16, substeps: int = 2, lr: float = 1e-2, generator=None) -> list[float]:
    """Fit each member to its own observed paths ``(n_obs + 1, members, n_paths)`` through
    torchsde: each Adam step (cosine schedule) takes ``batch`` observed transitions per member,
    simulates ``replicas`` Euler–Maruyama paths of ``substeps`` steps from each start with
    ``torchsde.sdeint``, and backpropagates the Gaussian likelihood of the observed end points
    under the simulated mean and variance (:func:`transition_nll`) through the solver.
    Returns the mean loss per iteration."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, iterations)
    x0_all = paths[:-1].permute(1, 0, 2).reshape(model.members, -1)
    x1_all = paths[1:].permute(1, 0, 2).reshape(model.members, -1)
    losses = []
    for _ in range(iterations):
        idx = torch.randint(0, x0_all.shape[1], (batch,), generator=generator)
        bm_seed = int(torch.randint(0, 2**31 - 1, (), generator=generator))  # reproducible Brownian paths
        loss = transition_nll(model, x0_all[:, idx, None], x1_all[:, idx, None], dt=dt, substeps=substeps,
                              replicas=replicas, bm_seed=bm_seed).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()) / model.members)
    return losses


def simulate(model, x0: torch.Tensor, *, t1: float, n_steps: int, seed: int = 0) -> torch.Tensor:
    """Paths of a (Neural) SDE with torchsde's Euler–Maruyama, ``x0 (members·n, 1)`` →
    X(t1) of the same shape (no gradients)."""
    import torchsde

    bm = torchsde.BrownianInterval(0.0, t1, size=x0.shape, dtype=x0.dtype, entropy=seed)
    with torch.no_grad():
        return torchsde.sdeint(model, x0, torch.tensor([0.0, t1], dtype=x0.dtype), bm=bm,
                               dt=t1 / n_steps, method="euler")[-1]


def coefficient_errors(model: NeuralSDE, truth, visited: torch.Tensor) -> tuple[list[float], list[float]]:
    """Relative L2 errors of each member's drift and diffusion against ``truth`` over the
    points it visited, ``visited (members, n)``: ‖f_θ − f‖/‖f‖ and ‖g_φ − g‖/‖g‖."""
    from dynbook.measure.fits import relative_error

    x = visited[..., None]
    with torch.no_grad():
        f, g = model.drift(x), model.diffusion(x)
        f0, g0 = truth.drift(x), truth.diffusion(x)
    members = range(x.shape[0])
    return ([relative_error(f[i], f0[i], norm="fro") for i in members],
            [relative_error(g[i], g0[i], norm="fro") for i in members])


def memory_vs_steps(model: NeuralSDE, x0, x1, steps, *, dt: float, replicas: int, device: str = "cpu") -> dict:
    """Peak bytes of one forward + backward of :func:`transition_nll` at each number of solver
    steps, backpropagating through torchsde's solver and with its stochastic adjoint (same
    Brownian path, seed 0), and the relative difference of their gradients."""
    from dynbook.measure.timing import peak_bytes

    out = {"steps": list(steps), "backprop_bytes": [], "adjoint_bytes": [], "grad_rel_err": []}
    for n in steps:
        grads = {}
        for adjoint in (False, True):
            def step():
                model.zero_grad()
                # a constant factor on the variance changes neither the memory nor the comparison
                transition_nll(model, x0, x1, dt=dt, substeps=n, replicas=replicas, adjoint=adjoint,
                               bm_seed=0, variance_correction=False).sum().backward()
            out["adjoint_bytes" if adjoint else "backprop_bytes"].append(peak_bytes(step, device=device))
            grads[adjoint] = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
        out["grad_rel_err"].append(float((grads[True] - grads[False]).norm() / grads[False].norm()))
    return out


# ----------------------------------------------------------------------------- the experiments


def gbm_orders(errors: dict) -> dict:
    """Fitted strong and weak orders (−slope of log error vs log steps, with intervals) of
    :func:`gbm_errors`' result, and whether each meets :data:`NOMINAL_ORDERS` (strong within
    0.2, weak within 0.3; SRK's weak order unchecked): ``methods[m] = {"strong", "weak", "ok",
    "expected"}``, ``ok`` (all of them), the check's ``detail`` and the table's ``rows``."""
    from dynbook.measure.fits import loglog_slope

    out = {}
    for m, (p_strong, p_weak) in NOMINAL_ORDERS.items():
        r = errors[m]
        strong = loglog_slope(r["steps"], r["strong"]).map(lambda v: -v)
        weak = loglog_slope(r["steps"], r["weak"]).map(lambda v: -v)
        ok = abs(strong.value - p_strong) <= 0.2 and (p_weak is None or abs(weak.value - p_weak) <= 0.3)
        out[m] = {"strong": strong, "weak": weak, "ok": ok, "expected": (p_strong, p_weak)}
    detail = "; ".join(f"{m}: strong {o['strong'].value:.2f} (expect {o['expected'][0]}), weak "
                       f"{o['weak'].value:.2f}" + (f" (expect {o['expected'][1]})" if o["expected"][1] else "")
                       for m, o in out.items())
    rows = [[m, o["expected"][0], o["strong"].value, f"[{o['strong'].lo:.2f}, {o['strong'].hi:.2f}]",
             o["expected"][1] or "—", o["weak"].value, f"[{o['weak'].lo:.2f}, {o['weak'].hi:.2f}]"]
            for m, o in out.items()]
    return {"methods": out, "ok": all(o["ok"] for o in out.values()), "detail": detail, "rows": rows}


def fit_experiment(*, replicates: int, n_paths: int, iterations: int, seed: int = 0, n_obs: int = 100,
                   dt: float = 0.02, hidden: int = 32, batch: int = 256, replicas: int = 16, substeps: int = 2,
                   lr: float = 4e-2, n_simulated: int = 2000, t_simulated: float = 3.0) -> dict:
    """Fit ``replicates`` Neural SDEs to OU(θ=2, μ=0.5, σ=0.5) paths and as many, the control,
    to double-well paths (σ = 0.5), all started uniformly in [−1, 2] and observed every ``dt``
    (:func:`fit_neural_sde`: through torchsde, ``replicas`` simulated paths of ``substeps``
    steps per observed transition, in float32 for speed; the errors are then taken in float64);
    generator seeded ``seed + 17``. ``drift_error``/``diffusion_error``
    per model against the OU coefficients on the points it visited (claim models first, then
    the controls); ``simulated_std``: the fitted OU models' spread after ``t_simulated`` from
    X = μ, simulated by torchsde, against ``stationary_std`` = σ/√(2θ)."""
    R = _checks.positive_int("replicates", replicates)
    _checks.positive_int("n_paths", n_paths)
    _checks.positive_int("iterations", iterations)
    ou, dwell = OU(2.0, 0.5, 0.5), DoubleWell(0.5)
    g = torch.Generator().manual_seed(seed + 17)
    x0 = 3 * torch.rand(R, n_paths, generator=g, dtype=torch.float64) - 1
    paths = torch.cat([ou.paths(x0, n_obs, dt, g), dwell.paths(x0, n_obs, dt, g, substeps=10)], 1)
    model = NeuralSDE(2 * R, hidden, generator=g).float()
    losses = fit_neural_sde(model, paths.float(), dt=dt, iterations=iterations, batch=batch, replicas=replicas,
                            substeps=substeps, lr=lr, generator=g)
    model = model.double()
    visited = paths.permute(1, 0, 2).reshape(2 * R, -1)
    ef, eg = coefficient_errors(model, ou, visited)
    x = simulate(model, torch.full((2 * R * n_simulated, 1), ou.mu, dtype=torch.float64), t1=t_simulated,
                 n_steps=round(t_simulated / dt), seed=seed)
    return {"truth": ou, "model": model, "paths": paths, "visited": visited, "losses": losses,
            "drift_error": ef, "diffusion_error": eg, "replicates": R, "seeds": [seed + 17],
            "settings": {"fit_batch": batch, "fit_replicas": replicas, "fit_substeps": substeps},
            "error": [max(a, b) for a, b in zip(ef[:R], eg[:R])],
            "error_control": [max(a, b) for a, b in zip(ef[R:], eg[R:])],
            "simulated_std": float(x.reshape(2 * R, -1)[:R].std(1).mean()),
            "stationary_std": ou.sigma / math.sqrt(2 * ou.theta)}


def memory_experiment(paths: torch.Tensor, *, n_transitions: int, steps=(2, 4, 8, 16), dt: float = 0.02,
                      replicas: int = 8, hidden: int = 32, seed: int = 0) -> dict:
    """:func:`memory_vs_steps` for a fresh Neural SDE on the first ``n_transitions`` observed
    transitions of the first path set of ``paths (n_obs + 1, members, n)``, on the CPU, with
    the log–log slopes of peak bytes against steps (``slope_adjoint``, ``slope_backprop``)
    and ``records`` ``{name: (value, unit)}``."""
    from dynbook.measure.fits import loglog_slope

    _checks.positive_int("n_transitions", n_transitions)
    model = NeuralSDE(1, hidden, generator=torch.Generator().manual_seed(seed)).double()
    x0 = paths[:-1, 0].reshape(1, -1, 1)[:, :n_transitions]
    x1 = paths[1:, 0].reshape(1, -1, 1)[:, :n_transitions]
    mem = memory_vs_steps(model, x0, x1, list(steps), dt=dt, replicas=replicas, device="cpu")
    mem["slope_adjoint"] = loglog_slope(mem["steps"], mem["adjoint_bytes"])
    mem["slope_backprop"] = loglog_slope(mem["steps"], mem["backprop_bytes"])
    rec = {}
    for n, a, b in zip(mem["steps"], mem["adjoint_bytes"], mem["backprop_bytes"]):
        rec[f"adjoint_bytes_{n}"], rec[f"backprop_bytes_{n}"] = (a, "bytes"), (b, "bytes")
    rec["adjoint_grad_rel_err_max_steps"] = (mem["grad_rel_err"][-1], "")
    rec["memory_max_steps"] = (mem["steps"][-1], "")
    rec["adjoint_memory_ratio_max_steps"] = (mem["adjoint_bytes"][-1] / mem["backprop_bytes"][-1], "")
    mem["records"] = rec
    return mem


# ----------------------------------------------------------------------------- figures


def plot_gbm(ax, errors: dict) -> None:
    """Strong (solid) and weak (dashed) errors of :func:`gbm_errors` against steps."""
    for i, (m, r) in enumerate(errors.items()):
        ax.loglog(r["steps"], r["strong"], "o-", c=f"C{i}", label=f"{m} strong")
        ax.loglog(r["steps"], r["weak"], "s--", c=f"C{i}", alpha=0.7, label=f"{m} weak")
    ax.set(xlabel="steps", ylabel="error at T = 1")
    ax.legend(ncol=2)


def plot_coefficients(axes, result: dict) -> None:
    """Drift (``axes[0]``) and diffusion (``axes[1]``) of :func:`fit_experiment`'s models on
    the visited range: claim models in colour, controls grey, the OU truth dashed black."""
    visited, model, R, ou = result["visited"], result["model"], result["replicates"], result["truth"]
    xs = torch.linspace(float(visited.min()), float(visited.max()), 200, dtype=torch.float64)
    xe = xs.reshape(1, -1, 1).expand(2 * R, -1, 1)
    with torch.no_grad():
        fd, gd = model.drift(xe)[..., 0], model.diffusion(xe)[..., 0]
    for r in range(2 * R):
        kw = {"c": f"C{r}"} if r < R else {"c": "gray", "alpha": 0.6}
        axes[0].plot(xs, fd[r], **kw)
        axes[1].plot(xs, gd[r], **kw)
    axes[0].plot(xs, ou.drift(xs), "k--")
    axes[1].plot(xs, ou.diffusion(xs), "k--")
    axes[0].set(xlabel="x", ylabel="drift f(x)")
    axes[1].set(xlabel="x", ylabel="diffusion g(x)", ylim=(0, 1))
