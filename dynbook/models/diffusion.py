"""Score-based diffusion on a problem with a known answer: a Gaussian mixture carried to noise
by a VP- or VE-SDE, whose marginals p_t and scores ∇log p_t are closed-form.

Glossary (code ↔ maths, Song et al. 2021): the forward SDE dx = f(x, t) dt + g(t) dw on
t ∈ [0, 1]; its perturbation kernel x_t = m(t) x_0 + s(t) ε (``mean_coef`` m, ``noise_std`` s);
``VPSDE``: f = −½β(t)x, g = √β(t), β linear from β_min to β_max; ``VESDE``: f = 0,
g = σ(t)√(2 log(σ_max/σ_min)), σ(t) = σ_min (σ_max/σ_min)^t. A mixture of isotropic Gaussians
N(μ_k, v_k I) stays one under the kernel: means m μ_k, variances m² v_k + s². Reverse SDE
dx = [f − g² ∇log p_t] dt + g dw̄ and probability-flow ODE dx = [f − ½ g² ∇log p_t] dt, both
integrated from t = 1 down to ``t_end``. NFE = number of score evaluations.

Everything works in the dtype of its inputs (the tests use float64).

Chapter 4's experiments are whole calls here: :func:`mixture_problem` builds the problem
(mixture, SDE, exact and wrong scores, MMD unit, one generator per replicate), and
``forward_experiment``, ``reverse_experiment``, ``pathwise_experiment``, ``quality_vs_nfe`` with
``nfe_crossover``, ``dsm_experiment``, ``likelihood_experiment`` and ``generation_samplers``
each return a dict the chapter records, decides and plots (``plot_*``).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from dynbook import _checks

SDE_TYPES = ("vp", "ve")
ODE_SOLVERS = ("euler", "rk4", "dopri5")


# ----------------------------------------------------------------------------- the SDEs


@dataclass(frozen=True)
class VPSDE:
    """Variance-preserving SDE, β(t) = β_min + t (β_max − β_min)."""

    beta_min: float = 0.1
    beta_max: float = 20.0
    kind = "vp"

    def beta(self, t):
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def _int_beta(self, t):
        return self.beta_min * t + 0.5 * t * t * (self.beta_max - self.beta_min)

    def mean_coef(self, t):
        t = torch.as_tensor(t, dtype=torch.float64)
        return torch.exp(-0.5 * self._int_beta(t))

    def noise_std(self, t):
        t = torch.as_tensor(t, dtype=torch.float64)
        return torch.sqrt(-torch.expm1(-self._int_beta(t)))

    def drift(self, x, t):
        return -0.5 * _col(self.beta(t), x) * x

    def diffusion(self, t):
        return torch.sqrt(torch.as_tensor(self.beta(t), dtype=torch.float64))

    def prior(self, d: int, dtype=torch.float64, device=None) -> "GaussianMixture":
        return GaussianMixture(torch.zeros(1, d, dtype=dtype), torch.ones(1, dtype=dtype),
                               torch.ones(1, dtype=dtype)).to(device)


@dataclass(frozen=True)
class VESDE:
    """Variance-exploding SDE with the geometric σ(t) = σ_min (σ_max/σ_min)^t."""

    sigma_min: float = 0.01
    sigma_max: float = 10.0
    kind = "ve"

    def sigma(self, t):
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** torch.as_tensor(t, dtype=torch.float64)

    def mean_coef(self, t):
        return torch.ones_like(torch.as_tensor(t, dtype=torch.float64))

    def noise_std(self, t):
        # the exact kernel variance ∫_0^t g² = σ(t)² − σ_min² (Song et al. drop the σ_min²)
        return torch.sqrt(self.sigma(t) ** 2 - self.sigma_min ** 2)

    def drift(self, x, t):
        return torch.zeros_like(x)

    def diffusion(self, t):
        return self.sigma(t) * math.sqrt(2 * math.log(self.sigma_max / self.sigma_min))

    def prior(self, d: int, dtype=torch.float64, device=None) -> "GaussianMixture":
        return GaussianMixture(torch.zeros(1, d, dtype=dtype), torch.full((1,), self.sigma_max ** 2, dtype=dtype),
                               torch.ones(1, dtype=dtype)).to(device)


def make_sde(kind: str, *, beta_min=0.1, beta_max=20.0, sigma_min=0.01, sigma_max=10.0):
    """``"vp"`` or ``"ve"``; an unknown name, β_max ≤ β_min or σ_max ≤ σ_min is an error."""
    if not beta_min < beta_max or not 0 < sigma_min < sigma_max:
        raise ValueError(f"beta_min={beta_min!r}, beta_max={beta_max!r}, sigma_min={sigma_min!r}, "
                         f"sigma_max={sigma_max!r} are not allowed: expected beta_min < beta_max and "
                         "0 < sigma_min < sigma_max")
    if kind == "vp":
        return VPSDE(beta_min, beta_max)
    if kind == "ve":
        return VESDE(sigma_min, sigma_max)
    raise ValueError(f"sde {kind!r} is not allowed: expected one of {SDE_TYPES}")


def _col(v, x):
    """A scalar or per-row (n,) coefficient shaped to multiply x (n, d)."""
    v = torch.as_tensor(v, dtype=x.dtype, device=x.device)
    return v.reshape(-1, 1) if v.dim() else v


# ----------------------------------------------------------------------------- the mixture


@dataclass(frozen=True)
class GaussianMixture:
    """Σ_k w_k N(μ_k, v_k I): ``means (K, d)``, ``variances (K,)``, ``weights (K,)`` (sum 1)."""

    means: torch.Tensor
    variances: torch.Tensor
    weights: torch.Tensor

    @classmethod
    def ring(cls, n_modes: int, radius: float, std: float, *, dtype=torch.float64) -> "GaussianMixture":
        """``n_modes`` equal modes of standard deviation ``std`` on a circle of ``radius``."""
        a = torch.arange(n_modes, dtype=dtype) * (2 * math.pi / n_modes)
        means = radius * torch.stack([torch.cos(a), torch.sin(a)], 1)
        return cls(means, torch.full((n_modes,), std ** 2, dtype=dtype), torch.full((n_modes,), 1.0 / n_modes, dtype=dtype))

    def to(self, device) -> "GaussianMixture":
        """The same mixture with its parameters on ``device`` (``None``: unchanged)."""
        if device is None:
            return self
        return GaussianMixture(self.means.to(device), self.variances.to(device), self.weights.to(device))

    def rotated(self, angle: float) -> "GaussianMixture":
        """The same mixture turned by ``angle`` radians about the origin (2-D)."""
        c, s = math.cos(angle), math.sin(angle)
        rot = torch.tensor([[c, s], [-s, c]], dtype=self.means.dtype, device=self.means.device)
        return GaussianMixture(self.means @ rot, self.variances, self.weights)

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def marginal(self, sde, t: float) -> "GaussianMixture":
        """p_t: the mixture pushed through the forward SDE to time ``t`` (a scalar)."""
        m = float(sde.mean_coef(t))
        s2 = float(sde.noise_std(t)) ** 2
        return GaussianMixture(m * self.means, m * m * self.variances + s2, self.weights)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` draws ``(n, d)``, on the mixture's device (drawn on the CPU from ``generator``,
        so a seed gives the same samples on every device)."""
        w, mu, v = self.weights.cpu(), self.means.cpu(), self.variances.cpu()
        k = torch.multinomial(w, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=self.means.dtype)
        return (mu[k] + v[k].sqrt()[:, None] * z).to(self.means.device)

    def _log_terms(self, x, means, var):
        # x (n, d); means (n|1, K, d); var (n|1, K) → log w_k + log N(x; μ_k, v_k I), (n, K)
        d = x.shape[1]
        sq = ((x[:, None, :] - means) ** 2).sum(-1)
        return torch.log(self.weights) - 0.5 * sq / var - 0.5 * d * torch.log(2 * math.pi * var)

    def _at(self, sde, t, x):
        if sde is None:
            return self.means[None], self.variances[None]
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        tt = t.reshape(-1, 1) if t.dim() else t.reshape(1, 1)
        m = sde.mean_coef(tt).to(x.dtype)
        s2 = sde.noise_std(tt).to(x.dtype) ** 2
        return m[..., None] * self.means[None], m * m * self.variances[None] + s2

    def log_prob(self, x, t=None, sde=None) -> torch.Tensor:
        """log p_t(x), ``(n,)``; ``t`` a scalar or ``(n,)`` (``sde=None``: p_0 itself). Leading
        batch dimensions ``(…, n, d)`` are flattened and restored."""
        if x.dim() > 2:
            return self.log_prob(*_flat(x, t), sde).reshape(x.shape[:-1])
        means, var = self._at(sde, t, x)
        return torch.logsumexp(self._log_terms(x, means, var), dim=1)

    def score(self, x, t=None, sde=None) -> torch.Tensor:
        """∇_x log p_t(x) = Σ_k r_k(x) (m μ_k − x)/v_k(t), responsibilities r, ``(n, d)``."""
        if x.dim() > 2:
            return self.score(*_flat(x, t), sde).reshape(x.shape)
        means, var = self._at(sde, t, x)
        r = torch.softmax(self._log_terms(x, means, var), dim=1)
        return ((r / var)[..., None] * (means - x[:, None, :])).sum(1)

    def laplacian_log_prob(self, x, t=None, sde=None) -> torch.Tensor:
        """Δ log p_t(x) = Σ_k r_k (|u_k|² − d/v_k) − |Σ_k r_k u_k|², u_k = (m μ_k − x)/v_k."""
        means, var = self._at(sde, t, x)
        r = torch.softmax(self._log_terms(x, means, var), dim=1)
        u = (means - x[:, None, :]) / var[..., None]
        s = (r[..., None] * u).sum(1)
        return (r * ((u * u).sum(-1) - x.shape[1] / var)).sum(1) - (s * s).sum(1)


