"""The neural-network ↔ cosmology duality of Krippendorf & Spannowsky (arXiv 2202.11104):
function-space predictions of heavy-ball training, a scalar field in an FLRW universe, and
the dictionary between them.

Glossary (code name → symbol; reduced Planck units, M_P = ``planck_mass``):

==================  =========================================================================
``ntk0``            Θ_0, the empirical NTK at initialization (a number, or an (N, N) matrix)
``power``           n, the loss ℓ(f) = (f − y)^n (n even: a potential with its minimum at y)
``friction``        γ = (1 − μ)/√η, the friction of the network's continuous limit
``mass``            c, the coefficient of f̈ (1 at leading order, (1 + μ)/2 at next order)
``hubble_rate``     H, with H² = (φ̇²/2 + V)/(3 M_P²) and Ḣ = −φ̇²/(2 M_P²); matched: 3H = γ/c
``vacuum_energy``   V_0 = 3 M_P² H² (leading order: M_P² γ²/3 = M_P² (1 − μ)²/(3η))
==================  =========================================================================

Every ODE is solved with torchdiffeq (dopri5) in the dtype of its inputs (float64 in the
chapter). The solvers integrate in units of one heavy-ball step (continuous time t = k √η),
so B configurations with different learning rates share one batched call and come back
aligned with the training steps k = 0 … K: one call covers a whole hyperparameter scan.
"""

from __future__ import annotations

import math

import numpy as np
import torch

RTOL, ATOL = 1e-8, 1e-10


def _check_power(power):
    p = torch.as_tensor(power)
    if not torch.all((p >= 2) & (p % 2 == 0)):
        raise ValueError(f"power={power!r} is not allowed: expected even integers >= 2 "
                         "(ℓ = (f − y)^n must have its minimum at y)")


def _check_positive(name, value, allow_zero=False):
    v = torch.as_tensor(value, dtype=torch.float64)
    bad = ~torch.isfinite(v) | (v < 0)
    if not allow_zero:
        bad |= v == 0
    if torch.any(bad):
        allowed = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name}={value!r} is not allowed: expected finite values {allowed}")


def _check_momentum(momentum):
    m = torch.as_tensor(momentum, dtype=torch.float64)
    if not torch.all((m >= 0) & (m < 1)):
        raise ValueError(f"momentum={momentum!r} is not allowed: expected values in [0, 1)")


# ----------------------------------------------------------------------------- the dictionary


def loss_terms(f, target, power):
    """ℓ, ℓ' and ℓ'' of ℓ(f) = (f − y)^n (elementwise; tensors broadcast)."""
    d = f - target
    return d ** power, power * d ** (power - 1), power * (power - 1) * d ** (power - 2)


def friction(lr, momentum):
    """γ = (1 − μ)/√η."""
    _check_positive("lr", lr)
    _check_momentum(momentum)
    return (1 - momentum) / lr ** 0.5


def _mass(momentum, convention):
    from dynbook.models.ntk import continuum

    return continuum(momentum, convention)[0]


def hubble_rate(lr, momentum, convention="leading"):
    """H = γ/(3c): the FLRW friction 3H equals the network's γ/c once c f̈ + γ ḟ + Θ_0 ℓ' = 0
    is divided by c (c = 1 at leading order, where H = γ/3)."""
    return friction(lr, momentum) / (3 * _mass(momentum, convention))


def vacuum_energy(lr, momentum, planck_mass=1.0, convention="leading"):
    """V_0 = 3 M_P² H²; at leading order M_P² (1 − μ)²/(3η), inversely proportional to η."""
    return vacuum_energy_of(friction(lr, momentum), momentum, planck_mass, convention)


def vacuum_energy_of(gamma, momentum, planck_mass=1.0, convention="leading"):
    """V_0 = 3 M_P² (γ/(3c))² = M_P² (γ/c)²/3 for a given (e.g. fitted) friction γ."""
    _check_positive("planck_mass", planck_mass)
    return planck_mass ** 2 * (gamma / _mass(momentum, convention)) ** 2 / 3


def energy_ratio(ntk0, loss0, lr, momentum, planck_mass=1.0, convention="leading"):
    """ρ_φ(0)/V_0 = (Θ_0/c) ℓ(f_0)/V_0, the field's energy at rest at the start (where it is
    largest) in units of the vacuum energy; at leading order 3η Θ_0 ℓ(f_0)/(M_P² (1 − μ)²).
    ≪ 1 means vacuum domination."""
    c = _mass(momentum, convention)
    return ntk0 / c * loss0 / vacuum_energy(lr, momentum, planck_mass, convention)


