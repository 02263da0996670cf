"""Learning dynamics: NTK closed forms, lazy-training gradients, power iteration, the OU
prediction and GD against its flow, in float64."""

from functools import partial

import pytest
import torch
from torch.func import grad, jacrev

from dynbook.models import learning_dynamics as ld
from dynbook.models import ntk


@pytest.mark.parametrize("activation", ["relu", "erf"])
def test_gauss_expectations_match_monte_carlo(activation):
    g = torch.Generator().manual_seed(0)
    s11, s22, s12 = 1.3, 0.7, 0.5
    k, kdot = ld.gauss_expectations(activation, *(torch.tensor(v, dtype=torch.float64)
                                                  for v in (s11, s22, s12)))
    mk, mkdot = ld.monte_carlo_expectations(activation, s11, s22, s12, n=400_000, generator=g)
    assert abs(k.item() - mk) < 0.01 and abs(kdot.item() - mkdot) < 0.01


def test_infinite_ntk_is_the_mean_of_wide_networks():
    x = ld.circle_inputs(4)
    cfg = ntk.MLPConfig(width=4096, depth=1, activation="relu", d_in=2)
    params = ntk.init_params(cfg, 8, generator=torch.Generator().manual_seed(1))
    mean = ntk.ensemble_ntk(cfg, params, x).mean(0)
    limit = ld.infinite_ntk(x, activation="relu")
    assert (mean - limit).norm() / limit.norm() < 0.02


def test_two_layer_kernel_and_gradient_match_jacrev():
    g = torch.Generator().manual_seed(2)
    p = {"W": torch.randn(1, 7, 2, generator=g, dtype=torch.float64),
         "b": torch.randn(1, 7, generator=g, dtype=torch.float64),
         "v": torch.randn(1, 7, generator=g, dtype=torch.float64)}
    x = torch.randn(5, 2, generator=g, dtype=torch.float64)
    y = torch.randn(3, generator=g, dtype=torch.float64)
    for par in ld.PARAMETRIZATIONS:
        one = {k: v[0] for k, v in p.items()}
        fn = partial(ld.two_layer, parametrization=par)
        jac = jacrev(fn)(one, x)
        explicit = sum(j.flatten(1) @ j.flatten(1).T for j in jac.values())
        assert torch.allclose(ntk.empirical_ntk(fn, one, x), explicit, atol=1e-12)
        _, grads = ld._two_layer_step(p, x, 3, y, par, "tanh")
        auto = grad(lambda q: 0.5 * (fn(q, x[:3]) - y).pow(2).mean())(one)
        for k in auto:
            assert torch.allclose(grads[k][0], auto[k], atol=1e-12)


def test_power_iteration_matches_eigvalsh_of_full_hessian():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(6, 2, generator=g, dtype=torch.float64)
    loss, n = ld.mlp_loss(x, torch.sin(x[:, 0]), [2, 4, 1])
    theta = torch.randn(n, generator=g, dtype=torch.float64)
    hess = torch.func.hessian(loss)(theta)
    top = torch.linalg.eigvalsh(hess)
    lam, _ = ld.sharpness(loss, theta, n_iter=300, generator=g)
    exact = top[-1] if top[-1] >= -top[0] else top[0]  # the largest in magnitude
    assert abs(lam - exact.item()) < 1e-6 * abs(exact.item())


def test_ou_prediction_on_a_one_dimensional_quadratic():
    h, c, lr = 2.0, 0.5, 0.01
    one = lambda v: torch.tensor([[v]], dtype=torch.float64)  # noqa: E731
    assert ld.ou_excess_loss(one(h), one(c), lr) == \
        pytest.approx(0.5 * h * lr * c / (2 * h), rel=1e-12)  # S = ηc/(2h)
    # SGD on data whose per-sample gradients at the minimum have variance c: the simulated
    # fluctuation is the discrete chain's, ηc/(h(2 − ηh)), within Monte Carlo error.
    pb = ld.regression_problem(1, 400, noise=0.7, seed=0)
    m = ld.sgd_excess_loss(pb, lr=lr, batch=1, n_chains=512, n_steps=1500, burn_in=500, seed=0)
    hh, cc = pb["H"].item(), pb["C"].item()
    discrete = 0.5 * hh * lr * cc / (hh * (2 - lr * hh))
    assert m == pytest.approx(discrete, rel=0.1)
    assert ld.ou_excess_loss(pb["H"], pb["C"], lr) == pytest.approx(discrete, rel=0.02)


def test_gd_approaches_gradient_flow_at_first_order():
    a = torch.tensor([[2.0, 0.3], [0.3, 1.0]], dtype=torch.float64)
    loss = lambda th: 0.5 * th @ a @ th + 0.1 * th.pow(4).sum()  # noqa: E731
    out = ld.gd_flow_gap(loss, torch.tensor([1.0, -1.0], dtype=torch.float64),
                         lrs=(0.04, 0.02, 0.01), t_end=1.0)
    assert abs(out["order"].value - 1) < 0.1


@pytest.mark.parametrize("call, name", [
    (lambda: ld.gauss_expectations("tanh", 1, 1, 0), "activation"),
    (lambda: ld.regression_problem(3, 3, noise=0.1, seed=0), "n_data"),
    (lambda: ld.ou_excess_loss(torch.eye(1), torch.eye(1), -1.0), "temperature"),
    (lambda: ld.lazy_training(8, x_train=torch.zeros(2, 1), y_train=torch.zeros(2),
                              x_test=torch.zeros(1, 1), lr=0.1, n_steps=1, n_seeds=1,
                              parametrization="standard"), "parametrization"),
    (lambda: ld.ntk_width_study([8, 16, 32], n_seeds=1, x=ld.circle_inputs(3)), "n_seeds"),
    (lambda: ld.sharpness(lambda t: t.pow(2).sum(), torch.ones(2), n_iter=0), "n_iter"),
])
def test_bad_input_names_the_parameter(call, name):
    with pytest.raises(ValueError, match=name):
        call()
