"""Unit tests of dynbook.models.chaos: Lyapunov exponents against closed forms, the valid
prediction time, the implementations that must agree (torchdiffeq, S4D's convolution), the
four forecasters and argument validation (the reservoir: tests/test_reservoir.py)."""

import math

import numpy as np
import pytest
import torch

from dynbook.models import chaos as ch


# ----------------------------------------------------------------------------- Benettin


def test_benettin_linear_map_known_exponent():
    # a non-normal 2-D map with eigenvalues e^{0.3} and e^{-0.5}: λ_max = 0.3 per step
    rng = np.random.default_rng(0)
    Q = rng.standard_normal((2, 2))
    A = Q @ np.diag([math.exp(0.3), math.exp(-0.5)]) @ np.linalg.inv(Q)
    x0 = 1e-3 * rng.standard_normal((3, 2))  # the states grow as e^{0.3k}: keep them far from d0's scale
    lam = ch.benettin(lambda X, k: X @ A.T, x0, dt=1.0, n_steps=60, n_discard=20, d0=1e-6)
    assert lam.shape == (3,)
    np.testing.assert_allclose(lam, 0.3, atol=1e-4)


def test_benettin_linear_flow_rk4_and_time_unit():
    # x' = M x with eigenvalues 0.2 and -1 (a shear couples them); RK4 at h = 0.01
    M = np.array([[0.2, 1.0], [0.0, -1.0]])
    h = 0.01
    lam = ch.benettin(lambda X, k: ch.rk4_step(lambda Z: Z @ M.T, X, h), np.ones((2, 2)), dt=h,
                      n_steps=5000, renorm_every=10, n_discard=500)
    np.testing.assert_allclose(lam, 0.2, atol=2e-3)


def test_benettin_logistic_map_ln2():
    lam = ch.benettin(ch.logistic_map(4.0), np.array([[0.3], [0.71], [0.123]]), dt=1.0,
                      n_steps=20000, d0=1e-10, n_discard=100)
    np.testing.assert_allclose(lam, math.log(2), atol=0.01)


def test_benettin_accepts_torch_states():
    A = torch.diag(torch.tensor([math.exp(0.1), math.exp(-0.2)], dtype=torch.float64))
    lam = ch.benettin(lambda X, k: X @ A.T, 1e-3 * torch.ones(2, 2, dtype=torch.float64), dt=2.0,
                      n_steps=100, n_discard=40)
    np.testing.assert_allclose(lam, 0.05, atol=1e-6)  # 0.1 per step of length 2


def test_flow_lyapunov_lorenz_near_published():
    lam = ch.flow_lyapunov("Lorenz", n_traj=2, t_end_lyapunov=30.0, seed=1)
    assert abs(lam.mean() / ch.published("Lorenz")["lyapunov"] - 1) < 0.2


def test_rk4_is_fourth_order():
    f = lambda X: -X  # noqa: E731
    errs = [abs(ch.integrate(f, np.ones((1, 1)), h=1.0 / n, n_samples=n + 1)[-1, 0, 0] - math.exp(-1))
            for n in (8, 16, 32)]
    orders = [math.log2(errs[i] / errs[i + 1]) for i in range(2)]
    assert all(abs(o - 4) < 0.3 for o in orders), orders


# ----------------------------------------------------------------------------- VPT


def test_valid_time_on_synthetic_errors():
    e = np.array([0.1, 0.2, 0.39, 0.41, 0.3])
    assert ch.valid_time(e, dt=0.5, threshold=0.4) == pytest.approx(1.5)  # first exceedance: index 3


def test_valid_time_exponential_growth_matches_closed_form():
    dt, lam, d0, eps = 0.01, 0.9, 1e-4, 0.4
    t = np.arange(2000) * dt
    e = d0 * np.exp(lam * t)
    expected = math.ceil(math.log(eps / d0) / lam / dt) * dt
    assert ch.valid_time(e, dt=dt, threshold=eps) == pytest.approx(expected)


def test_valid_time_batch_censoring_and_nan():
    e = np.zeros((6, 3))
    e[4, 0] = 1.0            # exceeds at index 4
    e[2:, 2] = np.nan        # a diverged forecast counts as invalid from index 2
    np.testing.assert_allclose(ch.valid_time(e, dt=1.0, threshold=0.5), [4.0, 6.0, 2.0])