# ----------------------------------------------------------------------------- predictions


def _step_grid(n_steps, offset, like):
    """Integration grid in units of one step: s = 0, then k + offset for k = 0 … K."""
    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 1:
        raise ValueError(f"n_steps={n_steps!r} is not allowed: expected an integer >= 1")
    k = torch.arange(n_steps + 1, dtype=like.dtype, device=like.device) + offset
    return k if offset == 0 else torch.cat([k.new_zeros(1), k])


def _broadcast(*values, like):
    out = torch.broadcast_tensors(*(torch.as_tensor(v, dtype=like.dtype, device=like.device)
                                    for v in values))
    return [v.reshape(-1) for v in out]


def predict_output(ntk0, f0, target, power, lr, momentum, n_steps, *, convention="leading",
                   gamma=None, rtol=RTOL, atol=ATOL):
    """The network's prediction in the NTK limit: c f̈ + γ ḟ + Θ_0 ℓ'(f) = 0, f(0) = f_0, ḟ(0) = 0,
    read at the times of the heavy-ball steps k = 0 … K (see :func:`dynbook.models.ntk.continuum`
    for c and the time of step k under each ``convention``).

    All arguments broadcast to (B,); ``gamma`` overrides γ = (1 − μ)/√η (for fitting γ).
    Returns (K + 1, B).
    """
    from torchdiffeq import odeint

    from dynbook.models.ntk import continuum

    _check_power(power)
    _check_positive("lr", lr)
    _check_momentum(momentum)
    f0 = torch.as_tensor(f0, dtype=torch.float64) if not torch.is_tensor(f0) else f0
    gamma = friction(lr, momentum) if gamma is None else gamma
    ntk0, f0, target, power, lr, momentum, gamma = _broadcast(
        ntk0, f0, target, power, lr, momentum, gamma, like=f0)
    _check_positive("ntk0", ntk0, allow_zero=True)
    _check_positive("friction", gamma, allow_zero=True)
    mass, offset = continuum(momentum, convention)
    mass = torch.as_tensor(mass, dtype=f0.dtype, device=f0.device)
    h = lr.sqrt()  # one step of continuous time
    s = _step_grid(n_steps, offset, f0)

    def rhs(_, state):
        f, u = state
        force = loss_terms(f, target, power)[1]
        return h * u, h * (-(gamma * u) - ntk0 * force) / mass

    f, _ = odeint(rhs, (f0, torch.zeros_like(f0)), s, rtol=rtol, atol=atol, method="dopri5")
    return f if offset == 0 else f[1:]


def flrw(phi0, ntk0, target, power, vacuum, step_time, n_steps, *, offset=0.0, planck_mass=1.0,
         dphi0=0.0, rtol=RTOL, atol=ATOL):
    """A scalar field in a flat FLRW universe with V(φ) = Θ_0 ℓ(φ) + V_0:

        φ̈ + 3H φ̇ + V'(φ) = 0,   Ḣ = −φ̇²/(2 M_P²),   (ln a)˙ = H,

    started on the constraint H(0)² = (φ̇(0)²/2 + V(φ(0)))/(3 M_P²), which the evolution then
    preserves (:func:`constraint_violation` measures how well). Read at t = (k + offset) ·
    step_time, k = 0 … K. Arguments broadcast to (B,); returns a dict of (K + 1, B) tensors ``phi``,
    ``dphi``, ``hubble``, ``log_a`` and the (B,) parameters needed by the constraint.
    """
    from torchdiffeq import odeint

    _check_power(power)
    _check_positive("planck_mass", planck_mass)
    phi0 = torch.as_tensor(phi0, dtype=torch.float64) if not torch.is_tensor(phi0) else phi0
    phi0, ntk0, target, power, vacuum, h, dphi0 = _broadcast(
        phi0, ntk0, target, power, vacuum, step_time, dphi0, like=phi0)
    _check_positive("vacuum", vacuum)
    _check_positive("step_time", h)
    mp2 = planck_mass ** 2
    s = _step_grid(n_steps, offset, phi0)
    potential0 = ntk0 * loss_terms(phi0, target, power)[0] + vacuum
    h0 = torch.sqrt((dphi0 ** 2 / 2 + potential0) / (3 * mp2))

    def rhs(_, state):
        phi, dphi, hubble, _ = state
        force = ntk0 * loss_terms(phi, target, power)[1]
        return (h * dphi, h * (-3 * hubble * dphi - force), h * (-dphi ** 2 / (2 * mp2)),
                h * hubble)

    out = odeint(rhs, (phi0, dphi0, h0, torch.zeros_like(phi0)), s, rtol=rtol, atol=atol,
                 method="dopri5")
    phi, dphi, hubble, log_a = (x if offset == 0 else x[1:] for x in out)
    return {"phi": phi, "dphi": dphi, "hubble": hubble, "log_a": log_a, "vacuum": vacuum,
            "ntk0": ntk0, "target": target, "power": power, "planck_mass": planck_mass}


