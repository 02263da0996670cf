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


def test_neural_sde_fit_recovers_ou_and_not_the_double_well():
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    ou, dw = sdes.OU(2.0, 0.5, 0.5), sdes.DoubleWell(0.5)
    x0 = 3 * torch.rand(1, 128, generator=g, dtype=D) - 1
    paths = torch.cat([ou.paths(x0, 60, 0.02, g), dw.paths(x0, 60, 0.02, g, substeps=5)], 1)
    model = sdes.NeuralSDE(2, 32, generator=g).double()
    losses = sdes.fit_neural_sde(model, paths, dt=0.02, iterations=150, batch=1024, lr=2e-2, generator=g)
    assert losses[-1] < losses[0]
    visited = paths.permute(1, 0, 2).reshape(2, -1)
    ef, eg = sdes.coefficient_errors(model, ou, visited)
    assert ef[0] < 0.3 and eg[0] < 0.1, (ef, eg)
    assert ef[1] > 0.6  # the control: fitted to other dynamics, it is not the OU drift
    x = sdes.simulate(model, torch.full((2 * 500, 1), 0.5, dtype=D), t1=2.0, n_steps=100)
    assert float(x[:500].std()) == pytest.approx(0.25, rel=0.2)  # σ/√(2θ)


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