def _flat(x, t):
    """x ``(…, n, d)`` → ``(N, d)``; a per-point t ``(…, n)`` → ``(N,)``."""
    if t is not None and torch.as_tensor(t).dim():
        t = torch.as_tensor(t).reshape(-1)
    return x.reshape(-1, x.shape[-1]), t


def exact_score(mix: GaussianMixture, sde) -> Callable:
    """``score(x, t)`` of the mixture's marginals under ``sde``."""
    return lambda x, t: mix.score(x, t, sde)


# ----------------------------------------------------------------------------- samplers


def time_grid(n_steps: int, t_end: float, *, dtype=torch.float64) -> torch.Tensor:
    """``n_steps + 1`` equal-spaced times from 1 down to ``t_end``."""
    return torch.linspace(1.0, t_end, n_steps + 1, dtype=dtype)


def brownian_increments(n_steps: int, n: int, d: int, *, t_end: float, generator=None,
                        dtype=torch.float64) -> torch.Tensor:
    """Independent increments ``(n_steps, n, d)`` of a Brownian motion over the grid of
    :func:`time_grid` (variance = step length), on the CPU (move them where the samples are)."""
    h = (1.0 - t_end) / n_steps
    return math.sqrt(h) * torch.randn(n_steps, n, d, generator=generator, dtype=dtype)