def flrw_of_network(ntk0, f0, target, power, lr, momentum, n_steps, *, planck_mass=1.0,
                    convention="leading", rtol=RTOL, atol=ATOL):
    """The FLRW dual of a heavy-ball run: φ(0) = f_0 at rest, V = (Θ_0/c) ℓ + V_0 with
    V_0 = 3 M_P² H², H = γ/(3c); read at the times of the steps k = 0 … K. Same arguments as
    :func:`predict_output`, broadcast to (B,); returns the :func:`flrw` dict."""
    from dynbook.models.ntk import continuum

    f0 = torch.as_tensor(f0, dtype=torch.float64) if not torch.is_tensor(f0) else f0
    lr, momentum = _broadcast(lr, momentum, like=f0)
    mass, offset = continuum(momentum, convention)
    return flrw(f0, ntk0 / mass, target, power,
                vacuum_energy(lr, momentum, planck_mass, convention), lr.sqrt(), n_steps,
                offset=offset, planck_mass=planck_mass, rtol=rtol, atol=atol)


def constraint_violation(sol: dict) -> torch.Tensor:
    """|3 M_P² H² − ρ| / ρ along an :func:`flrw` solution, ρ = φ̇²/2 + V(φ): (K + 1, B)."""
    rho = (sol["dphi"] ** 2 / 2 + sol["vacuum"]
           + sol["ntk0"] * loss_terms(sol["phi"], sol["target"], sol["power"])[0])
    return (3 * sol["planck_mass"] ** 2 * sol["hubble"] ** 2 - rho).abs() / rho


def relative_deviation(predicted, actual, *, over="max"):
    """|f_pred − f_actual| relative to the distance the actual output travelled, |f_K − f_0|.
    Trajectories are (K + 1, …), time first.

    ``over="end"`` compares at the last step (the source's Figure 3 metric); ``"max"`` takes
    the largest gap along the trajectory. A run that converges makes the end gap vanish
    whatever the dynamics were, so the chapter's verdicts use ``"max"``.
    """
    predicted, actual = torch.as_tensor(predicted), torch.as_tensor(actual)
    if predicted.shape != actual.shape:
        raise ValueError(f"predicted {tuple(predicted.shape)} and actual {tuple(actual.shape)} "
                         "trajectories must have the same shape")
    travel = (actual[-1] - actual[0]).abs()
    gap = (predicted - actual).abs()
    if over == "end":
        return gap[-1] / travel
    if over == "max":
        return gap.amax(dim=0) / travel
    raise ValueError(f"over={over!r} is not allowed: expected 'end' or 'max'")


# ----------------------------------------------------------------------------- Figure 2


def max_learning_rate(ntk0, f0, target, power, momentum, n_steps, *, planck_mass=1.0,
                      tolerance=0.05, convention="leading", lr_range=(1e-7, 1.0), iterations=12):
    """The largest η for which the FLRW field (H from the Friedmann equations) stays within
    ``tolerance`` of the network's prediction (H fixed at γ/(3c)) over ``n_steps`` steps:
    max_k |φ_k − f_k| ≤ tolerance · |f_K − f_0|. Bisection in log η, all B at once.

    Arguments broadcast to (B,); returns (B,) learning rates (an end of ``lr_range`` where the
    tolerance is met nowhere or everywhere in it).
    """
    _check_momentum(momentum)
    _check_positive("tolerance", tolerance)
    f0 = torch.as_tensor(f0, dtype=torch.float64)
    ntk0, f0, target, power, momentum = _broadcast(ntk0, f0, target, power, momentum, like=f0)
    lo = torch.full_like(f0, math.log(lr_range[0]))
    hi = torch.full_like(f0, math.log(lr_range[1]))

    def deviation(lr):
        f = predict_output(ntk0, f0, target, power, lr, momentum, n_steps, convention=convention,
                           rtol=1e-7, atol=1e-9)
        phi = flrw_of_network(ntk0, f0, target, power, lr, momentum, n_steps,
                              planck_mass=planck_mass, convention=convention, rtol=1e-7,
                              atol=1e-9)["phi"]
        return relative_deviation(phi, f, over="max")

    for _ in range(iterations):
        mid = (lo + hi) / 2
        ok = deviation(mid.exp()) <= tolerance
        lo, hi = torch.where(ok, mid, lo), torch.where(ok, hi, mid)
    return lo.exp()


