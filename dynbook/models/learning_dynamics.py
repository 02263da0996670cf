"""Training as a dynamical system: gradient descent against gradient flow, the neural tangent
kernel at initialisation and during training, convergence along kernel eigenvectors, SGD as
an Ornstein–Uhlenbeck process, and the edge of stability.

Glossary (code name → symbol):

===================  ========================================================================
``lr``               η, the step size; one step is η units of flow time
``ntk``              Θ(x, x') = ∇_θ f(x)·∇_θ f(x') (:func:`dynbook.models.ntk.empirical_ntk`)
``infinite_ntk``     Θ_∞, the width → ∞ limit of a one-hidden-layer network (closed form,
                     :func:`dynbook.models.ntk.infinite_ntk`)
``parametrization``  "ntk": f = n^{-1/2} Σ v_j φ(·); "mean_field": f = n^{-1} Σ v_j φ(·)
``temperature``      η/B, step size over batch size
``sharpness``        λ_max of the Hessian of the loss, by power iteration on Hessian–vector
                     products
===================  ========================================================================

The empirical NTK and the NTK-parametrised networks come from :mod:`dynbook.models.ntk`, the
heavy-ball limit from :mod:`dynbook.models.heavy_ball`; this module adds what the chapter on
learning dynamics needs beside them.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Callable

import numpy as np
import torch
from torch.func import grad, jvp, vmap

from dynbook import _checks
from dynbook.measure import fits
from dynbook.models import ntk as ntk_mod
from dynbook.models.ntk import infinite_ntk
from dynbook.models.heavy_ball import heavy_ball_flat

PARAMETRIZATIONS = {"ntk": 0.5, "mean_field": 1.0}  # the exponent a of f = n^{-a} Σ v_j φ
ACTIVATIONS = {"tanh": torch.tanh, "relu": torch.relu, "erf": torch.erf}


# ----------------------------------------------------------------------------- GD and its flow


def gradient_flow(loss: Callable, theta0: torch.Tensor, t: torch.Tensor, *, rtol=1e-10,
                  atol=1e-12) -> torch.Tensor:
    """θ̇ = −∇L(θ) solved with torchdiffeq (dopri5): θ_0: (P,), t: (T,) → (T, P)."""
    from torchdiffeq import odeint

    g = grad(loss)
    return odeint(lambda _, th: -g(th), theta0, t, rtol=rtol, atol=atol, method="dopri5")


def gd_flow_gap(loss: Callable, theta0: torch.Tensor, *, lrs, t_end: float) -> dict:
    """max_k ‖θ_k − θ(kη)‖ between gradient descent at each η and the gradient flow up to
    ``t_end``, with the fitted order in η (expected 1): {"lrs", "gaps", "order"}."""
    _checks.positive("t_end", t_end)
    lrs = sorted((float(v) for v in lrs), reverse=True)
    gaps = []
    for lr in lrs:
        n = max(1, round(t_end / lr))
        gd = heavy_ball_flat(loss, theta0, lr=lr, momentum=0.0, n_steps=n)
        t = torch.arange(n + 1, dtype=theta0.dtype) * lr
        gaps.append((gd - gradient_flow(loss, theta0, t)).norm(dim=1).max().item())
    return {"lrs": lrs, "gaps": gaps, "order": fits.loglog_slope(lrs, gaps)}


# ----------------------------------------------------------------------------- the NTK


def circle_inputs(n: int) -> torch.Tensor:
    """n points on the unit circle, (n, 2) float64: fixed inputs for kernel studies."""
    a = torch.arange(n, dtype=torch.float64) * 2 * math.pi / n + 0.3
    return torch.stack([torch.cos(a), torch.sin(a)], dim=1)


def ntk_width_study(widths, *, n_seeds: int, x: torch.Tensor, activations=("relu", "erf"),
                    weight_std: float = 1.0, bias_std: float = 0.1, seed: int = 0) -> dict:
    """Empirical NTKs at initialisation of ``n_seeds`` one-hidden-layer networks per width
    (:func:`dynbook.models.ntk.ensemble_ntk`) on fixed inputs x: (N, 2).

    Per activation: ``spread`` (per width) ‖std over seeds of Θ‖_F/‖Θ_∞‖_F and
    ``output_spread`` (the same for f_0(x): a Gaussian process, which does not concentrate);
    their fitted exponents in the width; ``error``: per seed ‖Θ − Θ_∞‖_F/‖Θ_∞‖_F at the
    widest width; ``swapped``: the same against the other activation's Θ_∞ (a control);
    ``mean_error``: the seed-averaged kernel's error."""
    _checks.positive_int("n_seeds", n_seeds, minimum=2)
    out = {}
    for a, act in enumerate(activations):
        gen = ntk_mod.experiment_generator(seed, 20 + a)
        limit = infinite_ntk(x, activation=act, weight_std=weight_std, bias_std=bias_std)
        other = infinite_ntk(x, activation=[v for v in activations if v != act][0],
                             weight_std=weight_std, bias_std=bias_std)
        spread, out_spread, kernels = [], [], None
        for width in widths:
            cfg = ntk_mod.MLPConfig(width=width, depth=1, activation=act,
                                    weight_std=weight_std, bias_std=bias_std, d_in=x.shape[1])
            params = ntk_mod.init_params(cfg, n_seeds, generator=gen)
            kernels = ntk_mod.ensemble_ntk(cfg, params, x)
            f0 = vmap(lambda p: ntk_mod.network(cfg)(p, x))(params)
            spread.append((kernels.std(0).norm() / limit.norm()).item())
            out_spread.append((f0.std(0).norm() / f0.pow(2).mean(0).sqrt().norm()).item())
        out[act] = {
            "spread": spread, "output_spread": out_spread, "limit": limit,
            "exponent": fits.loglog_slope(widths, spread),
            "output_exponent": fits.loglog_slope(widths, out_spread),
            "error": [fits.relative_error(k, limit, norm="fro") for k in kernels],
            "swapped": [fits.relative_error(k, other, norm="fro") for k in kernels],
            "mean_error": fits.relative_error(kernels.mean(0), limit, norm="fro"),
            "widest": kernels}
    return out


