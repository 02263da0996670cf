"""DeepONet (seed 002; Lu et al. 2021) learning the antiderivative operator
G(v)(y) = ∫₀^y v(s) ds from input functions drawn from a Gaussian random field.

Glossary (code name → symbol):

===================  =====================================================================
``grf``              v ~ GP(0, k), k(x, x') = exp(−(x − x')² / 2ℓ²) on [0, 1], ℓ = ``length_scale``
``antiderivative``   G(v) on the fine grid (cumulative trapezoid rule, exact to O(h²))
``OperatorData``     v at m sensors (n, m), query points y (n, p) and G(v)(y) (n, p)
``DeepONet``         G_θ(v)(y) = Σ_k b_k(v(x_1), …, v(x_m)) t_k(y) + b₀: branch b, trunk t
===================  =====================================================================
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from dynbook import _checks
from dynbook.measure import fits

FINE = 513  # points of the fine grid on which input functions are drawn and integrated


def grf(n_functions: int, length_scale: float, generator: torch.Generator | None = None,
        grid_size: int = FINE) -> tuple[torch.Tensor, torch.Tensor]:
    """``n_functions`` samples of the zero-mean GP with the squared-exponential kernel on a
    uniform grid of [0, 1]: returns the grid (g,) and the samples (n, g), float64."""
    _checks.positive_int("n_functions", n_functions)
    _checks.positive("length_scale", length_scale)
    x, root = _grf_factor(float(length_scale), grid_size)
    return x.clone(), torch.randn(n_functions, grid_size, generator=generator, dtype=torch.float64) @ root.T


@functools.lru_cache(maxsize=8)
def _grf_factor(length_scale: float, grid_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The grid and a square root of the kernel matrix on it (computed once per ℓ and grid:
    the experiment draws from the same two fields many times)."""
    x = torch.linspace(0, 1, grid_size, dtype=torch.float64)
    k = torch.exp(-(x[:, None] - x[None]) ** 2 / (2 * length_scale**2))
    # eigen-factor instead of Cholesky: k is numerically singular for long length scales
    w, q = torch.linalg.eigh(k)
    return x, q * w.clamp(min=0).sqrt()