# ----------------------------------------------------------------------------- Figure 3


def homogeneous_scan(configs, *, weight_stds, lr_momentum, powers, n_seeds, n_steps,
                     target_shift, x0=1.0, generator=None, device="cpu") -> dict:
    """Train homogeneous networks (one input x_0) over a hyperparameter grid and compare each
    run with the prediction of c f̈ + γ ḟ + Θ_0 ℓ'(f) = 0 under both continuum conventions.

    ``configs``: MLPConfigs (width, depth, activation, bias_std; their weight_std is ignored);
    per config, one vmapped ensemble covers weight_stds × lr_momentum × powers × seeds. Returns
    a dict of (R,) tensors over all R runs — ``width``, ``depth``, ``activation`` (index into
    the configs' activations, see ``activations``), ``weight_std``, ``lr``, ``momentum``,
    ``power``, ``ntk0``, ``ntk_change`` = (Θ_K − Θ_0)/Θ_0, ``deviation`` and ``deviation_end``
    (dicts by convention) — plus ``f`` and ``predicted`` (K + 1, R).
    """
    import itertools

    from dynbook.models.ntk import CONVENTIONS, train_ensemble

    x = torch.full((1, 1), float(x0), dtype=torch.float64, device=device)
    names = sorted({cfg.activation for cfg in configs})
    runs = []
    for cfg in configs:
        grid = list(itertools.product(weight_stds, lr_momentum, powers, range(n_seeds)))
        column = lambda pick: torch.tensor([pick(g) for g in grid], dtype=torch.float64)  # noqa: E731
        std, power = column(lambda g: g[0]), column(lambda g: g[2])
        lr, mu = column(lambda g: g[1][0]), column(lambda g: g[1][1])
        out = train_ensemble(cfg, x, weight_std=std, lr=lr, momentum=mu, power=power,
                             target_shift=target_shift, n_steps=n_steps, generator=generator)
        b = len(grid)
        out = {k: v.cpu() for k, v in out.items()}
        runs.append({
            "f": out["f"][..., 0], "f0": out["f0"][:, 0], "target": out["target"][:, 0],
            "ntk0": out["ntk0"][:, 0, 0], "ntk_end": out["ntk_end"][:, 0, 0],
            "weight_std": out["weight_std"], "lr": out["lr"], "momentum": out["momentum"],
            "power": out["power"], "width": torch.full((b,), cfg.width),
            "depth": torch.full((b,), cfg.depth),
            "activation": torch.full((b,), names.index(cfg.activation)),
        })
    res = {k: torch.cat([r[k] for r in runs], dim=-1) for k in runs[0]}
    res["ntk_change"] = (res.pop("ntk_end") - res["ntk0"]) / res["ntk0"]
    res["activations"] = names
    res["predicted"], res["deviation"], res["deviation_end"] = {}, {}, {}
    for conv in CONVENTIONS:
        pred = predict_output(res["ntk0"], res["f0"], res["target"], res["power"], res["lr"],
                              res["momentum"], n_steps, convention=conv)
        res["predicted"][conv] = pred
        res["deviation"][conv] = relative_deviation(pred, res["f"], over="max")
        res["deviation_end"][conv] = relative_deviation(pred, res["f"], over="end")
    return res


# ----------------------------------------------------------------------------- fitting γ