# ----------------------------------------------------------------------------- lazy training


def two_layer(params: dict, x: torch.Tensor, *, parametrization: str = "ntk",
              activation: str = "tanh") -> torch.Tensor:
    """f(x) = n^{-a} Σ_j v_j φ(w_j·x/√d + b_j), a = ½ (NTK) or 1 (mean field);
    params {"W": (n, d), "b": (n,), "v": (n,)}, x: (N, d) → (N,)."""
    w, b, v = params["W"], params["b"], params["v"]
    h = ACTIVATIONS[activation](x @ w.T / math.sqrt(w.shape[-1]) + b)
    return h @ v / w.shape[0] ** PARAMETRIZATIONS[parametrization]


_DERIVATIVES = {"tanh": lambda z: 1 - torch.tanh(z) ** 2, "relu": lambda z: (z > 0).to(z.dtype),
                "erf": lambda z: 2 / math.sqrt(math.pi) * torch.exp(-z ** 2)}


def _two_layer_step(params, x_all, n, y, parametrization, activation):
    """Outputs f(x_all) (B, M) of an ensemble of :func:`two_layer` networks and the gradient of
    L = (1/2N) Σ_{i<N} (f(x_i) − y_i)² by hand (vmapped autograd costs ~10× on a CPU)."""
    w, b, v = params["W"], params["b"], params["v"]
    c = w.shape[1] ** -PARAMETRIZATIONS[parametrization]
    z = torch.einsum("md,bjd->bmj", x_all, w) / math.sqrt(w.shape[2]) + b[:, None, :]
    h = ACTIVATIONS[activation](z)
    f = c * torch.einsum("bmj,bj->bm", h, v)
    r = (f[:, :n] - y) / n
    dz = c * r[:, :, None] * v[:, None, :] * _DERIVATIVES[activation](z[:, :n])
    grads = {"W": torch.einsum("bij,id->bjd", dz, x_all[:n]) / math.sqrt(w.shape[2]),
             "b": dz.sum(1), "v": c * torch.einsum("bij,bi->bj", h[:, :n], r)}
    return f, grads