def antiderivative(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """∫₀^x v on the grid x (g,) for each row of v (n, g): the cumulative trapezoid rule."""
    steps = (v[:, 1:] + v[:, :-1]) / 2 * (x[1:] - x[:-1])
    return torch.cat([torch.zeros_like(v[:, :1]), steps.cumsum(1)], 1)


@dataclass
class OperatorData:
    """Sensors x_s (m,), inputs v(x_s) (n, m), query points y (n, p, 1), targets G(v)(y) (n, p)."""

    sensors: torch.Tensor
    inputs: torch.Tensor
    points: torch.Tensor
    targets: torch.Tensor


def antiderivative_data(n_functions: int, n_sensors: int, n_points: int, length_scale: float,
                        seed: int) -> OperatorData:
    """Pairs (v, G(v)) with v ~ GRF(ℓ) seen at ``n_sensors`` equispaced sensors and G(v)
    given at ``n_points`` random fine-grid points per function (float32, as trained)."""
    _checks.positive_int("n_sensors", n_sensors, minimum=2)
    _checks.positive_int("n_points", n_points)
    gen = torch.Generator().manual_seed(seed)
    x, v = grf(n_functions, length_scale, gen)
    g = antiderivative(x, v)
    idx = torch.linspace(0, FINE - 1, n_sensors).round().long()
    pick = torch.randint(0, FINE, (n_functions, n_points), generator=gen)
    return OperatorData(x[idx].float(), v[:, idx].float(), x[pick][..., None].float(),
                        torch.gather(g, 1, pick).float())


def _mlp(sizes: list[int]) -> torch.nn.Sequential:
    layers = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [torch.nn.Linear(a, b), torch.nn.Tanh()]
    return torch.nn.Sequential(*layers[:-1])


class DeepONet(torch.nn.Module):
    """Unstacked DeepONet: branch m → w → w → p, trunk 1 → w → w → p (tanh), output
    Σ_k b_k t_k + b₀. ``forward(inputs (n, m), points (n, q, 1)) → (n, q)``."""

    def __init__(self, n_sensors: int, width: int = 40, latent: int = 40):
        super().__init__()
        _checks.positive_int("n_sensors", n_sensors)
        _checks.positive_int("width", width)
        _checks.positive_int("latent", latent)
        self.branch = _mlp([n_sensors, width, width, latent])
        self.trunk = torch.nn.Sequential(_mlp([1, width, width, latent]), torch.nn.Tanh())
        self.bias = torch.nn.Parameter(torch.zeros(()))

    def forward(self, inputs: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        # the trunk sees each distinct query point once: the points come from the fine grid
        # (at most 513 values among n·q), so this is the same function at a fraction of the cost
        distinct, where = torch.unique(points.reshape(-1), return_inverse=True)  # the trunk's input is y alone
        trunk = self.trunk(distinct[:, None])[where].reshape(*points.shape[:-1], -1)
        return torch.einsum("nk,nqk->nq", self.branch(inputs), trunk) + self.bias


def relative_error(model: DeepONet, data: OperatorData) -> float:
    """‖G_θ(v) − G(v)‖₂ / ‖G(v)‖₂ over all functions and query points of ``data`` (one
    norm for the whole set, so functions whose antiderivative is nearly zero do not dominate)."""
    with torch.no_grad():
        return fits.relative_error(model(data.inputs, data.points), data.targets, norm="fro")


def train(data: OperatorData, *, steps: int, lr: float, seed: int, width: int = 40, latent: int = 40,
          shuffle_targets: bool = False) -> DeepONet:
    """Full-batch Adam (the fused kernel) on the mean squared error. ``shuffle_targets`` pairs each input with
    another function's output (the negative control: no operator links them)."""
    _checks.positive_int("steps", steps)
    _checks.positive("lr", lr)
    torch.manual_seed(seed)
    model = DeepONet(data.inputs.shape[1], width, latent)
    targets = data.targets
    if shuffle_targets:
        targets = targets[torch.randperm(targets.shape[0], generator=torch.Generator().manual_seed(seed))]
    opt = torch.optim.Adam(model.parameters(), lr=lr, fused=True)  # fused: a quarter less time on a CPU
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(steps):
        opt.zero_grad()
        ((model(data.inputs, data.points) - targets) ** 2).mean().backward()
        opt.step()
        sched.step()
    return model


def experiment(*, seeds, n_functions: int, n_sensors: int, sensor_counts, length_scale: float,
               test_length_scale: float, steps: int, lr: float = 3e-3, n_test: int = 200) -> dict:
    """The chapter's DeepONet runs: per seed, the test error on unseen functions of the training
    field ("test"), on a smoother field ("longer"), and of the same network trained on shuffled
    pairs ("shuffled"); and the error against the number of sensors on the first seed
    ("by_sensors", including ``n_sensors``). Every entry of the first three is a list over seeds."""
    base = seeds[0] // 1000 * 1000
    test = antiderivative_data(n_test, n_sensors, 50, length_scale, seed=base + 999)
    longer = antiderivative_data(n_test, n_sensors, 50, test_length_scale, seed=base + 998)
    out = {"test": [], "longer": [], "shuffled": []}
    for s in seeds:
        data = antiderivative_data(n_functions, n_sensors, 10, length_scale, seed=s)
        model = train(data, steps=steps, lr=lr, seed=s)
        out["test"].append(relative_error(model, test))
        out["longer"].append(relative_error(model, longer))
        out["shuffled"].append(relative_error(train(data, steps=steps, lr=lr, seed=s, shuffle_targets=True), test))
    out["by_sensors"] = {n_sensors: out["test"][0]}
    for m in sensor_counts:
        model = train(antiderivative_data(n_functions, m, 10, length_scale, seed=seeds[0]), steps=steps, lr=lr,
                      seed=seeds[0])
        out["by_sensors"][m] = relative_error(model, antiderivative_data(n_test, m, 50, length_scale, seed=base + 999))
    out["by_sensors"] = dict(sorted(out["by_sensors"].items()))
    return out