def fit_friction(observed, ntk0, f0, target, power, lr, momentum, *, convention="leading"):
    """Least-squares γ of c f̈ + γ ḟ + Θ_0 ℓ'(f) = 0 against observed trajectories.

    ``observed``: (K + 1, B) outputs at the heavy-ball steps; the other arguments broadcast to
    (B,) (η and μ only place the steps in time and set c). Fits log γ of each trajectory
    with scipy ``least_squares``, started from (1 − μ)/√η; the trajectories are independent,
    so the Jacobian is diagonal and one extra solve per iteration builds it. Returns (B,).
    """
    from scipy.optimize import least_squares
    from scipy.sparse import csr_matrix, eye, kron

    observed = torch.as_tensor(observed, dtype=torch.float64)
    k1, b = observed.shape
    ntk0, f0, target, power, lr, momentum = _broadcast(ntk0, f0, target, power, lr, momentum,
                                                       like=observed)
    guess = friction(lr, momentum)
    scale = (observed - observed[:1]).abs().amax(dim=0).clamp_min(1e-300)

    def residuals(log_gamma):
        gamma = torch.as_tensor(np.exp(log_gamma), dtype=torch.float64)
        f = predict_output(ntk0, f0, target, power, lr, momentum, k1 - 1, convention=convention,
                           gamma=gamma)
        return ((f - observed) / scale).T.reshape(-1).numpy()

    sparsity = kron(eye(b), csr_matrix(np.ones((k1, 1))))
    fit = least_squares(residuals, np.log(guess.numpy()), jac_sparsity=sparsity, method="trf",
                        diff_step=1e-6, xtol=1e-8, ftol=1e-10)
    return torch.as_tensor(np.exp(fit.x))


def fit_vacuum_energy(observed, ntk0, f0, target, power, lr, momentum, *, planck_mass=1.0):
    """Least-squares V_0 of the FLRW dual (leading order: φ(0) = f_0 at rest, V = Θ_0 ℓ + V_0,
    H from the Friedmann equations, t = k√η) against observed heavy-ball trajectories.

    Unlike :func:`fit_friction`, H is not fixed: where the field's own energy competes with
    V_0 the fitted V_0 absorbs it. ``observed``: (K + 1, B); the rest broadcast to (B,).
    Started from the dictionary's M_P²(1 − μ)²/(3η). Returns (B,).
    """
    from scipy.optimize import least_squares
    from scipy.sparse import csr_matrix, eye, kron

    observed = torch.as_tensor(observed, dtype=torch.float64)
    k1, b = observed.shape
    ntk0, f0, target, power, lr, momentum = _broadcast(ntk0, f0, target, power, lr, momentum,
                                                       like=observed)
    guess = vacuum_energy(lr, momentum, planck_mass)
    scale = (observed - observed[:1]).abs().amax(dim=0).clamp_min(1e-300)

    def residuals(log_v):
        v = torch.as_tensor(np.exp(log_v), dtype=torch.float64)
        phi = flrw(f0, ntk0, target, power, v, lr.sqrt(), k1 - 1, planck_mass=planck_mass)["phi"]
        return ((phi - observed) / scale).T.reshape(-1).numpy()

    sparsity = kron(eye(b), csr_matrix(np.ones((k1, 1))))
    fit = least_squares(residuals, np.log(guess.numpy()), jac_sparsity=sparsity, method="trf",
                        diff_step=1e-6, xtol=1e-8, ftol=1e-10)
    return torch.as_tensor(np.exp(fit.x))


# ----------------------------------------------------------------------------- perturbations


def ntk_modes(ntk: torch.Tensor):
    """Eigenvalues λ_1 ≥ λ_2 ≥ … and orthonormal eigenvectors (columns) of a symmetric Θ; each
    eigenvector's sign is fixed so that its entries sum to ≥ 0 (the top one is the near-uniform
    mean-field mode). Θ: (N, N) or a batch (B, N, N). Returns (λ: (…, N), V: (…, N, N))."""
    if ntk.ndim not in (2, 3) or ntk.shape[-1] != ntk.shape[-2]:
        raise ValueError(f"ntk must be a square (N, N) matrix or a (B, N, N) batch, got shape "
                         f"{tuple(ntk.shape)}")
    lam, vec = torch.linalg.eigh((ntk + ntk.transpose(-1, -2)) / 2)
    lam, vec = lam.flip(-1), vec.flip(-1)
    sign = torch.where(vec.sum(-2, keepdim=True) < 0, -1.0, 1.0).to(vec)
    return lam, vec * sign


def _mode_setup(f0, power, lr, momentum, n_steps, convention):
    from dynbook.models.ntk import continuum

    _check_power(power)
    _check_positive("lr", lr)
    _check_momentum(momentum)
    mass, offset = continuum(momentum, convention)
    return friction(lr, momentum), mass, lr ** 0.5, _step_grid(n_steps, offset, f0), offset