def lazy_training(width: int, *, x_train, y_train, x_test, lr: float, n_steps: int,
                  n_seeds: int, parametrization: str = "ntk", activation: str = "tanh",
                  seed: int = 0, every: int = 1) -> dict:
    """``n_seeds`` networks of :func:`two_layer` trained by full-batch GD on
    L = (1/2N) Σ (f(x_i) − y_i)², vmapped, beside their linearisation at initialisation
    (f_lin evolves by Θ_0: f_{k+1} = f_k − (η/N) Θ_0(·, X)(f_k(X) − y)).

    The step is η·n^{2a−1} so that both parametrizations move the function at O(1) speed.
    Returns per seed ``kernel_change`` ‖Θ_K − Θ_0‖_F/‖Θ_0‖_F on the training inputs,
    ``gap`` max_k ‖f_k − f_lin,k‖/‖f_0(X) − y‖ over training and test inputs, and
    ``residual`` (K/every + 1, B, N) of the network, ``ntk0`` (B, N, N), ``step`` (η used)."""
    _checks.one_of("parametrization", parametrization, PARAMETRIZATIONS)
    _checks.positive_int("width", width)
    _checks.positive_int("n_steps", n_steps)
    gen = torch.Generator().manual_seed(1000 * seed + 31 + width)
    d = x_train.shape[1]
    params = {"W": torch.randn(n_seeds, width, d, generator=gen, dtype=torch.float64),
              "b": torch.randn(n_seeds, width, generator=gen, dtype=torch.float64),
              "v": torch.randn(n_seeds, width, generator=gen, dtype=torch.float64)}
    fn = partial(two_layer, parametrization=parametrization, activation=activation)
    x_all = torch.cat([x_train, x_test])
    n = x_train.shape[0]
    step = lr * width ** (2 * PARAMETRIZATIONS[parametrization] - 1)
    kernel = vmap(lambda p: ntk_mod.empirical_ntk(fn, p, x_all, x_train))
    ntk0 = kernel(params)
    f_lin = vmap(lambda p: fn(p, x_all))(params)
    scale = (f_lin[:, :n] - y_train).norm(dim=1)
    gap = torch.zeros(n_seeds, dtype=torch.float64)
    residuals = []
    for k in range(n_steps + 1):
        f, grads = _two_layer_step(params, x_all, n, y_train, parametrization, activation)
        gap = torch.maximum(gap, (f - f_lin).norm(dim=1) / scale)
        if k % every == 0:
            residuals.append(f[:, :n] - y_train)
        if k == n_steps:
            break
        params = {name: p - step * grads[name] for name, p in params.items()}
        f_lin = f_lin - step / n * torch.einsum("bij,bj->bi", ntk0, f_lin[:, :n] - y_train)
    ntk_end = kernel(params)
    change = (ntk_end[:, :n] - ntk0[:, :n]).flatten(1).norm(dim=1) / \
        ntk0[:, :n].flatten(1).norm(dim=1)
    return {"kernel_change": change.tolist(), "gap": gap.tolist(),
            "residual": torch.stack(residuals), "ntk0": ntk0[:, :n], "step": step,
            "every": every}


def width_study(widths, *, parametrizations=("ntk", "mean_field"), **kw) -> dict:
    """:func:`lazy_training` at each width and parametrization, with the fitted exponents of
    the seed-mean kernel change and linearisation gap in the width:
    {par: {"runs": [...], "change_exponent", "gap_exponent", "change", "gap"}}."""
    out = {}
    for par in parametrizations:
        runs = [lazy_training(w, parametrization=par, **kw) for w in widths]
        change = [float(np.mean(r["kernel_change"])) for r in runs]
        gap = [float(np.mean(r["gap"])) for r in runs]
        out[par] = {"runs": runs, "change": change, "gap": gap,
                    "change_exponent": fits.loglog_slope(widths, change),
                    "gap_exponent": fits.loglog_slope(widths, gap)}
    return out


