"""dynbook.models.sde in float64: the order fit, torchsde's solver orders on GBM, exact OU paths, a
Neural SDE fitted to them, and the memory of the stochastic adjoint."""

import math

import pytest
import torch

from dynbook.measure import fits
from dynbook.models import sde as sdes

D = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny float64 problems: one thread is faster


def test_order_fit_recovers_a_power_law_and_its_interval_widens_with_noise():
    x = [4, 8, 16, 32, 64]
    est = fits.loglog_slope(x, [3.0 * v ** -1.5 for v in x])
    assert est.value == pytest.approx(-1.5, abs=1e-12) and est.hi - est.lo < 1e-9
    noisy = fits.loglog_slope(x, [3.0 * v ** -1.5 * f for v, f in zip(x, (1.3, 0.8, 1.2, 0.9, 1.1))])
    assert noisy.lo < -1.5 < noisy.hi and noisy.hi - noisy.lo > 0.1
    with pytest.raises(ValueError):
        fits.loglog_slope([1, 2], [1, 2])


def test_gbm_strong_and_weak_orders():
    errs = sdes.gbm_errors(steps=(8, 16, 32, 64), paths=4000, seed=0)
    for m, (p_strong, p_weak) in sdes.NOMINAL_ORDERS.items():
        strong = -fits.loglog_slope(errs[m]["steps"], errs[m]["strong"]).value
        assert abs(strong - p_strong) < 0.25, (m, strong)
        if p_weak is not None:
            weak = -fits.loglog_slope(errs[m]["steps"], errs[m]["weak"]).value
            assert abs(weak - p_weak) < 0.35, (m, weak)


def test_ou_paths_have_the_exact_transition_moments():
    ou = sdes.OU(theta=2.0, mu=0.5, sigma=0.5)
    x0 = torch.full((1, 40000), -1.0, dtype=D)
    p = ou.paths(x0, 5, 0.1, torch.Generator().manual_seed(0))
    t = 0.5
    mean = 0.5 + (-1.0 - 0.5) * math.exp(-2.0 * t)
    var = 0.25 * (1 - math.exp(-4.0 * t)) / 4.0
    assert float(p[-1].mean()) == pytest.approx(mean, abs=4 * math.sqrt(var / 40000))
    assert float(p[-1].var()) == pytest.approx(var, rel=0.03)


def test_neural_sde_fit_through_torchsde_recovers_ou_and_not_the_double_well():
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    ou, dw = sdes.OU(2.0, 0.5, 0.5), sdes.DoubleWell(0.5)
    x0 = 3 * torch.rand(1, 128, generator=g, dtype=D) - 1
    paths = torch.cat([ou.paths(x0, 60, 0.02, g), dw.paths(x0, 60, 0.02, g, substeps=5)], 1)
    model = sdes.NeuralSDE(2, 32, generator=g)
    losses = sdes.fit_neural_sde(model, paths.float(), dt=0.02, iterations=150, batch=256, replicas=16,
                                 substeps=2, lr=2e-2, generator=g)
    assert losses[-1] < losses[0]
    model = model.double()
    visited = paths.permute(1, 0, 2).reshape(2, -1)
    ef, eg = sdes.coefficient_errors(model, ou, visited)
    assert ef[0] < 0.3 and eg[0] < 0.1, (ef, eg)
    assert ef[1] > 0.6  # the control: fitted to other dynamics, it is not the OU drift
    x = sdes.simulate(model, torch.full((2 * 500, 1), 0.5, dtype=D), t1=2.0, n_steps=100)
    assert float(x[:500].std()) == pytest.approx(0.25, rel=0.2)  # σ/√(2θ)


class _ScaledOU:
    """OU drift with a free diffusion σ, as torchsde wants it (for the variance-correction test)."""

    noise_type, sde_type = "diagonal", "ito"

    def __init__(self, sigma):
        self.ou = sdes.OU(2.0, 0.5, sigma)

    def f(self, t, y):
        return self.ou.drift(y)

    def g(self, t, y):
        return self.ou.diffusion(y)


def test_simulated_transition_likelihood_tends_to_the_one_step_gaussian():
    """At one Euler–Maruyama step the simulated transition is exactly N(x0 + fΔ, g²Δ): with many
    replicas the torchsde estimate approaches the closed form."""
    g = torch.Generator().manual_seed(3)
    model = sdes.NeuralSDE(1, 8, generator=g).double()
    x0 = torch.rand(1, 32, 1, generator=g, dtype=D)
    x1 = x0 + 0.1 * torch.randn(1, 32, 1, generator=g, dtype=D)
    exact = float(sdes.em_nll(model, x0, x1, dt=0.02).detach())
    sim = float(sdes.transition_nll(model, x0, x1, dt=0.02, substeps=1, replicas=20000, bm_seed=1).detach())
    assert sim == pytest.approx(exact, abs=0.02)
    with pytest.raises(ValueError, match="replicas = 3"):
        sdes.transition_nll(model, x0, x1, dt=0.02, substeps=1, replicas=3)


