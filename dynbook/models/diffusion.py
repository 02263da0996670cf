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
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

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
    """``"vp"`` or ``"ve"``; an unknown name is an error."""
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