def eigen_rates(run: dict, *, n_modes: int, floor: float = 0.05,
                min_share: float = 0.1) -> dict:
    """Decay rates of the training residual along the eigenvectors of Θ_0 (one
    :func:`lazy_training` run): per seed, p_i(k) = e_iᵀ r_k for the top ``n_modes``
    eigenvectors, the rate = −slope of log|p_i| per unit time (k η) fitted while
    |p_i| > floor·|p_i(0)|, against the prediction of the linearised model,
    −ln|1 − ηλ_i/N|/η → λ_i/N as η → 0 (λ_i: Θ_0's eigenvalue). Returns
    ``measured`` and ``predicted`` (B, n_modes) and per seed the log-log ``slope`` of
    measured against predicted rates (expected 1) and ``log_ratio``, the mean |log| of
    their ratio over the modes that carry at least ``min_share`` of ‖r_0‖ (a mode with almost
    no initial residual shows only its coupling to the others)."""
    res, ntk0 = run["residual"], run["ntk0"]
    n = ntk0.shape[-1]
    lam, vec = torch.linalg.eigh(ntk0)
    lam, vec = lam.flip(-1)[:, :n_modes], vec.flip(-1)[..., :n_modes]
    proj = torch.einsum("kbn,bnm->kbm", res, vec).abs()
    t = torch.arange(res.shape[0], dtype=torch.float64) * run["step"] * run["every"]
    measured = torch.zeros_like(lam)
    for b in range(lam.shape[0]):
        for i in range(n_modes):
            below = torch.nonzero(proj[:, b, i] <= floor * proj[0, b, i])
            end = max(3, below[0, 0].item() if len(below) else len(t))
            tt, lp = t[:end], torch.log(proj[:end, b, i])
            slope = ((tt - tt.mean()) * (lp - lp.mean())).sum() / (tt - tt.mean()).pow(2).sum()
            measured[b, i] = -slope
    predicted = -torch.log((1 - run["step"] * lam / n).abs()) / run["step"]
    slopes = [fits.loglog_fit(p.numpy(), m.clamp_min(1e-12).numpy())[0]
              for p, m in zip(predicted, measured)]
    share = proj[0] / res[0].norm(dim=1, keepdim=True)
    err = (measured.clamp_min(1e-12) / predicted).log().abs()
    log_ratio = (err * (share >= min_share)).sum(1) / (share >= min_share).sum(1)
    return {"measured": measured, "predicted": predicted, "slope": slopes,
            "log_ratio": log_ratio.tolist(), "share": share}


def eigen_rate_study(study: dict, widths, *, n_modes: int) -> dict:
    """:func:`eigen_rates` of every run of a :func:`width_study`, per parametrization:
    ``error`` (per width) the median over seeds of ``log_ratio``, its fitted ``exponent`` in
    the width, and ``widest``, the widest run's :func:`eigen_rates`. In the NTK parametrization
    the kernel moves by O(n^{-1/2}) of itself (or less) over training and an eigenvalue by at
    most the kernel's movement (Weyl), so the error falls at least as n^{-1/2}; in the
    mean-field parametrization the kernel moves by O(1)."""
    out = {}
    for par, r in study.items():
        rates = [eigen_rates(run, n_modes=n_modes) for run in r["runs"]]
        error = [float(np.median(v["log_ratio"])) for v in rates]
        out[par] = {"error": error, "exponent": fits.loglog_slope(widths, error),
                    "widest": rates[-1]}
    return out


# ----------------------------------------------------------------------------- SGD as an SDE


def regression_problem(n_features: int, n_data: int, *, noise: float, seed: int) -> dict:
    """Linear regression with Gaussian inputs of variances spaced in [1, 2] and targets
    y = x·w* + noise·ε: returns X (N, d), y (N,), the minimiser w_min, the Hessian H = XᵀX/N
    and the one-sample gradient-noise covariance C at w_min, (1/N) Σ g_i g_iᵀ."""
    _checks.positive_int("n_features", n_features)
    _checks.positive_int("n_data", n_data, minimum=n_features + 1)
    _checks.positive("noise", noise)
    gen = torch.Generator().manual_seed(1000 * seed + 41)
    scales = torch.linspace(1.0, 2.0, n_features, dtype=torch.float64).sqrt()
    x = torch.randn(n_data, n_features, generator=gen, dtype=torch.float64) * scales
    y = x @ torch.randn(n_features, generator=gen, dtype=torch.float64) + \
        noise * torch.randn(n_data, generator=gen, dtype=torch.float64)
    w_min = torch.linalg.lstsq(x, y[:, None]).solution[:, 0]
    g = x * (x @ w_min - y)[:, None]
    return {"X": x, "y": y, "w_min": w_min, "H": x.T @ x / n_data, "C": g.T @ g / n_data}


def ou_excess_loss(H: torch.Tensor, C: torch.Tensor, temperature: float) -> float:
    """The Ornstein–Uhlenbeck prediction of the stationary excess loss E[L] − L_min of SGD:
    dδ = −Hδ dt + √(η C/B) dW has covariance S with HS + SH = (η/B) C; E[L] − L_min = ½ tr(HS)."""
    from scipy.linalg import solve_continuous_lyapunov

    _checks.positive("temperature", temperature)
    s = solve_continuous_lyapunov(H.numpy(), temperature * C.numpy())
    return 0.5 * float(np.trace(H.numpy() @ s))