def test_normalised_error_and_scale():
    x = np.array([[1.0, 0.0], [-1.0, 0.0]])
    assert ch.attractor_scale(x) == pytest.approx(1.0)
    np.testing.assert_allclose(ch.normalised_error(x + [0.0, 2.0], x, 2.0), [1.0, 1.0])
    with pytest.raises(ValueError, match="shape"):
        ch.normalised_error(x, x[:1], 1.0)


def test_linear_map_and_its_exponent():
    A = np.array([[0.9, 0.2], [0.0, 0.5]])
    x = [np.array([1.0, 2.0])]
    for _ in range(50):
        x.append(A @ x[-1] + [0.1, -0.1])
    Ac = ch.linear_map(np.array(x))
    np.testing.assert_allclose(Ac[:, :2], A, atol=1e-8)
    assert ch.linear_lyapunov(Ac, 0.5) == pytest.approx(math.log(0.9) / 0.5, rel=1e-6)


def test_histogram_distance_bounds():
    a = np.random.default_rng(0).standard_normal((500, 2))
    assert ch.histogram_distance(a, a) == 0.0
    assert ch.histogram_distance(a, a + 100.0) == pytest.approx(1.0)


# ----------------------------------------------------------------------------- backprop models


def test_node_step_equals_torchdiffeq():
    torch.manual_seed(0)
    m = ch.NeuralODE(3, 16, dt=0.7, substeps=2)
    assert ch.node_step_gap(m, torch.randn(5, 3)) < 1e-6


def test_ssm_recurrence_equals_convolution():
    torch.manual_seed(0)
    m = ch.SSMForecaster(3, 8, 8)
    assert ch.ssm_recurrence_gap(m, torch.randn(2, 33, 3)) < 1e-5


@pytest.mark.parametrize("kind", ch.MODELS)
def test_backprop_models_train_and_forecast(kind):
    t = np.arange(600) * 0.1
    x = np.stack([np.sin(t), np.cos(t), np.sin(2 * t)], 1)
    cfg = ch.TrainConfig(steps=5, batch=4, hidden=8, ssm_width=4, ssm_state=4, ssm_window=16)
    m = ch.train_model(kind, x, cfg, dt=1.0, seed=0)
    pred = ch.model_forecast(m, kind, x[None, :20], 7)
    assert pred.shape == (1, 7, 3) and torch.isfinite(pred).all()
    lam = ch.model_lyapunov(m, kind, x[None, :20], dt=0.1, n_steps=20)
    assert lam.shape == (1,)


def test_costs():
    f = ch.esn_training_flops(10, 3, 100)
    assert f["flops"] == f["harvest"] + f["solve"]
    assert f["harvest"] == 100 * (2 * 100 + 2 * 30 + 40)
    cfg = ch.TrainConfig(horizon=4, batch=2, hidden=8)
    assert ch.backprop_step_flops("neural_ode", 3, cfg) == 4 * ch.backprop_step_flops("mlp", 3, cfg)
    assert ch.mlp_field_flops(3, 8) == 2 * (24 + 64 + 24) + 32


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize("call, match", [
    (lambda: ch.valid_time([0.1], dt=0.0), "dt=0.0"),
    (lambda: ch.valid_time([0.1], dt=1.0, threshold=-1), "threshold=-1"),
    (lambda: ch.benettin(lambda X, k: X, np.ones((1, 1)), dt=1.0, n_steps=10, renorm_every=3, n_discard=4),
     "n_discard=4"),
    (lambda: ch.benettin(lambda X, k: X, np.ones((1, 1)), dt=1.0, n_steps=0), "n_steps=0"),
    (lambda: ch.system("NoSuchAttractor"), "NoSuchAttractor"),
    (lambda: ch.make_model("rnn", 3, ch.TrainConfig(), dt=1.0), "kind='rnn'"),
])
def test_argument_validation_names_the_parameter(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_cross_system_runs_and_reports_units():
    cs = ch.cross_system(["Lorenz", "SprottB"], [0, 1], n=20, rho=0.5, n_train=300, n_tests=2, warmup=20,
                         horizon=40, transient_periods=2.0)
    assert cs["names"] == ["Lorenz", "SprottB"] and cs["skipped"] == []
    np.testing.assert_allclose(cs["vpt_periods"] * cs["lam_period"], cs["vpt_lyapunov"])
    for est, v in zip(cs["vpt_interval"], cs["vpt_lyapunov"]):  # the seeds' interval around each mean
        assert est.value == pytest.approx(v) and est.lo <= v <= est.hi and est.n == 2
    assert np.all(cs["vpt_lyapunov"] <= 40 * cs["lam_period"] / 30 + 1e-12)  # censored at the horizon
