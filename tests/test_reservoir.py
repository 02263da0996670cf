"""Unit tests of dynbook.models.reservoir: the memory capacity of a linear reservoir against its
closed form, the hand-written update against reservoirpy and a plain loop, the autonomous
reservoir's exponent against ln ρ, ridge against the normal equations, argument validation."""

import math

import numpy as np
import pytest

from dynbook.models import reservoir as rc


def test_autonomous_reservoir_exponent_is_log_rho_below_transition():
    # no bias, ρ < 1: the state falls to 0 and the Jacobian there is ρ W with spectral radius ρ
    res = rc.make_reservoirs(30, 1, rho=[0.5, 0.8], seeds=[3], bias_scale=0.0)
    lam = rc.autonomous_lyapunov(res, n_steps=600, washout=300)
    np.testing.assert_allclose(lam, np.log([0.5, 0.8]), atol=0.02)


def test_memory_capacity_of_linear_reservoir_matches_closed_form():
    # tiny input scaling: tanh is linear to 1e-6 relative, so the reservoir is x_t = W x_{t-1} + w u_t
    n, rho = 8, 0.8
    res = rc.make_reservoirs(n, 1, rho=rho, seeds=[5], input_scaling=1e-3, bias_scale=0.0)
    u = np.random.default_rng(2).uniform(-1, 1, 40000)
    states = rc.harvest(res, u)[0, 0]
    mc = rc.memory_capacity(states, u, max_delay=12, washout=100, reg=1e-14)  # states are ~1e-3
    closed = rc.linear_memory_capacity(res.W[0], res.W_in[0, :, 0], max_delay=12)
    np.testing.assert_allclose(mc, closed, atol=0.02)
    assert closed.sum() <= n + 1e-9 and closed[0] > closed[-1]


def test_linear_memory_capacity_refuses_unstable_reservoir():
    with pytest.raises(ValueError, match="spectral radius"):
        rc.linear_memory_capacity(1.1 * np.eye(3), np.ones(3), max_delay=2)


def test_harvest_matches_reservoirpy_and_a_plain_loop():
    res = rc.make_reservoirs(40, 3, rho=0.9, seeds=[1], leak=0.7)
    u = np.random.default_rng(0).standard_normal((50, 3))
    assert rc.reservoirpy_gap(res, u) < 1e-12
    r = np.zeros(40)
    for t in range(50):
        r = 0.3 * r + 0.7 * np.tanh(res.W[0] @ r + res.W_in[0] @ u[t] + res.b[0])
    np.testing.assert_allclose(rc.harvest(res, u)[0, 0, -1], r, atol=1e-12)


def test_make_reservoirs_shapes_and_spectral_radius():
    res = rc.make_reservoirs(17, 2, rho=[0.5, 1.5], seeds=[0, 1, 2])
    assert res.W.shape == (6, 17, 17) and res.W_in.shape == (6, 17, 2) and res.b.shape == (6, 17)
    radii = np.abs(np.linalg.eigvals(res.W)).max(-1)
    np.testing.assert_allclose(radii, [0.5] * 3 + [1.5] * 3, rtol=1e-10)
    np.testing.assert_allclose(res.W[3], 3 * res.W[0])  # one matrix per seed, rescaled


def test_ridge_matches_normal_equations_in_float64():
    rng = np.random.default_rng(1)
    X, Y = rng.standard_normal((2, 37, 5)), rng.standard_normal((2, 37, 3))
    W = rc.ridge(X, Y, 0.3)
    for b in range(2):
        ref = np.linalg.solve(X[b].T @ X[b] + 0.3 * np.eye(5), X[b].T @ Y[b])
        np.testing.assert_allclose(W[b], ref, rtol=1e-12)


def test_esn_learns_a_sine_and_forecasts_it():
    t = np.arange(1200) * 0.1
    x = np.stack([np.sin(t), np.cos(t)], 1)
    res = rc.make_reservoirs(60, 2, rho=0.8, seeds=[0])
    rc.train_readout(res, x[:999], x[1:1000], washout=50)
    pred = rc.esn_forecast(res, x[None, 900:1000], 100)
    assert pred.shape == (1, 1, 100, 2)
    assert np.abs(pred[0, 0] - x[1000:1100]).max() < 0.05


def test_esn_forecast_needs_a_trained_readout():
    res = rc.make_reservoirs(5, 1, rho=0.5, seeds=[0])
    with pytest.raises(ValueError, match="W_out is None"):
        rc.esn_forecast(res, np.zeros((1, 3, 1)), 2)


def test_first_crossing():
    assert rc.first_crossing([0, 1, 2], [-1.0, 1.0, 2.0]) == pytest.approx(0.5)
    assert rc.first_crossing([0, 1], [0.5, 1.0]) == 0.0
    assert math.isnan(rc.first_crossing([0, 1], [-1.0, -0.5]))




@pytest.mark.parametrize("call, match", [
    (lambda: rc.make_reservoirs(0, 1, rho=1.0, seeds=[0]), "n=0"),
    (lambda: rc.make_reservoirs(5, 1, rho=-1.0, seeds=[0]), "rho=-1.0"),
    (lambda: rc.make_reservoirs(5, 1, rho=1.0, seeds=[]), "seeds"),
    (lambda: rc.make_reservoirs(5, 1, rho=1.0, seeds=[0], leak=0.0), "leak=0.0"),
    (lambda: rc.ridge(np.ones((1, 2, 2)), np.ones((1, 2, 1)), 0.0), "reg=0.0"),
    (lambda: rc.memory_capacity(np.ones((20, 2)), np.ones(20), max_delay=5, washout=10), "longer than"),
])
def test_argument_validation_names_the_parameter(call, match):
    with pytest.raises(ValueError, match=match):
        call()