def _batched(ntk0, f0, target, power):
    """(N, N), (N,) … or (B, N, N), (B, N) …: → the batched forms and whether to squeeze."""
    single = ntk0.ndim == 2
    if single:
        ntk0, f0 = ntk0[None], f0[None]
    target = torch.as_tensor(target, dtype=f0.dtype, device=f0.device).expand_as(f0)
    power = torch.as_tensor(power, dtype=f0.dtype, device=f0.device).reshape(-1, 1)
    if power.shape[0] not in (1, f0.shape[0]):
        raise ValueError(f"power has {power.shape[0]} entries for a batch of {f0.shape[0]}")
    return ntk0, f0, target, power, single


def predict_function(ntk0, f0, target, power, lr, momentum, n_steps, *, convention="leading",
                     rtol=RTOL, atol=ATOL):
    """The frozen-kernel prediction for N training inputs and the loss L = mean_i ℓ(f_i):

        c f̈ + γ ḟ + Θ_0 ℓ'(f)/N = 0,   f: (N,), Θ_0: (N, N);   returns (K + 1, N).

    A batch (Θ_0: (B, N, N), f_0: (B, N), power a number or (B,)) gives (K + 1, B, N).
    """
    from torchdiffeq import odeint

    gamma, mass, h, s, offset = _mode_setup(f0, power, lr, momentum, n_steps, convention)
    ntk0, f0, target, power, single = _batched(ntk0, f0, target, power)
    n = f0.shape[-1]

    def rhs(_, state):
        f, u = state
        force = torch.einsum("bij,bj->bi", ntk0, loss_terms(f, target, power)[1]) / n
        return h * u, h * (-(gamma * u) - force) / mass

    f, _ = odeint(rhs, (f0, torch.zeros_like(f0)), s, rtol=rtol, atol=atol, method="dopri5")
    f = f if offset == 0 else f[1:]
    return f[:, 0] if single else f


def predict_modes(ntk0, f0, target, power, lr, momentum, n_steps, *, convention="leading",
                  kernel_scale=1.0, rtol=RTOL, atol=ATOL):
    """The mean-field + perturbation equations in the eigenbasis of Θ_0 = V diag(λ) Vᵀ.

    Modes g = Vᵀ f; the mean field is f̄ = g_1 v_1 and the perturbation δf = Σ_{i≥2} g_i v_i.
    The mean mode ignores δf; the others keep ℓ'(f) to first order in δf:

        c g̈_1 + γ ġ_1 + (λ_1/N) v_1ᵀ ℓ'(f̄) = 0
        c g̈_i + γ ġ_i + (λ_i/N) v_iᵀ [ℓ'(f̄) + ℓ''(f̄) ⊙ δf] = 0,   i ≥ 2

    (exact for n = 2, where ℓ' is linear). ``kernel_scale`` multiplies every λ (a wrong
    kernel, for negative controls). Returns (g: (K + 1, N), λ: (N,), V: (N, N)), or with a
    batch (Θ_0: (B, N, N)) (K + 1, B, N), (B, N), (B, N, N).
    """
    from torchdiffeq import odeint

    gamma, mass, h, s, offset = _mode_setup(f0, power, lr, momentum, n_steps, convention)
    _check_positive("kernel_scale", kernel_scale)
    ntk0, f0, target, power, single = _batched(ntk0, f0, target, power)
    lam, vec = ntk_modes(ntk0)
    n = f0.shape[-1]
    g0 = torch.einsum("bji,bj->bi", vec, f0)
    rate = kernel_scale * lam / n

    def rhs(_, state):
        g, u = state
        mean = g[:, :1] * vec[:, :, 0]
        pert = torch.einsum("bij,bj->bi", vec[:, :, 1:], g[:, 1:])
        _, d1, d2 = loss_terms(mean, target, power)
        force = torch.einsum("bji,bj->bi", vec, d1)
        force = torch.cat([force[:, :1], force[:, 1:]
                           + torch.einsum("bji,bj->bi", vec[:, :, 1:], d2 * pert)], dim=1)
        return h * u, h * (-(gamma * u) - rate * force) / mass

    g, _ = odeint(rhs, (g0, torch.zeros_like(g0)), s, rtol=rtol, atol=atol, method="dopri5")
    g = g if offset == 0 else g[1:]
    if single:
        return g[:, 0], lam[0], vec[0]
    return g, lam, vec