def test_variance_correction_puts_the_likelihoods_minimum_at_the_true_diffusion():
    """With R = 6 replicas the raw sample variance would make the fit settle at
    σ·√((R − 1)/(R − 3)) ≈ 1.29 σ; corrected, the minimum over σ is at the truth."""
    g = torch.Generator().manual_seed(5)
    dt, sigma = 0.02, 0.5
    x0 = 3 * torch.rand(1, 4000, 1, generator=g, dtype=D) - 1
    noise = torch.randn(x0.shape, generator=g, dtype=D)
    x1 = x0 + sdes.OU(2.0, 0.5, sigma).drift(x0) * dt + sigma * math.sqrt(dt) * noise
    grid = torch.linspace(0.35, 0.8, 46).tolist()

    def argmin(correct):
        loss = [float(sdes.transition_nll(_ScaledOU(s), x0, x1, dt=dt, substeps=1, replicas=6, bm_seed=7,
                                          variance_correction=correct)) for s in grid]
        return grid[loss.index(min(loss))]

    assert argmin(True) == pytest.approx(sigma, abs=0.03)
    assert argmin(False) == pytest.approx(sigma * math.sqrt(5 / 3), abs=0.04)


def test_adjoint_memory_is_flat_and_its_gradient_close():
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = sdes.NeuralSDE(1, 16, generator=g).double()
    x0 = torch.rand(1, 64, 1, generator=g, dtype=D)
    x1 = x0 + 0.05 * torch.randn(1, 64, 1, generator=g, dtype=D)
    mem = sdes.memory_vs_steps(model, x0, x1, [2, 8], dt=0.02, replicas=4)
    assert mem["backprop_bytes"][1] > 2.5 * mem["backprop_bytes"][0]
    assert mem["adjoint_bytes"][1] < 1.5 * mem["adjoint_bytes"][0]
    assert max(mem["grad_rel_err"]) < 0.1


def test_gbm_orders_judge_exact_power_laws():
    steps = [4, 8, 16, 32]
    errs = {m: {"steps": steps, "strong": [v ** -s for v in steps], "weak": [v ** -(w or 2.0) for v in steps]}
            for m, (s, w) in sdes.NOMINAL_ORDERS.items()}
    fit = sdes.gbm_orders(errs)
    assert fit["ok"] and fit["methods"]["milstein"]["strong"].value == pytest.approx(1.0)
    assert len(fit["rows"]) == 3 and "milstein: strong 1.00 (expect 1.0)" in fit["detail"]
    errs["euler"]["strong"] = [v ** -1.0 for v in steps]  # Euler–Maruyama at order 1: not its order
    assert not sdes.gbm_orders(errs)["ok"]


def test_coefficient_errors_are_relative_l2_in_float64():
    g = torch.Generator().manual_seed(1)
    model = sdes.NeuralSDE(2, 8, generator=g).double()
    ou = sdes.OU(2.0, 0.5, 0.5)
    visited = torch.rand(2, 50, generator=g, dtype=D)
    ef, eg = sdes.coefficient_errors(model, ou, visited)
    x = visited[1][:, None]
    with torch.no_grad():
        f = model.drift(visited[..., None])[1]
    expect = float((f - ou.drift(x)).norm() / ou.drift(x).norm())
    assert ef[1] == pytest.approx(expect, rel=1e-12) and len(eg) == 2


def test_fit_and_memory_experiments_return_what_the_chapter_records():
    fit = sdes.fit_experiment(replicates=1, n_paths=64, iterations=40, seed=0, n_obs=30, n_simulated=200,
                              t_simulated=0.5)
    assert len(fit["drift_error"]) == 2 and len(fit["error"]) == len(fit["error_control"]) == 1
    assert fit["paths"].shape == (31, 2, 64) and fit["seeds"] == [17]
    assert fit["stationary_std"] == pytest.approx(0.25)
    for kw, name in ((dict(replicates=0), "replicates"), (dict(n_paths=0), "n_paths"),
                     (dict(iterations=0), "iterations")):
        with pytest.raises(ValueError, match=name):
            sdes.fit_experiment(**{**dict(replicates=1, n_paths=4, iterations=1), **kw})
    mem = sdes.memory_experiment(fit["paths"], n_transitions=16, steps=(2, 4, 8), replicas=2, hidden=8)
    assert set(mem["records"]) == {f"{w}_bytes_{n}" for w in ("adjoint", "backprop") for n in (2, 4, 8)} | {
        "adjoint_grad_rel_err_max_steps", "memory_max_steps", "adjoint_memory_ratio_max_steps"}
    assert mem["slope_backprop"].value > mem["slope_adjoint"].value
    with pytest.raises(ValueError, match="n_transitions"):
        sdes.memory_experiment(fit["paths"], n_transitions=0)