def ou_tolerance(lrs, batches, *, n_features: int, n_data: int,
                 variance_max: float = 2.0) -> float:
    """How far SGD's stationary excess loss may lie from the OU prediction on a sweep, from the
    terms the OU limit drops. For Gaussian inputs the stationary second moment S of SGD (batches
    with replacement) solves exactly HS + SH = ηHSH + (η/B)(HSH + tr(HS)H) + (η/B)C (Isserlis:
    E[xxᵀSxxᵀ] = 2HSH + tr(HS)H); the OU keeps the last term. Relative to HS the dropped terms
    are at most x = ηλ_max(½ + (d + 1)/(2B)) (in 1-D the exact answer is the OU one over 1 − x),
    so the ratio lies within 1/(1 − x) − 1 of 1 at the worst (η, B) of the sweep. λ_max(H) is
    bounded by the largest feature variance times the Marchenko–Pastur edge (1 + √(d/N))²."""
    _checks.positive_int("n_features", n_features)
    _checks.positive_int("n_data", n_data)
    lam = variance_max * (1 + math.sqrt(n_features / n_data)) ** 2
    x = max(lr * lam * (0.5 + (n_features + 1) / (2 * b)) for lr in lrs for b in batches)
    if x >= 1:
        raise ValueError(f"lrs={list(lrs)!r} with batches={list(batches)!r} are not allowed: the "
                         f"OU corrections reach {x:.2f} ≥ 1 (far from the continuous limit)")
    return x / (1 - x)


def sgd_excess_loss(pb: dict, *, lr: float, batch: int, n_chains: int, n_steps: int,
                    burn_in: int, seed: int) -> float:
    """Stationary E[L(w)] − L_min of SGD (batches drawn with replacement) on ``pb``, averaged
    over ``n_chains`` parallel chains started at w_min and the steps after ``burn_in``."""
    _checks.positive("lr", lr)
    _checks.positive_int("batch", batch)
    _checks.positive_int("n_steps", n_steps, minimum=burn_in + 1)
    gen = torch.Generator().manual_seed(1000 * seed + 43 + batch)
    x, y, h = pb["X"], pb["y"], pb["H"]
    w = pb["w_min"].expand(n_chains, -1).clone()
    total = torch.zeros((), dtype=torch.float64)
    for k in range(n_steps):
        idx = torch.randint(x.shape[0], (n_chains, batch), generator=gen)
        xb, yb = x[idx], y[idx]
        resid = torch.einsum("cbd,cd->cb", xb, w) - yb
        w = w - lr * torch.einsum("cbd,cb->cd", xb, resid) / batch
        if k >= burn_in:
            d = w - pb["w_min"]
            total += 0.5 * torch.einsum("cd,de,ce->c", d, h, d).mean()
    return total.item() / (n_steps - burn_in)