def mode_analysis(run: dict, lr, momentum, n_steps, *, control_kernel_scale=0.1) -> dict:
    """Compare trained networks with the mean-field and perturbation equations, mode by mode
    (the source's Figure 5), for both continuum conventions.

    ``run``: the dict of :func:`dynbook.models.ntk.train_ensemble` for B networks on N inputs (``f``
    (K + 1, B, N), ``f0``, ``target`` (B, N), ``ntk0``, ``ntk_end`` (B, N, N), ``power`` (B,)).
    Actual modes are g = Vᵀ f in the eigenbasis of each network's Θ_0. Returns (B,) tensors

    * ``mean_dev[conv]``: max_k |g_1,pred − g_1| / |Δg_1| (Δ: end minus start), and
      ``mean_dev_full``: the same with the full frozen-kernel equation (next order);
      ``mean_dev_control``: next order with every λ times ``control_kernel_scale``;
    * ``resolution``: η λ_1 ℓ''(f̄_0)/N, how coarsely the steps resolve the mean motion;
    * ``ntk_change``: ‖Θ_K − Θ_0‖/‖Θ_0‖;

    and (B, N − 1) tensors over the perturbation modes i ≥ 2: ``lam_rel`` λ_i/λ_1,
    ``motion`` |Δg_i|/|g_i(0)| (each mode against its own starting amplitude),
    ``motion_pred`` the same predicted (next order), ``unexplained``
    |Δg_i,pred − Δg_i|/|Δg_i| (1 when the equations predict no motion at all),
    ``motion_vs_mean`` |Δg_i|/|Δg_1|; plus ``g`` and ``g_pred`` (K + 1, B, N).
    """
    from dynbook.models.ntk import CONVENTIONS

    f, f0, target, ntk0, power = run["f"], run["f0"], run["target"], run["ntk0"], run["power"]
    lam, vec = ntk_modes(ntk0)
    g = torch.einsum("bji,kbj->kbi", vec, f)
    travel1 = (g[-1, :, 0] - g[0, :, 0]).abs()
    pred = {conv: predict_modes(ntk0, f0, target, power, lr, momentum, n_steps,
                                convention=conv)[0] for conv in CONVENTIONS}
    ctrl = predict_modes(ntk0, f0, target, power, lr, momentum, n_steps, convention="next",
                         kernel_scale=control_kernel_scale)[0]
    full = torch.einsum("bji,kbj->kbi", vec, predict_function(
        ntk0, f0, target, power, lr, momentum, n_steps, convention="next"))

    def mean_gap(p):
        return (p[:, :, 0] - g[:, :, 0]).abs().amax(0) / travel1

    n = f0.shape[-1]
    mean0 = g[0, :, :1] * vec[:, :, 0]
    d2 = loss_terms(mean0, target, power[:, None])[2].mean(-1)
    moved = g[-1, :, 1:] - g[0, :, 1:]
    moved_pred = pred["next"][-1, :, 1:] - pred["next"][0, :, 1:]
    start = g[0, :, 1:].abs()
    return {
        "lam_rel": lam[:, 1:] / lam[:, :1],
        "mean_dev": {conv: mean_gap(p) for conv, p in pred.items()},
        "mean_dev_full": mean_gap(full),
        "mean_dev_control": mean_gap(ctrl),
        "resolution": torch.as_tensor(lr, dtype=f.dtype) * lam[:, 0] / n * d2,
        "ntk_change": torch.linalg.matrix_norm(run["ntk_end"] - ntk0) / torch.linalg.matrix_norm(ntk0),
        "motion": moved.abs() / start,
        "motion_pred": moved_pred.abs() / start,
        "unexplained": (moved_pred - moved).abs() / moved.abs(),
        "motion_vs_mean": moved.abs() / travel1[:, None],
        "g": g, "g_pred": pred["next"], "g_pred_leading": pred["leading"],
    }


__all__ = [
    "loss_terms", "friction", "hubble_rate", "vacuum_energy", "vacuum_energy_of", "energy_ratio",
    "predict_output", "flrw", "flrw_of_network", "constraint_violation", "relative_deviation",
    "max_learning_rate", "homogeneous_scan", "fit_friction", "fit_vacuum_energy", "ntk_modes",
    "predict_function", "predict_modes", "mode_analysis",
]