def coarsen(dw: torch.Tensor, factor: int) -> torch.Tensor:
    """The same Brownian path on a grid ``factor`` times coarser (increments summed)."""
    n = dw.shape[0]
    if n % factor:
        raise ValueError(f"coarsen: {n} steps are not a multiple of factor {factor}")
    return dw.reshape(n // factor, factor, *dw.shape[1:]).sum(1)


def reverse_sde_em(score: Callable, sde, x1: torch.Tensor, dw: torch.Tensor, *, t_end: float) -> torch.Tensor:
    """Euler–Maruyama on the reverse SDE from t = 1 to ``t_end``, one step per increment of
    ``dw`` ``(n_steps, n, d)``: x ← x − [f − g² s] h + g ΔW̄. NFE = n_steps."""
    n_steps = dw.shape[0]
    ts = time_grid(n_steps, t_end, dtype=x1.dtype)
    h = (1.0 - t_end) / n_steps
    x = x1
    for k in range(n_steps):
        t = ts[k]
        g = sde.diffusion(t).to(x.dtype)
        x = x - (sde.drift(x, t) - g * g * score(x, t)) * h + g * dw[k]
    return x


def pf_drift(score: Callable, sde) -> Callable:
    """The probability-flow ODE's right-hand side f − ½ g² ∇log p_t, as ``drift(t, x)``."""
    def drift(t, x):
        g = sde.diffusion(t).to(x.dtype)
        return sde.drift(x, t) - 0.5 * g * g * score(x, t)
    return drift


class CountingField(nn.Module):
    """Wraps ``drift(t, x)`` for torchdiffeq and counts its evaluations in ``nfe``."""

    def __init__(self, drift: Callable):
        super().__init__()
        self.drift = drift
        self.nfe = 0

    def forward(self, t, x):
        self.nfe += 1
        return self.drift(t, x)


def pf_ode(score: Callable, sde, x1: torch.Tensor, *, t_end: float, solver: str = "rk4",
           n_steps: int | None = None, rtol: float = 1e-5, atol: float = 1e-5) -> tuple[torch.Tensor, int]:
    """Integrate the probability-flow ODE from t = 1 to ``t_end``: ``(x(t_end), nfe)``.

    ``"euler"`` and ``"rk4"`` (classical) take ``n_steps`` equal steps; ``"dopri5"`` is
    torchdiffeq's adaptive solver at ``rtol``/``atol``."""
    drift = pf_drift(score, sde)
    if solver in ("euler", "rk4"):
        if not n_steps or n_steps < 1:
            raise ValueError(f"pf_ode: solver {solver!r} needs n_steps ≥ 1, got {n_steps!r}")
        ts = time_grid(n_steps, t_end, dtype=x1.dtype)
        h = -(1.0 - t_end) / n_steps
        x = x1
        for k in range(n_steps):
            t = ts[k]
            if solver == "euler":
                x = x + h * drift(t, x)
                continue
            k1 = drift(t, x)
            k2 = drift(t + h / 2, x + h / 2 * k1)
            k3 = drift(t + h / 2, x + h / 2 * k2)
            k4 = drift(t + h, x + h * k3)
            x = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        return x, n_steps * (1 if solver == "euler" else 4)
    if solver == "dopri5":
        from torchdiffeq import odeint

        field = CountingField(drift)
        t = torch.tensor([1.0, t_end], dtype=x1.dtype, device=x1.device)
        # land exactly on t_end (no stage evaluated beyond it, where s(t) may vanish) and skip
        # the initial-step heuristic, which probes far outside [t_end, 1]
        x = odeint(field, x1, t, method="dopri5", rtol=rtol, atol=atol,
                   options={"step_t": t, "first_step": 1e-2})[-1]
        return x, field.nfe
    raise ValueError(f"pf_ode: solver {solver!r} is not allowed: expected one of {ODE_SOLVERS}")


# ----------------------------------------------------------------------------- likelihood


def pf_log_likelihood(score: Callable, sde, prior_log_prob: Callable, x0: torch.Tensor, *, t_start: float,
                      rtol: float = 1e-8, atol: float = 1e-8, trace: str = "exact",
                      n_probes: int = 1, generator=None) -> tuple[torch.Tensor, int]:
    """log p(x0) by the instantaneous change of variables along the probability-flow ODE,
    from ``t_start`` up to 1: log p_{t_start}(x0) = log p_1(x(1)) + ∫ ∇·F(x(t), t) dt with F the
    ODE's drift. ``trace="exact"`` takes the divergence by d backward passes; ``"hutchinson"``
    estimates it by E[vᵀ(∂F/∂x)v] with ``n_probes`` fixed Rademacher probes per point
    (Grathwohl et al. 2019). Returns (log-likelihood ``(n,)``, NFE)."""
    from torchdiffeq import odeint

    if trace not in ("exact", "hutchinson"):
        raise ValueError(f"trace {trace!r} is not allowed: expected 'exact' or 'hutchinson'")
    drift = pf_drift(score, sde)
    n, d = x0.shape
    probes = None
    if trace == "hutchinson":
        probes = (torch.randint(0, 2, (n_probes, n, d), generator=generator).to(x0) * 2 - 1)

    def aug(t, state):
        x = state[:, :d]
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            f = drift(t, x)
            if probes is None:
                div = sum(torch.autograd.grad(f[:, i].sum(), x, retain_graph=True)[0][:, i] for i in range(d))
            else:
                div = sum((torch.autograd.grad((f * v).sum(), x, retain_graph=True)[0] * v).sum(1)
                          for v in probes) / probes.shape[0]
        return torch.cat([f.detach(), div.detach()[:, None]], 1)

    field = CountingField(aug)
    state0 = torch.cat([x0, torch.zeros(n, 1, dtype=x0.dtype, device=x0.device)], 1)
    t = torch.tensor([t_start, 1.0], dtype=x0.dtype, device=x0.device)
    state1 = odeint(field, state0, t, method="dopri5", rtol=rtol, atol=atol,
                    options={"step_t": t, "first_step": 1e-2})[-1]
    return prior_log_prob(state1[:, :d]) + state1[:, d], field.nfe


# ----------------------------------------------------------------------------- two-sample metric


def _kernel_mean(x, means, variances, bandwidth):
    # E_{y ~ N(μ, vI)} k(x, y) for the Gaussian kernel k = exp(−|x − y|²/(2ℓ²)), (n, K)
    d = x.shape[1]
    s = bandwidth ** 2 + variances
    sq = ((x[:, None, :] - means[None]) ** 2).sum(-1)
    return (bandwidth ** 2 / s) ** (d / 2) * torch.exp(-0.5 * sq / s)


def mmd2_to_mixture(x: torch.Tensor, mix: GaussianMixture, bandwidth: float) -> float:
    """Unbiased MMD² between the samples ``x (n, d)`` and the mixture itself (not samples of
    it), Gaussian kernel of ``bandwidth`` ℓ: the sample–sample term without the diagonal, the
    sample–mixture and mixture–mixture terms in closed form. Its mean is the exact MMD²."""
    n = x.shape[0]
    sq = torch.cdist(x, x).pow(2)
    kxx = (torch.exp(-0.5 * sq / bandwidth ** 2).sum() - n) / (n * (n - 1))
    kxp = (_kernel_mean(x, mix.means, mix.variances, bandwidth) * mix.weights).sum(1).mean()
    return float(kxx - 2 * kxp + mixture_kernel(mix, mix, bandwidth))


def mixture_kernel(a: GaussianMixture, b: GaussianMixture, bandwidth: float) -> float:
    """E_{x~a, y~b} k(x, y) in closed form."""
    d = a.dim
    s = bandwidth ** 2 + a.variances[:, None] + b.variances[None, :]
    sq = ((a.means[:, None, :] - b.means[None]) ** 2).sum(-1)
    k = (bandwidth ** 2 / s) ** (d / 2) * torch.exp(-0.5 * sq / s)
    return float((a.weights[:, None] * b.weights[None] * k).sum())


def mmd2_mixtures(a: GaussianMixture, b: GaussianMixture, bandwidth: float) -> float:
    """Exact MMD² between two mixtures."""
    return (mixture_kernel(a, a, bandwidth) - 2 * mixture_kernel(a, b, bandwidth)
            + mixture_kernel(b, b, bandwidth))


def mmd2_samples(x: torch.Tensor, y: torch.Tensor, bandwidth: float) -> float:
    """Unbiased MMD² between two samples (Gretton et al. 2012), Gaussian kernel."""
    def mean_offdiag(a):
        n = a.shape[0]
        return (torch.exp(-0.5 * torch.cdist(a, a).pow(2) / bandwidth ** 2).sum() - n) / (n * (n - 1))
    kxy = torch.exp(-0.5 * torch.cdist(x, y).pow(2) / bandwidth ** 2).mean()
    return float(mean_offdiag(x) + mean_offdiag(y) - 2 * kxy)


# ----------------------------------------------------------------------------- a learned score


class EnsembleScore(nn.Module):
    """``members`` independent MLP score models trained at once (batched matmuls).

    s_θ(x, t) = −ε_θ(x, t)/s(t): the network predicts the noise ε of x_t = m x_0 + s ε from
    [x, features of t]; ``x (members, n, d)`` → ``(members, n, d)``."""

    def __init__(self, members: int, d: int = 2, hidden: int = 64, layers: int = 3, *, sde, generator=None):
        super().__init__()
        self.sde = sde
        self.members = members
        sizes = [d + 4] + [hidden] * (layers - 1) + [d]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for a, b in zip(sizes[:-1], sizes[1:]):
            w = torch.randn(members, a, b, generator=generator) / math.sqrt(a)
            self.weights.append(nn.Parameter(w))
            self.biases.append(nn.Parameter(torch.zeros(members, 1, b)))

    @staticmethod
    def features(t):
        # t ∈ [0, 1]; a few smooth functions of it let a small MLP bend with time
        return torch.stack([t, torch.sin(math.pi * t), torch.cos(math.pi * t), torch.log(t.clamp_min(1e-4)) / 10], -1)

    def noise(self, x, t):
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(x.shape[:-1])
        h = torch.cat([x, self.features(t)], -1)
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            h = torch.baddbmm(b, h, w)
            if i < len(self.weights) - 1:
                h = torch.nn.functional.silu(h)
        return h

    def forward(self, x, t):
        s = self.sde.noise_std(torch.as_tensor(t, dtype=torch.float64)).to(x.dtype)
        if s.dim():
            s = s[..., None]
        return -self.noise(x, t) / s

    def member(self, i: int) -> Callable:
        """The score ``score(x (n, d), t)`` of member ``i``."""
        return lambda x, t: self.forward(x[None].expand(self.members, *x.shape), t)[i]


def train_dsm(model: EnsembleScore, mix: GaussianMixture, *, iterations: int, batch: int, t_min: float,
              lr: float = 3e-3, generator=None) -> list[float]:
    """Denoising score matching (Vincent 2011; Song et al. 2021, λ(t) = s(t)²): minimise
    E_t E_{x0, ε} |ε_θ(m x0 + s ε, t) − ε|², t ~ U(t_min, 1), every member on its own draws.
    Returns the loss (mean over members) per iteration."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, iterations)
    sde, m_members = model.sde, model.members
    dtype, dev = model.weights[0].dtype, model.weights[0].device
    losses = []
    for _ in range(iterations):
        x0 = mix.sample(m_members * batch, generator).to(dev, dtype).reshape(m_members, batch, -1)
        t = (t_min ** torch.rand(m_members, batch, generator=generator, dtype=dtype)).to(dev)  # log-uniform
        eps = torch.randn(x0.shape, generator=generator, dtype=dtype).to(dev)
        m = sde.mean_coef(t).to(dtype)[..., None]
        s = sde.noise_std(t).to(dtype)[..., None]
        loss = ((model.noise(m * x0 + s * eps, t) - eps) ** 2).sum(-1).mean((1,)).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()) / m_members)
    return losses


def weighted_score_error(score: Callable, mix: GaussianMixture, sde, *, n: int, t_min: float,
                         generator=None) -> float:
    """Relative p_t-weighted score error E_t E_{x~p_t} s(t)²|s_θ − ∇log p_t|² / E_t E s(t)²|∇log p_t|²,
    t ~ U(t_min, 1) (the DSM weighting), by Monte Carlo on ``n`` draws."""
    dtype, dev = mix.means.dtype, mix.means.device
    t = (t_min + (1 - t_min) * torch.rand(n, generator=generator, dtype=dtype)).to(dev)
    x0 = mix.sample(n, generator)
    m = sde.mean_coef(t).to(dtype)[:, None]
    s = sde.noise_std(t).to(dtype)[:, None]
    xt = m * x0 + s * torch.randn(x0.shape, generator=generator, dtype=dtype).to(dev)
    with torch.no_grad():
        true = mix.score(xt, t, sde)
        est = score(xt, t).to(dtype)
    return float(((s * (est - true)) ** 2).sum() / ((s * true) ** 2).sum())


# ----------------------------------------------------------------------------- cost of a step


def step_cost(sampler: str, *, n_modes: int, d: int = 2, hidden: int | None = None, layers: int = 3,
              bytes_per_value: int = 4) -> dict:
    """FLOPs and bytes per sample of one sampler step, counted from the formulas above.

    Score of the exact mixture: per mode a difference, a squared norm, an exponent and the
    weighted sum (≈ 6d + 8 FLOPs), plus the softmax (≈ 3 per mode); an MLP score
    (``hidden``) costs 2·(fan-in·fan-out) per layer. The update adds ≈ 4d FLOPs (EM: drift,
    noise) and reads/writes x and, for the SDE, one d-vector of noise. RK4 is four score
    evaluations and ≈ 10d update FLOPs. Bytes count only the state and noise streamed per step
    (the mixture's parameters or the weights stay in cache)."""
    if hidden:
        sizes = [d + 4] + [hidden] * (layers - 1) + [d]
        score_flops = sum(2 * a * b for a, b in zip(sizes[:-1], sizes[1:])) + 4 * hidden * (layers - 1)
    else:
        score_flops = n_modes * (6 * d + 11) + d
    if sampler == "em":
        evals, update, vectors = 1, 5 * d, 3  # read x, read noise, write x
    elif sampler == "euler":
        evals, update, vectors = 1, 4 * d, 2
    elif sampler == "rk4":
        evals, update, vectors = 4, 14 * d, 2
    else:
        raise ValueError(f"step_cost: sampler {sampler!r} is not allowed: expected 'em', 'euler' or 'rk4'")
    return {"nfe": evals, "flops": evals * score_flops + update, "bytes": vectors * d * bytes_per_value}


# ----------------------------------------------------------------------------- experiment helpers


class _TorchsdeForward(nn.Module):
    """The forward SDE in torchsde's interface (Itô, diagonal noise)."""

    noise_type = "diagonal"
    sde_type = "ito"

    def __init__(self, sde):
        super().__init__()
        self.sde = sde

    def f(self, t, y):
        return self.sde.drift(y, t)

    def g(self, t, y):
        return self.sde.diffusion(t).to(y.dtype) * torch.ones_like(y)


def forward_paths(sde, x0: torch.Tensor, times, *, n_steps: int, seed: int = 0) -> dict:
    """Simulate the forward SDE from ``x0 (n, d)`` with torchsde's Euler–Maruyama (``n_steps``
    equal steps on [0, 1]): ``{t: X(t)}`` at each of ``times``."""
    import torchsde

    ts = torch.tensor([0.0, *times], dtype=x0.dtype, device=x0.device)
    bm = torchsde.BrownianInterval(0.0, float(ts[-1]), size=x0.shape, dtype=x0.dtype, device=x0.device,
                                   entropy=seed)
    with torch.no_grad():
        xs = torchsde.sdeint(_TorchsdeForward(sde), x0, ts, bm=bm, dt=1.0 / n_steps, method="euler")
    return {t: xs[i + 1] for i, t in enumerate(times)}


def relative_mmd2(x: torch.Tensor, reference: GaussianMixture, bandwidth: float, unit: float) -> float:
    """:func:`mmd2_to_mixture` in units of ``unit`` (the chapter's: MMD²(data, prior))."""
    return mmd2_to_mixture(x, reference, bandwidth) / unit


def nfe_to_quality(curve, quality: float, *, interpolate: bool = False) -> list[float]:
    """``curve``: ``[(nfe, [quality of each replicate]), …]`` in increasing NFE, one entry per
    solver setting; ``nfe`` is one number or a list with each replicate's (adaptive solvers).
    For each replicate, the smallest NFE on the curve whose quality is ≤ ``quality`` (``inf``
    when none is); with ``interpolate``, the NFE where the curve first crosses ``quality``,
    linear in log NFE between the two settings around the crossing."""
    if not curve:
        raise ValueError("nfe_to_quality: empty curve")
    n_rep = len(curve[0][1])
    out = []
    for r in range(n_rep):
        pts = [(float(nfe[r] if isinstance(nfe, (list, tuple)) else nfe), qs[r]) for nfe, qs in curve]
        first = next((i for i, (_, q) in enumerate(pts) if q <= quality), None)
        if first is None:
            out.append(math.inf)
        elif first == 0 or not interpolate:
            out.append(pts[first][0])
        else:
            (n0, q0), (n1, q1) = pts[first - 1], pts[first]
            w = (q0 - quality) / (q0 - q1)
            out.append(math.exp(math.log(n0) + w * (math.log(n1) - math.log(n0))))
    return out


def rms_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """RMS Euclidean distance between paired samples ``(…, n, d)`` → ``(…)``."""
    return ((a - b) ** 2).sum(-1).mean(-1).sqrt()


# ----------------------------------------------------------------------------- the experiments
# Each takes a MixtureProblem and returns a dict; the chapter records, decides and plots. The
# replicates' generators are consumed in the chapter's order, so a seed gives one record.


@dataclass
class MixtureProblem:
    """The mixture ``mix`` under the forward ``sde``, with everything the samplers are measured
    against: ``target`` = p(t_end), ``p1`` = p(1), the exact ``score`` and the control's
    ``wrong_score`` (the mixture turned by half a mode spacing), the MMD ``bandwidth`` and its
    ``unit`` MMD²(data, prior); one generator per replicate (seeds ``seeds``)."""

    sde: object
    mix: GaussianMixture
    t_end: float
    bandwidth: float
    generators: list
    seeds: list

    def __post_init__(self):
        self.prior = self.sde.prior(self.mix.dim, device=self.mix.means.device)
        self.target = self.mix.marginal(self.sde, self.t_end)
        self.p1 = self.mix.marginal(self.sde, 1.0)
        self.score = exact_score(self.mix, self.sde)
        self.wrong = self.mix.rotated(math.pi / self.mix.means.shape[0])
        self.wrong_score = exact_score(self.wrong, self.sde)
        self.unit = mmd2_mixtures(self.mix, self.prior, self.bandwidth)

    @property
    def replicates(self) -> int:
        return len(self.generators)

    def quality(self, x: torch.Tensor, reference: GaussianMixture | None = None) -> list[float]:
        """Relative MMD² of each replicate's samples ``x (R, n, d)`` to ``reference``
        (default: the target p(t_end))."""
        ref = self.target if reference is None else reference
        return [relative_mmd2(x[r], ref, self.bandwidth, self.unit) for r in range(x.shape[0])]

    def draw(self, dist: GaussianMixture, n: int) -> torch.Tensor:
        """``n`` samples of ``dist`` per replicate, ``(R, n, d)``."""
        return torch.stack([dist.sample(n, g) for g in self.generators])

    def noise(self, n_steps: int, n: int) -> torch.Tensor:
        """Brownian increments per replicate, ``(n_steps, R, n, d)``, where the samples are."""
        return torch.stack([brownian_increments(n_steps, n, self.mix.dim, t_end=self.t_end, generator=g)
                            for g in self.generators], 1).to(self.mix.means.device)


def mixture_problem(kind: str = "vp", *, beta_min=0.1, beta_max=20.0, sigma_min=0.01, sigma_max=10.0,
                    n_modes: int = 8, radius: float = 2.0, std: float = 0.15, bandwidth: float = 0.3,
                    t_end: float = 1e-3, seed: int = 0, replicates: int = 3, device=None) -> MixtureProblem:
    """The ring mixture of ``n_modes`` under the ``kind`` SDE, replicate r seeded seed·1000 + r."""
    _checks.one_of("kind", kind, SDE_TYPES)
    _checks.positive_int("n_modes", n_modes, minimum=2)
    _checks.positive_int("replicates", replicates)
    _checks.positive("bandwidth", bandwidth)
    _checks.in_range("t_end", t_end, 0.0, 1.0, closed=False)
    seeds = [seed * 1000 + r for r in range(replicates)]
    sde = make_sde(kind, beta_min=beta_min, beta_max=beta_max, sigma_min=sigma_min, sigma_max=sigma_max)
    return MixtureProblem(sde, GaussianMixture.ring(n_modes, radius, std).to(device), t_end, bandwidth,
                          [torch.Generator().manual_seed(s) for s in seeds], seeds)


def cut_schedule(sde):
    """The control's forward SDE: the same kind with its schedule cut short at 1
    (β_max = 1 or σ_max = 1), so that X(1) still remembers the data."""
    if sde.kind == "vp":
        return VPSDE(sde.beta_min, 1.0)
    return VESDE(sde.sigma_min, 1.0)


def forward_experiment(pb: MixtureProblem, *, times=(0.05, 0.1, 0.25, 0.5, 1.0), n_samples: int,
                       n_steps: int = 100, seed: int = 0) -> dict:
    """Simulate the forward SDE (torchsde, ``n_steps`` EM steps) from data samples, and its cut
    control (:func:`cut_schedule`). ``paths[name][t] (R, n, d)``; ``c1``/``c1_control``: X(1)'s
    relative MMD² to each one's prior; ``marginal``/``marginal_control``: the worst (resp. best)
    replicate's relative MMD² to the closed-form p_t of the claim's SDE, per t."""
    _checks.positive_int("n_samples", n_samples, minimum=2)
    if times[-1] != 1.0:
        raise ValueError(f"times={times!r} is not allowed: expected increasing times ending at 1.0")
    R, d = pb.replicates, pb.mix.dim
    short = cut_schedule(pb.sde)
    paths = {}
    for name, proc in (("claim", pb.sde), ("control", short)):
        x0 = pb.draw(pb.mix, n_samples)
        xs = forward_paths(proc, x0.reshape(-1, d), list(times), n_steps=n_steps, seed=seed)
        paths[name] = {t: x.reshape(R, n_samples, d) for t, x in xs.items()}
    short_prior = short.prior(d, device=pb.mix.means.device)
    short_unit = mmd2_mixtures(pb.mix, short_prior, pb.bandwidth)
    return {"times": list(times), "paths": paths, "c1": pb.quality(paths["claim"][1.0], pb.prior),
            "c1_control": [mmd2_to_mixture(x, short_prior, pb.bandwidth) / short_unit
                           for x in paths["control"][1.0]],
            "marginal": {t: max(pb.quality(paths["claim"][t], pb.mix.marginal(pb.sde, t))) for t in times},
            "marginal_control": {t: min(pb.quality(paths["control"][t], pb.mix.marginal(pb.sde, t)))
                                 for t in times}}


def forward_records(result: dict) -> dict:
    """:func:`forward_experiment`'s metrics ``{name: value}``: the worst replicate's relative
    MMD² at each t (``forward_marginal_mmd_t005`` for t = 0.05, …) and the worst of all."""
    marg = result["marginal"]
    out = {f"forward_marginal_mmd_t{round(t * 100):03d}": v for t, v in marg.items()}
    out["forward_marginal_worst"] = max(marg.values())
    return out


def ode_options(solver: str) -> dict:
    """The probability-flow settings of the claims C3 and C6: 64 steps for a fixed-step
    solver, rtol = atol = 10⁻⁵ for dopri5."""
    _checks.one_of("solver", solver, ODE_SOLVERS)
    return {"rtol": 1e-5, "atol": 1e-5} if solver == "dopri5" else {"n_steps": 64}


def reverse_experiment(pb: MixtureProblem, *, n_samples: int, n_steps: int, solver: str) -> dict:
    """Reverse SDE (``n_steps`` EM steps) and probability flow (``solver``) from the same
    draws of p_1, with the exact and the wrong score. ``x1 (R, n, d)``; ``samples`` and
    ``quality`` (relative MMD² to the target per replicate) under keys sde, sde_wrong, ode,
    ode_wrong; ``nfe_ode``; ``target``: exact samples of p(t_end) for the figure (drawn last,
    from replicate 0's generator)."""
    _checks.positive_int("n_steps", n_steps)
    x1 = pb.draw(pb.p1, n_samples)
    dw = pb.noise(n_steps, n_samples)
    kw = ode_options(solver)
    with torch.no_grad():
        gen = {"sde": reverse_sde_em(pb.score, pb.sde, x1, dw, t_end=pb.t_end),
               "sde_wrong": reverse_sde_em(pb.wrong_score, pb.sde, x1, dw, t_end=pb.t_end)}
        gen["ode"], nfe = pf_ode(pb.score, pb.sde, x1, t_end=pb.t_end, solver=solver, **kw)
        gen["ode_wrong"], _ = pf_ode(pb.wrong_score, pb.sde, x1, t_end=pb.t_end, solver=solver, **kw)
    return {"x1": x1, "samples": gen, "quality": {k: pb.quality(v) for k, v in gen.items()}, "nfe_ode": nfe,
            "target": pb.target.sample(n_samples, pb.generators[0])}


def pathwise_experiment(pb: MixtureProblem, *, n_paths: int, fine: int, sde_steps=(8, 16, 32, 64),
                        euler_steps=(8, 16, 32, 64, 128), rk4_steps=(2, 4, 8, 16, 32),
                        dopri_tols=(1e-3, 1e-4, 1e-5, 1e-6, 1e-7)) -> dict:
    """RMS distance of each sampler's samples from the continuous process's on the same noise.

    The reverse SDE at ``sde_steps`` against its own solution at ``fine`` steps on the same
    Brownian path (``error["same"] (R, len)``) and, the control, on an independent path
    (``error["independent"]``); ``order``/``order_control``: each replicate's fitted order in
    NFE. The probability flow's Euler and RK4 (``ode_error[solver] = (steps, errors)``) and
    dopri5 (``dopri = [(nfe, error)]``) against dopri5 at 10⁻¹⁰; ``fitted``: every sampler's
    order with its interval."""
    from dynbook.book.stats import over_seeds
    from dynbook.measure.fits import loglog_slope

    _checks.positive_int("n_paths", n_paths)
    bad = [n for n in sde_steps if fine % n]
    if bad:
        raise ValueError(f"fine={fine!r} is not allowed: expected a multiple of every SDE step count {bad}")
    xp = pb.draw(pb.p1, n_paths)
    dw_a, dw_b = pb.noise(fine, n_paths), pb.noise(fine, n_paths)
    kw = {"t_end": pb.t_end}
    with torch.no_grad():
        ref = reverse_sde_em(pb.score, pb.sde, xp, dw_a, **kw)
        err = {k: torch.stack([rms_distance(reverse_sde_em(pb.score, pb.sde, xp, coarsen(dw, fine // n), **kw), ref)
                               for n in sde_steps], 1).cpu() for k, dw in (("same", dw_a), ("independent", dw_b))}
        ode_ref, _ = pf_ode(pb.score, pb.sde, xp, solver="dopri5", rtol=1e-10, atol=1e-10, **kw)
        ode_err = {s: (list(steps), [float(rms_distance(pf_ode(pb.score, pb.sde, xp, solver=s, n_steps=n, **kw)[0],
                                                        ode_ref).mean()) for n in steps])
                   for s, steps in (("euler", euler_steps), ("rk4", rk4_steps))}
        dopri = []
        for tol in dopri_tols:
            x, nfe = pf_ode(pb.score, pb.sde, xp, solver="dopri5", rtol=tol, atol=tol, **kw)
            dopri.append((nfe, float(rms_distance(x, ode_ref).mean())))
    order = {k: [-loglog_slope(list(sde_steps), e[r]).value for r in range(pb.replicates)] for k, e in err.items()}
    fitted = {"reverse SDE, Euler–Maruyama": over_seeds(order["same"])}
    for s, (steps, errs) in ode_err.items():
        nfe = [4 * n if s == "rk4" else n for n in steps]
        fitted[f"probability flow, {s}"] = loglog_slope(nfe, errs).map(lambda v: -v)
    fitted["probability flow, dopri5"] = loglog_slope(*zip(*dopri)).map(lambda v: -v)
    return {"sde_steps": list(sde_steps), "fine": fine, "error": err, "order": order["same"],
            "order_control": order["independent"], "ode_error": ode_err, "dopri": dopri, "fitted": fitted}


#: quality-vs-NFE grid: sampler name → (solver, settings: steps, or tolerances for dopri5)
NFE_GRID = {"reverse SDE (EM)": ("em", (4, 8, 12, 16, 24, 32, 48, 64)),
            "probability flow (Euler)": ("euler", (4, 6, 8, 12, 16, 24, 32, 48)),
            "probability flow (RK4)": ("rk4", (1, 2, 3, 4, 6, 8, 12)),
            "probability flow (dopri5)": ("dopri5", (1e-1, 1e-2, 1e-3))}


def quality_vs_nfe(pb: MixtureProblem, *, n_samples: int, grid=None, control_steps=(2, 4, 8, 12)) -> dict:
    """Relative MMD² to the target of each sampler of ``grid`` (default :data:`NFE_GRID`) at
    each setting, from the same draws of p_1: ``curves[name] = [(nfe, [quality per
    replicate]), …]`` (dopri5: each replicate's own step control and NFE); ``control``: RK4
    with the wrong score at ``control_steps``."""
    grid = NFE_GRID if grid is None else grid
    xq = pb.draw(pb.p1, n_samples)
    kw = {"t_end": pb.t_end}
    curves = {}
    with torch.no_grad():
        for name, (solver, settings) in grid.items():
            pts = []
            for s in settings:
                if solver == "em":
                    x, nfe = reverse_sde_em(pb.score, pb.sde, xq, pb.noise(s, n_samples), **kw), s
                elif solver == "dopri5":  # adaptive: each replicate's own step-size control and NFE
                    sols = [pf_ode(pb.score, pb.sde, xq[r], solver="dopri5", rtol=s, atol=s, **kw)
                            for r in range(pb.replicates)]
                    x, nfe = torch.stack([x for x, _ in sols]), [n for _, n in sols]
                else:
                    x, nfe = pf_ode(pb.score, pb.sde, xq, solver=solver, n_steps=s, **kw)
                pts.append((nfe, pb.quality(x)))
            curves[name] = pts
        control = []
        for s in control_steps:
            x, nfe = pf_ode(pb.wrong_score, pb.sde, xq, solver="rk4", n_steps=s, **kw)
            control.append((nfe, pb.quality(x)))
    return {"grid": grid, "curves": curves, "control": control}


def nfe_crossover(result: dict, quality: float, *, sde: str = "reverse SDE (EM)") -> dict:
    """Where each replicate's quality curve crosses ``quality`` (log-linear between grid
    points; ``inf``: never), per sampler of :func:`quality_vs_nfe`'s ``result`` (``nfe``),
    and the claim C5's log₂(NFE of ``sde`` / NFE of the cheapest ODE solver) per replicate
    (``log_ratio``; ``log_ratio_control`` against the wrong-score ODE). "Never" counts as
    ``cap``, twice the largest NFE tried; ``best_ode`` names the ODE solver of least median NFE;
    ``median``: each sampler's median NFE over the replicates that reached it (``None``: none);
    ``rows``: the NFE-to-quality table (sampler, NFE per replicate, best quality reached)."""
    curves = result["curves"]
    if sde not in curves:
        raise ValueError(f"sde={sde!r} is not allowed: expected one of {sorted(curves)}")
    nfe_q = {name: nfe_to_quality(pts, quality, interpolate=True) for name, pts in curves.items()}
    nfe_ctl = nfe_to_quality(result["control"], quality, interpolate=True)
    cap = 2 * max(max(n) if isinstance(n, list) else n for pts in curves.values() for n, _ in pts)
    odes = [n for n in curves if n != sde]
    R = len(nfe_q[sde])
    cheapest = [min(min(nfe_q[n][r], cap) for n in odes) for r in range(R)]
    sde_nfe = [min(v, cap) for v in nfe_q[sde]]
    best = min(odes, key=lambda n: statistics.median([min(v, cap) for v in nfe_q[n]]))
    reached = {name: [v for v in nfe_q[name] if math.isfinite(v)] for name in curves}
    rows = [[name, ", ".join(f"{v:.1f}" if math.isfinite(v) else "not reached" for v in nfe_q[name]),
             min(min(qs) for _, qs in pts)] for name, pts in curves.items()]
    return {"nfe": nfe_q, "nfe_control": nfe_ctl, "cap": cap, "sde_nfe": sde_nfe, "cheapest_ode_nfe": cheapest,
            "best_ode": best, "log_ratio": [math.log2(a / b) for a, b in zip(sde_nfe, cheapest)],
            "log_ratio_control": [math.log2(a / min(b, cap)) for a, b in zip(sde_nfe, nfe_ctl)],
            "median": {name: float(statistics.median(v)) if v else None for name, v in reached.items()},
            "rows": rows}


def dsm_experiment(pb: MixtureProblem, reverse: dict, *, iterations: int, solver: str, seed: int = 0,
                   hidden: int = 64, layers: int = 3, batch: int = 256, n_error: int = 4000) -> dict:
    """Train one :class:`EnsembleScore` member per replicate by denoising score matching and
    sample with it through the probability flow from :func:`reverse_experiment`'s draws.
    ``quality``/``quality_untrained``: relative MMD² to the target (the untrained network is
    the control); ``discretisation``: the exact score through the same solver;
    ``score_part``: learned against exact-score samples from the same starting points;
    ``score_error``: the p_t- and s(t)²-weighted relative score error per member; ``records``
    (means over replicates, ``{name: (value, unit)}``) and ``rows`` (the error's parts)."""
    _checks.positive_int("iterations", iterations)
    dev, R, d = pb.mix.means.device, pb.replicates, pb.mix.dim
    gl = torch.Generator().manual_seed(seed)
    net = EnsembleScore(R, d, hidden, layers, sde=pb.sde, generator=gl).to(dev)
    untrained = EnsembleScore(R, d, hidden, layers, sde=pb.sde,
                              generator=torch.Generator().manual_seed(seed)).to(dev, torch.float64)
    losses = train_dsm(net, pb.mix, iterations=iterations, batch=batch, t_min=pb.t_end, generator=gl)
    net = net.double()
    wse = [weighted_score_error(net.member(r), pb.mix, pb.sde, n=n_error, t_min=pb.t_end, generator=pb.generators[r])
           for r in range(R)]
    kw = ode_options(solver)
    with torch.no_grad():
        learned, nfe = pf_ode(net, pb.sde, reverse["x1"], t_end=pb.t_end, solver=solver, **kw)
        learned0, _ = pf_ode(untrained, pb.sde, reverse["x1"], t_end=pb.t_end, solver=solver, **kw)
    exact = reverse["samples"]["ode"]
    out = {"net": net, "losses": losses, "score_error": wse, "samples": learned, "nfe": nfe,
           "quality": pb.quality(learned), "quality_untrained": pb.quality(learned0),
           "discretisation": reverse["quality"]["ode"],
           "score_part": [mmd2_samples(learned[r], exact[r], pb.bandwidth) / pb.unit for r in range(R)]}
    mean = lambda v: float(np.mean(v))  # noqa: E731
    out["records"] = {"weighted_score_error": (mean(wse), "relative, p_t- and s(t)²-weighted"),
                      "rel_mmd2_learned": (mean(out["quality"]), ""),
                      "rel_mmd2_untrained": (mean(out["quality_untrained"]), ""),
                      "rel_mmd2_discretisation_score_part": (mean(out["discretisation"]), ""),
                      "rel_mmd2_score_score_part": (mean(out["score_part"]), "")}
    out["rows"] = [["total: learned score vs target", mean(out["quality"])],
                   ["discretisation: exact score, same solver, vs target", mean(out["discretisation"])],
                   ["score: learned vs exact score on the same starting points", mean(out["score_part"])]]
    return out


def likelihood_experiment(pb: MixtureProblem, *, n_points: int) -> dict:
    """log p(t_end) of ``n_points`` target samples through the probability flow
    (:func:`pf_log_likelihood`) against the closed form: with the exact trace and p_1 (dopri5
    at 10⁻⁹, ``max_abs_error``), with one Hutchinson probe (``hutchinson_error``, mean) and
    with the Gaussian prior in place of p_1 (``prior_error``, mean); in nats; ``detail``: the
    check's sentence; ``records``: ``{metric name: (value, unit)}``."""
    _checks.positive_int("n_points", n_points)
    g = pb.generators[0]
    x = pb.target.sample(n_points, g)
    with torch.no_grad():
        exact = pb.target.log_prob(x)
    kw = {"t_start": pb.t_end}
    ll, nfe = pf_log_likelihood(pb.score, pb.sde, pb.p1.log_prob, x, rtol=1e-9, atol=1e-9, **kw)
    hutch, _ = pf_log_likelihood(pb.score, pb.sde, pb.p1.log_prob, x, rtol=1e-6, atol=1e-6, trace="hutchinson",
                                 generator=g, **kw)
    prior, _ = pf_log_likelihood(pb.score, pb.sde, pb.prior.log_prob, x, rtol=1e-6, atol=1e-6, **kw)
    out = {"n_points": n_points, "nfe": nfe, "mean_log_likelihood": float(exact.mean()),
           "max_abs_error": float((ll - exact).abs().max()),
           "hutchinson_error": float((hutch - exact).abs().mean()),
           "prior_error": float((prior - exact).abs().mean())}
    out["records"] = {"likelihood_max_abs_err": (out["max_abs_error"], "nats"),
                      "likelihood_hutchinson_mean_abs_err": (out["hutchinson_error"], "nats"),
                      "likelihood_prior_mean_abs_err": (out["prior_error"], "nats"),
                      "likelihood_nfe": (nfe, "evaluations"),
                      "mean_log_likelihood": (out["mean_log_likelihood"], "nats")}
    out["detail"] = (f"max |error| {out['max_abs_error']:.1e} nats over {n_points} points, {nfe} NFE; "
                     f"Hutchinson (1 probe) mean |error| {out['hutchinson_error']:.2f}; Gaussian prior in "
                     f"place of p_1: {out['prior_error']:.2e}")
    return out


def generation_samplers(pb: MixtureProblem, quality: dict, crossover: dict, *, n: int, seed: int = 0) -> dict:
    """The samplers of the cost comparison, each at the NFE where it reached the quality (the
    median over replicates; :func:`nfe_crossover`), on ``n`` draws of p_1: ``run`` maps
    "sde", "sde_quarter" (the control: a quarter of the steps) and "ode" (the cheapest ODE
    solver) to callables; ``nfe_sde``, ``nfe_ode``, ``ode_solver``."""
    nfe_q, cap = crossover["nfe"], crossover["cap"]
    sde_name = next(k for k, (s, _) in quality["grid"].items() if s == "em")
    reached = [v for v in nfe_q[sde_name] if math.isfinite(v)]
    nfe_sde = math.ceil(statistics.median(reached or [128]))
    choice = crossover["best_ode"]
    solver, settings = quality["grid"][choice]
    nfe_ode = math.ceil(statistics.median([min(v, cap) for v in nfe_q[choice]]))
    g = torch.Generator().manual_seed(seed)
    x = pb.p1.sample(n, g)
    quarter = max(nfe_sde // 4, 1)
    noise = {k: brownian_increments(k, n, pb.mix.dim, t_end=pb.t_end, generator=g).to(x.device)
             for k in (nfe_sde, quarter)}
    run = {"sde": lambda: reverse_sde_em(pb.score, pb.sde, x, noise[nfe_sde], t_end=pb.t_end),
           "sde_quarter": lambda: reverse_sde_em(pb.score, pb.sde, x, noise[quarter], t_end=pb.t_end)}
    if solver == "dopri5":  # the loosest tolerance whose median NFE reached the quality
        tol = next(s for s, (nfe, _) in zip(settings, quality["curves"][choice])
                   if statistics.median(nfe) >= nfe_ode)
        run["ode"] = lambda: pf_ode(pb.score, pb.sde, x, t_end=pb.t_end, solver="dopri5", rtol=tol, atol=tol)
    else:
        steps = math.ceil(nfe_ode / (4 if solver == "rk4" else 1))
        run["ode"] = lambda: pf_ode(pb.score, pb.sde, x, t_end=pb.t_end, solver=solver, n_steps=steps)
    return {"run": run, "nfe_sde": nfe_sde, "nfe_ode": nfe_ode, "ode_solver": solver}


def step_costs(n_modes: int, *, hidden: int = 64) -> dict:
    """:func:`step_cost` of the exact-score EM, Euler and RK4 steps and of an EM step with an
    MLP score of width ``hidden``: ``costs[(label, key)]`` (key ``None`` for the MLP), each
    with its ``intensity`` (FLOP per byte); ``records`` ``{name: (value, unit)}`` of the
    exact-score steps; the table's ``header`` and ``rows``."""
    rows = {(label, key): step_cost(key, n_modes=n_modes) for label, key in (
        ("reverse SDE, Euler–Maruyama", "em"), ("probability flow, Euler", "euler"), ("probability flow, RK4", "rk4"))}
    rows[(f"reverse SDE, MLP score (width {hidden})", None)] = step_cost("em", n_modes=n_modes, hidden=hidden)
    for c in rows.values():
        c["intensity"] = c["flops"] / c["bytes"]
    units = {"flops": "FLOP per sample per step", "bytes": "bytes per sample per step (fp32 state)",
             "intensity": "FLOP per byte"}
    records = {f"step_{w}_{key}": (c[w], u) for (_, key), c in rows.items() if key for w, u in units.items()}
    table = [[label, c["nfe"], c["flops"], c["bytes"], c["intensity"]] for (label, _), c in rows.items()]
    return {"costs": rows, "records": records, "rows": table,
            "header": ["step", "score evaluations", "FLOPs per sample", "bytes per sample (fp32 state)",
                       "FLOP per byte"]}


# ----------------------------------------------------------------------------- figures


def plot_scatter_panels(axes, panels, *, lim: float, n: int = 1000, density=None, grid_points=None) -> None:
    """One scatter of the first ``n`` points per panel ``(title, x (n, 2))`` on ``axes``, over
    ``density`` contours (a mixture, or one per panel) on the square [−lim, lim]²."""
    gx = torch.linspace(-lim, lim, 120, dtype=torch.float64)
    XX, YY = torch.meshgrid(gx, gx, indexing="xy")
    pts = torch.stack([XX.reshape(-1), YY.reshape(-1)], 1)
    dens = density if isinstance(density, (list, tuple)) else [density] * len(panels)
    for ax, (title, x), mix in zip(axes, panels, dens):
        if mix is not None:
            z = mix.log_prob(pts.to(mix.means.device)).exp().reshape(XX.shape).cpu()
            ax.contour(XX, YY, z, levels=5, colors="k", linewidths=0.6)
        x = x[:n].cpu()
        ax.scatter(x[:, 0], x[:, 1], s=1, alpha=0.4 if mix is not None else 0.5)
        ax.set(title=title, xlim=(-lim, lim), ylim=(-lim, lim), aspect="equal")


def plot_pathwise(ax, result: dict) -> None:
    """:func:`pathwise_experiment`'s errors against NFE, log–log."""
    steps, err = result["sde_steps"], result["error"]
    ax.loglog(steps, err["same"].mean(0), "o-", label="reverse SDE, Euler–Maruyama")
    ax.loglog(steps, err["independent"].mean(0), "o:", c="C0", alpha=0.6, label="… against an independent path")
    euler, rk4 = result["ode_error"]["euler"], result["ode_error"]["rk4"]
    ax.loglog(euler[0], euler[1], "s-", label="probability flow, Euler")
    ax.loglog([4 * s for s in rk4[0]], rk4[1], "^-", label="probability flow, RK4")
    ax.loglog(*zip(*result["dopri"]), "d--", label="probability flow, dopri5")
    ax.set(xlabel="function evaluations (NFE)", ylabel="RMS pathwise error")
    ax.legend()


def plot_quality(ax, result: dict, quality: float) -> None:
    """:func:`quality_vs_nfe`'s curves (mean over replicates) with the stated ``quality`` band."""
    mean = lambda v: sum(v) / len(v) if isinstance(v, (list, tuple)) else v  # noqa: E731
    for name, pts in result["curves"].items():
        ax.plot([mean(n) for n, _ in pts], [max(mean(m), 1e-4) for _, m in pts], "o-", label=name)
    ax.plot([n for n, _ in result["control"]], [mean(m) for _, m in result["control"]], "x:", c="gray",
            label="RK4, wrong score (control)")
    ax.axhspan(1e-4, quality, color="gray", alpha=0.15)
    ax.set(xscale="log", yscale="log", xlabel="function evaluations (NFE)", ylabel="relative MMD² to the target")
    ax.legend(fontsize=8)