def ou_study(*, lrs, batches, n_features: int, n_data: int, noise: float, n_chains: int,
             relax_times: float, seeds, control_lr_factor: float = 1.0) -> dict:
    """Measured stationary excess loss against the OU prediction over the (η, B) grid, per
    seed; and the same at η = ``control_lr_factor``/λ_max(H) with the largest batch (the
    control: there the discrete chain is far from its continuous limit). Steps per run:
    ``relax_times``/(η λ_min), half of them burn-in. Returns ``ratio`` (seeds × grid),
    ``control`` (seeds), ``temperature``, ``measured``, ``predicted`` (grid, first seed) and
    the fitted ``exponent`` of the measured excess loss in η/B."""
    ratios, control, first = [], [], None
    for seed in seeds:
        pb = regression_problem(n_features, n_data, noise=noise, seed=seed)
        lam = torch.linalg.eigvalsh(pb["H"])
        row, meas, pred, temp = [], [], [], []
        for lr in lrs:
            for b in batches:
                steps = max(100, round(relax_times / (lr * lam[0].item())))
                m = sgd_excess_loss(pb, lr=lr, batch=b, n_chains=n_chains, n_steps=steps,
                                    burn_in=steps // 2, seed=seed)
                p = ou_excess_loss(pb["H"], pb["C"], lr / b)
                row.append(m / p)
                meas.append(m), pred.append(p), temp.append(lr / b)
        ratios.append(row)
        lr_c = control_lr_factor / lam[-1].item()
        steps = max(100, round(relax_times / (lr_c * lam[0].item())))
        b = batches[-1]
        m = sgd_excess_loss(pb, lr=lr_c, batch=b, n_chains=n_chains, n_steps=steps,
                            burn_in=steps // 2, seed=seed)
        control.append(m / ou_excess_loss(pb["H"], pb["C"], lr_c / b))
        if first is None:
            first = {"temperature": temp, "measured": meas, "predicted": pred}
    return {"ratio": ratios, "control": control, **first,
            "exponent": fits.loglog_slope(first["temperature"], first["measured"])}


# ----------------------------------------------------------------------------- edge of stability


def hvp(loss: Callable, theta: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The Hessian–vector product ∇²L(θ) v, forward-over-reverse."""
    return jvp(grad(loss), (theta,), (v,))[1]


def sharpness(loss: Callable, theta: torch.Tensor, *, n_iter: int = 20, v0=None,
              generator=None) -> tuple[float, torch.Tensor]:
    """λ_max of ∇²L(θ) by power iteration on Hessian–vector products (the largest-magnitude
    eigenvalue; near a minimum and at the edge of stability it is the top one).
    Returns (λ, the unit eigenvector estimate, to warm-start the next call)."""
    _checks.positive_int("n_iter", n_iter)
    v = torch.randn(theta.shape, generator=generator, dtype=theta.dtype) if v0 is None else v0
    v = v / v.norm()
    lam = 0.0
    for _ in range(n_iter):
        hv = hvp(loss, theta, v)
        lam = torch.dot(v, hv).item()
        v = hv / hv.norm()
    return lam, v


def mlp_loss(x: torch.Tensor, y: torch.Tensor, widths) -> tuple[Callable, int]:
    """L(θ) = ½ mean (f(x) − y)² of a tanh MLP with layer ``widths`` (standard
    parametrization, weights scaled by 1/√fan_in) as a function of flat θ; returns (L, P)."""
    shapes = [(o, i) for i, o in zip(widths[:-1], widths[1:])]
    sizes = [o * i for o, i in shapes]

    def loss(theta):
        h = x
        for k, w in enumerate(torch.split(theta, sizes)):
            o, i = shapes[k]
            h = h @ w.view(o, i).T / math.sqrt(i)
            if k < len(shapes) - 1:
                h = torch.tanh(h)
        return 0.5 * (h[:, 0] - y).pow(2).mean()

    return loss, sum(sizes)


def edge_of_stability(loss: Callable, theta0: torch.Tensor, *, lr: float, n_steps: int,
                      every: int, n_iter: int = 20, seed: int = 0) -> dict:
    """Full-batch GD at step η with the sharpness every ``every`` steps (warm-started power
    iteration): {"step", "sharpness", "loss" (every step), "ratio": sharpness·η/2}."""
    _checks.positive("lr", lr)
    gen = torch.Generator().manual_seed(1000 * seed + 47)
    g = grad(loss)
    theta, v = theta0.clone(), None
    steps, sharp, losses = [], [], []
    for k in range(n_steps + 1):
        if k % every == 0:
            lam, v = sharpness(loss, theta, n_iter=n_iter, v0=v, generator=gen)
            steps.append(k), sharp.append(lam)
        losses.append(loss(theta).item())
        if k < n_steps:
            theta = theta - lr * g(theta)
    return {"step": steps, "sharpness": sharp, "loss": losses,
            "ratio": [s * lr / 2 for s in sharp]}


def eos_run(*, lr: float, n_steps: int, seed: int, every: int = 50, widths=(2, 32, 32, 1),
            n_data: int = 16, n_iter: int = 20) -> dict:
    """:func:`edge_of_stability` of a tanh MLP (standard-normal weights, seed ``seed``) on
    ``n_data`` fixed points (x ~ N(0, I), y = sin 3x₁ cos 2x₂)."""
    gen = torch.Generator().manual_seed(12345)
    x = torch.randn(n_data, widths[0], generator=gen, dtype=torch.float64)
    y = torch.sin(3 * x[:, 0]) * torch.cos(2 * x[:, 1])
    loss, n_params = mlp_loss(x, y, list(widths))
    theta0 = torch.randn(n_params, generator=torch.Generator().manual_seed(1000 * seed + 53),
                         dtype=torch.float64)
    return edge_of_stability(loss, theta0, lr=lr, n_steps=n_steps, every=every, seed=seed,
                             n_iter=n_iter)


__all__ = [
    "PARAMETRIZATIONS", "ACTIVATIONS", "gradient_flow", "gd_flow_gap", "circle_inputs",
    "ntk_width_study", "two_layer", "lazy_training", "width_study", "eigen_rates",
    "eigen_rate_study", "regression_problem", "ou_tolerance", "ou_excess_loss",
    "sgd_excess_loss", "ou_study", "hvp", "sharpness", "mlp_loss", "edge_of_stability", "eos_run",
]
